"""Training throughput per stage and preset (images/s of ``train_step`` on random images, GAN on).

    python -m vrrestore.train.bench --presets face-tiny,face-s --batch-size 4 --steps 3

Data loading is timed separately (one ``degrade`` call per image at the preset's size), since the
loader's workers run beside the training step. Stages 2 and 3 start from an untrained prior: the
cost of a step does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data.degradations import degrade
from ..models import preset as get_preset
from ..models.config import config_to_dict
from .config import CodeOptions, FidelityOptions, PriorOptions, TrainConfig
from .stages import CodeStage, FidelityStage, PriorStage, Runtime, default_recipe


def _time(stage: object, batch: dict[str, torch.Tensor], steps: int) -> float:
    stage.train_step(batch, 0)  # type: ignore[attr-defined]  # warm-up (oneDNN kernels, allocator)
    t0 = time.perf_counter()
    for i in range(steps):
        stage.train_step(batch, i + 1)  # type: ignore[attr-defined]
    return steps * batch["gt"].shape[0] / (time.perf_counter() - t0)


def bench(
    presets: Sequence[str], batch_size: int = 4, steps: int = 3, head: str = "vr", say: Callable[[str], None] = print
) -> list[dict[str, object]]:
    rt = Runtime(torch.device("cpu"), say=lambda _s: None)
    rows: list[dict[str, object]] = []
    for name in presets:
        mcfg = get_preset(name)
        size = mcfg.prior.img_size
        scale = getattr(mcfg, "scale", 1)
        gen = torch.Generator().manual_seed(0)
        batch = {"gt": torch.rand(batch_size, 3, size, size, generator=gen),
                 "lq": torch.rand(batch_size, 3, size // scale, size // scale, generator=gen)}
        base = dict(data=("-",), out="", preset=name, batch_size=batch_size, workers=0, progress=False)
        torch.manual_seed(0)
        prior = PriorStage(TrainConfig(stage="prior", prior=PriorOptions(disc_start=0), **base), rt)  # type: ignore[arg-type]
        ips = {"prior": _time(prior, batch, steps)}
        vq = prior.ema.model  # type: ignore[union-attr]
        prior_state = {"model": {"architecture": "VQAutoEncoder", "config": config_to_dict(vq.cfg), "preset": name},
                       "ema": {"model": vq.state_dict()}, "history": [], "summary": {}}
        code = CodeStage(TrainConfig(stage="code", code=CodeOptions(head=head), **base), rt, init_state=prior_state)  # type: ignore[arg-type]
        ips["code"] = _time(code, batch, steps)
        code_state = {"config": code.cfg.to_dict(), **code.state_dict(), "summary": {}}
        fid_cfg = TrainConfig(stage="fidelity", fidelity=FidelityOptions(disc_start=0), **base)  # type: ignore[arg-type]
        fid = FidelityStage(fid_cfg, rt, init_state=code_state)
        ips["fidelity"] = _time(fid, batch, steps)
        hq = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)
        recipe = default_recipe(mcfg)
        t0 = time.perf_counter()
        for s in range(8):
            degrade(hq, recipe, s)
        ips["degrade"] = 8 / (time.perf_counter() - t0)
        row = {"preset": name, "size": size, "batch": batch_size, "head": head, "perceptual": prior.perceptual.enabled,
               **{k: round(v, 2) for k, v in ips.items()}}
        rows.append(row)
        say(f"{name:<10} {size}px batch {batch_size}: " + ", ".join(f"{k} {v:.2f} img/s" for k, v in ips.items()))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vrrestore.train.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="face-tiny,face-s")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--head", default="vr")
    a = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    bench(a.presets.split(","), a.batch_size, a.steps, a.head)


if __name__ == "__main__":
    main()
