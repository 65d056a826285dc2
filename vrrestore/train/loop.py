"""The training loop shared by all stages: data, DDP, mixed precision, checkpoints, exact resume,
JSON-lines log, rich progress and a time budget.

Run layout (RUN_DIR = --out): ``<stage>.pt`` (latest checkpoint, replaced atomically every
``ckpt_every`` steps, at the end and when the time budget runs out) and ``log.jsonl`` (one JSON
object per line: ``event`` start / step / checkpoint / end). Under ``torchrun`` each process trains
on its DistributedSampler share; rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..data.datasets import RestorationDataset, SeededSampler
from ..device import select_device
from ..errors import UsageError
from ..precision import decide as decide_precision
from . import ckpt
from .config import TrainConfig
from .stages import Runtime, StageBase, build_stage, get_preset, stage_summary, task_of

log = logging.getLogger("vrrestore.train")


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    seconds: float
    reason: str  # "done" | "time budget" | "interrupted"
    last: dict[str, float]
    images_per_s: float


def _init_distributed(spec: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, created). Under torchrun (WORLD_SIZE > 1) joins the process group unless
    the caller already did: NCCL on CUDA, gloo on CPU; each process takes cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, select_device(spec), False
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and spec in ("auto", "cuda") or spec.startswith("cuda")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, created


def _rng_state(device: torch.device) -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


class _Logger:
    """Rank-0 JSON lines + optional rich progress on stderr."""

    def __init__(self, path: Path, enabled: bool, progress: bool, total: int, start: int) -> None:
        self.enabled = enabled
        self.file = open(path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115 - closed in close()
        self.progress: Any = None
        self._bar = (total, start) if enabled and progress else None  # started at the first step, so set-up
        # errors print one line, not a half-drawn bar

    def _start_bar(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from ..cli._console import err_console

        assert self._bar is not None
        total, start = self._bar
        self._bar = None
        # Our own ETA column: rich's counts only the steps left, not the --max-minutes budget.
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[info]}"), console=err_console, transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, info="", eta="")
        self.progress.start()

    def event(self, **record: Any) -> None:
        if self.file:
            self.file.write(json.dumps(record, sort_keys=False) + "\n")
            self.file.flush()

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.progress:
            self.progress.console.print(text, highlight=False)
        else:
            log.warning(text)
        self.event(event="message", text=text)

    def advance(self, step: int, info: str, eta: str = "") -> None:
        if self._bar is not None:
            self._start_bar()
        if self.progress:
            self.progress.update(self.task, completed=step, info=info, eta=eta)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
        if self.file:
            self.file.close()


def train(
    cfg: TrainConfig, resume: bool = False, stop: Callable[[int], bool] | None = None,
    init_state: dict[str, Any] | None = None,
) -> TrainResult:
    """Run (or continue) one stage to ``cfg.steps``. ``stop(step)`` lets tests end a run early as an
    interruption would, after that step's checkpoint. ``init_state``: see ``build_stage``."""
    rank, world, device, created = _init_distributed(cfg.device)
    if cfg.preset:
        get_preset(cfg.preset)  # an unknown preset fails here, before the run folder exists
    out = Path(cfg.out)
    path = ckpt.stage_file(out, cfg.stage)
    state: dict[str, Any] | None = None
    if resume:
        if not path.is_file():
            raise UsageError(f"--resume: {path} does not exist; start without --resume")
        state = ckpt.load(path, cfg.stage)
    elif path.exists():  # every rank checks, so all stop together
        raise UsageError(f"{path} exists; pass --resume to continue that run or choose another --out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    logger = _Logger(out / "log.jsonl", rank == 0, cfg.progress, cfg.steps, int(state["step"]) if state else 0)
    try:
        return _run(cfg, state, rank, world, device, logger, stop, init_state)
    finally:
        logger.close()
        if world > 1 and dist.is_initialized():
            dist.barrier()  # rank 0's checkpoint is on disk before anyone moves on
            if created:  # a caller's process group is theirs to end
                dist.destroy_process_group()


_RUN_IDENTITY = ("preset", "data", "batch_size", "lr", "seed", "size", "ema_decay", "warmup_steps", "cosine",
                 "prior", "code", "fidelity", "plain")


def _adopt_saved(cfg: TrainConfig, saved: TrainConfig, say: Callable[[str], None]) -> None:
    """On resume the saved run's model, data and optimisation settings win (only steps, time budget,
    checkpoint interval, workers, device and display may change); each overridden value is reported."""
    defaults = TrainConfig(stage=cfg.stage, data=(), out="")
    for name in _RUN_IDENTITY:
        mine, theirs = getattr(cfg, name), getattr(saved, name)
        if mine != theirs:
            given = name not in ("prior", "code", "fidelity", "plain") and mine != getattr(defaults, name)
            if given:  # say so only when the caller asked for something else
                say(f"--resume: keeping the saved run's {name} {theirs!r} (not {mine!r})")
            setattr(cfg, name, theirs)


def _run(
    cfg: TrainConfig, state: dict[str, Any] | None, rank: int, world: int, device: torch.device,
    logger: _Logger, stop: Callable[[int], bool] | None, init_state: dict[str, Any] | None = None,
) -> TrainResult:
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    verdict = decide_precision(device, cfg.precision, fp16_ok=False)  # no GradScaler: fp16 is not offered
    amp = verdict.autocast_dtype
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rt = Runtime(device=device, rank=rank, world=world, amp_dtype=amp, say=logger.say)
    if state is not None:
        _adopt_saved(cfg, TrainConfig.from_dict(state["config"]), logger.say)
    stage = build_stage(cfg, rt, init_state)
    size = cfg.size or _prior_size(stage)
    recipe = getattr(stage, "recipe", None) if stage.needs_lq else None
    mode = "crop" if task_of(cfg.preset) == "sr" else "resize"
    try:
        dataset = RestorationDataset(cfg.data, size, recipe, mode=mode, warn=False)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if len(dataset) < cfg.batch_size * world:
        raise UsageError(f"{len(dataset)} images are fewer than one batch ({cfg.batch_size} x {world} processes)")
    sampler = SeededSampler(len(dataset), cfg.seed, world, rank)
    step, epoch, pos, seconds = 0, 0, 0, 0.0
    if state is not None:
        try:
            stage.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as err:
            first = str(err).strip().splitlines()[0]
            raise UsageError(f"--resume: the checkpoint does not fit this model ({first})") from None
        _set_rng_state(state["rng"], device)
        step, epoch, pos, seconds = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"]), float(state["seconds"])
    elif cfg.start_step:
        step = cfg.start_step
        epoch, pos = divmod(step, max(1, len(dataset) // (cfg.batch_size * world)))
        with warnings.catch_warnings():  # "scheduler stepped before the optimiser": on purpose here
            warnings.simplefilter("ignore", UserWarning)
            for sched in stage.scheds.values():  # the learning rate this step would have had
                sched.last_epoch = step - 1
                sched.step()
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=cfg.workers > 0,
    )
    logger.event(event="start", step=step, world=world, device=str(device), images=len(dataset), size=size,
                 recipe=recipe, config=cfg.to_dict(), resumed=state is not None)
    logger.say(f"precision: {verdict.precision} ({verdict.reason})")

    def save(reason: str) -> None:
        if rank != 0:
            return
        full = {
            "stage": cfg.stage, "config": cfg.to_dict(), "step": step, "epoch": epoch, "batch_in_epoch": pos,
            "seconds": seconds + (time.monotonic() - t0), "rng": _rng_state(device),
            "summary": stage_summary(cfg, step, seconds + (time.monotonic() - t0), _summary_extra(stage, recipe, size)),
            **stage.state_dict(),
        }
        ckpt.save(full, ckpt.stage_file(cfg.out, cfg.stage))
        logger.event(event="checkpoint", step=step, reason=reason, path=str(ckpt.stage_file(cfg.out, cfg.stage)))

    t0 = time.monotonic()
    seen_bad: set[str] = set()
    last: dict[str, float] = {}
    reason = "done"
    ips = 0.0
    tick, tick_step = time.monotonic(), step
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else None
    try:
        while step < cfg.steps and reason == "done":
            sampler.set_position(epoch, pos * cfg.batch_size)
            exhausted = True
            for batch in loader:
                _report_skipped(batch, seen_bad, logger, rank)
                last = stage.train_step(batch, step)
                step += 1
                pos += 1
                if step % cfg.log_every == 0 or step == cfg.steps:
                    now = time.monotonic()
                    ips = (step - tick_step) * cfg.batch_size * world / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    lr = stage.scheds["g"].get_last_lr()[0]
                    logger.event(event="step", step=step, epoch=epoch, lr=lr, images_per_s=round(ips, 3),
                                 seconds=round(seconds + now - t0, 3), **last)
                    eta = eta_text(cfg.steps - step, ips / (cfg.batch_size * world), budget, seconds + now - t0)
                    logger.advance(step, f"loss {last.get('loss', float('nan')):.4f}  {ips:.1f} img/s", eta)
                out_of_time = budget is not None and seconds + (time.monotonic() - t0) >= budget
                if world > 1:  # ranks must agree on stopping
                    flag = torch.tensor([float(out_of_time)], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    out_of_time = bool(flag.item())
                if out_of_time and step < cfg.steps:
                    reason = "time budget"
                elif stop is not None and step < cfg.steps and stop(step):
                    reason = "interrupted"
                if step >= cfg.steps or reason != "done":
                    exhausted = False
                    break
                if step % cfg.ckpt_every == 0:
                    save("interval")
            if exhausted:  # the epoch ran out: the next batch starts the next epoch
                epoch, pos = epoch + 1, 0
    except KeyboardInterrupt:
        reason = "interrupted"
        if world == 1:
            save("interrupted")
        raise
    save(reason if reason != "done" else "end")
    total = seconds + (time.monotonic() - t0)
    end: dict[str, Any] = {"event": "end", "step": step, "reason": reason, "seconds": round(total, 3)}
    if world > 1:
        end["rank_spread"] = _rank_spread(stage, device)
    logger.event(**end)
    return TrainResult(ckpt.stage_file(cfg.out, cfg.stage), step, total, reason, last, ips)


def eta_text(steps_left: int, steps_per_s: float, budget_s: float | None, elapsed_s: float) -> str:
    """'ETA 0:12:03', or with '(budget)' when the --max-minutes budget ends the run before the steps do."""
    eta = steps_left / steps_per_s if steps_per_s > 0 else float("inf")
    tag = ""
    if budget_s is not None and budget_s - elapsed_s < eta:
        eta, tag = max(0.0, budget_s - elapsed_s), " (budget)"
    if eta == float("inf"):
        return "ETA -:--:--"
    s = int(round(eta))
    return f"ETA {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}{tag}"


@torch.no_grad()
def _rank_spread(stage: StageBase, device: torch.device) -> float:
    """Largest difference between ranks of a checksum of all saved weights (0 = in sync)."""
    total = sum((p.detach().double().sum() for n in stage.nets.values() for p in n.state_dict().values()
                 if p.is_floating_point()), torch.zeros((), dtype=torch.float64, device=device))
    hi, lo = total.clone(), total.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float(hi - lo)


def _prior_size(stage: StageBase) -> int:
    cfg = getattr(stage, "vq_cfg", None) or stage.model_cfg.prior  # type: ignore[attr-defined]
    return int(cfg.img_size)


def _summary_extra(stage: StageBase, recipe: str | None, size: int) -> dict[str, Any]:
    extra: dict[str, Any] = {"size": size, "task": task_of(stage.cfg.preset)}
    if recipe:
        extra["recipe"] = recipe
    model_cfg = getattr(stage, "model_cfg", None)
    if model_cfg is not None:
        extra["head"] = model_cfg.head
        extra["precondition"] = getattr(stage, "precondition", "none")
        if stage.cfg.stage == "code":
            extra["vr_target"] = stage.cfg.code.vr_target
    return extra


def _report_skipped(batch: dict[str, Any], seen: set[str], logger: _Logger, rank: int) -> None:
    for entry in batch.get("skipped", ()):
        for name in filter(None, str(entry).split("\n")):
            if name not in seen:
                seen.add(name)
                text = f"skipping {name}"  # entries are "NAME: why" (unreadable, bomb)
                if rank == 0:
                    logger.say(text)
                else:
                    log.warning("[rank %d] %s", rank, text)
