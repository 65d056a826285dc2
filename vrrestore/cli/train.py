"""`vrrestore train prior|code|fidelity|plain|export|release|publish|wallpapers` and `vrrestore degrade`.

Training code is imported inside the command functions only, so `vrrestore face` and friends never
load it. Every stage writes RUN_DIR/<stage>.pt and RUN_DIR/log.jsonl; run them under
`torchrun --nproc_per_node N -m vrrestore train ...` for multi-GPU / multi-node training.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError, UsageError
from ._console import err_console
from ._options import RECIPE_NAMES, DtypeChoice, HeadChoice, MaxPixels, PrecisionChoice

app = typer.Typer(
    help="Train models: `prior` (VQGAN on HQ images), `code` (LQ encoder + transformer + head), "
    "`fidelity` (fusion blocks), then `export` to an inference checkpoint; `plain` trains the no-prior baseline.",
    no_args_is_help=True,
)


class VRTarget(str, Enum):
    feat = "feat"
    oracle = "oracle"


class Precondition(str, Enum):
    none = "none"
    center = "center"
    whiten = "whiten"


class VRInit(str, Enum):
    zero = "zero"
    model = "model"


Data = Annotated[list[Path], typer.Option("--data", help=(
    "HQ images: a folder (read recursively) or a plain .tar; repeat to combine."
))]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run folder: receives <stage>.pt (checkpoint) and log.jsonl.")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help=(
    "Model geometry (face-cpu, face-tiny, face-s, face-base, sr-x4-cpu, sr-tiny, sr-x4-s, sr-x2-s, sr-x4-base). "
    "Later stages default to the one the earlier stage used."
))]
Steps = Annotated[int, typer.Option("--steps", min=1, help=(
    "Train until this many optimiser steps (counting steps before a --resume)."
))]
Batch = Annotated[int, typer.Option("--batch-size", min=1, help="Images per step and process.")]
Lr = Annotated[float, typer.Option("--lr", min=0.0, help=(
    "Adam learning rate; 0 = the stage's default (prior 1e-4, code 1e-4, fidelity 5e-5, plain 2e-4)."
))]
Seed = Annotated[int, typer.Option("--seed", help="Seed for initialisation, data order, crops and degradations.")]
MaxMinutes = Annotated[float, typer.Option("--max-minutes", min=0.0, help=(
    "Time budget: stop cleanly with a checkpoint after this many minutes (0 = none; counts time"
    " before a --resume)."
))]
CkptEvery = Annotated[int, typer.Option("--ckpt-every", min=1, help=(
    "Write the checkpoint every N steps (and always at the end)."
))]
Resume = Annotated[bool, typer.Option("--resume", help=(
    "Continue the run in --out exactly where its checkpoint stopped."
))]
DeviceOpt = Annotated[str, typer.Option("--device", help=(
    "auto, cpu, cuda or cuda:N (under torchrun each process takes cuda:LOCAL_RANK)."
))]
Workers = Annotated[int, typer.Option("--workers", min=0, help=(
    "Data-loading worker processes (0 = load in the training process)."
))]
Size = Annotated[int, typer.Option("--size", min=0, help=(
    "HQ training image side in pixels; 0 = the preset's training size."
))]
DiscStart = Annotated[int, typer.Option("--disc-start", min=0, help=(
    "Step at which the PatchGAN critic and its adaptive-weight loss switch on."
))]
InitWeights = Annotated[Optional[Path], typer.Option("--init", help=(
    "An exported restorer .safetensors to start from (all but the prior's codebook and decoder), e.g."
    " the previous short GPU window's model."
))]


class PerceptualNet(str, Enum):
    """The LPIPS backbones of metrics.lpips.Net (a test keeps the two equal)."""

    alex = "alex"
    vgg = "vgg"


PrecisionOpt = Annotated[PrecisionChoice, typer.Option("--precision", help=(
    "auto = bf16 autocast where this machine runs it faster (CUDA with bf16; a CPU with AMX or"
    " AVX512-BF16 that a timed probe confirms), else fp32; or force fp32 / bf16 (fp16 is refused: no loss"
    " scaling)."
))]
Warmup = Annotated[int, typer.Option("--warmup-steps", min=0, help="Linear learning-rate warm-up over this many steps.")]
Cosine = Annotated[bool, typer.Option("--cosine/--constant", help=(
    "Cosine decay of the learning rate to 10% at --steps (default: constant after warm-up)."
))]
DiscWidth = Annotated[int, typer.Option("--disc-width", min=0, help=(
    "PatchGAN critic width (0 = follow the prior: min(64, 2 x base channels); 16 on CPUs)."
))]
AdaptiveEvery = Annotated[int, typer.Option("--adaptive-every", min=1, help=(
    "Recompute the adaptive GAN weight (an extra backward through the critic) every N steps."
))]
PerceptualOpt = Annotated[PerceptualNet, typer.Option("--perceptual", help=(
    "LPIPS backbone of the perceptual loss: alex (~1.7 GFLOP per 256 px pair) or vgg (~50)."
))]
Recipe = Annotated[Optional[str], typer.Option("--recipe", help=(
    f"Degradation recipe for the LQ inputs ({', '.join(RECIPE_NAMES)}); default face / sr-x<scale>."
))]


def _apply_max_pixels(max_pixels: int | None) -> None:
    """--max-pixels for training data: through the environment, so DataLoader workers see it too."""
    if max_pixels is not None:
        os.environ["VRRESTORE_MAX_PIXELS"] = str(max_pixels)


def _base(stage: str, data: list[Path], out: Path, preset: str | None, steps: int, batch_size: int, lr: float,
          seed: int, max_minutes: float, ckpt_every: int, device: str, workers: int, size: int,
          precision: PrecisionChoice = PrecisionChoice.auto, warmup_steps: int = 0, cosine: bool = False):  # noqa: ANN202
    from ..train.config import TrainConfig

    if precision == PrecisionChoice.fp16:
        raise UsageError("--precision fp16: training has no loss scaling; use bf16 (where this machine runs it) or fp32")
    return TrainConfig(
        stage=stage, data=tuple(str(p) for p in data), out=str(out), preset=preset or "", steps=steps,  # type: ignore[arg-type]
        batch_size=batch_size, lr=lr, seed=seed, max_minutes=max_minutes, ckpt_every=ckpt_every, device=device,
        workers=workers, size=size, precision=precision.value, warmup_steps=warmup_steps, cosine=cosine,
    )


def _run(cfg, resume: bool) -> None:  # noqa: ANN001
    from ..train.loop import train

    result = train(cfg, resume=resume)
    err_console.print(
        f"{cfg.stage}: step {result.step}/{cfg.steps} ({result.reason}), {result.seconds:.0f} s, "
        f"checkpoint {result.checkpoint}", highlight=False,
    )


def _existing(path: Path | None) -> str:
    """--init as a config string ("" = none); a missing file is a one-line error, not a traceback."""
    if path is None:
        return ""
    if not path.is_file():
        raise UsageError(f"--init {path}: no such file")
    return str(path)


def _check_recipe(recipe: str | None) -> None:
    if recipe is None:
        return
    from ..data.degradations import RECIPES

    if recipe not in RECIPES:
        raise UsageError(f"--recipe {recipe}: unknown; choose from {', '.join(RECIPES)}")


@app.command("prior")
def prior(
    data: Data,
    out: Out,
    preset: PresetOpt = None,
    steps: Steps = 100_000,
    batch_size: Batch = 4,
    lr: Lr = 0.0,
    seed: Seed = 0,
    max_minutes: MaxMinutes = 0.0,
    ckpt_every: CkptEvery = 1000,
    resume: Resume = False,
    device: DeviceOpt = "auto",
    workers: Workers = 2,
    size: Size = 0,
    disc_start: DiscStart = 2000,
    continuous_prob: Annotated[float, typer.Option("--continuous-prob", min=0.0, max=1.0, help=(
        "Share of steps that decode the encoder's pre-quant feature instead of its codes, so the decoder"
        " also handles the off-codebook features VR predicts (0 = plain VQGAN)."
    ))] = 0.0,
    init: Annotated[Optional[Path], typer.Option("--init", help=(
        "Start from a prior exported with `train export RUN/prior.pt` (fp16 safetensors; optimiser"
        " and critic start fresh)."
    ))] = None,
    precision: PrecisionOpt = PrecisionChoice.auto,
    warmup_steps: Warmup = 0,
    cosine: Cosine = False,
    disc_width: DiscWidth = 0,
    adaptive_every: AdaptiveEvery = 1,
    perceptual: PerceptualOpt = PerceptualNet.alex,
    max_pixels: MaxPixels = None,
) -> None:
    """Stage 1: train the VQGAN prior (L1 + LPIPS + PatchGAN + codebook loss) on HQ images."""
    _apply_max_pixels(max_pixels)
    cfg = _base("prior", data, out, preset, steps, batch_size, lr, seed, max_minutes, ckpt_every, device, workers, size,
                precision, warmup_steps, cosine)
    cfg.prior.disc_width = disc_width
    cfg.prior.adaptive_every = adaptive_every
    cfg.prior.perceptual_net = perceptual.value
    if not cfg.preset and not resume:
        raise UsageError("prior: --preset is required (e.g. face-s, face-tiny, sr-x4-s, sr-tiny)")
    cfg.prior.disc_start = disc_start
    cfg.prior.continuous_prob = continuous_prob
    cfg.prior.init = _existing(init)
    _run(cfg, resume)


@app.command("code")
def code(
    data: Data,
    out: Out,
    prior: Annotated[Path, typer.Option("--prior", help="The prior: its run folder or its prior.pt.")],
    head: Annotated[HeadChoice, typer.Option("--head", help=(
        "vr (Vector Regression, w @ C), vq (CodeFormer's code-index baseline), soft or direct "
        "(ablations)."
    ))] = HeadChoice.vr,
    recipe: Recipe = None,
    vr_target: Annotated[VRTarget, typer.Option("--vr-target", help=(
        "vr: feat = MSE to the HQ pre-quant feature only; oracle = also regress the weights to the "
        "minimum-norm w* = f @ pinv(C)."
    ))] = VRTarget.feat,
    oracle_weight: Annotated[float, typer.Option("--oracle-weight", min=0.0, help=(
        "Weight of the (scale-free) w-to-w* loss with --vr-target oracle."
    ))] = 1.0,
    precondition: Annotated[Precondition, typer.Option("--precondition", help=(
        "vr: none = raw w @ C; center = weights summing to one (codebook centred); whiten = centred"
        " and trained in a basis where the codebook is orthonormal."
    ))] = Precondition.center,
    vr_init: Annotated[VRInit, typer.Option("--vr-init", help=(
        "vr: zero = start at w = 0 (feature = mean(C) with center); model = the layer's default "
        "random init."
    ))] = VRInit.zero,
    preset: PresetOpt = None,
    steps: Steps = 50_000,
    batch_size: Batch = 4,
    lr: Lr = 0.0,
    seed: Seed = 0,
    max_minutes: MaxMinutes = 0.0,
    ckpt_every: CkptEvery = 1000,
    resume: Resume = False,
    device: DeviceOpt = "auto",
    workers: Workers = 2,
    size: Size = 0,
    init: InitWeights = None,
    precision: PrecisionOpt = PrecisionChoice.auto,
    warmup_steps: Warmup = 0,
    cosine: Cosine = False,
    max_pixels: MaxPixels = None,
) -> None:
    """Stage 2: train the LQ encoder, transformer and head with the prior frozen (fidelity 0)."""
    _apply_max_pixels(max_pixels)
    _check_recipe(recipe)
    cfg = _base("code", data, out, preset, steps, batch_size, lr, seed, max_minutes, ckpt_every, device, workers, size,
                precision, warmup_steps, cosine)
    cfg.code.init = str(prior)
    cfg.code.head = head.value
    cfg.code.recipe = recipe or ""
    cfg.code.vr_target = vr_target.value  # type: ignore[assignment]
    cfg.code.oracle_weight = oracle_weight
    cfg.code.precondition = precondition.value  # type: ignore[assignment]
    cfg.code.vr_init = vr_init.value
    cfg.code.init_weights = _existing(init)
    _run(cfg, resume)


@app.command("fidelity")
def fidelity(
    data: Data,
    out: Out,
    code_ckpt: Annotated[Path, typer.Option("--code", help="The code stage: its run folder or its code.pt.")],
    recipe: Recipe = None,
    preset: PresetOpt = None,
    steps: Steps = 20_000,
    batch_size: Batch = 4,
    lr: Lr = 0.0,
    seed: Seed = 0,
    max_minutes: MaxMinutes = 0.0,
    ckpt_every: CkptEvery = 1000,
    resume: Resume = False,
    device: DeviceOpt = "auto",
    workers: Workers = 2,
    size: Size = 0,
    disc_start: DiscStart = 2000,
    init: InitWeights = None,
    precision: PrecisionOpt = PrecisionChoice.auto,
    warmup_steps: Warmup = 0,
    cosine: Cosine = False,
    disc_width: DiscWidth = 0,
    adaptive_every: AdaptiveEvery = 1,
    perceptual: PerceptualOpt = PerceptualNet.alex,
    fidelity_gain: Annotated[float, typer.Option("--fidelity-gain", min=0.0, help=(
        "How the loss follows the fidelity weight w: L1 x (1 + gain*w), perceptual and GAN / (1 + gain*w); "
        "0 = the same loss at every w (the knob then learns nothing)."
    ))] = 3.0,  # FidelityOptions.fidelity_gain (a test keeps the two equal)
    texture_fade: Annotated[bool, typer.Option("--texture-fade/--no-texture-fade", help=(
        "Also scale the perceptual and GAN terms by (1 - w), so w = 1 trains on L1 alone (the PSNR end "
        "of the knob); without it w = 1 keeps 1 / (1 + gain) of them."
    ))] = False,
    fusion_lr: Annotated[float, typer.Option("--fusion-lr", min=0.0, help=(
        "Learning rate of the fusion blocks and OutputFuse, which start as the identity and are new in "
        "this stage; 0 = --lr, the rate at which the encoder and transformer are fine-tuned."
    ))] = 0.0,
    gate_init: Annotated[float, typer.Option("--gate-init", min=0.0, max=1.0, help=(
        "Where OutputFuse's input gate starts when the block is untrained: at w = 1 the first output is "
        "this blend of the decoder's output and the input (0 = the decoder's output)."
    ))] = 0.0,
    decoder_lr: Annotated[float, typer.Option("--decoder-lr", min=0.0, help=(
        "Learning rate of the prior's decoder in this stage; 0 = frozen (CodeFormer's choice). Trained, "
        "it learns to restore with the fusion blocks instead of only decoding the predicted feature."
    ))] = 0.0,
    max_pixels: MaxPixels = None,
) -> None:
    """Stage 3: train the fusion blocks (and fine-tune encoder/transformer) with image losses at a
    fidelity weight drawn per sample in [0, 1]."""
    _apply_max_pixels(max_pixels)
    _check_recipe(recipe)
    cfg = _base("fidelity", data, out, preset, steps, batch_size, lr, seed, max_minutes, ckpt_every, device, workers, size,
                precision, warmup_steps, cosine)
    cfg.fidelity.disc_width = disc_width
    cfg.fidelity.adaptive_every = adaptive_every
    cfg.fidelity.perceptual_net = perceptual.value
    cfg.fidelity.init = str(code_ckpt)
    cfg.fidelity.recipe = recipe or ""
    cfg.fidelity.disc_start = disc_start
    cfg.fidelity.fidelity_gain = fidelity_gain
    cfg.fidelity.texture_fade = texture_fade
    cfg.fidelity.fusion_lr = fusion_lr
    cfg.fidelity.gate_init = gate_init
    cfg.fidelity.decoder_lr = decoder_lr
    cfg.fidelity.init_weights = _existing(init)
    _run(cfg, resume)


@app.command("plain")
def plain(
    data: Data,
    out: Out,
    preset: Annotated[str, typer.Option("--preset", help=(
        "Face preset whose prior encoder and decoder the baseline copies (e.g. face-cpu)."
    ))],
    recipe: Recipe = None,
    steps: Steps = 100_000,
    batch_size: Batch = 4,
    lr: Lr = 0.0,
    seed: Seed = 0,
    max_minutes: MaxMinutes = 0.0,
    ckpt_every: CkptEvery = 1000,
    resume: Resume = False,
    device: DeviceOpt = "auto",
    workers: Workers = 2,
    size: Size = 0,
    precision: PrecisionOpt = PrecisionChoice.auto,
    warmup_steps: Warmup = 0,
    cosine: Cosine = False,
    init: Annotated[Optional[Path], typer.Option("--init", help=(
        "Continue from a plain baseline exported with `train export RUN/plain.pt` (optimiser starts fresh)."
    ))] = None,
    max_pixels: MaxPixels = None,
) -> None:
    """The no-prior baseline: the prior's conv encoder and decoder trained from LQ to HQ faces with L1
    (no codebook, transformer or fusion). Export it with `train export RUN/plain.pt`."""
    _apply_max_pixels(max_pixels)
    _check_recipe(recipe)
    cfg = _base("plain", data, out, preset, steps, batch_size, lr, seed, max_minutes, ckpt_every, device, workers, size,
                precision, warmup_steps, cosine)
    cfg.plain.recipe = recipe or ""
    cfg.plain.init_weights = _existing(init)
    _run(cfg, resume)


@app.command("release")
def release(
    schedules: Annotated[list[str], typer.Argument(help=(
        "The release schedules to advance, in order: face, sr, or both (`face sr`: sr gets what face leaves of the budget)."
    ))],
    minutes: Annotated[Optional[float], typer.Option("--minutes", min=1.0, help=(
        "Wall-clock budget of this command, for all schedules together; it stops, exports and evaluates"
        " before the budget ends. Required unless --status."
    ))] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Committed release folder: <unit>.safetensors (fp16) and progress.json per schedule."
    ))] = Path("release"),
    state: Annotated[Optional[Path], typer.Option("--state", help=(
        "Full training state for exact resumes on this machine (default ~/.cache/vrrestore/release)."
    ))] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help=(
        "Folder the schedule's data paths are relative to (default $VRRESTORE_DATA or ../shared/data)."
    ))] = None,
    status: Annotated[bool, typer.Option("--status", help="Print each schedule's progress and exit.")] = False,
    units: Annotated[Optional[str], typer.Option("--units", help=(
        "Train only these units, comma-separated (say fidelity-vr,fidelity-vq: the plain baseline waits);"
        " a unit whose upstream is unfinished still waits for it. Default: every unit, in schedule order."
    ))] = None,
) -> None:
    """Do the next pieces of release schedules (prior -> code-vr -> fidelity-vr -> code-vq -> fidelity-vq, then the
    face schedule's plain baseline) within one wall-clock budget."""
    import time

    from ..train import release as rel

    unknown = [s for s in schedules if s not in rel.SCHEDULES]
    if unknown:
        raise UsageError(f"release {' '.join(schedules)}: unknown schedule {unknown[0]!r}; choose from {', '.join(rel.SCHEDULES)}")
    if len(set(schedules)) != len(schedules):
        raise UsageError(f"release {' '.join(schedules)}: name each schedule once")
    if status:
        for name in schedules:
            sch = rel.SCHEDULES[name]
            if len(schedules) > 1:
                typer.echo(f"[{name}]")
            for line in rel.describe_progress(sch, rel.load_progress(out / sch.name, sch), out / sch.name):
                typer.echo(line)
        return
    if minutes is None:
        raise UsageError(f"release {' '.join(schedules)}: pass --minutes (the wall-clock budget), or --status to see the progress")
    only = tuple(u.strip() for u in units.split(",") if u.strip()) if units else ()
    known = {u.name for name in schedules for u in rel.SCHEDULES[name].units}
    if units is not None and (not only or any(u not in known for u in only)):
        bad = next((u for u in only if u not in known), units)
        raise UsageError(f"--units {units}: unknown unit {bad!r}; the units are {', '.join(sorted(known))}")
    for name in schedules:  # every schedule's data first: a later one's gap would show only hours later
        sch = rel.SCHEDULES[name]
        if not all(rel.unit_done(u, rel.load_progress(out / sch.name, sch)) for u in sch.units):
            rel.check_data(sch, data_root or rel.default_data_root())
    deadline = time.monotonic() + minutes * 60.0
    for name in schedules:
        sch = rel.SCHEDULES[name]
        out_dir = out / sch.name
        left = max(0.0, deadline - time.monotonic()) / 60.0
        tag = f"[{name}] " if len(schedules) > 1 else ""
        results = rel.run(sch, left, out_dir, state, data_root, say=lambda s, tag=tag: err_console.print(tag + s, highlight=False),
                          only=only)
        progress = rel.load_progress(out_dir, sch)
        if not results and all(rel.unit_done(u, progress) for u in sch.units if not only or u.name in only):
            which = f" among --units {units}" if only else ""
            err_console.print(f"release {name}: nothing left to train{which} in {out_dir}", highlight=False)


@app.command("publish")
def publish(
    schedule: Annotated[str, typer.Argument(help="The release schedule whose finished models to bundle: face or sr.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The release folder `train release` wrote.")] = Path("release"),
    package: Annotated[Path, typer.Option("--package", help=(
        "The vrrestore package folder of a source checkout (receives bundled/<name>.safetensors and weights.json)."
    ))] = Path("vrrestore"),
) -> None:
    """Bundle every finished model of a schedule into the package and rewrite its registry entry."""
    from ..train import release as rel

    if schedule not in rel.SCHEDULES:
        raise UsageError(f"publish {schedule}: unknown schedule; choose from {', '.join(rel.SCHEDULES)}")
    if not (package / "weights.json").is_file() or not (package / "bundled").is_dir():
        raise UsageError(f"--package {package}: not a vrrestore package folder (needs weights.json and bundled/)")
    names = rel.publish(rel.SCHEDULES[schedule], out / schedule, package, say=lambda s: err_console.print(s, highlight=False))
    if not names:
        raise UsageError(f"publish {schedule}: no finished model in {out / schedule} yet")


@app.command("wallpapers")
def wallpapers(
    dest: Annotated[Optional[Path], typer.Option("--dest", help=(
        "Folder to fill (default: the vrrestore cache's data/wallpapers, which the sr release schedule reads)."
    ))] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help=(
        "Take the photo list from this sr_hq/train_crops_manifest.csv (its deb: sources) instead of the built-in one."
    ))] = None,
) -> None:
    """Fetch the SR training photographs from Debian's wallpaper packages (apt-get download + dpkg -x).

    Keeps only the photographs, short side <= 1200 px, JPEG q95, and DEST/SOURCES.txt (package,
    version, licence). Idempotent: what is already there is not downloaded again.
    """
    import time

    from ..train.wallpapers import prepare_wallpapers

    if manifest is not None and not manifest.is_file():
        raise UsageError(f"--manifest {manifest}: no such file")
    t0 = time.monotonic()
    res = prepare_wallpapers(dest, manifest=manifest,
                             say=lambda s: err_console.print(s, highlight=False, soft_wrap=True, markup=False))
    got = ", ".join(res.downloaded) if res.downloaded else "nothing (all present)"
    err_console.print(
        f"wallpapers: {len(res.photos)} photos ({res.written} new, {res.total_bytes / 1e6:.1f} MB) in {res.dest}; "
        f"downloaded {got}; {time.monotonic() - t0:.0f} s", highlight=False, soft_wrap=True, markup=False,
    )
    if res.missing:
        raise InputError(f"{len(res.missing)} listed photo(s) not in their package: {', '.join(res.missing)}")


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help=(
        "A code.pt, fidelity.pt or plain.pt training checkpoint (-> restorer), or a prior.pt (-> VQAutoEncoder"
        " safetensors for `train prior --init`)."
    ))],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file to write.")],
    dtype: Annotated[DtypeChoice, typer.Option("--dtype", help=(
        "Storage precision of the exported weights."
    ))] = DtypeChoice.fp16,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUTPUT if it exists.")] = False,
) -> None:
    """Write the EMA weights as a self-describing vrrestore checkpoint, with a training summary."""
    from ..train.export import export as do_export

    path = do_export(checkpoint, output, dtype.value, overwrite=overwrite)
    err_console.print(f"wrote {path}", highlight=False)


def degrade(
    hq_dir: Annotated[Path, typer.Argument(help="Folder of HQ images (read recursively) or a plain .tar.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=(
        "Output folder: receives lq/ and gt/ with one PNG per input."
    ))],
    recipe: Annotated[str, typer.Option("--recipe", help=(
        f"{', '.join(RECIPE_NAMES[:-1])} or {RECIPE_NAMES[-1]}."
    ))] = "face-eval",
    seed: Annotated[int, typer.Option("--seed", help=(
        "Base seed; each image's seed also depends on its relative path, so order does not matter."
    ))] = 0,
    max_pixels: MaxPixels = None,
) -> None:
    """Write synthetic LQ/GT pairs (OUT/lq/<name>.png, OUT/gt/<name>.png), bit-identical on re-run.

    SR recipes crop the GT to a multiple of the scale first. Unreadable files are reported and skipped.
    """
    from ..data.datasets import list_images, load_image
    from ..data.degradations import degrade as do_degrade
    from ..data.degradations import derive_seed, get_recipe, recipe_scale, to_uint8
    from ..io import Image, write_image

    _apply_max_pixels(max_pixels)

    try:
        rec = get_recipe(recipe)
        refs = list_images([hq_dir])
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not refs:
        raise UsageError(f"{hq_dir}: no images found")
    scale = recipe_scale(rec)
    names: dict[str, str] = {}
    failed = 0
    for ref in refs:
        rel = ref.key.split("/", 1)[1] if "/" in ref.key else ref.key
        name = str(Path(rel).with_suffix(".png"))
        if name in names:
            err_console.print(f"[yellow]warning:[/yellow] skipping {rel}: same output name as {names[name]}", highlight=False)
            failed += 1
            continue
        names[name] = rel
        try:
            img = load_image(ref)  # refuses decompression bombs before decoding, like face/image
        except InputError as err:
            err_console.print(f"[yellow]warning:[/yellow] skipping {err}", highlight=False)
            failed += 1
            continue
        h, w = img.shape[:2]
        if h < scale or w < scale:
            err_console.print(f"[yellow]warning:[/yellow] skipping {rel}: {w}x{h} is smaller than the x{scale} recipe needs",
                              highlight=False)
            failed += 1
            continue
        gt = img[: h - h % scale, : w - w % scale]
        lq = do_degrade(gt, rec, derive_seed(seed, rel))
        for sub, arr in (("gt", gt), ("lq", lq)):
            dst = output / sub / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(Image(to_uint8(arr)), dst)  # atomic
    err_console.print(f"degrade: {len(refs) - failed} pairs written to {output} (recipe {recipe}, seed {seed})"
                      + (f", {failed} skipped" if failed else ""), highlight=False)
    if failed == len(refs):
        raise InputError(f"{hq_dir}: none of the images could be read")
