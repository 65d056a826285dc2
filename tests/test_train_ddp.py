"""Multi-process training: 2 CPU processes with gloo under torchrun (`python -m torch.distributed.run`).

One launch through the CLI (prior), one through the Python API (code + fidelity); both must finish,
keep the ranks' weights identical and write the same checkpoint format as a single process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vrrestore.train import TrainConfig, train
from vrrestore.train.config import PriorOptions

pytestmark = pytest.mark.slow


def make_images(folder: Path, n: int = 8, size: int = 40) -> Path:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for i in range(n):
        img = cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.uint8), (0, 0), 2)
        cv2.imwrite(str(folder / f"im{i}.png"), img)
    return folder


def torchrun(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def structure(state: object) -> object:
    """The checkpoint's shape: keys and value types, not values."""
    if isinstance(state, dict):
        return {k: structure(v) for k, v in state.items() if k not in ("rng",)}
    if isinstance(state, torch.Tensor):
        return ("tensor", state.dtype, tuple(state.shape))
    return type(state).__name__


WORKER = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    from vrrestore.train import TrainConfig, train
    from vrrestore.train.config import CodeOptions, FidelityOptions, PriorOptions
    data, prior, out, restart = sys.argv[1:5]
    dist.init_process_group("gloo")  # one group for several runs: train() leaves it alone
    common = dict(data=(data,), batch_size=2, workers=0, size=32, progress=False, log_every=1, steps=2)
    restarts = PriorOptions(perceptual_weight=0, restart_every=1, restart_threshold=0.995)
    train(TrainConfig(stage="prior", out=restart, preset="face-tiny", prior=restarts, **{**common, "steps": 1}))
    train(TrainConfig(stage="code", out=out, code=CodeOptions(init=prior, head="vr", precondition="whiten"), **common))
    train(TrainConfig(stage="fidelity", out=out, fidelity=FidelityOptions(init=out, perceptual_weight=0, disc_start=0), **common))
    dist.destroy_process_group()
    """
)


def test_two_process_gloo_runs_all_stages_and_writes_the_same_format(tmp_path: Path) -> None:
    data = make_images(tmp_path / "imgs")
    run = tmp_path / "ddp"
    torchrun(["-m", "vrrestore", "train", "prior", "--data", str(data), "--out", str(run), "--preset", "face-tiny",
              "--steps", "2", "--batch-size", "2", "--size", "32", "--workers", "0", "--device", "cpu", "--disc-start", "0"],
             cwd=tmp_path)
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert events[0]["world"] == 2 and events[-1]["event"] == "end" and events[-1]["step"] == 2
    assert sum(e["event"] == "start" for e in events) == 1  # rank 0 alone logs
    steps = [e for e in events if e["event"] == "step"]
    assert [s["step"] for s in steps] == [2] and "g" in steps[0] and "d" in steps[0]  # adaptive GAN weight under DDP
    assert events[-1]["rank_spread"] == 0.0
    ddp = torch.load(run / "prior.pt", weights_only=True)
    assert ddp["step"] == 2 and ddp["epoch"] == 0 and ddp["batch_in_epoch"] == 2  # 8 images / (2 x 2) per step

    single = tmp_path / "single"
    train(TrainConfig(stage="prior", data=(str(data),), out=str(single), preset="face-tiny", steps=2, batch_size=2,
                      workers=0, size=32, progress=False, prior=PriorOptions(disc_start=0)))
    ref = torch.load(single / "prior.pt", weights_only=True)
    assert structure(ddp) == structure(ref)

    (tmp_path / "worker.py").write_text(WORKER)
    torchrun(["worker.py", str(data), str(run), str(run), str(tmp_path / "restart")], cwd=tmp_path)
    restart = [json.loads(x) for x in (tmp_path / "restart" / "log.jsonl").read_text().splitlines()]
    assert restart[-3]["restarted"] > 0 and restart[-1]["rank_spread"] == 0.0  # codebook broadcast keeps ranks equal
    for stage in ("code", "fidelity"):
        state = torch.load(run / f"{stage}.pt", weights_only=True)
        assert state["step"] == 2 and state["stage"] == stage
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [e["world"] for e in lines if e["event"] == "start"] == [2, 2, 2]
    assert [e["rank_spread"] for e in lines if e["event"] == "end"] == [0.0, 0.0, 0.0]  # ranks hold equal weights
