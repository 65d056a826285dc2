"""`vrrestore benchmark` end to end on tiny generated sets: baselines, a random checkpoint, every flag.

The degradation module belongs to another engineer; these tests use a local stand-in with the same
contract (``degrade(hq, recipe, seed)``, ``recipe_scale``, ``RECIPES``) so their numbers are fixed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import types
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vrrestore.benchmark as bm
from vrrestore.checkpoint import save_checkpoint
from vrrestore.cli import app
from vrrestore.errors import UsageError
from vrrestore.metrics.fidelity import psnr, ssim
from vrrestore.metrics.lpips import available as lpips_available
from vrrestore.models import build_model, preset


pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()
HAVE_LPIPS = lpips_available("alex")  # bundled with vrrestore: always, unless the install is damaged
_SCALES = {"face": 1, "face-eval": 1, "sr-x4": 4, "bicubic-x4": 4}


def _degrade(hq: np.ndarray, recipe: str, seed: int) -> np.ndarray:
    """Stand-in: blur, downscale by the recipe's scale, seeded Gaussian noise."""
    rng = np.random.default_rng(seed)
    s = _SCALES[recipe]
    x = cv2.GaussianBlur(hq, (0, 0), 1.2)
    if s > 1:
        x = cv2.resize(x, (hq.shape[1] // s, hq.shape[0] // s), interpolation=cv2.INTER_AREA)
    return np.clip(x + rng.normal(0, 0.03, x.shape).astype(np.float32), 0, 1)


def _seed(base: int, *parts: object) -> int:
    return zlib.crc32(":".join(map(str, (base, *parts))).encode())


_REAL_DEGRADATIONS = bm._load_degradations


@pytest.fixture(autouse=True)
def _standins(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setattr(bm, "_load_degradations", lambda: (_degrade, _SCALES.__getitem__, list(_SCALES), _seed))
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path_factory.getbasetemp() / "vrcache"))
    monkeypatch.delenv("VRRESTORE_LPIPS_WEIGHTS", raising=False)


def _image(i: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(100 + i)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(6 * xx + i), np.cos(5 * yy * xx + i), xx * yy], -1) * 0.4 + 0.5
    img[size // 4 : size // 2, size // 4 : size // 2] = 0.9 - 0.2 * i  # a sharp edge for detail
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def _save(folder: Path, name: str, img: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / name)


@pytest.fixture(scope="module")
def hq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hq")
    for i in range(4):
        _save(folder, f"img{i}.png", _image(i))
    return folder


@pytest.fixture(scope="module")
def face_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model("FaceRestorer", preset("face-tiny")), tmp_path_factory.mktemp("ck") / "tiny.safetensors")


def _invoke(args: list[str]):  # noqa: ANN202 - click Result
    result = runner.invoke(app, ["benchmark", *args])
    if result.exception and not isinstance(result.exception, (SystemExit, UsageError)):
        raise result.exception
    return result


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_synthetic_lq_is_identical_every_run_and_independent_of_limit(hq: Path) -> None:
    a = bm.synthetic_dataset(hq, "face", seed=5)
    b = bm.synthetic_dataset(hq, "face", seed=5)
    c = bm.synthetic_dataset(hq, "face", seed=5, limit=2)
    d = bm.synthetic_dataset(hq, "face", seed=6)
    assert [s.name for s in a.samples] == ["img0", "img1", "img2", "img3"] and len(c.samples) == 2
    for x, y in zip(a.samples, b.samples, strict=True):
        assert np.array_equal(x.lq, y.lq)
    assert np.array_equal(a.samples[1].lq, c.samples[1].lq)
    assert not np.array_equal(a.samples[0].lq, d.samples[0].lq)


def test_hq_mode_equals_degrade_command_then_pairs(hq: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real degradations: `--hq --seed S` scores exactly the pairs `vrrestore degrade --seed S` writes."""
    pytest.importorskip("vrrestore.data.degradations")
    monkeypatch.setattr(bm, "_load_degradations", _REAL_DEGRADATIONS)
    out = tmp_path / "pairs"
    r = runner.invoke(app, ["degrade", str(hq), "-o", str(out), "--recipe", "face-eval", "--seed", "3"])
    assert r.exit_code == 0, r.output
    on_the_fly = bm.synthetic_dataset(hq, "face-eval", seed=3)
    again = bm.synthetic_dataset(hq, "face-eval", seed=3)
    pairs = bm.paired_dataset(out / "lq", out / "gt")
    for a, b, c in zip(on_the_fly.samples, again.samples, pairs.samples, strict=True):
        assert a.name == c.name and np.array_equal(a.lq, b.lq)
        assert np.array_equal(bm.to_uint8(a.lq), bm.to_uint8(c.lq)) and np.array_equal(bm.to_uint8(a.gt), bm.to_uint8(c.gt))


def test_input_vs_bicubic_face_writes_all_formats(hq: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _invoke([
        "--hq", str(hq), "--recipe", "face", "--seed", "1", "-m", "input,bicubic", "--lpips", "none",
        "--batch-sizes", "1,2", "--repeats", "1", "--device", "cpu",
        "--json-file", str(out / "r.json"), "--csv", str(out / "r.csv"), "--markdown", str(out / "r.md"), "--grid", str(out / "g.png"),
    ])
    assert r.exit_code == 0, r.stderr
    assert "input" in r.stdout and "RGB, no border crop" in r.stdout
    rep = _json(out / "r.json")
    assert rep["task"] == "face" and rep["scale"] == 1 and rep["n_images"] == 4 and rep["seed"] == 1
    assert rep["convention"].startswith("PSNR/SSIM on RGB, no border crop")
    # Independent recomputation of the `input` baseline: the LQ itself, rounded to uint8.
    ds = bm.synthetic_dataset(hq, "face", seed=1)
    ref = [psnr(bm.to_uint8(s.lq), bm.to_uint8(s.gt)) for s in ds.samples]
    inp = rep["results"][0]
    assert inp["name"] == "input" and inp["psnr"] == pytest.approx(np.mean(ref), abs=1e-9)
    assert inp["psnr"] == pytest.approx(27.28, abs=0.05)
    assert inp["ssim"] == pytest.approx(np.mean([ssim(bm.to_uint8(s.lq), bm.to_uint8(s.gt)) for s in ds.samples]), abs=1e-9)
    assert rep["results"][1]["psnr"] == pytest.approx(inp["psnr"], abs=1e-12)  # faces: LQ is GT-sized
    assert [s["batch"] for s in inp["speed"]] == [1, 2] and all(s["ms_per_image"] > 0 for s in inp["speed"])
    assert inp["params"] is None and len(inp["per_image"]) == 4
    rows = list(csv.DictReader(io.StringIO((out / "r.csv").read_text())))
    assert [row["model"] for row in rows] == ["input", "bicubic"]
    assert float(rows[0]["psnr"]) == pytest.approx(inp["psnr"], abs=1e-9) and "ms_per_image_b2" in rows[0]
    md = (out / "r.md").read_text()
    assert md.startswith("| Model | Params (M) | GFLOPs | PSNR | SSIM |") and f"| {inp['psnr']:.2f} |" in md
    assert "CodeFormer/DAEFR convention" in md
    grid = Image.open(out / "g.png")
    assert grid.size == (4 * (192 + 4), 3 * (18 + 192 + 4 + 192 + 4))  # LQ | input | bicubic | GT; 3 samples


def test_sr_convention_and_bicubic(hq: Path, tmp_path: Path) -> None:
    path = tmp_path / "sr.json"
    r = _invoke(["--hq", str(hq), "--task", "sr", "--lpips", "none", "--no-speed", "--json-file", str(path)])
    assert r.exit_code == 0, r.stderr
    rep = _json(path)
    assert rep["recipe"] == "sr-x4" and rep["task"] == "sr" and rep["scale"] == 4
    assert "Y (BT.601" in rep["convention"] and "crop_border=4" in rep["convention"]
    ds = bm.synthetic_dataset(hq, "sr-x4", seed=0)
    for res, method in zip(rep["results"], ("plain", "bicubic"), strict=True):
        outs = [bm.to_uint8(bm.resize(s.lq, s.gt.shape[:2], method)) for s in ds.samples]  # type: ignore[arg-type]
        ref = np.mean([psnr(o, bm.to_uint8(s.gt), crop_border=4, y_channel=True) for o, s in zip(outs, ds.samples, strict=True)])
        assert res["psnr"] == pytest.approx(ref, abs=1e-9) and res["speed"] == []
    assert rep["results"][0]["psnr"] == pytest.approx(31.54, abs=0.05)
    assert rep["results"][1]["psnr"] == pytest.approx(31.46, abs=0.05)


SET5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr_hq" / "Set5"


@pytest.mark.skipif(not (SET5 / "HR").is_dir(), reason="shared Set5 absent")
def test_set5_bicubic_matches_published_table(tmp_path: Path) -> None:
    """Bicubic x4 on Set5 in the SR convention: 28.42 dB / 0.8104 in the SR literature (MATLAB)."""
    path = tmp_path / "set5.json"
    r = _invoke(["--lq", str(SET5 / "LR_bicubic_x4"), "--gt", str(SET5 / "HR"), "-m", "bicubic", "--lpips", "none", "--no-speed", "--json-file", str(path)])
    assert r.exit_code == 0, r.stderr
    res = _json(path)["results"][0]
    assert res["psnr"] == pytest.approx(28.42, abs=0.02) and res["ssim"] == pytest.approx(0.8104, abs=0.0015)


def test_random_checkpoint_model_path(hq: Path, face_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, str]] = []
    real = bm.run_model
    monkeypatch.setattr(bm, "run_model", lambda d, lq, size, f, p: seen.append((f, p)) or real(d, lq, size, f, p))
    path = tmp_path / "m.json"
    r = _invoke([
        "--hq", str(hq), "--recipe", "face", "--limit", "2", "--model", "input", "--model", str(face_ckpt),
        "--lpips", "none", "--batch-sizes", "1,2", "--repeats", "1", "--fidelity", "0.3", "--precision", "fp32",
        "--json-file", str(path),
    ])
    assert r.exit_code == 0, r.stderr
    assert seen == [(0.3, "fp32")] * 3  # --fidelity and --precision reach the model (a warm-up call, then 2 images)
    rep = _json(path)
    assert rep["n_images"] == 2 and rep["fidelity"] == 0.3 and rep["precision"] == "fp32"
    model = rep["results"][1]
    assert model["name"] == "tiny" and model["kind"] == "model" and model["source"] == str(face_ckpt)
    assert model["params"] == sum(p.numel() for p in build_model("FaceRestorer", preset("face-tiny")).parameters())
    assert model["gflops"] == pytest.approx(1.0409, abs=1e-3) and rep["flops_input"] == [64, 64]  # 0.066 of it OutputFuse
    assert [s["batch"] for s in model["speed"]] == [1, 2] and model["peak_memory_mb"] > 10
    assert 0 < model["psnr"] < rep["results"][0]["psnr"]  # a random network is worse than its input


def test_plain_baseline_checkpoint_runs_beside_the_input(hq: Path, tmp_path: Path) -> None:
    """The no-prior baseline is benchmarked like any face checkpoint; a silent one returns its input."""
    from vrrestore.models import PlainConfig

    model = build_model("PlainRestorer", PlainConfig(prior=preset("face-tiny").prior))
    torch.nn.init.zeros_(model.decoder.conv_out.weight)
    torch.nn.init.zeros_(model.decoder.conv_out.bias)
    ck = save_checkpoint(model, tmp_path / "plain.safetensors")
    path = tmp_path / "m.json"
    r = _invoke(["--hq", str(hq), "--recipe", "face", "--limit", "2", "-m", "input", "-m", str(ck), "--lpips", "none",
                 "--no-speed", "--precision", "fp32", "--json-file", str(path)])
    assert r.exit_code == 0, r.stderr
    inp, plain = _json(path)["results"]
    assert plain["name"] == "plain" and plain["kind"] == "model" and plain["params"] == sum(p.numel() for p in model.parameters())
    assert plain["psnr"] == pytest.approx(inp["psnr"], abs=0.05)  # the input at the model's 64 px and back


def test_threads_flag(hq: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = bm.run_benchmark
    monkeypatch.setattr(bm, "run_benchmark", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    path = tmp_path / "t.json"
    r = _invoke(["--hq", str(hq), "--recipe", "face", "-m", "input", "--lpips", "none", "--no-speed", "--threads", "2", "--json-file", str(path)])
    assert r.exit_code == 0, r.stderr
    assert seen == [2] and _json(path)["threads"] == 2 and torch.get_num_threads() == 1  # restored afterwards


def test_repeats_flag_controls_timed_runs(hq: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[int] = []
    real = bm._time
    monkeypatch.setattr(bm, "_time", lambda fn, repeats, device: seen.append(repeats) or real(fn, repeats, device))
    r = _invoke(["--hq", str(hq), "--recipe", "face", "-m", "input", "--lpips", "none", "--repeats", "5"])
    assert r.exit_code == 0 and seen == [5]


def test_paired_folders_matched_by_stem(tmp_path: Path) -> None:
    lq, gt = tmp_path / "lq", tmp_path / "gt"
    for i in range(3):
        img = _image(i, 48)
        _save(gt, f"p{i}.png", img)
        _save(lq, f"p{i}.png", cv2.resize(img, (12, 12), interpolation=cv2.INTER_AREA))
    _save(lq, "orphan.png", _image(9, 12))
    path = tmp_path / "p.json"
    r = _invoke(["--lq", str(lq), "--gt", str(gt), "--lpips", "none", "--no-speed", "--json-file", str(path)])
    assert r.exit_code == 0, r.stderr
    rep = _json(path)
    assert rep["task"] == "sr" and rep["scale"] == 4 and rep["n_images"] == 3
    assert [p["image"] for p in rep["results"][0]["per_image"]] == ["p0", "p1", "p2"]
    assert any("without a partner" in n for n in rep["notes"])
    r = _invoke(["--lq", str(lq), "--gt", str(gt), "--task", "face", "--lpips", "none", "--no-speed", "--json-file", str(path)])
    rep = _json(path)
    assert rep["task"] == "face" and rep["convention"].startswith("PSNR/SSIM on RGB")


@pytest.mark.skipif(not HAVE_LPIPS, reason="vrrestore/bundled/lpips_alex_v0.1.safetensors missing: reinstall vrrestore")
def test_lpips_flag_and_json_to_stdout(hq: Path) -> None:
    r = _invoke(["--hq", str(hq), "--recipe", "face", "--limit", "2", "-m", "input", "--lpips", "alex", "--no-speed", "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["lpips_nets"] == ["alex"]
    assert rep["results"][0]["lpips"]["alex"] == pytest.approx(0.0917, abs=2e-3)
    assert "vrrestore benchmark" in r.stderr  # the table moves to stderr when stdout carries JSON


def test_lpips_unavailable_is_reported_not_guessed(hq: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRRESTORE_LPIPS_WEIGHTS", str(tmp_path / "nope.safetensors"))
    path = tmp_path / "u.json"
    r = _invoke(["--hq", str(hq), "--recipe", "face", "-m", "input", "--no-speed", "--json-file", str(path)])
    assert r.exit_code == 0, r.stderr
    rep = _json(path)
    assert rep["lpips_nets"] == ["vgg"] and rep["results"][0]["lpips"] == {"vgg": None}
    assert any(n.startswith("LPIPS-vgg unavailable") for n in rep["notes"])
    assert "n/a" in r.stdout and "unavailable" in r.stdout


def test_model_name_goes_through_weights_registry(hq: Path, face_ckpt: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from vrrestore.checkpoint import load_checkpoint

    calls: list[tuple] = []
    fake = types.ModuleType("vrrestore.weights")
    fake.load_model = lambda name, task, device: calls.append((name, task, str(device))) or load_checkpoint(face_ckpt, device)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vrrestore.weights", fake)
    path = tmp_path / "w.json"
    r = _invoke(["--hq", str(hq), "--recipe", "face", "--limit", "1", "-m", "face-tiny-v1", "--lpips", "none", "--no-speed", "--json-file", str(path)])
    assert r.exit_code == 0, r.stderr
    assert calls == [("face-tiny-v1", "face", "cpu")]
    assert _json(path)["results"][0]["source"] == "weights:face-tiny-v1"


def test_sr_model_on_face_data_is_refused(hq: Path, tmp_path: Path) -> None:
    ck = save_checkpoint(build_model("SRRestorer", preset("sr-tiny")), tmp_path / "sr.safetensors")
    r = _invoke(["--hq", str(hq), "--recipe", "face", "-m", str(ck), "--lpips", "none"])
    assert isinstance(r.exception, UsageError) and "sr model cannot be benchmarked on face data" in str(r.exception)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lpips", "none"], "no data"),
        (["--hq", "X", "--lq", "Y", "--gt", "Z"], "not both"),
        (["--hq", "HQ", "--batch-sizes", "1,x"], "--batch-sizes"),
        (["--hq", "HQ", "--batch-sizes", "0"], "--batch-sizes"),
        (["--hq", "HQ", "--lpips", "squeeze"], "--lpips"),
        (["--hq", "HQ", "--recipe", "nope"], "--recipe nope"),
        (["--lq", "HQ", "--gt", "HQ", "--recipe", "face"], "--hq only"),
    ],
)
def test_usage_errors(hq: Path, args: list[str], message: str) -> None:
    r = _invoke([str(hq) if a == "HQ" else a for a in args])
    assert isinstance(r.exception, UsageError) and message in str(r.exception)
    assert r.exception.exit_code == 2 and "\n" not in str(r.exception)


def test_device_flag_errors_cleanly(hq: Path) -> None:
    r = runner.invoke(app, ["benchmark", "--hq", str(hq), "--recipe", "face", "--device", "tpu"])
    assert isinstance(r.exception, UsageError) and r.exception.exit_code == 2  # a spelling that names no device


def test_detail_box_finds_the_edge() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[40:50, 8:18] = 255
    y, x, side = bm.detail_box(img)
    assert side == 16 and y <= 40 < y + side and x <= 8 < x + side


def test_json_flag_prints_one_document_on_errors_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    from cli_main import run_main

    code, out, err = run_main(monkeypatch, capsys, "benchmark", "--json", "--hq", str(tmp_path / "missing"))
    assert code == 2 and json.loads(out)["exit_code"] == 2 and "missing" in err


def test_max_pixels_flag_refuses_big_images(hq: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cli_main import run_main

    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "0")  # the flag overwrites it; monkeypatch removes it after the test
    code, _, err = run_main(monkeypatch, capsys, "benchmark", "--hq", str(hq), "--recipe", "face", "--limit", "1",
                            "-m", "input", "--lpips", "none", "--no-speed", "--max-pixels", "100")
    assert code != 0 and "decompression bomb" in err and str(hq) in err and "--max-pixels" in err


def test_grid_outputs_only_leaves_the_data_out(hq: Path, tmp_path: Path) -> None:
    r = _invoke(["--hq", str(hq), "--recipe", "face", "-m", "input,bicubic", "--lpips", "none", "--no-speed",
                 "--grid", str(tmp_path / "g.png"), "--grid-outputs-only"])
    assert r.exit_code == 0, r.stderr
    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (2 * (192 + 4), 3 * (18 + 192 + 4 + 192 + 4))  # input | bicubic only; 3 samples


def test_help_names_the_peers_extra_whole() -> None:
    """Rich markup once ate "[peers]" from the --model help, leaving a pip command that installs no peers."""
    r = runner.invoke(app, ["benchmark", "--help"], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and 'pip install "vrrestore[peers]"' in r.output
