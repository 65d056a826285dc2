"""bench/fidelity_probe.py: fixed blends, OutputFuse's gate and the bypassed decoder, on a tiny face model."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vrrestore.benchmark import Dataset, Sample
from vrrestore.checkpoint import save_checkpoint
from vrrestore.models import build_model, preset
from vrrestore.models.descriptor import describe


@pytest.fixture(scope="module")
def probe_mod():  # noqa: ANN201
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        return importlib.import_module("fidelity_probe")
    finally:
        sys.path.pop(0)


def tiny_model(gate: float) -> torch.nn.Module:
    """face-tiny with untrained fusion blocks and OutputFuse's gate fixed at ``gate`` (b = 0)."""
    torch.manual_seed(0)
    model = build_model("FaceRestorer", preset("face-tiny")).eval()
    last = model.out_fuse.body[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[: last.bias.numel() // 2] = gate
    return model


def images(n: int = 2, size: int = 64) -> list[Sample]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        gt = rng.random((size, size, 3)).astype(np.float32)
        lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
        out.append(Sample(f"im{i}", lq, gt))
    return out


def test_probe_rows_are_the_blends_they_name(probe_mod) -> None:  # noqa: ANN001
    model = tiny_model(gate=1.0)
    fuse = model.out_fuse
    result = probe_mod.probe(describe(model), Dataset(images(), "face", 1, "test"), [0.0, 1.0], [0.0, 0.5, 1.0], "fp32")
    rows = result["rows"]
    assert result["images"] == 2 and result["gate_mean_w1"] == pytest.approx(1.0)
    # a = 0 is the model at w = 0, a = 1 the input itself
    assert rows["0 x input + 1 x (w = 0)"] == rows["w = 0"] and rows["1 x input + 0 x (w = 0)"] == rows["input"]
    # gate 1, b 0: at w = 1 the model hands back its input
    assert rows["w = 1"]["psnr"] == pytest.approx(rows["input"]["psnr"], abs=0.05)
    # untrained fusion blocks: the bypassed decoder at w = 1 is the prior's output, as at w = 0
    assert rows["w = 1, decoder only (OutputFuse bypassed)"]["psnr"] == pytest.approx(rows["w = 0"]["psnr"], abs=1e-3)
    assert rows["w = 1"]["psnr"] > rows["w = 0"]["psnr"] + 3  # noisy input vs an untrained prior's face
    assert model.out_fuse is fuse and not fuse._forward_hooks  # the probe leaves the model as it was


def test_probe_cli_writes_the_table_and_json(probe_mod, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    ckpt = save_checkpoint(tiny_model(gate=0.25), tmp_path / "tiny.safetensors")
    for sub in ("lq", "gt"):
        (tmp_path / sub).mkdir()
    for s in images():
        Image.fromarray((s.lq * 255).round().astype(np.uint8)).save(tmp_path / "lq" / f"{s.name}.png")
        Image.fromarray((s.gt * 255).round().astype(np.uint8)).save(tmp_path / "gt" / f"{s.name}.png")
    out_json = tmp_path / "probe.json"
    code = probe_mod.main(["-m", str(ckpt), "--lq", str(tmp_path / "lq"), "--gt", str(tmp_path / "gt"), "-w", "0.5",
                           "--blends", "0.5", "--json", str(out_json), "--precision", "fp32"])
    table = capsys.readouterr().out
    assert code == 0
    data = json.loads(out_json.read_text())
    assert set(data["rows"]) == {"input", "w = 0.5", "0.5 x input + 0.5 x (w = 0)", "w = 1, decoder only (OutputFuse bypassed)"}
    assert data["gate_mean_w1"] == pytest.approx(0.25, abs=1e-3) and data["images"] == 2
    assert f"| w = 0.5 | {data['rows']['w = 0.5']['psnr']:.3f} |" in table and "gate a at w = 1" in table
    with pytest.raises(SystemExit):  # neither --hq nor --lq/--gt
        probe_mod.main(["-m", str(ckpt)])
