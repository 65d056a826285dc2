"""Training: each stage lowers its loss on tiny images, resume is exact, time budget, export, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from vrrestore.checkpoint import load_checkpoint, read_metadata
from vrrestore.cli import app
from vrrestore.errors import CheckpointError, UsageError
from vrrestore.train import TrainConfig, export, train
from vrrestore.train import ckpt as train_ckpt
from vrrestore.train.config import CodeOptions, FidelityOptions, PriorOptions
from vrrestore.train.losses import fidelity_loss_scales
from vrrestore.train.precondition import WhitenedVR, fold_heads, whitening_matrix
from vrrestore.train.stages import CodeStage, FidelityStage, PriorStage, Runtime, build_restorer

CPU = Runtime(torch.device("cpu"), say=lambda _s: None)
SIZE = 32


def make_images(folder: Path, n: int = 6, size: int = 48, seed: int = 0) -> Path:
    """Smooth colour fields with a disc and an edge: structure a tiny VQGAN can learn quickly."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), 3)
        img = (img - img.min()) / (img.max() - img.min() + 1e-6)
        c = tuple(float(v) for v in rng.random(3))
        cv2.circle(img, (int(rng.integers(12, size - 12)), int(rng.integers(12, size - 12))), int(rng.integers(4, 10)), c, -1)
        cv2.imwrite(str(folder / f"im{i:02d}.png"), (img * 255).astype(np.uint8))
    return folder


def cfg_for(stage: str, data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        stage=stage, data=(str(data),), out=str(out), steps=4, batch_size=2, workers=0, size=SIZE, progress=False,
        log_every=1, ckpt_every=1000,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def step_losses(run: Path) -> dict[int, dict[str, float]]:
    out = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "step":
            out[rec["step"]] = rec
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def prior_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prior")
    train(cfg_for("prior", data, out, preset="face-tiny", steps=3, prior=PriorOptions(perceptual_weight=0, disc_start=1)))
    return out


@pytest.fixture(scope="module")
def code_run(data: Path, prior_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("code")
    train(cfg_for("code", data, out, steps=3, code=CodeOptions(init=str(prior_run), precondition="whiten")))
    return out


@pytest.fixture(scope="module")
def code_run_vr(data: Path, prior_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A code stage without whitening: what the release schedules train, and what --init continues."""
    out = tmp_path_factory.mktemp("code_vr")
    train(cfg_for("code", data, out, steps=2, code=CodeOptions(init=str(prior_run))))
    return out


def fixed_batch(data: Path, lq: str | None = None) -> dict[str, torch.Tensor]:
    from vrrestore.data.datasets import RestorationDataset

    ds = RestorationDataset([data], SIZE, lq, mode="resize")
    items = [ds[(i, i)] for i in range(2)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "skipped"}


def overfit(stage: object, batch: dict[str, torch.Tensor], steps: int) -> list[float]:
    return [stage.train_step(batch, i)["loss"] for i in range(steps)]  # type: ignore[attr-defined]


# -- each stage lowers its loss ------------------------------------------------------------------


def test_prior_stage_lowers_loss_with_gan_and_restarts(data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = cfg_for("prior", data, tmp_path, preset="face-tiny", lr=1e-3,
                  prior=PriorOptions(perceptual_weight=0, disc_start=4, restart_every=3, restart_threshold=0.99))
    stage = PriorStage(cfg, CPU)
    batch = fixed_batch(data)
    losses, metrics = [], []
    for i in range(6):
        m = stage.train_step(batch, i)
        losses.append(m["l1"])
        metrics.append(m)
    assert losses[-1] < 0.8 * losses[0]
    assert "g" not in metrics[3] and "g" in metrics[4] and "d" in metrics[4]  # GAN from disc_start
    assert metrics[4]["d_weight"] >= 0
    assert "restarted" not in metrics[1] and metrics[2]["restarted"] > 0  # every 3 steps; most codes unused
    # the EMA follows the trained weights but lags them
    p, e = stage.vq.decoder.conv_out.weight, stage.ema.model.decoder.conv_out.weight
    assert not torch.equal(p, e)


def test_continuous_prob_decodes_pre_quant_features_on_a_seeded_share_of_steps() -> None:
    from vrrestore.models import VQAutoEncoder, preset
    from vrrestore.train.stages import PriorNet, _uniform

    vq = VQAutoEncoder(preset("face-tiny").prior).eval()
    x = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        z = vq.encode(x)
        assert torch.allclose(PriorNet(vq)(x, True)["rec"], vq.decode(z), atol=1e-6)
        assert torch.allclose(PriorNet(vq)(x, False)["rec"], vq.decode(vq.quantize(z).feat), atol=1e-6)
    share = np.mean([_uniform(0, "continuous", s) < 0.3 for s in range(2000)])
    assert 0.27 < share < 0.33


@pytest.mark.parametrize(
    ("head", "precondition", "target"),
    [("vq", "none", "feat"), ("soft", "none", "feat"), ("direct", "none", "feat"), ("vr", "none", "feat"),
     ("vr", "center", "feat"), ("vr", "whiten", "feat"), ("vr", "center", "oracle")],
)
def test_code_stage_lowers_loss_for_each_head(data: Path, prior_run: Path, tmp_path: Path, head: str, precondition: str, target: str) -> None:
    torch.manual_seed(0)
    cfg = cfg_for("code", data, tmp_path, lr=1e-3, code=CodeOptions(init=str(prior_run), head=head, precondition=precondition, vr_target=target))  # type: ignore[arg-type]
    stage = CodeStage(cfg, CPU)
    assert stage.restorer.cfg.head == head
    batch = fixed_batch(data, "face")
    losses = overfit(stage, batch, 6)
    assert losses[-1] < 0.9 * losses[0], losses
    m = stage.train_step(batch, 6)
    assert ("ce" in m) == (head in ("vq", "soft")) and ("oracle" in m) == (target == "oracle")
    assert ("code_acc" in m) == (head in ("vq", "soft"))
    # prior parts stay frozen
    assert not stage.restorer.decoder.conv_out.weight.requires_grad and not stage.restorer.quantizer.embedding.weight.requires_grad


def test_fidelity_stage_lowers_loss(data: Path, code_run: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = cfg_for("fidelity", data, tmp_path, lr=1e-3, fidelity=FidelityOptions(init=str(code_run), perceptual_weight=0, disc_start=0))
    stage = FidelityStage(cfg, CPU)
    w = stage.fidelity_weights(64, step=5)
    assert torch.equal(w, stage.fidelity_weights(64, step=5)) and 0 <= w.min() and w.max() <= 1 and w.std() > 0.2
    batch = fixed_batch(data, "face")
    before = stage.restorer.decoder.conv_out.weight.clone()
    out_fuse = stage.restorer.out_fuse.body[-1].weight
    assert stage.last_layer is out_fuse  # the adaptive GAN weight compares gradients at the output
    assert out_fuse.abs().max() == 0  # untrained: the identity
    ms = [stage.train_step(batch, i) for i in range(8)]
    assert ms[-1]["l1"] < 0.9 * ms[0]["l1"]  # the fusion starts as the identity, so it gains slowly
    assert out_fuse.abs().max() > 0  # the image-level path trains in this stage
    assert "g" in ms[0] and 0 <= ms[0]["d_weight"] <= 0.1 + 1e-9  # adaptive weight clamped to <= 1, x 0.1
    assert torch.equal(before, stage.restorer.decoder.conv_out.weight)  # decoder frozen
    assert isinstance(stage.restorer.predictor.head, WhitenedVR)  # the code stage's head carries over


def test_detach_code_blocks_image_gradients_to_the_head(data: Path, code_run: Path, tmp_path: Path) -> None:
    batch = fixed_batch(data, "face")
    grads = {}
    for detach in (True, False):
        torch.manual_seed(0)
        cfg = cfg_for("fidelity", data, tmp_path, fidelity=FidelityOptions(init=str(code_run), perceptual_weight=0, detach_code=detach))
        stage = FidelityStage(cfg, CPU)
        out = stage.net(batch["lq"], torch.full((2,), 0.5))
        out["image"].mean().backward()
        grads[detach] = stage.restorer.predictor.head.weight_b.grad
    assert grads[True] is None or grads[True].abs().max() == 0
    assert grads[False] is not None and grads[False].abs().max() > 0


def test_perceptual_loss_falls_back_with_one_line(monkeypatch: pytest.MonkeyPatch, data: Path, tmp_path: Path) -> None:
    from vrrestore.metrics import lpips

    def unavailable(*_a: object, **_k: object) -> None:
        raise lpips.LPIPSUnavailable("no weights here")

    monkeypatch.setattr(lpips, "load_lpips", unavailable)
    said: list[str] = []
    stage = PriorStage(cfg_for("prior", data, tmp_path, preset="face-tiny"), Runtime(torch.device("cpu"), say=said.append))
    assert not stage.perceptual.enabled
    assert said == ["perceptual loss off: LPIPS-alex unavailable (no weights here)"]  # alex: the default
    assert stage.train_step(fixed_batch(data), 0)["perceptual"] == 0.0


def test_sr_chain_prior_code_fidelity_export(data: Path, tmp_path: Path) -> None:
    """sr-tiny end to end: random HR crops, second-order x4 LQ, LR-encoder fusion, export."""
    kw = dict(steps=1, size=SIZE)
    train(cfg_for("prior", data, tmp_path, preset="sr-tiny", prior=PriorOptions(perceptual_weight=0), **kw))  # type: ignore[arg-type]
    train(cfg_for("code", data, tmp_path, code=CodeOptions(init=str(tmp_path), head="vq"), **kw))  # type: ignore[arg-type]
    start = [e for e in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if e["event"] == "start"][-1]
    assert start["recipe"] == "sr-x4" and start["config"]["stage"] == "code"
    train(cfg_for("fidelity", data, tmp_path, fidelity=FidelityOptions(init=str(tmp_path), perceptual_weight=0, disc_start=0), **kw))  # type: ignore[arg-type]
    desc = load_checkpoint(export(tmp_path / "fidelity.pt", tmp_path / "sr.safetensors", "fp32"))
    assert desc.task == "sr" and desc.scale == 4 and desc.head == "vq"
    assert desc(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


# -- whitening is an exact reparametrisation --------------------------------------------------


def test_whitening_makes_the_codebook_orthonormal_and_folds_exactly(code_run: Path, tmp_path: Path) -> None:
    c = torch.randn(64, 8) * 0.1 + 3.0
    for affine in (False, True):
        p = whitening_matrix(c, affine)
        cc = c - c.mean(0) if affine else c
        sv = torch.linalg.svdvals((p.double() @ cc.double()))
        assert torch.allclose(sv, torch.ones_like(sv), atol=1e-6)
    state = train_ckpt.load(code_run, "code")
    from vrrestore.train.stages import build_restorer

    model = build_restorer(state["model"], "whiten")
    model.load_state_dict(state["ema"]["model"])
    x = torch.rand(1, 3, SIZE, SIZE)
    ref = model(x, 0.0)
    folded = fold_heads(model)
    assert not isinstance(folded.predictor.head, WhitenedVR)
    assert torch.allclose(folded(x, 0.0), ref, atol=1e-5)


def _fit_vr(c: torch.Tensor, h: torch.Tensor, f: torch.Tensor, pre: str, target: str, init: str, steps: int = 100) -> float:
    """Adam (lr 1e-3) on a VR head alone: feature MSE after ``steps``."""
    from vrrestore.models.heads import VectorRegression, oracle_weights
    from vrrestore.train.losses import oracle_weight_loss

    torch.manual_seed(1)
    head = VectorRegression(h.shape[1], c.shape[0], affine=pre != "none")
    if init == "zero":
        torch.nn.init.zeros_(head.proj.weight)
    mod: torch.nn.Module = head
    if pre == "whiten":
        mod = WhitenedVR(h.shape[1], c.shape[0], True)
        mod.init_from(head, c)
    opt = torch.optim.Adam(mod.parameters(), lr=1e-3)
    w_star = oracle_weights(f, c, affine=pre != "none")
    for _ in range(steps):
        out = mod(h, c)
        loss = torch.nn.functional.mse_loss(out.feat, f)
        if target == "oracle":
            loss = loss + oracle_weight_loss(out.weights, w_star)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(mod(h, c).feat, f).item()


def test_vr_conditioning_fixes_on_a_codebook_with_a_common_direction() -> None:
    """Codes and features share a strong common direction (as trained VQGAN codebooks do). Plain
    w @ C then trains badly; centring (and whitening) fix it, the oracle target helps the plain
    head, and zero init beats the layer's default init."""
    torch.manual_seed(0)
    n, d, dm, t = 256, 32, 64, 512
    m = torch.nn.functional.normalize(torch.randn(d), dim=0)
    c = torch.randn(n, d) * 0.3 + 3.0 * m
    h = torch.nn.functional.layer_norm(torch.randn(t, dm), (dm,)) + 0.5 * torch.randn(dm)  # LN output + its bias
    f = 3.0 * m + h @ (torch.randn(dm, d) / dm**0.5)
    var = f.var(0).mean().item()
    r = {f"{p}:{g}:{i}": _fit_vr(c, h, f, p, g, i) for p, g, i in [
        ("none", "feat", "zero"), ("none", "oracle", "zero"), ("center", "feat", "zero"), ("whiten", "feat", "zero"),
        ("none", "feat", "model"), ("center", "feat", "model")]}
    assert r["none:feat:zero"] > 0.2 * var, r
    assert r["center:feat:zero"] < 0.01 * var, r
    assert r["whiten:feat:zero"] < 0.05 * var, r
    assert r["none:oracle:zero"] < 0.8 * r["none:feat:zero"], r
    assert r["none:feat:model"] > r["none:feat:zero"] and r["center:feat:model"] > r["center:feat:zero"], r


def test_zero_init_starts_vr_at_the_codebook_mean(data: Path, prior_run: Path, tmp_path: Path) -> None:
    stage = CodeStage(cfg_for("code", data, tmp_path, code=CodeOptions(init=str(prior_run))), CPU)
    assert stage.cfg.code.vr_init == "zero" and stage.cfg.code.precondition == "center"
    out = stage.codenet(torch.rand(1, 3, SIZE, SIZE))
    mean = stage.restorer.codebook.mean(0)
    assert torch.allclose(out["feat"], mean.expand_as(out["feat"]), atol=1e-5)


def test_run_code_ablation_reports_every_variant(data: Path, prior_run: Path) -> None:
    from vrrestore.train.ablation import Variant, run_code_ablation

    assert Variant.parse("vr:whiten:oracle:model@1e-3") == Variant("vr:whiten:oracle:model@1e-3", "vr", "whiten", "oracle", "model", 1e-3)
    lines: list[str] = []
    res = run_code_ablation(str(prior_run), [str(data)], ["vq", "vr:none:feat", "vr:whiten:oracle@1e-3"], steps=2,
                            batch_size=2, size=SIZE, eval_images=2, say=lines.append)
    rows = res["rows"]
    assert [r["variant"] for r in rows] == ["vq", "vr:none:feat", "vr:whiten:oracle@1e-3"]
    assert [r["lr"] for r in rows] == [1e-4, 1e-4, 1e-3] and all(r["steps"] == 2 for r in rows)
    assert all(np.isfinite(r["feat_mse"]) and 0 < r["psnr"] < 60 for r in rows)
    assert set(res["references"]) >= {"decode(E_H(gt))", "decode(Q(E_H(gt)))"} and res["codebook"]["cond(C)"] >= 1
    assert len(lines) == 5


# -- resume, time budget, export ---------------------------------------------------------------


@pytest.mark.parametrize("stage", ["prior", "fidelity"])
def test_resume_reproduces_the_uninterrupted_run(stage: str, data: Path, code_run: Path, tmp_path: Path) -> None:
    def cfg(out: Path) -> TrainConfig:
        if stage == "prior":
            return cfg_for("prior", data, out, preset="face-tiny", steps=5,
                           prior=PriorOptions(perceptual_weight=0, disc_start=1, restart_every=2))
        return cfg_for("fidelity", data, out, steps=5, fidelity=FidelityOptions(init=str(code_run), perceptual_weight=0, disc_start=1))

    full = train(cfg(tmp_path / "full"))
    assert full.reason == "done" and full.step == 5
    part = train(cfg(tmp_path / "part"), stop=lambda s: s == 2)  # 6 images / batch 2: step 3 is an epoch boundary
    assert part.reason == "interrupted" and part.step == 2
    with pytest.raises(Exception, match="--resume"):
        train(cfg(tmp_path / "part"))  # refuses to overwrite a run
    done = train(cfg(tmp_path / "part"), resume=True)
    assert done.step == 5
    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "part")
    for s in (3, 4, 5):
        for key in ("loss", "l1", "d"):
            assert a[s][key] == b[s][key], (s, key, a[s][key], b[s][key])
    sa = torch.load(tmp_path / "full" / f"{stage}.pt", weights_only=True)
    sb = torch.load(tmp_path / "part" / f"{stage}.pt", weights_only=True)
    for k, v in sa["ema"]["model"].items():
        assert torch.equal(v, sb["ema"]["model"][k]), k
    assert sa["step"] == sb["step"] == 5 and sa["epoch"] == sb["epoch"]


def test_time_budget_ends_with_a_checkpoint(data: Path, prior_run: Path, tmp_path: Path) -> None:
    res = train(cfg_for("code", data, tmp_path, steps=50, max_minutes=1e-6, code=CodeOptions(init=str(prior_run))))
    assert res.reason == "time budget" and res.step == 1
    state = train_ckpt.load(tmp_path, "code")
    assert state["step"] == 1
    events = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events[-1] == {**events[-1], "event": "end", "reason": "time budget", "step": 1}


def test_training_checkpoint_is_weights_only_and_export_writes_ema(prior_run: Path, code_run: Path, data: Path, tmp_path: Path) -> None:
    state = torch.load(code_run / "code.pt", weights_only=True)  # tensors, dicts, lists, numbers, strings
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    out = export(code_run / "code.pt", tmp_path / "m.safetensors", "fp16")
    meta = read_metadata(out)
    training = json.loads(meta["training"])
    assert meta["dtype"] == "fp16" and meta["head"] == "vr" and meta["task"] == "face"
    assert training["steps"] == 3 and training["head"] == "vr" and training["preset"] == "face-tiny"
    assert training["data"] == [str(data)] and training["seconds"] >= 0 and training["precondition"] == "whiten"
    assert [s["stage"] for s in training["stages"]] == ["prior", "code"]
    desc = load_checkpoint(out)
    ema = state["ema"]["model"]
    w = desc.model.predictor.layers[0].mlp[0].weight
    assert torch.equal(w, ema["predictor.layers.0.mlp.0.weight"].half().float())
    prior_file = export(prior_run / "prior.pt", tmp_path / "p.safetensors")  # a prior exports as its own format
    with safe_open(str(prior_file), framework="pt") as f:
        assert f.metadata()["format"] == "vrrestore-prior"
    with pytest.raises(CheckpointError, match="not a vrrestore checkpoint"):
        load_checkpoint(prior_file)  # ... which the inference loader refuses


# -- CLI -------------------------------------------------------------------------------------------

runner = CliRunner()


def cli(*args: str) -> object:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


def test_cli_prior_flags(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["train", "prior", "--data", str(data), "--out", str(out), "--preset", "face-tiny", "--batch-size", "3",
              "--lr", "0.0003", "--seed", "5", "--ckpt-every", "1", "--device", "cpu", "--workers", "1", "--size", "32",
              "--disc-start", "2", "--continuous-prob", "0.5"]
    r = cli(*common, "--steps", "2")
    assert r.exit_code == 0, r.output
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    start = events[0]["config"]
    assert (start["batch_size"], start["lr"], start["seed"], start["size"], start["workers"]) == (3, 0.0003, 5, 32, 1)
    assert events[0]["device"] == "cpu" and events[0]["size"] == 32
    steps = {e["step"]: e for e in events if e["event"] == "step"}
    assert list(steps) == [2] and "g" not in steps[2]  # --disc-start 2: step index 1 has no GAN yet
    assert steps[2]["lr"] == 0.0003 and steps[2]["perceptual"] > 0
    assert start["prior"]["continuous_prob"] == 0.5 and steps[2]["continuous"] in (0.0, 1.0)
    assert [e["reason"] for e in events if e["event"] == "checkpoint"] == ["interval", "end"]  # --ckpt-every 1
    r = cli(*common, "--steps", "3", "--resume", "--max-minutes", "10")
    assert r.exit_code == 0, r.output
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert events[-2]["event"] == "checkpoint" and events[-1]["step"] == 3 and events[-3]["step"] == 3
    assert "g" in events[-3] and "d" in events[-3]  # GAN on from step index 2
    assert [e["resumed"] for e in events if e["event"] == "start"] == [False, True]
    assert torch.load(out / "prior.pt", weights_only=True)["step"] == 3
    r = runner.invoke(app, ["train", "prior", "--data", str(data), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0  # --preset required for a new prior


def test_cli_code_fidelity_export(data: Path, prior_run: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    r = cli("train", "code", "--data", str(data), "--out", str(code), "--prior", str(prior_run / "prior.pt"),
            "--head", "vr", "--recipe", "face-eval", "--vr-target", "oracle", "--oracle-weight", "0.5",
            "--precondition", "none", "--vr-init", "model", "--steps", "2", "--batch-size", "2", "--workers", "0", "--size", "32")
    assert r.exit_code == 0, r.output
    st = torch.load(code / "code.pt", weights_only=True)
    assert st["config"]["code"] == {**st["config"]["code"], "head": "vr", "recipe": "face-eval", "vr_target": "oracle",
                                    "oracle_weight": 0.5, "precondition": "none", "vr_init": "model"}
    assert st["model"]["config"]["vr_affine"] is False and "oracle" in step_losses(code)[2]
    fid = tmp_path / "fid"
    r = cli("train", "fidelity", "--data", str(data), "--out", str(fid), "--code", str(code), "--recipe", "face",
            "--disc-start", "0", "--steps", "1", "--batch-size", "2", "--workers", "0", "--size", "32")
    assert r.exit_code == 0, r.output
    assert "g" in step_losses(fid)[1]
    assert json.loads((fid / "log.jsonl").read_text().splitlines()[0])["recipe"] == "face"
    r = cli("train", "export", str(fid / "fidelity.pt"), "-o", str(tmp_path / "m.safetensors"), "--dtype", "fp32")
    assert r.exit_code == 0, r.output
    meta = read_metadata(tmp_path / "m.safetensors")
    assert meta["dtype"] == "fp32" and json.loads(meta["training"])["stage"] == "fidelity"
    r = runner.invoke(app, ["train", "code", "--data", str(data), "--out", str(tmp_path / "y"), "--prior", str(prior_run),
                            "--recipe", "nope"])
    assert isinstance(r.exception, UsageError) and "unknown" in str(r.exception)


def test_cli_degrade_is_bit_identical_and_order_free(tmp_path: Path) -> None:
    src = make_images(tmp_path / "hq", n=3, size=36)
    (src / "sub").mkdir()
    (src / "im01.png").rename(src / "sub" / "im01.png")
    (src / "bad.png").write_bytes(b"nope")
    for run in ("a", "b"):
        r = cli("degrade", str(src), "-o", str(tmp_path / run), "--recipe", "sr-x4", "--seed", "3")
        assert r.exit_code == 0
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert [str(p) for p in a] == ["gt/im00.png", "gt/im02.png", "gt/sub/im01.png", "lq/im00.png", "lq/im02.png", "lq/sub/im01.png"]
    for p in a:
        assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()
    assert cv2.imread(str(tmp_path / "a" / "gt" / "im00.png")).shape == (36, 36, 3)  # a multiple of 4 already
    assert cv2.imread(str(tmp_path / "a" / "lq" / "im00.png")).shape == (9, 9, 3)
    # order does not matter: the same file alone in another folder gets the same LQ
    solo = tmp_path / "solo" / "sub"
    solo.mkdir(parents=True)
    (src / "sub" / "im01.png").rename(solo / "im01.png")
    cli("degrade", str(tmp_path / "solo"), "-o", str(tmp_path / "c"), "--recipe", "sr-x4", "--seed", "3")
    assert (tmp_path / "c" / "lq" / "sub" / "im01.png").read_bytes() == (tmp_path / "a" / "lq" / "sub" / "im01.png").read_bytes()
    cli("degrade", str(tmp_path / "solo"), "-o", str(tmp_path / "d"), "--recipe", "sr-x4", "--seed", "4")
    assert (tmp_path / "d" / "lq" / "sub" / "im01.png").read_bytes() != (tmp_path / "c" / "lq" / "sub" / "im01.png").read_bytes()
    cli("degrade", str(tmp_path / "solo"), "-o", str(tmp_path / "e"), "--recipe", "face-eval", "--seed", "3")
    assert cv2.imread(str(tmp_path / "e" / "lq" / "sub" / "im01.png")).shape == (36, 36, 3)
    r = runner.invoke(app, ["degrade", str(src), "-o", str(tmp_path / "f"), "--recipe", "nope"])
    assert isinstance(r.exception, UsageError) and "unknown" in str(r.exception)


def test_inference_import_path_does_not_load_training() -> None:
    code = "import sys, vrrestore.cli; bad = [m for m in ('vrrestore.train', 'vrrestore.data') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True)
    assert out.stdout.strip() == "[]"


# -- the no-prior baseline -----------------------------------------------------------------------


def test_plain_stage_learns_a_correction_to_its_input(data: Path, tmp_path: Path) -> None:
    from vrrestore.models import PlainConfig, PlainRestorer, preset
    from vrrestore.train.stages import PlainStage

    # the global residual: with a silent last layer the baseline returns its input exactly
    model = PlainRestorer(PlainConfig(prior=preset("face-tiny").prior))
    torch.nn.init.zeros_(model.decoder.conv_out.weight)
    torch.nn.init.zeros_(model.decoder.conv_out.bias)
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.equal(model(x, 0.0), x) and torch.equal(model(x, 1.0), x)  # no fidelity knob
    torch.manual_seed(0)
    stage = PlainStage(cfg_for("plain", data, tmp_path, preset="face-tiny", lr=1e-3), CPU)
    batch = fixed_batch(data, "face")
    losses = overfit(stage, batch, 10)
    assert losses[-1] < 0.7 * losses[0]
    assert not torch.equal(stage.model.decoder.conv_out.weight, stage.ema.model.decoder.conv_out.weight)
    with pytest.raises(UsageError, match="face preset"):
        PlainStage(cfg_for("plain", data, tmp_path, preset="sr-tiny"), CPU)


def test_cli_plain_trains_exports_and_loads_as_a_face_model(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "plain"
    common = ["train", "plain", "--data", str(data), "--out", str(run), "--preset", "face-tiny", "--recipe", "face-eval",
              "--batch-size", "2", "--workers", "0", "--size", "32", "--lr", "0.0005", "--warmup-steps", "1"]
    r = cli(*common, "--steps", "2")
    assert r.exit_code == 0, r.output
    st = torch.load(run / "plain.pt", weights_only=True)
    assert st["stage"] == "plain" and st["config"]["plain"]["recipe"] == "face-eval" and st["config"]["lr"] == 0.0005
    assert set(step_losses(run)[2]) >= {"l1", "loss"}
    out = tmp_path / "plain.safetensors"
    assert cli("train", "export", str(run / "plain.pt"), "-o", str(out)).exit_code == 0
    desc = load_checkpoint(out)
    meta = read_metadata(out)
    assert (desc.task, desc.head, desc.architecture, desc.scale) == ("face", "plain", "PlainRestorer", 1)
    assert (meta["task"], meta["head"]) == ("face", "plain") and json.loads(meta["training"])["stage"] == "plain"
    img = desc(torch.rand(1, 3, 64, 64))
    assert img.shape == (1, 3, 64, 64)
    # --init continues from the exported weights (a new machine); the EMA weights are what was exported
    run2 = tmp_path / "plain2"
    r = cli("train", "plain", "--data", str(data), "--out", str(run2), "--preset", "face-tiny", "--init", str(out),
            "--steps", "1", "--batch-size", "2", "--workers", "0", "--size", "32", "--lr", "1e-12")
    assert r.exit_code == 0, r.output
    st2 = torch.load(run2 / "plain.pt", weights_only=True)
    w = st2["nets"]["model"]["decoder.conv_out.weight"]
    assert torch.allclose(w, desc.model.decoder.conv_out.weight.float(), atol=1e-3)
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "x"), "--precision", "fp16"])
    assert isinstance(r.exception, UsageError) and "fp16" in str(r.exception)


def test_cli_choices_follow_the_tables_they_name() -> None:
    from vrrestore.checkpoint import _DTYPES
    from vrrestore.cli._options import RECIPE_NAMES, DtypeChoice, HeadChoice
    from vrrestore.cli.train import PerceptualNet
    from vrrestore.data.degradations import RECIPES
    from vrrestore.metrics.lpips import Net
    from vrrestore.models.heads import HEAD_KINDS

    assert RECIPE_NAMES == tuple(RECIPES)
    assert {c.value for c in HeadChoice} == set(HEAD_KINDS)
    assert {c.value for c in DtypeChoice} == set(_DTYPES)
    assert {c.value for c in PerceptualNet} == set(get_args(Net))


def test_train_cli_defaults_and_help_follow_the_config() -> None:
    import inspect

    from vrrestore.cli import train as cli_train
    from vrrestore.train.config import DEFAULT_LR

    assert inspect.signature(cli_train.fidelity).parameters["fidelity_gain"].default == FidelityOptions().fidelity_gain
    lr_help = cli_train.Lr.__metadata__[0].help
    for stage, lr in DEFAULT_LR.items():
        assert f"{stage} {lr:.0e}".replace("e-0", "e-") in lr_help


def test_fidelity_loss_scales_move_l1_and_texture_apart() -> None:
    pix, tex = fidelity_loss_scales(torch.tensor([0.0, 0.5, 1.0]), 3.0)
    assert torch.allclose(pix, torch.tensor([1.0, 2.5, 4.0])) and torch.allclose(tex, torch.tensor([1.0, 0.4, 0.25]))
    assert torch.equal(fidelity_loss_scales(torch.rand(5), 0.0)[0], torch.ones(5))
    # --texture-fade: the texture terms also fall with (1 - w), to nothing at w = 1; L1 is unchanged
    pix_f, tex_f = fidelity_loss_scales(torch.tensor([0.0, 0.5, 1.0]), 3.0, fade=True)
    assert torch.equal(pix_f, pix) and torch.allclose(tex_f, torch.tensor([1.0, 0.2, 0.0]))


def test_fidelity_stage_weights_each_sample_by_its_fidelity(data: Path, code_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With only L1 on, the stage's loss is mean_i (1 + gain*w_i) * L1_i: a w = 1 sample counts 1 + gain times."""
    batch = fixed_batch(data, "face")
    losses = {}
    for gain in (0.0, 2.0):
        torch.manual_seed(0)
        cfg = cfg_for("fidelity", data, tmp_path, fidelity=FidelityOptions(
            init=str(code_run), perceptual_weight=0, gan_weight=0, code_weight=0, fidelity_gain=gain))
        stage = FidelityStage(cfg, CPU)
        n = batch["gt"].shape[0]
        monkeypatch.setattr(stage, "fidelity_weights", lambda b, step: torch.tensor([1.0] + [0.0] * (b - 1)))
        with torch.no_grad():
            gt, lq = stage.images_in(batch)
            img = stage.net(lq, torch.tensor([1.0] + [0.0] * (n - 1)))["image"].float()
        l1_i = (img - gt).abs().mean(dim=(1, 2, 3))
        m = stage.train_step(batch, 0)
        losses[gain] = (m["loss"], l1_i)
    (loss0, l1_i), (loss2, _) = losses[0.0], losses[2.0]
    assert loss0 == pytest.approx(l1_i.mean().item(), rel=1e-3)
    assert loss2 == pytest.approx(((1 + 2.0 * torch.tensor([1.0] + [0.0] * (len(l1_i) - 1))) * l1_i).mean().item(), rel=1e-3)


def test_fusion_lr_trains_the_new_blocks_faster(data: Path, code_run: Path, tmp_path: Path) -> None:
    """--fusion-lr: the fusion blocks and OutputFuse get their own rate (scheduled like the rest);
    the fine-tuned encoder/transformer keep --lr; unset or equal, one group as before."""
    def stage_with(fusion_lr: float) -> FidelityStage:
        torch.manual_seed(0)
        cfg = cfg_for("fidelity", data, tmp_path / f"f{fusion_lr}", lr=1e-4, fidelity=FidelityOptions(
            init=str(code_run), perceptual_weight=0, gan_weight=0, fusion_lr=fusion_lr))
        return FidelityStage(cfg, CPU)

    plain_stage, fast = stage_with(0.0), stage_with(1e-3)
    assert len(plain_stage.optims["g"].param_groups) == 1 and len(stage_with(1e-4).optims["g"].param_groups) == 1
    rest, fusion = fast.optims["g"].param_groups
    r = fast.restorer
    want = {id(p) for m in (r.fuse, r.out_fuse) for p in m.parameters()}
    assert {id(p) for p in fusion["params"]} == want and want.isdisjoint(id(p) for p in rest["params"])
    assert fusion["initial_lr"] == 1e-3 and rest["initial_lr"] == 1e-4
    assert sum(p.numel() for g in (rest, fusion) for p in g["params"]) == sum(
        p.numel() for p in plain_stage.optims["g"].param_groups[0]["params"])
    batch = fixed_batch(data, "face")
    moved = {}
    for name, st in (("plain", plain_stage), ("fast", fast)):
        before = st.restorer.out_fuse.body[-1].weight.detach().clone()
        st.train_step(batch, 0)
        moved[name] = (st.restorer.out_fuse.body[-1].weight.detach() - before).abs().max().item()
    assert moved["fast"] > 5 * moved["plain"] > 0  # Adam's first step moves each weight by about the rate


def test_decoder_lr_trains_the_decoder_in_its_own_group(data: Path, code_run_vr: Path, tmp_path: Path) -> None:
    """--decoder-lr: the prior's decoder, frozen by default, trains at its own rate (the fusion blocks
    keep theirs); the codebook stays frozen; a continuation (--init) takes the file's trained decoder
    only when the decoder trains, and the current prior's otherwise."""
    from vrrestore.checkpoint import save_checkpoint

    def stage_with(decoder_lr: float, init: str = "") -> FidelityStage:
        torch.manual_seed(0)
        cfg = cfg_for("fidelity", data, tmp_path / f"d{decoder_lr}{bool(init)}", lr=1e-4, fidelity=FidelityOptions(
            init=str(code_run_vr), perceptual_weight=0, gan_weight=0, fusion_lr=1e-3, decoder_lr=decoder_lr, init_weights=init))
        return FidelityStage(cfg, CPU)

    frozen, trained = stage_with(0.0), stage_with(3e-4)
    assert len(frozen.optims["g"].param_groups) == 2 and not any(p.requires_grad for p in frozen.restorer.decoder.parameters())
    rest, fusion, dec = trained.optims["g"].param_groups
    assert (rest["initial_lr"], fusion["initial_lr"], dec["initial_lr"]) == (1e-4, 1e-3, 3e-4)
    assert {id(p) for p in dec["params"]} == {id(p) for p in trained.restorer.decoder.parameters()}
    assert not any(p.requires_grad for p in trained.restorer.quantizer.parameters())
    batch = fixed_batch(data, "face")
    moved = {}
    for name, st in (("frozen", frozen), ("trained", trained)):
        before = st.restorer.decoder.conv_out.weight.detach().clone()
        st.train_step(batch, 0)
        moved[name] = (st.restorer.decoder.conv_out.weight.detach() - before).abs().max().item()
    assert moved["frozen"] == 0.0 and moved["trained"] > 1e-5
    # the exported file of a run that trained its decoder continues with that decoder
    path = save_checkpoint(trained.restorer, tmp_path / "fid.safetensors", dtype="fp32")
    want = trained.restorer.decoder.conv_out.weight.detach()
    again = stage_with(3e-4, init=str(path)).restorer.decoder.conv_out.weight.detach()
    prior_dec = stage_with(0.0, init=str(path)).restorer.decoder.conv_out.weight.detach()
    assert torch.allclose(again, want) and not torch.allclose(prior_dec, want)
    assert torch.equal(prior_dec, frozen.restorer.decoder.conv_out.weight)  # the code stage's (the prior's) decoder


def test_fidelity_stage_builds_the_presets_output_fuse_over_an_older_code_stage(
    data: Path, code_run_vr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The code stage never trains OutputFuse, so a code stage written before its preset's OutputFuse
    changed (residual blocks added) starts the fidelity stage with the preset's block, at the identity:
    the output is the code stage's at every w. A trained block in the code state is kept as it was."""
    import dataclasses

    from vrrestore.train import stages as stages_mod

    real = stages_mod.get_preset
    deeper = dataclasses.replace(real("face-tiny"), out_fuse_blocks=1, out_fuse_width=16)
    monkeypatch.setattr(stages_mod, "get_preset", lambda name: deeper if name == "face-tiny" else real(name))
    init = train_ckpt.load(code_run_vr / "code.pt", "code")
    cfg = cfg_for("fidelity", data, tmp_path / "f", fidelity=FidelityOptions(init=str(code_run_vr), perceptual_weight=0, gan_weight=0))
    stage = FidelityStage(cfg, CPU, init)
    fuse = stage.restorer.out_fuse
    assert len(fuse.body) == 5 and fuse.body[0].out_channels == 16  # conv, SiLU, ResBlock, SiLU, conv
    code_model = build_restorer(init["model"], "none")
    code_model.load_state_dict(init["ema"]["model"])
    x = fixed_batch(data, "face")["lq"]
    with torch.no_grad():
        for w in (0.0, 1.0):
            assert torch.allclose(stage.restorer.eval()(x, w), code_model.eval()(x, w), atol=1e-6)
    assert stage.train_step(fixed_batch(data, "face"), 0)["loss"] > 0
    # a trained block (not what a code stage writes) is not replaced
    trained = {**init, "ema": {"model": dict(init["ema"]["model"])}}
    last = max(int(k.split(".")[2]) for k in trained["ema"]["model"] if k.startswith("out_fuse.body."))
    trained["ema"]["model"][f"out_fuse.body.{last}.bias"] = torch.full_like(init["ema"]["model"][f"out_fuse.body.{last}.bias"], 0.1)
    kept = FidelityStage(cfg_for("fidelity", data, tmp_path / "g", fidelity=FidelityOptions(
        init=str(code_run_vr), perceptual_weight=0, gan_weight=0)), CPU, trained)
    assert kept.restorer.cfg.out_fuse_blocks == 0 and torch.equal(kept.restorer.out_fuse.body[-1].bias, trained["ema"]["model"][f"out_fuse.body.{last}.bias"])


def test_gate_init_starts_output_fuse_as_a_blend_of_decoder_and_input(data: Path, code_run: Path, tmp_path: Path) -> None:
    """--gate-init g: an untrained OutputFuse starts with its gate at g, so at fidelity w the output is
    the decoder's output moved w * g of the way to the input; w = 0 stays the decoder's. A block that
    has trained (--init weights) keeps what it learned."""
    def stage_with(gate: float) -> FidelityStage:
        cfg = cfg_for("fidelity", data, tmp_path / f"g{gate}", lr=1e-4, fidelity=FidelityOptions(
            init=str(code_run), perceptual_weight=0, gan_weight=0, gate_init=gate))
        return FidelityStage(cfg, CPU)

    x = fixed_batch(data, "face")["lq"][:2]
    base, gated = stage_with(0.0).restorer.eval(), stage_with(0.5).restorer.eval()
    with torch.no_grad():
        dec = base(x, 1.0)
        for w in (0.0, 0.5, 1.0):
            want = dec + 0.5 * w * (x - dec)
            assert torch.allclose(gated(x, w), want, atol=1e-5), w
    # a block that has trained (as one loaded with --init would be) is left alone
    stage = stage_with(0.0)
    last = stage.restorer.out_fuse.body[-1]
    with torch.no_grad():
        last.weight[0, 0, 0, 0] = 0.01
    stage._start_gate(0.5)
    assert not last.bias.any()


def test_init_weights_from_before_output_fuse_start_the_new_model_as_the_old(tmp_path: Path) -> None:
    """`--init OLD.safetensors` into a preset that has since gained OutputFuse: every tensor but the
    prior's is copied, OutputFuse stays the identity, so the new model restores exactly as the old one."""
    import dataclasses

    from vrrestore.checkpoint import save_checkpoint
    from vrrestore.errors import UsageError
    from vrrestore.models import build_model, preset
    from vrrestore.train.files import load_restorer_weights

    torch.manual_seed(0)
    old = build_model("FaceRestorer", dataclasses.replace(preset("face-tiny"), out_fuse=False)).eval()
    path = save_checkpoint(old, tmp_path / "old.safetensors", dtype="fp32")
    new = build_model("FaceRestorer", preset("face-tiny")).eval()
    new.decoder.load_state_dict(old.decoder.state_dict())  # the prior's parts come from the current prior
    new.quantizer.load_state_dict(old.quantizer.state_dict())
    load_restorer_weights(new, path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(new.out_fuse.body[-1].weight, torch.zeros_like(new.out_fuse.body[-1].weight))
        assert torch.allclose(new(x, 0.7), old(x, 0.7), atol=1e-6)
    vq = build_model("FaceRestorer", dataclasses.replace(preset("face-tiny"), head="vq"))
    with pytest.raises(UsageError, match="differs in head"):
        load_restorer_weights(vq, path)


def test_init_weights_with_an_untrained_output_fuse_fit_a_deeper_one(tmp_path: Path) -> None:
    """A code-stage file (OutputFuse at its zero init) starts a fidelity stage whose preset has since
    grown OutputFuse's residual blocks: the new block keeps its identity start, so the model restores
    as the file's; a file whose OutputFuse has trained is refused (its weights would be dropped)."""
    import dataclasses

    from vrrestore.checkpoint import save_checkpoint
    from vrrestore.errors import UsageError
    from vrrestore.models import build_model, preset
    from vrrestore.train.files import load_restorer_weights

    torch.manual_seed(0)
    old = build_model("FaceRestorer", dataclasses.replace(preset("face-tiny"), out_fuse_blocks=0)).eval()
    path = save_checkpoint(old, tmp_path / "code.safetensors", dtype="fp32")
    deeper = dataclasses.replace(preset("face-tiny"), out_fuse_width=16, out_fuse_blocks=2)
    new = build_model("FaceRestorer", deeper).eval()
    new.decoder.load_state_dict(old.decoder.state_dict())
    new.quantizer.load_state_dict(old.quantizer.state_dict())
    load_restorer_weights(new, path)
    assert len(new.out_fuse.body) == 6 and not new.out_fuse.body[-1].weight.any()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(new(x, 1.0), old(x, 1.0), atol=1e-6)
        old.out_fuse.body[-1].bias[0] = 0.5  # as a fidelity stage leaves it
    trained = save_checkpoint(old, tmp_path / "fidelity.safetensors", dtype="fp32")
    with pytest.raises(UsageError, match="differs in out_fuse_blocks, out_fuse_width"):
        load_restorer_weights(build_model("FaceRestorer", deeper), trained)
