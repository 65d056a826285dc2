"""Release schedules: how the default models are trained, cut into pieces that fit one session.

    vrrestore train release face --minutes 130

does the next piece of the ``face`` schedule within the wall-clock budget and stops cleanly
before it: it resumes the unit (prior, code-vr, fidelity-vr, code-vq, fidelity-vq, and for faces
the no-prior ``plain`` baseline, trained for the VR chain's training time) that is not finished
yet, exports the EMA weights of what it trained (fp16 safetensors), evaluates them on held-out
images and writes ``progress.json`` next to them.

Two places, two lifetimes:
- ``--state`` (default ``~/.cache/vrrestore/release``): full training state (optimisers, EMA, RNG,
  data position) for an exact resume when the same machine comes back. Large; never committed.
- ``--out`` (default ``release/``, committed): per unit the exported weights and the progress
  record. On a new machine a unit continues from these (weights exact; optimiser moments fresh;
  learning rate, critic start and data order continue from the recorded step).

A unit records the sha256 of the file it started from; if that file changes (say a longer prior
was trained), everything downstream of it is trained again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import cache_dir
from ..checkpoint import read_metadata
from ..errors import UsageError
from ..models import preset
from ..models.config import config_to_dict
from ..models.descriptor import architecture_of
from ..precision import cpu_bf16_flags, cpu_model
from ..weights import config_overrides
from . import ckpt
from .config import (
    CodeOptions,
    FidelityOptions,
    PlainOptions,
    PriorOptions,
    Stage,
    TrainConfig,
)
from .files import load_prior_file
from .stages import default_recipe


def default_state() -> Path:
    """Full training states live in the cache ($VRRESTORE_CACHE/release), outside the work tree."""
    return cache_dir("release")
RESERVE_S = 240.0  # kept back from the budget for the last export, evaluation and progress file
MIN_PIECE_S = 300.0  # a unit is not started or resumed with less time than this left


@dataclass(frozen=True)
class Unit:
    """One trained piece of a schedule: a stage, and for code/fidelity the head it trains.

    ``match`` names units whose training seconds, summed, are this unit's budget (the no-prior
    baseline gets the training wall-seconds of the VR chain, on the same kind of machine); ``steps``
    is then only a cap, and the learning rate should be constant (``cosine=False``) since the number
    of steps is not known in advance.
    """

    stage: Stage
    steps: int
    head: str = ""
    lr: float = 0.0  # 0 = the stage default
    warmup_steps: int = 0
    cosine: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # fields of Prior/Code/Fidelity/PlainOptions
    match: tuple[str, ...] = ()
    # Raised when the unit's training changes in code (a new loss): a record of another revision is
    # stale and retrained, as if its upstream had changed. Records without one are revision 1.
    revision: int = 1

    @property
    def name(self) -> str:
        return self.stage if self.stage in ("prior", "plain") else f"{self.stage}-{self.head}"

    @property
    def upstream(self) -> str:
        """The unit whose exported weights this one starts from ('' for the prior and the baseline)."""
        return {"prior": "", "plain": "", "code": "prior", "fidelity": f"code-{self.head}"}[self.stage]

    def in_chain(self, head: str) -> bool:
        """Whether the model released for ``head`` is built from this unit."""
        return self.stage == "prior" or self.head == head


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    preset: str
    data: tuple[str, ...]  # relative to the data root, absolute, or "cache:SUB/DIR" (see data_path)
    eval_data: str  # HQ held-out images, relative to the data root
    eval_recipe: str
    batch_size: int
    seed: int
    units: tuple[Unit, ...]
    release: dict[str, str]  # head -> registry name of the model it becomes
    eval_images: int = 40
    # degradation recipe per stage that sees LQ inputs (code, fidelity, plain); a stage not named
    # here uses the task's default. A record trained with another recipe is stale.
    recipes: dict[str, str] = field(default_factory=dict)
    licence: str = ""  # of the trained weights (follows the training data's terms)
    data_note: str = ""  # what the registry says about the training data

    def chain(self, head: str) -> list[Unit]:
        return [u for u in self.units if u.in_chain(head)]

    def recipe(self, unit: Unit) -> str:
        """The unit's training recipe ("" = the task default; the prior sees HQ images only)."""
        return "" if unit.stage == "prior" else self.recipes.get(unit.stage, "")

    def trained_recipe(self, rec: dict[str, Any]) -> str:
        """The recipe a progress record of a non-prior unit trained with, by name (the record keeps
        only a non-default one)."""
        return str(rec.get("recipe") or default_recipe(preset(self.preset)))

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)


_PRIOR_OPTS = dict(disc_width=16, adaptive_every=4, continuous_prob=0.5, perceptual_net="alex")
_FID_OPTS = dict(disc_width=16, adaptive_every=4, perceptual_net="alex", disc_start=0, gan_weight=0.1, fusion_lr=5e-4,
                 gate_init=0.5, texture_fade=True)


def release_units(prior: int, code: int, fidelity: int, disc_start: int) -> tuple[Unit, ...]:
    """The five units of a release schedule. VR's chain comes first, so that a session cut short still
    ships the default model; the VQ twin gets the same steps, learning rates and options (the equal
    budget of the VR-vs-VQ comparison is built in here, not repeated per schedule)."""
    heads = [(stage, steps, head) for head in ("vr", "vq") for stage, steps in (("code", code), ("fidelity", fidelity))]
    rates = {"code": (5e-4, 100, {}), "fidelity": (1e-4, 50, _FID_OPTS)}
    # fidelity 2: losses follow the fidelity weight (fidelity_gain); code 2 / fidelity 3: the CPU presets
    # gained OutputFuse (the code stage writes the restorer's geometry, so both train again); fidelity 4:
    # the fusion blocks and OutputFuse learn at 5e-4 (fusion_lr), 5x the fine-tuning rate: at 1e-4 for
    # 800 steps OutputFuse barely left the identity (mean |last-layer weight| 0.004); fidelity 5:
    # OutputFuse's gate starts at 0.5 (gate_init), since at 5e-4 it still crept (+0.03 in 250 steps);
    # fidelity 6: w = 1 trains on L1 alone (texture_fade), since with a quarter of the perceptual and GAN
    # terms left there, 800 face steps took w = 1 from its start (26.3 dB, the 50/50 blend) to 25.9;
    # fidelity 7: the CPU presets' OutputFuse gained residual blocks (it had learned no more than a fixed
    # blend); the code stage, which never trains OutputFuse, keeps its files (files.load_restorer_weights);
    # fidelity 8: revision 7 built its restorer from the code stage's file, whose config still had the
    # two-conv block, so its units trained the old OutputFuse; the stage now takes the preset's geometry
    # over an untrained block (files.output_fuse_as_preset)
    revision = {"code": 2, "fidelity": 8}
    return (
        Unit("prior", prior, lr=2e-4, warmup_steps=100, options=dict(_PRIOR_OPTS, disc_start=disc_start)),
        *(Unit(stage, steps, head, lr=rates[stage][0], warmup_steps=rates[stage][1], options=dict(rates[stage][2]),  # type: ignore[arg-type]
               revision=revision[stage])
          for stage, steps, head in heads),
    )


# The no-prior baseline (models/plain.py) for as many training seconds as the VR chain took; last,
# so it never delays the models that ship. L1 only at a constant rate (its step count is not known).
PLAIN_UNIT = Unit("plain", 1_000_000, lr=2e-4, warmup_steps=100, cosine=False, match=("prior", "code-vr", "fidelity-vr"))

SCHEDULES: dict[str, Schedule] = {
    "face": Schedule(
        name="face", task="face", preset="face-cpu",
        data=("packs/faces_train_256.tar", "faces_hq/train"),
        eval_data="faces_hq/test/london_canada_256", eval_recipe="face-eval",
        batch_size=8, seed=0,
        units=(*release_units(prior=7500, code=1000, fidelity=800, disc_start=2500), PLAIN_UNIT),
        # The fidelity stage owns the input path (fusion blocks, OutputFuse's gate on the input), so it
        # is where the model learns to leave a sharp face alone: it sees a fifth of the faces clean
        # (face-mix). The code stage and the plain baseline keep the blind recipe: face-eval scores
        # only degraded faces, where a clean share can only cost the VR chain, not the baseline.
        recipes={"fidelity": "face-mix"},
        release={"vr": "vr-face-s", "vq": "vq-face-s"},
        licence="other",
        data_note=(
            "2,356 aligned 256 px faces (MEBeauty 2,152, Face Research Lab London 172 + Canada 32 at CC BY 4.0, "
            "horizontal flips) with synthetic degradations, per stage as metrics.recipes says: recipe 'face' (blur, "
            "x1-x12 downscale, noise, JPEG) or 'face-mix' ('face' for four fifths of the faces, the clean face for a "
            "fifth, half of those JPEG-compressed at quality 75-95). "
            "Research use: MEBeauty states no licence, so these weights are for research and evaluation."
        ),
    ),
    "sr": Schedule(
        name="sr", task="sr", preset="sr-x4-cpu",
        # the crops pack, and the full photographs `vrrestore train wallpapers` puts in the cache (random
        # 256 px crops of both at training time)
        data=("packs/sr_train_480.tar", "cache:data/wallpapers"),
        # training mixes the blind two-pass chain with clean bicubic inputs (sr-x4-mix: a quarter of the
        # images, so clean photos are not smoothed); the held-out check degrades Set14 HR with the blind
        # chain alone (sr-x4) at seed 0
        eval_data="sr_hq/Set14/HR", eval_recipe="sr-x4",
        recipes={"code": "sr-x4-mix", "fidelity": "sr-x4-mix"},
        batch_size=8, seed=0,
        units=release_units(prior=4000, code=1200, fidelity=1500, disc_start=2500),
        release={"vr": "vr-sr-x4-s", "vq": "vq-sr-x4-s"},
        licence="other",
        data_note=(
            "315 480 px HR crops (Sun-Hays80 147 via SelfExSR, no licence file; Debian wallpaper packages 168) plus "
            "the 30 Debian wallpaper photographs those 168 crops came from, whole (plasma-workspace-wallpapers and "
            "mate-backgrounds: GPL-2+; lomiri-wallpapers-16.04/-20.04: CC BY 4.0, CC BY-SA 3.0/4.0 or CC0 per file), "
            "short side <= 1200 px; "
            "random 256 px crops with horizontal flips and synthetic x4 degradations, per stage as metrics.recipes "
            "says (recipe 'sr-x4-mix': for three "
            "quarters of the crops two passes of blur, resize, noise and JPEG, for a quarter the clean bicubic "
            "downscale, half of those JPEG-compressed at quality 75-95). Research use: the Sun-Hays80 images state "
            "no licence."
        ),
    ),
}


def default_data_root() -> Path:
    return Path(os.environ.get("VRRESTORE_DATA", "../shared/data"))


CACHE_PREFIX = "cache:"
# What fills a cache data entry, for the error when it is missing.
CACHE_DATA_MAKERS = {"data/wallpapers": "vrrestore train wallpapers"}


def data_path(entry: str, data_root: Path, check: bool = False) -> Path:
    """A schedule data entry as a path: ``cache:SUB/DIR`` is under the vrrestore cache
    (``cache_dir(SUB, DIR)``, where commands such as ``vrrestore train wallpapers`` put rebuilt data),
    an absolute path is used as it is, anything else is relative to ``data_root``. With ``check``, a
    missing cache entry is a one-line UsageError saying which command fills it."""
    if entry.startswith(CACHE_PREFIX):
        sub = entry[len(CACHE_PREFIX):].strip("/")
        path = cache_dir(*Path(sub).parts)
        if check and not path.exists():
            maker = CACHE_DATA_MAKERS.get(sub)
            how = f"run `{maker}` first" if maker else "put the data there (or set $VRRESTORE_CACHE)"
            raise UsageError(f"{path}: not found (data entry {entry!r}); {how}")
        return path
    p = Path(entry)
    return p if p.is_absolute() else data_root / p


def check_data(schedule: Schedule, data_root: Path) -> None:
    """A one-line UsageError for the first training or held-out data entry that is missing, before
    any training starts (`release face sr` would otherwise find sr's data missing after face's hours)."""
    for entry in (*schedule.data, schedule.eval_data):
        path = data_path(entry, data_root, check=True)
        if not path.exists():
            raise UsageError(f"{path}: not found (data entry {entry!r} of the {schedule.name} schedule); "
                             "pass --data-root or set $VRRESTORE_DATA to the folder that holds it")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "bf16_flags": cpu_bf16_flags(), "threads": torch.get_num_threads(), "torch": torch.__version__}


# ------------------------------------------------------------------------------------------------
# progress file


def load_progress(out_dir: Path, schedule: Schedule) -> dict[str, Any]:
    path = out_dir / "progress.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("schedule") != schedule.name:
            raise UsageError(f"{path}: progress of schedule {data.get('schedule')!r}, not {schedule.name!r}")
        return data
    return {"schedule": schedule.name, "task": schedule.task, "preset": schedule.preset, "units": {}}


def save_progress(out_dir: Path, progress: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "progress.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(progress, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def match_seconds(unit: Unit, progress: dict[str, Any]) -> float:
    """The training-seconds budget of a ``match`` unit: what its matched units have taken so far."""
    return sum(float(progress["units"].get(n, {}).get("seconds", 0.0)) for n in unit.match)


# A match unit stops at the first step past its budget; a unit matching a chain that later trains
# longer (a longer prior) is resumed for the difference.
MATCH_TOLERANCE_S = 30.0


def unit_done(unit: Unit, progress: dict[str, Any]) -> bool:
    rec = progress["units"].get(unit.name)
    if not rec:
        return False
    if int(rec.get("step", 0)) >= unit.steps:
        return True
    if unit.match:
        matched = all(n in progress["units"] for n in unit.match)
        return matched and float(rec.get("seconds", 0.0)) >= match_seconds(unit, progress) - MATCH_TOLERANCE_S
    return False


def unit_current(schedule: Schedule, unit: Unit, progress: dict[str, Any], out_dir: Path) -> bool:
    """Whether the unit's record was trained from the upstream file that is there now, and that one
    from its own, up to the prior (a longer prior makes every unit below it stale until the runner
    reaches and retrains it)."""
    rec = progress["units"].get(unit.name, {})
    if _stale_reason(schedule, unit, rec, out_dir, missing_upstream_is_stale=True):
        return False
    return not unit.upstream or unit_current(schedule, schedule.unit(unit.upstream), progress, out_dir)


def _stale_reason(schedule: Schedule, unit: Unit, rec: dict[str, Any], out_dir: Path, missing_upstream_is_stale: bool) -> str:
    """Why this unit's own record is out of date ("" if it is not): another revision, another
    degradation recipe, or an upstream file other than the one it was trained from."""
    if int(rec.get("revision", 1)) != unit.revision:
        return f"its training changed (revision {rec.get('revision', 1)} -> {unit.revision})"
    if rec.get("recipe", "") != (recipe := schedule.recipe(unit)):
        return f"its degradation recipe changed ({rec.get('recipe') or 'default'} -> {recipe or 'default'})"
    if not unit.upstream:
        return ""
    up = out_dir / f"{unit.upstream}.safetensors"
    if not up.is_file():
        return f"{up.name} is missing" if missing_upstream_is_stale else ""
    return f"{up.name} changed since this unit started" if rec.get("upstream_sha256") != sha256_file(up) else ""


# ------------------------------------------------------------------------------------------------
# stage configs and the states they start from


def unit_config(schedule: Schedule, unit: Unit, run_dir: Path, data_root: Path) -> TrainConfig:
    # Absolute data paths: a resumed state keeps its saved data (loop._adopt_saved), and a relative one
    # (the default root is ../shared/data) broke a resume from another working directory.
    root = data_root.resolve()
    cfg = TrainConfig(
        stage=unit.stage, data=tuple(str(data_path(d, root, check=True)) for d in schedule.data), out=str(run_dir),
        preset=schedule.preset, steps=unit.steps, batch_size=schedule.batch_size, lr=unit.lr, seed=schedule.seed,
        workers=1, warmup_steps=unit.warmup_steps, cosine=unit.cosine, ckpt_every=250, progress=False,
    )
    opts_cls = {"prior": PriorOptions, "code": CodeOptions, "fidelity": FidelityOptions, "plain": PlainOptions}[unit.stage]
    opts = getattr(cfg, unit.stage)
    if recipe := schedule.recipe(unit):
        opts = dataclasses.replace(opts, recipe=recipe)
    opts = dataclasses.replace(opts, **unit.options)
    if unit.stage == "code":
        opts = dataclasses.replace(opts, head=unit.head)
    assert isinstance(opts, opts_cls)
    setattr(cfg, unit.stage, opts)
    return cfg


def prior_state_from_file(path: Path) -> dict[str, Any]:
    """A prior-stage init state (what CodeStage reads from prior.pt) from an exported prior."""
    vq, meta = load_prior_file(path)
    summary = json.loads(meta.get("training", "{}") or "{}")
    return {"model": {"architecture": "VQAutoEncoder", "config": config_to_dict(vq.cfg), "preset": meta.get("preset", "")},
            "ema": {"model": vq.state_dict()}, "history": [], "summary": summary}


def code_state_from_files(code_file: Path, prior_file: Path, code_cfg: TrainConfig) -> dict[str, Any]:
    """A code-stage init state (what FidelityStage reads from code.pt) from exported weights: the
    restorer, and the prior whose encoder makes the HQ feature targets."""
    from ..checkpoint import load_checkpoint, read_metadata
    desc = load_checkpoint(code_file)
    model = desc.model.float()
    vq, _ = load_prior_file(prior_file)
    arch, cfg = architecture_of(model)
    training = json.loads(read_metadata(code_file).get("training", "{}") or "{}")
    history = [s for s in training.get("stages", [])[:-1] if s]
    return {
        "config": code_cfg.to_dict(),
        "model": {"architecture": arch, "config": cfg, "preset": code_cfg.preset, "precondition": "none"},
        "ema": {"model": model.state_dict()}, "frozen": {"prior": vq.state_dict()},
        "history": history, "summary": {k: v for k, v in training.items() if k not in ("stages", "total_seconds", "source")},
    }


# ------------------------------------------------------------------------------------------------
# held-out evaluation


def _eval_images(schedule: Schedule, data_root: Path) -> list[Path]:
    from ..benchmark import list_images

    folder = data_root / schedule.eval_data
    if not folder.is_dir():
        raise UsageError(f"{folder}: held-out images not found; pass --data-root (the folder holding {schedule.eval_data})")
    return list_images(folder)[: schedule.eval_images]


@torch.inference_mode()
def evaluate_prior(file: Path, schedule: Schedule, data_root: Path) -> dict[str, float]:
    """Observation 1 of the paper on our prior: PSNR/SSIM of decoder(HQ encoder feature) and of
    decoder(its quantized feature), on held-out HQ images; and how many codes those images use (a
    VQ head can only ever pick among the codes in use, a VR head combines all of them)."""
    from ..benchmark import read_hq
    from ..metrics.fidelity import psnr, ssim
    vq, _ = load_prior_file(file)
    vq.eval()
    rows: dict[str, list[float]] = {"psnr_continuous": [], "ssim_continuous": [], "psnr_quantized": [], "ssim_quantized": []}
    used: set[int] = set()
    for p in _eval_images(schedule, data_root):
        gt = read_hq(p)
        s = vq.cfg.img_size
        if schedule.task == "face" and gt.shape[:2] != (s, s):
            import cv2

            gt = np.clip(cv2.resize(gt, (s, s), interpolation=cv2.INTER_AREA), 0, 1)
        m = vq.cfg.downsample
        gt = gt[: gt.shape[0] - gt.shape[0] % m, : gt.shape[1] - gt.shape[1] % m]
        x = torch.from_numpy(np.ascontiguousarray(gt.transpose(2, 0, 1)))[None].float() * 2 - 1
        z = vq.encode(x)
        q = vq.quantize(z)
        assert q.indices is not None
        used.update(q.indices.flatten().tolist())
        for kind, feat in (("continuous", z), ("quantized", q.feat)):
            out = ((vq.decode(feat) + 1) * 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
            rows[f"psnr_{kind}"].append(psnr(out, gt))
            rows[f"ssim_{kind}"].append(ssim(out, gt))
    return ({k: round(float(np.mean(v)), 4) for k, v in rows.items()}
            | {"images": len(rows["psnr_quantized"]), "codes_used": len(used), "codebook_size": vq.cfg.codebook_size})


def evaluate_restorer(file: Path, schedule: Schedule, data_root: Path, fidelities: tuple[float, ...]) -> dict[str, Any]:
    """PSNR/SSIM (and LPIPS-alex when available) on held-out images degraded with the schedule's
    evaluation recipe at seed 0, for each fidelity weight; the LQ input's scores alongside (for SR
    its MATLAB-bicubic upscale), so every record says what the model gains."""
    from ..benchmark import baseline_output, run_model, synthetic_dataset
    from ..checkpoint import load_checkpoint
    from ..metrics.fidelity import psnr, ssim

    ds = synthetic_dataset(data_root / schedule.eval_data, schedule.eval_recipe, seed=0, limit=schedule.eval_images,
                           task=schedule.task)  # type: ignore[arg-type]
    desc = load_checkpoint(file)
    desc.model.float()
    y, crop = (True, ds.scale) if schedule.task == "sr" else (False, 0)
    lp = _lpips()
    out: dict[str, Any] = {"images": len(ds.samples), "recipe": schedule.eval_recipe}
    baseline = "bicubic" if schedule.task == "sr" else "input"
    runs: list[tuple[str, Callable[[np.ndarray, tuple[int, int]], np.ndarray]]] = [
        (f"w{w:g}", lambda lq, size, w=w: run_model(desc, lq, size, w, "auto")) for w in fidelities]
    runs.append((baseline, lambda lq, size: baseline_output(baseline, lq, size)))
    for key, restore in runs:
        ps, ss, ls = [], [], []
        for smp in ds.samples:
            img = restore(smp.lq, smp.gt.shape[:2])
            ps.append(psnr(img, smp.gt, crop, y))
            ss.append(ssim(img, smp.gt, crop, y))
            if lp is not None:
                ls.append(lp(img, smp.gt))
        out[key] = {"psnr": round(float(np.mean(ps)), 3), "ssim": round(float(np.mean(ss)), 4),
                    **({"lpips_alex": round(float(np.mean(ls)), 4)} if ls else {})}
    return out


def _lpips() -> Callable[[np.ndarray, np.ndarray], float] | None:
    try:
        from ..metrics.lpips import LPIPSUnavailable, load_lpips
    except ImportError:  # pragma: no cover
        return None
    try:
        net = load_lpips("alex")
    except LPIPSUnavailable:
        return None

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        ta = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float()
        tb = torch.from_numpy(np.ascontiguousarray(b.transpose(2, 0, 1)))[None].float()
        with torch.inference_mode():
            return float(net(ta, tb)[0])

    return dist


# ------------------------------------------------------------------------------------------------
# the runner


@dataclass
class PieceResult:
    unit: str
    start_step: int
    step: int
    reason: str
    seconds: float


def run(
    schedule: Schedule, minutes: float, out_dir: Path, state_root: Path | None = None,
    data_root: Path | None = None, say: Callable[[str], None] = print, only: tuple[str, ...] = (),
) -> list[PieceResult]:
    """Train the next unfinished units of ``schedule`` within ``minutes`` of wall-clock time."""
    from .loop import train

    data_root = data_root or default_data_root()
    state_root = state_root or default_state()
    t_end = time.monotonic() + minutes * 60.0
    progress = load_progress(out_dir, schedule)
    results: list[PieceResult] = []
    for unit in schedule.units:
        if only and unit.name not in only:
            continue
        _invalidate_if_stale(schedule, unit, progress, out_dir, state_root, say)
        if unit_done(unit, progress):
            continue
        up = unit.upstream
        if up and not unit_done(schedule.unit(up), progress):
            say(f"{unit.name}: waiting for {up} to finish")
            continue
        waiting = [n for n in unit.match if not unit_done(schedule.unit(n), progress)]
        if waiting:
            say(f"{unit.name}: waiting for {', '.join(waiting)} to finish (its budget is their training time)")
            continue
        left = t_end - time.monotonic() - RESERVE_S
        if left < MIN_PIECE_S:
            say(f"{unit.name}: {max(0.0, left) / 60:.1f} min left in the budget; stopping here")
            break
        results.append(_piece(schedule, unit, progress, out_dir, state_root, data_root, left, train, say))
        save_progress(out_dir, progress)
        if results[-1].reason != "done" and not unit_done(unit, progress):
            break
    return results


def _invalidate_if_stale(
    schedule: Schedule, unit: Unit, progress: dict[str, Any], out_dir: Path, state_root: Path, say: Callable[[str], None],
) -> None:
    rec = progress["units"].get(unit.name)
    if not rec:
        return
    why = _stale_reason(schedule, unit, rec, out_dir, missing_upstream_is_stale=False)  # a missing upstream is trained first
    if not why:
        return
    say(f"{unit.name}: {why}; training it again")
    progress["units"].pop(unit.name)
    shutil.rmtree(state_root / schedule.name / unit.name, ignore_errors=True)
    (out_dir / f"{unit.name}.safetensors").unlink(missing_ok=True)
    save_progress(out_dir, progress)


def _piece(
    schedule: Schedule, unit: Unit, progress: dict[str, Any], out_dir: Path, state_root: Path, data_root: Path,
    seconds_left: float, train: Callable[..., Any], say: Callable[[str], None],
) -> PieceResult:
    from .export import export

    run_dir = state_root / schedule.name / unit.name
    cfg = unit_config(schedule, unit, run_dir, data_root)
    rec: dict[str, Any] = progress["units"].get(unit.name) or {}
    committed = out_dir / f"{unit.name}.safetensors"
    ckpt_file = ckpt.stage_file(run_dir, unit.stage)
    resume = ckpt_file.is_file()
    upstream_file = out_dir / f"{unit.upstream}.safetensors" if unit.upstream else None
    # What the local state was trained as: a state of another revision, recipe or upstream file (say,
    # one interrupted before its first export, so no record marks it stale) is not resumed.
    identity = {"revision": unit.revision, "recipe": schedule.recipe(unit),
                "upstream_sha256": sha256_file(upstream_file) if upstream_file is not None else ""}
    marker = run_dir / "unit.json"
    if resume and (not marker.is_file() or json.loads(marker.read_text()) != identity):
        say(f"{unit.name}: the local state was trained as another revision, recipe or upstream; starting it again")
        shutil.rmtree(run_dir)
        resume = False
    prev_seconds = 0.0
    if resume:
        state = ckpt.load(ckpt_file, unit.stage)
        if int(state["step"]) < int(rec.get("step", 0)):  # the committed weights are further along
            say(f"{unit.name}: the local state (step {state['step']}) is behind {committed.name} (step {rec['step']}); using the latter")
            shutil.rmtree(run_dir)
            resume = False
        else:
            prev_seconds = float(state["seconds"])
        del state
    start_step = 0
    if not resume and rec.get("step") and committed.is_file():
        start_step = int(rec["step"])
        if unit.stage == "prior":
            cfg.prior.init = str(committed)
        elif unit.stage == "plain":
            cfg.plain.init_weights = str(committed)
        elif unit.stage == "code":
            cfg.code.init_weights = str(committed)
        else:
            cfg.fidelity.init_weights = str(committed)
        cfg.start_step = start_step
        say(f"{unit.name}: continuing from {committed.name} at step {start_step} (new machine: optimiser state restarts)")
    init_state = None
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(identity))
    if unit.stage == "code":
        assert upstream_file is not None
        init_state = prior_state_from_file(upstream_file)
        cfg.code.init = str(upstream_file)
    elif unit.stage == "fidelity":
        assert upstream_file is not None
        code_cfg = unit_config(schedule, schedule.unit(unit.upstream), state_root / schedule.name / unit.upstream, data_root)
        init_state = code_state_from_files(upstream_file, out_dir / "prior.safetensors", code_cfg)
        cfg.fidelity.init = str(upstream_file)
    # A continuation from the committed weights (new machine) starts the loop's seconds at 0; what
    # the record held then is the base of every later count, exact resumes of that run included.
    base_s = float(rec.get("seconds_base", 0.0)) if resume else float(rec.get("seconds", 0.0)) if start_step else 0.0
    budget = seconds_left
    if unit.match:  # what is left of the matched training time, counted as the record counts it
        done_s = base_s + (prev_seconds if resume else 0.0)
        budget = min(budget, max(0.0, match_seconds(unit, progress) - done_s))
    cfg.max_minutes = (prev_seconds + budget) / 60.0
    at = "its checkpoint" if resume else f"step {rec.get('step', 0)}"
    goal = f"{match_seconds(unit, progress) / 60:.1f} training minutes" if unit.match else f"step {unit.steps}"
    say(f"{unit.name}: training from {at} towards {goal} for at most {budget / 60:.1f} min")
    t0 = time.monotonic()
    result = train(cfg, resume=resume, init_state=init_state)
    wall = time.monotonic() - t0
    export(result.checkpoint, committed, "fp16")
    say(f"{unit.name}: step {result.step}/{unit.steps} ({result.reason}); exported {committed}")
    machines = list(rec.get("machines", []))
    m = machine()
    if m not in machines:
        machines.append(m)
    threads = torch.get_num_threads()
    seconds = result.seconds + base_s  # the run's own count (across exact resumes) + the base above
    rec.update({
        "stage": unit.stage, "head": unit.head, "step": result.step, "steps": unit.steps, "batch_size": schedule.batch_size,
        "images_seen": result.step * schedule.batch_size,
        "seconds": round(seconds, 1), "seconds_base": round(base_s, 1),
        "cpu_hours": round(seconds * threads / 3600.0, 3),
        "file": committed.name, "sha256": sha256_file(committed), "size_bytes": committed.stat().st_size,
        "machines": machines, "updated": _now(), "revision": unit.revision,
    })
    if upstream_file is not None:
        rec["upstream_sha256"] = sha256_file(upstream_file)
    if recipe := schedule.recipe(unit):
        rec["recipe"] = recipe
    else:
        rec.pop("recipe", None)
    try:
        rec["eval"] = evaluate_unit(unit, committed, schedule, data_root)
        rec.pop("eval_error", None)
    except (UsageError, OSError, RuntimeError, ValueError) as err:  # the weights are saved; say why numbers are missing
        rec["eval_error"] = f"{type(err).__name__}: {err}"
        say(f"{unit.name}: held-out evaluation failed ({rec['eval_error']}); weights and progress are kept")
    progress["units"][unit.name] = rec
    say(f"{unit.name}: held-out {json.dumps(rec.get('eval', {}))}")
    return PieceResult(unit.name, start_step, result.step, result.reason, wall)


def evaluate_unit(unit: Unit, file: Path, schedule: Schedule, data_root: Path) -> dict[str, Any]:
    if unit.stage == "prior":
        return evaluate_prior(file, schedule, data_root)
    # the code stage has no fusion yet, the plain baseline no knob: one weight tells all
    return evaluate_restorer(file, schedule, data_root, (0.0,) if unit.stage in ("code", "plain") else (0.0, 0.5, 1.0))


def describe_progress(schedule: Schedule, progress: dict[str, Any], out_dir: Path | None = None) -> list[str]:
    """One line per unit: steps (or minutes) done / planned, "stale" when it was trained from an older
    upstream file than the one in ``out_dir`` or is of another revision (it will be trained again), and
    the latest held-out numbers."""
    lines = []
    for u in schedule.units:
        rec = progress["units"].get(u.name, {})
        if u.match:
            goal = f"{rec.get('seconds', 0.0) / 60:.0f}/{match_seconds(u, progress) / 60:.0f} min"
        else:
            goal = f"{rec.get('step', 0)}/{u.steps}"
        stale = "stale" if rec and out_dir is not None and not unit_current(schedule, u, progress, out_dir) else ""
        lines.append(f"{u.name:<12} {goal:>13} {stale:<5} {json.dumps(rec.get('eval', {}))}")
    return lines



# ------------------------------------------------------------------------------------------------
# publishing: bundle finished models into the package and write their registry entries


def publish(schedule: Schedule, out_dir: Path, package_dir: Path, say: Callable[[str], None] = print) -> list[str]:
    """For every head whose whole chain is done: copy its fidelity weights to
    ``package_dir/bundled/<name>.safetensors`` and rewrite the registry entry from the progress file
    (the one source of the steps, images, CPU-hours and held-out numbers). Returns the names published."""
    progress = load_progress(out_dir, schedule)
    registry_file = package_dir / "weights.json"
    registry = json.loads(registry_file.read_text())
    ready: list[tuple[str, str, Path, dict[str, Any]]] = []
    for head, name in schedule.release.items():
        chain = schedule.chain(head)
        if not all(unit_done(u, progress) for u in chain):
            say(f"{name}: not published, its chain is unfinished ({', '.join(u.name for u in chain if not unit_done(u, progress))})")
            continue
        stale = [u.name for u in chain if not unit_current(schedule, u, progress, out_dir)]
        if stale:  # e.g. the prior trained longer and the VQ twin has not been retrained on it yet
            say(f"{name}: not published, {', '.join(stale)} started from older files than those now in "
                f"{out_dir}; `vrrestore train release {schedule.name}` trains them again")
            continue
        src = out_dir / f"fidelity-{head}.safetensors"
        try:  # the registry pins the file's exact geometry, also where today's preset has moved on
            overrides = config_overrides(schedule.preset, json.loads(read_metadata(src).get("config", "null")))
        except (ValueError, TypeError) as err:
            raise UsageError(f"{src}: not publishable as preset {schedule.preset} ({err})") from None
        if not any(e["name"] == name for e in registry["models"]):
            raise UsageError(f"{registry_file}: no entry named {name}; add it first")
        ready.append((head, name, src, overrides))
    done: list[str] = []
    for head, name, src, overrides in ready:  # every check passed before the first file is replaced
        dst = package_dir / "bundled" / f"{name}.safetensors"
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        recs = {u.name: progress["units"][u.name] for u in schedule.chain(head)}
        entry = next(e for e in registry["models"] if e["name"] == name)
        entry.pop("overrides", None)
        if overrides:
            entry["overrides"] = overrides
        entry.update({
            "status": "published", "preset": schedule.preset, "head": head, "repo_id": None, "revision": None,
            "filename": dst.name, "sha256": sha256_file(dst), "size_bytes": dst.stat().st_size, "dtype": "fp16",
            "bundled": f"bundled/{dst.name}", "license": schedule.licence or None, "data": schedule.data_note,
            "metrics": registry_metrics(schedule, recs),
        })
        done.append(name)
        say(f"{name}: published {dst} ({entry['size_bytes']} bytes)")
    tmp = registry_file.with_name(f".{registry_file.name}.tmp")
    tmp.write_text(json.dumps(registry, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, registry_file)
    return done


def registry_metrics(schedule: Schedule, recs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The registry's view of a trained chain: budget per stage and the held-out numbers."""
    fid = next(r for k, r in recs.items() if k.startswith("fidelity"))
    ev = fid.get("eval", {})
    m: dict[str, Any] = {
        "steps": " / ".join(f"{k} {r['step']}" for k, r in recs.items()),
        # per model, since one registry entry can outlive a change of the schedule's recipes
        "recipes": " / ".join(f"{k} {schedule.trained_recipe(r)}" for k, r in recs.items() if r["stage"] != "prior"),
        "images_seen": sum(int(r["images_seen"]) for r in recs.values()),
        "cpu_hours": round(sum(float(r["cpu_hours"]) for r in recs.values()), 2),
        "held_out": f"{schedule.eval_data} (first {schedule.eval_images}), recipe {schedule.eval_recipe} seed 0",
    }
    for w in ("w0", "w0.5", "w1", "input", "bicubic"):  # the model at each weight, then its baseline
        if w in ev:
            for k, v in ev[w].items():
                m[f"{k}_{w}"] = v
    prior = recs.get("prior", {}).get("eval", {})
    for k in ("psnr_continuous", "psnr_quantized"):
        if k in prior:
            m[f"prior_{k}"] = prior[k]
    return m
