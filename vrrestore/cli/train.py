"""`vrrestore train prior|code|fidelity|export` and `vrrestore degrade`.

Training code is imported inside the command functions only, so `vrrestore face` and friends never
load it. Every stage writes RUN_DIR/<stage>.pt and RUN_DIR/log.jsonl; run them under
`torchrun --nproc_per_node N -m vrrestore train ...` for multi-GPU / multi-node training.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError, UsageError
from ._console import err_console

app = typer.Typer(
    help="Train models: `prior` (VQGAN on HQ images), `code` (LQ encoder + transformer + head), "
    "`fidelity` (fusion blocks), then `export` to an inference checkpoint.",
    no_args_is_help=True,
)


class Head(str, Enum):
    vr = "vr"
    vq = "vq"
    soft = "soft"
    direct = "direct"


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


class ExportDtype(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


Data = Annotated[list[Path], typer.Option("--data", help=(
    "HQ images: a folder (read recursively) or a plain .tar; repeat to combine."
))]
Out = Annotated[Path, typer.Option("--out", "-o", help="Run folder: receives <stage>.pt (checkpoint) and log.jsonl.")]
PresetOpt = Annotated[Optional[str], typer.Option("--preset", help=(
    "Model geometry (face-tiny, face-s, face-base, sr-tiny, sr-x4-s, sr-x2-s, sr-x4-base). "
    "Later stages default to the one the earlier stage used."
))]
Steps = Annotated[int, typer.Option("--steps", min=1, help=(
    "Train until this many optimiser steps (counting steps before a --resume)."
))]
Batch = Annotated[int, typer.Option("--batch-size", min=1, help="Images per step and process.")]
Lr = Annotated[float, typer.Option("--lr", min=0.0, help=(
    "Adam learning rate; 0 = the stage's default (prior 1e-4, code 1e-4, fidelity 5e-5)."
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
Recipe = Annotated[Optional[str], typer.Option("--recipe", help=(
    "Degradation recipe for the LQ inputs (face, face-eval, face-large, sr-x4, sr-x2, "
    "bicubic-x4, bicubic-x2); default face / sr-x<scale>."
))]


def _base(stage: str, data: list[Path], out: Path, preset: str | None, steps: int, batch_size: int, lr: float,
          seed: int, max_minutes: float, ckpt_every: int, device: str, workers: int, size: int):  # noqa: ANN202
    from ..train.config import TrainConfig

    return TrainConfig(
        stage=stage, data=tuple(str(p) for p in data), out=str(out), preset=preset or "", steps=steps,  # type: ignore[arg-type]
        batch_size=batch_size, lr=lr, seed=seed, max_minutes=max_minutes, ckpt_every=ckpt_every, device=device,
        workers=workers, size=size,
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
) -> None:
    """Stage 1: train the VQGAN prior (L1 + LPIPS-VGG + PatchGAN + codebook loss) on HQ images."""
    cfg = _base("prior", data, out, preset, steps, batch_size, lr, seed, max_minutes, ckpt_every, device, workers, size)
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
    head: Annotated[Head, typer.Option("--head", help=(
        "vr (Vector Regression, w @ C), vq (CodeFormer's code-index baseline), soft or direct "
        "(ablations)."
    ))] = Head.vr,
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
) -> None:
    """Stage 2: train the LQ encoder, transformer and head with the prior frozen (fidelity 0)."""
    _check_recipe(recipe)
    cfg = _base("code", data, out, preset, steps, batch_size, lr, seed, max_minutes, ckpt_every, device, workers, size)
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
) -> None:
    """Stage 3: train the fusion blocks (and fine-tune encoder/transformer) with image losses at a
    fidelity weight drawn per sample in [0, 1]."""
    _check_recipe(recipe)
    cfg = _base("fidelity", data, out, preset, steps, batch_size, lr, seed, max_minutes, ckpt_every, device, workers, size)
    cfg.fidelity.init = str(code_ckpt)
    cfg.fidelity.recipe = recipe or ""
    cfg.fidelity.disc_start = disc_start
    cfg.fidelity.init_weights = _existing(init)
    _run(cfg, resume)


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help=(
        "A code.pt or fidelity.pt training checkpoint (-> restorer), or a prior.pt (-> VQAutoEncoder"
        " safetensors for `train prior --init`)."
    ))],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file to write.")],
    dtype: Annotated[ExportDtype, typer.Option("--dtype", help=(
        "Storage precision of the exported weights."
    ))] = ExportDtype.fp16,
) -> None:
    """Write the EMA weights as a self-describing vrrestore checkpoint, with a training summary."""
    from ..train.export import export as do_export

    path = do_export(checkpoint, output, dtype.value)
    err_console.print(f"wrote {path}", highlight=False)


def degrade(
    hq_dir: Annotated[Path, typer.Argument(help="Folder of HQ images (read recursively) or a plain .tar.")],
    output: Annotated[Path, typer.Option("--output", "-o", help=(
        "Output folder: receives lq/ and gt/ with one PNG per input."
    ))],
    recipe: Annotated[str, typer.Option("--recipe", help=(
        "face, face-eval, face-large, sr-x4, sr-x2, bicubic-x4 or bicubic-x2."
    ))] = "face-eval",
    seed: Annotated[int, typer.Option("--seed", help=(
        "Base seed; each image's seed also depends on its relative path, so order does not matter."
    ))] = 0,
) -> None:
    """Write synthetic LQ/GT pairs (OUT/lq/<name>.png, OUT/gt/<name>.png), bit-identical on re-run.

    SR recipes crop the GT to a multiple of the scale first. Unreadable files are reported and skipped.
    """
    import cv2

    from ..data.datasets import list_images, read_image
    from ..data.degradations import degrade as do_degrade
    from ..data.degradations import derive_seed, get_recipe, recipe_scale, to_uint8

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
        img = read_image(ref)
        h, w = (img.shape[:2] if img is not None else (0, 0))
        if img is None or h < scale or w < scale:
            err_console.print(f"[yellow]warning:[/yellow] skipping unreadable image {rel}", highlight=False)
            failed += 1
            continue
        gt = img[: h - h % scale, : w - w % scale]
        lq = do_degrade(gt, rec, derive_seed(seed, rel))
        for sub, arr in (("gt", gt), ("lq", lq)):
            dst = output / sub / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(dst), to_uint8(arr)[..., ::-1]):
                raise InputError(f"{dst}: could not write the image")
    err_console.print(f"degrade: {len(refs) - failed} pairs written to {output} (recipe {recipe}, seed {seed})"
                      + (f", {failed} skipped" if failed else ""), highlight=False)
    if failed == len(refs):
        raise InputError(f"{hq_dir}: none of the images could be read")
