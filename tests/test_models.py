"""Invariants of the codebook heads, the prior and the restorers (issue 2)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vrrestore.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from vrrestore.errors import CheckpointError
from vrrestore.models import (
    DirectRegression,
    FaceRestorer,
    IndexPrediction,
    ModelDescriptor,
    SoftQuantizer,
    SRRestorer,
    VectorQuantizer,
    VectorRegression,
    VQAutoEncoder,
    build_model,
    describe,
    face_presets,
    oracle_weights,
    preset,
    sr_presets,
)
from vrrestore.models.config import config_from_dict, config_to_dict
from vrrestore.models.face import FaceConfig
from vrrestore.models.sr import SRConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_vr_with_one_hot_weights_equals_vq_lookup() -> None:
    vq = VectorQuantizer(64, 16)
    idx = torch.randint(0, 64, (2, 10))
    one_hot = F.one_hot(idx, 64).float()
    vr = VectorRegression.combine(one_hot, vq.codebook)
    assert torch.equal(vr.feat, vq.lookup(idx))


def test_oracle_weights_reproduce_any_feature_when_codebook_has_full_rank() -> None:
    codebook = torch.randn(128, 32)
    assert torch.linalg.matrix_rank(codebook) == 32
    feat = torch.randn(3, 50, 32) * 4.0
    w = oracle_weights(feat, codebook)
    assert w.shape == (3, 50, 128)
    rel = (VectorRegression.combine(w, codebook).feat - feat).norm() / feat.norm()
    assert rel < 1e-5


def test_affine_vr_keeps_one_hot_lookup_and_sums_to_one() -> None:
    codebook = torch.randn(64, 16) + 5.0  # strong common direction, as trained codebooks have
    idx = torch.randint(0, 64, (2, 7))
    out = VectorRegression.combine(F.one_hot(idx, 64).float(), codebook, affine=True)
    assert torch.allclose(out.feat, codebook[idx], atol=1e-5)
    raw = torch.randn(2, 7, 64)
    out = VectorRegression.combine(raw, codebook, affine=True)
    assert torch.allclose(out.weights.sum(-1), torch.ones(2, 7), atol=1e-4)
    assert torch.allclose(out.feat, out.weights @ codebook, atol=1e-4)  # still w @ C
    assert (out.weights < 0).any()  # not a convex combination


def test_affine_oracle_weights_reproduce_features() -> None:
    codebook = torch.randn(128, 32) + 3.0
    feat = torch.randn(4, 9, 32) * 2.0
    w = oracle_weights(feat, codebook, affine=True)
    assert torch.allclose(w.sum(-1), torch.ones(4, 9), atol=1e-4)
    rel = (VectorRegression.combine(w, codebook, affine=True).feat - feat).norm() / feat.norm()
    assert rel < 1e-4


def test_oracle_weights_project_when_codebook_is_rank_deficient() -> None:
    codebook = torch.randn(64, 4) @ torch.randn(4, 16)  # rank 4 < d = 16
    feat = torch.randn(10, 16)
    rel = (oracle_weights(feat, codebook) @ codebook - feat).norm() / feat.norm()
    assert rel > 0.3  # not reachable: VR is only as expressive as span(C)


def test_quantizer_returns_the_nearest_code() -> None:
    vq = VectorQuantizer(50, 8)
    z = torch.randn(4, 30, 8) * 0.05
    out = vq(z)
    brute = torch.cdist(z.reshape(-1, 8), vq.codebook).argmin(1).reshape(4, 30)
    assert torch.equal(out.indices, brute)
    assert torch.allclose(out.feat, vq.lookup(brute))  # forward value is the code itself


def test_quantizer_straight_through_gradient_and_loss_terms() -> None:
    vq = VectorQuantizer(16, 4, beta=0.25)
    z = torch.randn(2, 5, 4, requires_grad=True)
    out = vq(z)
    out.feat.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through
    q = vq.lookup(out.indices)
    expected = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
    assert torch.allclose(out.loss, expected)


def test_dead_codes_are_restarted_from_encoder_outputs() -> None:
    vq = VectorQuantizer(32, 4).train()
    z = torch.randn(1, 200, 4) + 10.0  # far from every code: all map to few codes
    for _ in range(500):
        vq(z)
    dead_before = int((vq.usage < 0.03).sum())
    assert dead_before > 20
    assert vq.restart_dead_codes(z) == dead_before
    restarted = vq.codebook[: 32]
    assert (restarted.mean(1) > 5.0).sum() >= dead_before  # re-seeded near the data


def test_codebook_maths_stays_fp32_under_autocast() -> None:
    codebook = torch.randn(256, 64)
    w = torch.randn(2, 16, 256)
    ref = w @ codebook
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = VectorRegression.combine(w.bfloat16(), codebook).feat
        soft = SoftQuantizer(8, 256)
        sq = soft(torch.randn(2, 16, 8), codebook)
        vq = VectorQuantizer(256, 64)
        z = vq.codebook.detach()[:10].unsqueeze(0) + 1e-4
        idx = vq.nearest(z)
    assert out.dtype == torch.bfloat16
    # fp32 accumulation: the only error left is rounding the result to bf16 once (half an ulp)
    ref_bw = w.bfloat16().float() @ codebook
    assert ((out.float() - ref_bw).abs() <= ref_bw.abs() * 2.0**-8 + 1e-6).all()
    assert (out.float() - ref).norm() / ref.norm() < 1e-2
    assert sq.weights.dtype == torch.float32
    assert torch.equal(idx[0], torch.arange(10))


@pytest.mark.parametrize("affine", [True, False])
def test_vr_fused_inference_equals_explicit_weights(affine: bool) -> None:
    head = VectorRegression(16, 64, affine=affine)
    codebook = torch.randn(64, 8) + 2.0
    x = torch.randn(3, 5, 16)
    explicit = head(x, codebook)  # grad mode: weights materialised
    with torch.inference_mode():
        fused = head(x, codebook)
    assert explicit.weights is not None and fused.weights is None
    assert torch.allclose(fused.feat, explicit.feat, atol=1e-5)


def test_heads_shapes_and_semantics() -> None:
    codebook = torch.randn(32, 8)
    x = torch.randn(2, 6, 16)
    vq = IndexPrediction(16, 32)(x, codebook)
    assert torch.equal(vq.feat, codebook[vq.logits.argmax(-1)])
    soft = SoftQuantizer(16, 32, tau=0.5)(x, codebook)
    assert torch.allclose(soft.weights.sum(-1), torch.ones(2, 6))
    assert (soft.weights >= 0).all()
    vr = VectorRegression(16, 32)(x, codebook)
    assert (vr.weights < 0).any()  # real-valued, not a simplex
    assert DirectRegression(16, 8)(x).feat.shape == (2, 6, 8)


@pytest.mark.parametrize("head", ["vr", "vq", "soft", "direct"])
def test_gradients_reach_head_and_lq_encoder(head: str) -> None:
    cfg = FaceConfig(**{**config_to_dict(preset("face-tiny")), "head": head, "prior": preset("face-tiny").prior})
    model = FaceRestorer(cfg)
    out = model.restore(torch.rand(2, 3, 64, 64), fidelity=0.0)
    target = torch.randn_like(out.head.feat)
    loss = F.mse_loss(out.head.feat, target) if head != "vq" else F.cross_entropy(
        out.head.logits.flatten(0, 1), torch.zeros(out.head.logits.shape[:2], dtype=torch.long).flatten()
    )
    loss.backward()
    assert model.predictor.head.proj.weight.grad.abs().sum() > 0
    assert model.lq_encoder.conv_in.weight.grad.abs().sum() > 0


def test_vr_image_loss_reaches_head_through_decoder() -> None:
    model = FaceRestorer(preset("face-tiny"))
    img = model(torch.rand(1, 3, 64, 64), 0.5)
    img.mean().backward()
    assert model.predictor.head.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["face-tiny", "sr-tiny"])
def test_fidelity_changes_output_and_zero_ignores_fusion_branch(name: str) -> None:
    cfg = preset(name)
    model = build_model("FaceRestorer" if name.startswith("face") else "SRRestorer", cfg).eval()
    x = torch.rand(2, 3, 64, 64) if name.startswith("face") else torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        for block in model.fuse.values():  # give the fusion branch a non-trivial effect
            for p in block.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        y0, y1 = model(x, 0.0), model(x, 1.0)
        assert (y0 - y1).abs().mean() > 1e-4
        for block in model.fuse.values():
            for p in block.parameters():
                p.mul_(-3.0).add_(1.0)
        assert torch.equal(model(x, 0.0), y0)
        assert not torch.allclose(model(x, 1.0), y1)
        per_sample = model(x, torch.tensor([0.0, 1.0]))
    assert torch.allclose(per_sample[0], y0[0], atol=1e-5)


@pytest.mark.parametrize("name", ["face-tiny", "sr-tiny", "face-cpu", "sr-x4-cpu"])  # OutputFuse without/with blocks
def test_untrained_fusion_is_the_identity_at_every_fidelity_but_learns(name: str) -> None:
    """Zero-initialised scale/shift outputs: w = 1 starts as good as w = 0, and the gradient still reaches them."""
    model = build_model("FaceRestorer" if name.startswith("face") else "SRRestorer", preset(name))
    x = torch.rand(2, 3, 64, 64) if name.startswith("face") else torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, 0.0), model(x, 1.0))
    model(x, 1.0).mean().backward()
    block = next(iter(model.fuse.values()))
    block = block[-1] if isinstance(block, torch.nn.ModuleList) else block
    assert block.scale[-1].weight.grad.abs().sum() > 0 and block.shift[-1].weight.grad.abs().sum() > 0
    assert model.out_fuse.body[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["face-tiny", "sr-tiny", "face-cpu", "sr-x4-cpu"])  # stem 1 and stem 4
def test_output_fuse_can_copy_the_input_and_w_blends_it_in(name: str) -> None:
    """Gate a = 1, b = 0: w = 1 gives the input itself (an SR input bicubic-upsampled), w = 0 the
    prior's output, w = 0.5 the mean of the two; the path a plain net's global residual takes. With a
    pixel-unshuffle stem this also checks that the input's layout is the decoder output's."""
    face = name.startswith("face")
    model = build_model("FaceRestorer" if face else "SRRestorer", preset(name)).eval()
    x = torch.rand(2, 3, 64, 64) if face else torch.rand(2, 3, 16, 16)
    target = x if face else F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    with torch.no_grad():
        prior_out = model.restore(x, 0.0).image
        last = model.out_fuse.body[-1]
        half = last.bias.numel() // 2
        last.bias[:half] = 1.0  # a
        assert torch.equal(model.restore(x, 0.0).image, prior_out)
        assert torch.allclose(model.restore(x, 1.0).image, target, atol=1e-5)
        assert torch.allclose(model.restore(x, 0.5).image, (prior_out + target) / 2, atol=1e-5)
        assert (prior_out - target).abs().mean() > 0.05  # the two ends really differ


def test_configs_written_before_output_fuse_build_the_model_they_were_trained_as() -> None:
    for cls, name in ((FaceConfig, "face-cpu"), (SRConfig, "sr-x4-cpu")):
        data = config_to_dict(preset(name))
        assert data.pop("out_fuse") is True
        old = config_from_dict(cls, data)
        model = build_model("FaceRestorer" if cls is FaceConfig else "SRRestorer", old)
        assert old.out_fuse is False and model.out_fuse is None
        assert not any(k.startswith("out_fuse.") for k in model.state_dict())
        del data["out_fuse_width"], data["out_fuse_blocks"]  # written before OutputFuse had residual blocks
        model = build_model("FaceRestorer" if cls is FaceConfig else "SRRestorer", config_from_dict(cls, {**data, "out_fuse": True}))
        assert [type(m).__name__ for m in model.out_fuse.body] == ["Conv2d", "SiLU", "Conv2d"]
        assert model.out_fuse.body[0].out_channels == 32


def test_every_preset_builds_and_runs_at_a_tiny_size() -> None:
    for name, cfg in {**face_presets(), **sr_presets()}.items():
        model = build_model("FaceRestorer" if name.startswith("face") else "SRRestorer", cfg).eval()
        desc = describe(model)
        side = 2 * desc.size_multiple if desc.task == "face" else 4 * desc.size_multiple
        with torch.no_grad():
            y = desc(torch.rand(1, 3, side, side), 0.5)
        assert y.shape == (1, 3, side * desc.scale, side * desc.scale), name
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, name


def test_published_geometries() -> None:
    base = preset("face-base")
    assert (base.prior.img_size, base.prior.latent_size, base.prior.codebook_size, base.prior.emb_dim) == (512, 16, 1024, 256)
    assert (base.n_layers, base.d_model) == (9, 512)
    sr = preset("sr-x4-base")
    assert (sr.prior.latent_size, sr.prior.codebook_size, sr.prior.emb_dim, sr.scale) == (32, 1024, 512, 4)
    n = sum(p.numel() for p in FaceRestorer(base).parameters())
    assert 90e6 < n < 98e6  # CodeFormer is about 94M


def test_prior_decodes_unquantized_features() -> None:
    prior = VQAutoEncoder(preset("face-tiny").prior)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    z = prior.encode(x)
    recon, q = prior(x)
    assert recon.shape == x.shape and q.loss is not None
    assert prior.decode(z).shape == x.shape


def test_load_prior_copies_codebook_and_decoder() -> None:
    cfg = preset("face-tiny")
    prior = VQAutoEncoder(cfg.prior)
    model = FaceRestorer(cfg)
    model.load_prior(prior)
    assert torch.equal(model.codebook, prior.codebook)
    assert torch.equal(model.decoder.conv_out.weight, prior.decoder.conv_out.weight)
    assert torch.equal(model.lq_encoder.conv_in.weight, prior.encoder.conv_in.weight)


def test_config_round_trip() -> None:
    for cls, table in ((FaceConfig, face_presets()), (SRConfig, sr_presets())):
        for cfg in table.values():
            assert config_from_dict(cls, json.loads(json.dumps(config_to_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict(FaceConfig, {"bogus": 1})


def test_checkpoint_round_trip_is_exact(tmp_path) -> None:
    model = SRRestorer(preset("sr-tiny")).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", training={"steps": 3})
    desc = load_checkpoint(path)
    assert desc.task == "sr" and desc.scale == 4 and desc.head == "vr"
    for k, v in model.state_dict().items():
        assert torch.equal(desc.model.state_dict()[k], v), k
    meta = read_metadata(path)
    assert meta["format"] == "vrrestore" and json.loads(meta["training"]) == {"steps": 3}
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(desc(x, 0.3, "fp32"), model(x, 0.3).clamp(0, 1), atol=1e-5)  # auto may be bf16 here


def test_fp16_checkpoint_halves_size_and_loads(tmp_path) -> None:
    model = FaceRestorer(preset("face-tiny"))
    p32 = save_checkpoint(model, tmp_path / "a.safetensors")
    p16 = save_checkpoint(model, tmp_path / "b.safetensors", dtype="fp16")
    assert p16.stat().st_size < 0.55 * p32.stat().st_size
    desc = load_checkpoint(p16)
    w = desc.model.state_dict()["decoder.conv_out.weight"]
    assert w.dtype == torch.float32
    assert torch.allclose(w, model.state_dict()["decoder.conv_out.weight"], atol=1e-3)


def test_foreign_and_mismatched_files_are_refused(tmp_path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a vrrestore checkpoint"):
        load_checkpoint(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.safetensors")
    # right metadata, wrong tensors
    good = save_checkpoint(FaceRestorer(preset("face-tiny")), tmp_path / "good.safetensors")
    meta = read_metadata(good)
    meta["config"] = json.dumps(config_to_dict(preset("face-s")))
    bad = tmp_path / "bad.safetensors"
    save_file({"decoder.conv_out.weight": torch.zeros(3, 16, 3, 3)}, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(bad)
    meta["format_version"] = "99"
    newer = tmp_path / "newer.safetensors"
    save_file({"x": torch.zeros(1)}, str(newer), metadata=meta)
    with pytest.raises(CheckpointError, match="upgrade vrrestore"):
        load_checkpoint(newer)


class _NaNUnderAutocast(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, fidelity: float) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):
            return x * float("nan")
        return x * self.w


def test_descriptor_retries_in_fp32_when_half_precision_gives_nan() -> None:
    desc = ModelDescriptor(_NaNUnderAutocast(), "sr", "test", "vr", scale=1, size_multiple=1, fixed_size=None, tiling=None)
    x = torch.rand(1, 3, 4, 4)
    y = desc(x, precision="bf16")
    assert desc.last_fell_back_to_fp32 and torch.equal(y, x)
    assert desc.resolve_precision("auto") == torch.float32  # CPU default
