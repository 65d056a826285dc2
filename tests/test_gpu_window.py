"""The trainer support of scripts/gpu_window.sh: prior export to safetensors and the --init flags,
which let a short GPU window resume from < 16 MiB fp16 files instead of a full run folder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vrrestore.cli import app
from vrrestore.train import ckpt
from vrrestore.train.files import load_prior_file

runner = CliRunner()
FAST = ["--preset", "face-tiny", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--steps", "1"]


def _images(root: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(root / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return root


def _ok(args: list[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One step of each stage plus the exports (the shared fixture keeps the file under 30 s)."""
    torch.set_num_threads(1)
    t = tmp_path_factory.mktemp("gw")
    data = str(_images(t / "hq"))
    _ok(["train", "prior", "--data", data, "-o", str(t / "p"), *FAST])
    _ok(["train", "export", str(t / "p" / "prior.pt"), "-o", str(t / "prior.safetensors")])
    _ok(["train", "code", "--data", data, "-o", str(t / "c"), "--prior", str(t / "p"), *FAST[2:]])
    _ok(["train", "export", str(t / "c" / "code.pt"), "-o", str(t / "vr.safetensors")])
    return {"root": t, "data": Path(data)}


def test_export_prior_is_fp16_and_reloads(runs: dict[str, Path]) -> None:
    vq, meta = load_prior_file(runs["root"] / "prior.safetensors")
    assert meta["format"] == "vrrestore-prior" and meta["preset"] == "face-tiny" and meta["dtype"] == "fp16"
    ema = ckpt.load(runs["root"] / "p" / "prior.pt")["ema"]["model"]
    w = next(k for k, v in ema.items() if v.is_floating_point() and v.numel() > 100)
    assert torch.allclose(vq.state_dict()[w], ema[w].half().float())


def test_prior_init_starts_from_file(runs: dict[str, Path]) -> None:
    t = runs["root"]
    _ok(["train", "prior", "--data", str(runs["data"]), "-o", str(t / "p2"), "--init", str(t / "prior.safetensors"),
         *FAST, "--lr", "1e-12"])
    vq, _ = load_prior_file(t / "prior.safetensors")
    ema = ckpt.load(t / "p2" / "prior.pt")["ema"]["model"]
    k = "quantizer.embedding.weight"
    assert torch.allclose(ema[k], vq.state_dict()[k], atol=1e-3)


def test_prior_init_rejects_other_preset(runs: dict[str, Path]) -> None:
    args = ["train", "prior", "--data", str(runs["data"]), "-o", str(runs["root"] / "p3"),
            "--init", str(runs["root"] / "prior.safetensors"), *FAST]
    args[args.index("face-tiny")] = "sr-tiny"
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "geometry" in str(res.exception) + res.output


def test_code_init_loads_restorer_weights(runs: dict[str, Path]) -> None:
    t = runs["root"]
    _ok(["train", "code", "--data", str(runs["data"]), "-o", str(t / "c2"), "--prior", str(t / "p"),
         "--init", str(t / "vr.safetensors"), *FAST[2:], "--lr", "1e-12"])
    from vrrestore.checkpoint import load_checkpoint

    src = load_checkpoint(t / "vr.safetensors").model.state_dict()
    got = ckpt.load(t / "c2" / "code.pt")["ema"]["model"]
    k = next(k for k in got if k.startswith("predictor.head"))
    assert torch.allclose(got[k], src[k], atol=1e-3) and src[k].abs().sum() > 0


def test_fidelity_init_and_missing_file(runs: dict[str, Path]) -> None:
    t = runs["root"]
    _ok(["train", "fidelity", "--data", str(runs["data"]), "-o", str(t / "f"), "--code", str(t / "c"),
         "--init", str(t / "vr.safetensors"), *FAST[2:]])
    res = runner.invoke(app, ["train", "fidelity", "--data", str(runs["data"]), "-o", str(t / "f2"),
                              "--code", str(t / "c"), "--init", str(t / "nope.safetensors"), *FAST[2:]])
    assert res.exit_code != 0 and "no such file" in str(res.exception) + res.output
