"""Options shared by the batch commands (`face`, `image`), declared once so their help and
behaviour match. Each is an ``Annotated`` alias for a Typer parameter."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class PrecisionChoice(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


Inputs = Annotated[
    list[str],
    typer.Argument(help="Image files, folders or glob patterns ('photos/*.jpg'). Folders are read one level deep unless --recursive."),
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
JsonReport = Annotated[bool, typer.Option("--json", help="Write a machine-readable report to stdout (progress stays on stderr).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Precision = Annotated[
    PrecisionChoice,
    typer.Option("--precision", help="auto = fp32 on CPU, bf16 (or fp16) on CUDA; NaN outputs are redone in fp32."),
]
Model = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="A name from `vrrestore weights list` or a path to a .safetensors checkpoint."),
]
Fidelity = Annotated[
    float,
    typer.Option("--fidelity", "-w", min=0.0, max=1.0, help="0 = rely on the learned prior (cleaner), 1 = stay closest to the input (more faithful)."),
]
