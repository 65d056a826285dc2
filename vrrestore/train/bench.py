"""Training throughput per stage, preset and precision (images/s of ``train_step``, GAN and
perceptual loss on), in one run so that ratios (bf16 / fp32) are fair.

    python -m vrrestore.train.bench --presets face-cpu,sr-x4-cpu --precisions auto,fp32

A preset that a release schedule trains is measured with that schedule's options (critic width,
adaptive-weight interval, LPIPS backbone, batch size); others with the stage defaults. The prior
and fidelity stages are also timed with the perceptual loss and critic off, which gives their
share of a step. Data loading is timed separately (one ``degrade`` call per image at the preset's
size), since the loader's workers run beside the training step. Stages 2 and 3 start from an
untrained prior: the cost of a step does not depend on the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..data.degradations import degrade
from ..models import preset as get_preset
from ..models.config import config_to_dict
from ..precision import cpu_bf16_flags, cpu_verdict, decide
from .config import CodeOptions, FidelityOptions, PriorOptions, TrainConfig
from .release import SCHEDULES
from .stages import CodeStage, FidelityStage, PriorStage, Runtime, default_recipe


def _time(stage: object, batch: dict[str, torch.Tensor], steps: int) -> float:
    stage.train_step(batch, 0)  # type: ignore[attr-defined]  # warm-up (oneDNN kernels, allocator)
    t0 = time.perf_counter()
    for i in range(steps):
        stage.train_step(batch, i + 1)  # type: ignore[attr-defined]
    return steps * batch["gt"].shape[0] / (time.perf_counter() - t0)


def schedule_options(preset: str) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """(prior options, fidelity options, batch size) of the release schedule that trains ``preset``."""
    for sch in SCHEDULES.values():
        if sch.preset == preset:
            prior = next(u for u in sch.units if u.stage == "prior").options
            fid = next(u for u in sch.units if u.stage == "fidelity").options
            return dict(prior), dict(fid), sch.batch_size
    return {}, {}, None


def bench(
    presets: Sequence[str], batch_size: int = 0, steps: int = 3, head: str = "vr", say: Callable[[str], None] = print,
    precisions: Sequence[str] = ("auto",), shares: bool = True,
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name in presets:
        prior_opts, fid_opts, sched_batch = schedule_options(name)
        bs = batch_size or sched_batch or 4
        prior_opts.update(disc_start=0)
        fid_opts.update(disc_start=0)
        mcfg = get_preset(name)
        size = mcfg.prior.img_size
        scale = getattr(mcfg, "scale", 1)
        gen = torch.Generator().manual_seed(0)
        batch = {"gt": torch.rand(bs, 3, size, size, generator=gen),
                 "lq": torch.rand(bs, 3, size // scale, size // scale, generator=gen)}
        base = dict(data=("-",), out="", preset=name, batch_size=bs, workers=0, progress=False)
        for precision in precisions:
            verdict = decide(torch.device("cpu"), precision, fp16_ok=False)  # type: ignore[arg-type]
            rt = Runtime(torch.device("cpu"), amp_dtype=verdict.autocast_dtype, say=lambda _s: None)
            torch.manual_seed(0)
            popts = PriorOptions(**prior_opts)
            prior = PriorStage(TrainConfig(stage="prior", prior=popts, **base), rt)  # type: ignore[arg-type]
            ips = {"prior": _time(prior, batch, steps)}
            if shares:
                bare = dataclasses.replace(popts, perceptual_weight=0.0, disc_weight=0.0)
                plain = PriorStage(TrainConfig(stage="prior", prior=bare, **base), rt)  # type: ignore[arg-type]
                ips["prior_share"] = 1.0 - ips["prior"] / _time(plain, batch, steps)
            vq = prior.ema.model  # type: ignore[union-attr]
            prior_state = {"model": {"architecture": "VQAutoEncoder", "config": config_to_dict(vq.cfg), "preset": name},
                           "ema": {"model": vq.state_dict()}, "history": [], "summary": {}}
            code = CodeStage(TrainConfig(stage="code", code=CodeOptions(head=head), **base), rt, init_state=prior_state)  # type: ignore[arg-type]
            ips["code"] = _time(code, batch, steps)
            code_state = {"config": code.cfg.to_dict(), **code.state_dict(), "summary": {}}
            fopts = FidelityOptions(**fid_opts)
            fid = FidelityStage(TrainConfig(stage="fidelity", fidelity=fopts, **base), rt, init_state=code_state)  # type: ignore[arg-type]
            ips["fidelity"] = _time(fid, batch, steps)
            if shares:
                bare_f = dataclasses.replace(fopts, perceptual_weight=0.0, gan_weight=0.0)
                plain_f = FidelityStage(TrainConfig(stage="fidelity", fidelity=bare_f, **base), rt, init_state=code_state)  # type: ignore[arg-type]
                ips["fidelity_share"] = 1.0 - ips["fidelity"] / _time(plain_f, batch, steps)
            hq = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)
            recipe = default_recipe(mcfg)
            t0 = time.perf_counter()
            for s in range(8):
                degrade(hq, recipe, s)
            ips["degrade"] = 8 / (time.perf_counter() - t0)
            row = {"preset": name, "precision": verdict.precision, "size": size, "batch": bs, "head": head,
                   "perceptual": prior.perceptual.enabled, **{k: round(v, 3) for k, v in ips.items()}}
            rows.append(row)
            say(f"{name:<10} {verdict.precision:<4} {size}px batch {bs}: "
                + ", ".join(f"{k} {v:.0%}" if k.endswith("share") else f"{k} {v:.2f} img/s" for k, v in ips.items()))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vrrestore.train.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="face-cpu,sr-x4-cpu")
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the release schedule's batch (else 4)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--head", default="vr")
    ap.add_argument("--precisions", default="auto,fp32", help="comma list of auto, fp32, bf16 (ratios need one run)")
    ap.add_argument("--no-shares", action="store_true", help="skip timing the stages without perceptual loss and critic")
    a = ap.parse_args(argv)
    v = cpu_verdict()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
          f"CPU bf16 flags: {','.join(cpu_bf16_flags()) or 'none'}; auto = {v.precision} ({v.reason})")
    rows = bench(a.presets.split(","), a.batch_size, a.steps, a.head, precisions=a.precisions.split(","), shares=not a.no_shares)
    by = {(r["preset"], r["precision"]): r for r in rows}
    for name in a.presets.split(","):
        if (name, "bf16") in by and (name, "fp32") in by:
            ratios = {k: by[(name, "bf16")][k] / by[(name, "fp32")][k] for k in ("prior", "code", "fidelity")}  # type: ignore[operator]
            print(f"{name}: bf16 / fp32 = " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
