"""Options shared by the batch commands (`face`, `image`), declared once so their help and
behaviour match. Each is an ``Annotated`` alias for a Typer parameter."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class PrecisionChoice(str, Enum):
    """Compute precision (the descriptor's Precision; training refuses fp16, having no loss scaling)."""

    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


# The names of data.degradations.RECIPES, for help texts (that module pulls in OpenCV; a test keeps
# the two equal).
RECIPE_NAMES = ("face", "face-eval", "face-mix", "face-large", "sr-x4", "sr-x4-mix", "sr-x2", "bicubic-x4", "bicubic-x2")


class HeadChoice(str, Enum):
    """The codebook heads of models.heads.HEAD_KINDS (a test keeps the two equal)."""

    vr = "vr"
    vq = "vq"
    soft = "soft"
    direct = "direct"


class DtypeChoice(str, Enum):
    """Storage precision of written weights (checkpoint._DTYPES; a test keeps the two equal)."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


Inputs = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Image files, folders or glob patterns ('photos/*.jpg'). Folders are read one level deep unless --recursive. "
        "May be left out with --files-from.",
        show_default=False,
    ),
]
FilesFrom = Annotated[
    Optional[Path],
    typer.Option(
        "--files-from", metavar="LIST",
        help="Also read input files from LIST, one path per line ('-' = stdin; NUL-separated as from `find -print0` "
        "works too), for inputs too many for a command line. Outputs mirror each file's path below the deepest "
        "folder holding all listed files. A listed file that is missing or unreadable fails on its own (in the "
        "report and the manifest); the rest go on.",
    ),
]
Shard = Annotated[
    Optional[str],
    typer.Option(
        "--shard", metavar="I/N",
        help="Do only shard I of N (0-based) of the input list sorted by path (every N-th file), so N independent "
        "processes of an array job cover every input exactly once. Default: SLURM_ARRAY_TASK_ID/"
        "SLURM_ARRAY_TASK_COUNT, JOB_COMPLETION_INDEX/JOB_COMPLETIONS (Kubernetes) or RANK/WORLD_SIZE when set; "
        "--shard wins (0/1 = everything). A shard writes a manifest (see --manifest).",
    ),
]
Manifest = Annotated[
    Optional[Path],
    typer.Option(
        "--manifest", metavar="PATH",
        help="Append one JSON line per file (input, output, status, faces, seconds, error) to PATH as each file "
        "ends; '{shard}' in PATH becomes I-of-N. Default for a shard: <output folder>/"
        "vrrestore-manifest.shard-I-of-N.jsonl; none otherwise. It is the resume log: a rerun skips files it "
        "records as ok whose output exists, even with --overwrite (delete it to start over).",
    ),
]
Output = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Output file (one input) or folder (several inputs or a folder). Default: ./results/."),
]
Suffix = Annotated[str, typer.Option("--suffix", help="Text added to each output file name before the extension.")]
Ext = Annotated[
    Optional[str],
    typer.Option("--ext", help="Output format: png, jpg, webp, tiff or bmp. Default: the input's format."),
]
Quality = Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality of written files.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist (default: skip them, so an interrupted batch resumes).")]
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders and mirror their layout in the output folder.")]
FailFast = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first file that fails (default: report it and go on).")]
JsonReport = Annotated[
    bool,
    typer.Option("--json", help="Write one machine-readable JSON report to stdout, whatever the exit code (progress and messages stay on stderr)."),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Precision = Annotated[
    PrecisionChoice,
    typer.Option("--precision", help="auto = bf16 on a CPU where a timed probe shows it faster (AMX or AVX512-BF16; see `vrrestore doctor`), else fp32; bf16 (or fp16) on CUDA. NaN outputs are redone in fp32."),
]
Model = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="A name from `vrrestore weights list` or a path to a .safetensors checkpoint."),
]
Fidelity = Annotated[
    float,
    typer.Option("--fidelity", "-w", min=0.0, max=1.0, help="0 = rely on the learned prior (cleaner), 1 = stay closest to the input (more faithful)."),
]
Threads = Annotated[
    Optional[int],
    typer.Option("--threads", min=1, help="CPU threads for the model, OpenCV and the face detector (default: torch's choice, usually all cores)."),
]
MaxPixels = Annotated[
    Optional[int],
    typer.Option(
        "--max-pixels", min=0, metavar="N",
        help="Decompression-bomb guard: refuse input images of more than N pixels (0 = no limit). Default: "
        "$VRRESTORE_MAX_PIXELS, else 256 MP or 16 pixels per byte of the file, whichever is more.",
    ),
]


@contextmanager
def threads_applied(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` CPU threads (torch, OpenCV, OpenMP for yuface) and restore torch's and
    OpenCV's counts after, so in-process callers (tests, notebooks) are not changed for good."""
    if threads is None:
        yield
        return
    import cv2
    import torch

    before, before_cv, before_omp = torch.get_num_threads(), cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by yuface's OpenMP when it first loads
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        cv2.setNumThreads(before_cv)
        if before_omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_omp
