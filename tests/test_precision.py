"""Precision by measurement (both branches of ``auto``, probe faked), its cache, the descriptor and
training using it, and codebook maths that stay fp32 under bf16 autocast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vrrestore import precision as prec
from vrrestore.models.heads import (
    IndexPrediction,
    SoftQuantizer,
    VectorQuantizer,
    VectorRegression,
)


class FakeProbe:
    """Stands in for the timed probe: returns the queued speed-ups, records each call."""

    def __init__(self) -> None:
        self.queue: list[float] = []
        self.calls: list[float] = []

    def __call__(self, repeats: int = 3) -> float:
        self.calls.append(self.queue.pop(0))
        return self.calls[-1]


@pytest.fixture()
def probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeProbe:
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "cache"))
    fake = FakeProbe()
    monkeypatch.setattr(prec, "probe_cpu_bf16", fake)
    return fake


def test_cpu_without_bf16_instructions_is_fp32_without_probing(probe: FakeProbe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: [])
    v = prec.decide(torch.device("cpu"), "auto")
    assert v.precision == "fp32" and v.autocast_dtype is None and "no AMX" in v.reason
    assert probe.calls == []


@pytest.mark.parametrize(("speedup", "want"), [(3.1, "bf16"), (1.1, "fp32"), (0.02, "fp32")])
def test_cpu_with_amx_follows_the_probe(probe: FakeProbe, monkeypatch: pytest.MonkeyPatch, speedup: float, want: str) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ["amx", "avx512_bf16"])
    probe.queue.append(speedup)
    v = prec.decide(torch.device("cpu"), "auto")
    assert v.precision == want and v.speedup == speedup and "amx" in v.reason
    assert (v.autocast_dtype is torch.bfloat16) == (want == "bf16")


def test_verdict_is_cached_per_machine(probe: FakeProbe, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ["amx"])
    probe.queue.extend([4.0, 0.5])
    assert prec.cpu_verdict().precision == "bf16"
    assert prec.cpu_verdict().precision == "bf16"  # cached: no second probe
    assert probe.calls == [4.0]
    cache = json.loads((tmp_path / "cache" / "precision.json").read_text())
    assert list(cache) == [prec.machine_key()] and cache[prec.machine_key()]["precision"] == "bf16"
    monkeypatch.setattr(prec, "machine_key", lambda: "another-machine")  # e.g. other CPU or thread count
    assert prec.cpu_verdict().precision == "fp32" and probe.calls == [4.0, 0.5]


def test_explicit_and_cuda_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prec.decide(torch.device("cpu"), "bf16").precision == "bf16"
    assert prec.decide(torch.device("cpu"), "fp32").precision == "fp32"
    with pytest.raises(ValueError, match="expected one of"):
        prec.decide(torch.device("cpu"), "int8")  # type: ignore[arg-type]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert prec.decide(torch.device("cuda"), "auto").precision == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert prec.decide(torch.device("cuda"), "auto").precision == "fp16"
    assert prec.decide(torch.device("cuda"), "auto", fp16_ok=False).precision == "fp32"


def test_real_probe_returns_a_positive_ratio() -> None:
    assert prec.probe_cpu_bf16(repeats=1) > 0


def test_loaded_model_uses_the_cpu_verdict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vrrestore.checkpoint import load_checkpoint, save_checkpoint
    from vrrestore.models import build_model, preset

    path = save_checkpoint(build_model("FaceRestorer", preset("face-tiny")), tmp_path / "m.safetensors")
    for verdict, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        monkeypatch.setattr(prec, "cpu_verdict", lambda v=verdict: prec.Verdict(v, "faked"))
        desc = load_checkpoint(path)
        assert desc.cpu_auto == verdict and desc.resolve_precision("auto") is dtype
        assert desc.resolve_precision("fp32") is torch.float32  # explicit wins
        out = desc(torch.rand(1, 3, 64, 64), precision="auto")
        assert out.dtype is torch.float32 and out.shape == (1, 3, 64, 64)


def test_training_autocasts_as_the_verdict_says(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from test_train import make_images

    from vrrestore.train import TrainConfig, stages, train

    seen: list[torch.dtype | None] = []
    real = stages.PriorStage.train_step

    def spy(self, batch, step):  # noqa: ANN001, ANN202
        seen.append(self.rt.amp_dtype)
        return real(self, batch, step)

    monkeypatch.setattr(stages.PriorStage, "train_step", spy)
    data = make_images(tmp_path / "d", n=4)
    for verdict, want in (("bf16", torch.bfloat16), ("fp32", None)):
        monkeypatch.setattr(prec, "cpu_verdict", lambda v=verdict: prec.Verdict(v, "faked"))
        seen.clear()
        cfg = TrainConfig(stage="prior", data=(str(data),), out=str(tmp_path / verdict), preset="face-tiny", steps=1,
                          batch_size=2, workers=0, size=32, progress=False, device="cpu")
        train(cfg)
        assert seen == [want]
        log = (tmp_path / verdict / "log.jsonl").read_text()
        assert f"precision: {verdict} (faked)" in log


def test_codebook_maths_stay_fp32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(64, 16, generator=g)
    tokens = torch.randn(2, 10, 16, generator=g)
    x = torch.randn(2, 10, 32, generator=g)
    vq = VectorQuantizer(64, 16)
    vq.embedding.weight.data.copy_(codebook)
    ref_idx = vq.nearest(tokens)
    vr, iq, sq = VectorRegression(32, 64), IndexPrediction(32, 64), SoftQuantizer(32, 64)
    ref_logits = (x @ iq.proj.weight.t()).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(vq.nearest(tokens.bfloat16()), vq.nearest(tokens))  # distances in fp32
        assert torch.equal(vq.nearest(tokens), ref_idx)
        out = vr(x, codebook)  # grad enabled: w @ C path
        assert out.weights is not None and out.weights.dtype is torch.float32 and out.feat.dtype is torch.float32
        ref = (out.weights.double() @ codebook.double()).float()
        assert torch.allclose(out.feat, ref, atol=1e-5)
        with torch.no_grad():
            fused = vr(x, codebook)  # inference: folded matmul, still fp32
        assert fused.feat.dtype is torch.float32 and torch.allclose(fused.feat, out.feat, atol=1e-4)
        logits = iq(x, codebook).logits
        assert logits is not None and logits.dtype is torch.float32
        assert torch.allclose(logits, ref_logits, atol=1e-5)
        soft = sq(x, codebook)
        assert soft.weights is not None and soft.weights.dtype is torch.float32
    from vrrestore.train.losses import codebook_target_loss

    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = codebook_target_loss(tokens.bfloat16(), tokens)
    assert loss.dtype is torch.float32
