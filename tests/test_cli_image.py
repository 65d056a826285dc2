"""`vrrestore image` and `vrrestore doctor` end to end, with a real (random) sr-tiny checkpoint.

CliRunner covers each flag. Subprocesses check the exit codes that main() returns, and Ctrl-C with resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakemodels import with_trained_fusion
from typer.testing import CliRunner

from vrrestore.checkpoint import save_checkpoint
from vrrestore.cli import app
from vrrestore.io import Image, read_image, write_image
from vrrestore.models import build_model, preset
from vrrestore.tiling import count_tiles

torch.set_num_threads(1)
RNG = np.random.default_rng(0)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(with_trained_fusion(build_model("SRRestorer", preset("sr-tiny"))), tmp_path_factory.mktemp("m") / "m.safetensors")


def img(path: Path, w: int = 16, h: int = 16, *, alpha: bool = False, gray16: bool = False) -> Path:
    if gray16:
        px = RNG.integers(0, 65536, (h, w), dtype=np.uint16)
    else:
        px = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    a = RNG.integers(0, 256, (h, w), dtype=np.uint8) if alpha else None
    write_image(Image(px, a), path)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def restore(model: Path, *args: str) -> tuple[int, dict, str]:
    code, out, err = run("image", "--model", str(model), "--json", "--tile", "16", "--tile-overlap", "4", *args)
    return code, json.loads(out), err


# --------------------------------------------------------------------------------------------- flags


def test_help_documents_every_flag() -> None:
    code, out, _ = run("image", "--help")
    assert code == 0
    for flag in ("--output", "--suffix", "--ext", "--quality", "--overwrite", "--recursive", "--fail-fast", "--json",
                 "--device", "--precision", "--model", "--fidelity", "--tile", "--tile-overlap"):
        assert flag in out


def test_rgba_x4_with_tiles_and_json(model: Path, tmp_path: Path) -> None:
    src = img(tmp_path / "p.png", 20, 16, alpha=True)
    code, report, err = restore(model, str(src), "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert "\x1b[" not in err and "tiles 1/" not in err  # stderr is not a terminal: no bars; a line per file
    assert "image [1/1]" in err and "p.png: ok" in err
    f = report["files"][0]
    assert f["status"] == "ok" and f["output"] == str(tmp_path / "out" / "p.png")
    d = f["details"]
    assert d["size"] == [20, 16] and d["output_size"] == [80, 64] and d["alpha"] and d["tile"] == 16
    assert d["tiles"] == count_tiles(16, 20, tile=16, overlap=4, multiple=2) == 2
    out = read_image(tmp_path / "out" / "p.png")
    assert out.size == (80, 64) and out.alpha is not None and out.bit_depth == 8


def test_tile_overlap_changes_the_tiling(model: Path, tmp_path: Path) -> None:
    src = img(tmp_path / "p.png", 32, 32)
    _, r1, _ = restore(model, str(src), "-o", str(tmp_path / "a"))
    _, r2, _ = restore(model, str(src), "-o", str(tmp_path / "b"), "--tile-overlap", "8")
    assert r1["files"][0]["details"]["tiles"] == 9 and r2["files"][0]["details"]["tiles"] == 9
    code, r3, _ = run("image", "--model", str(model), "--json", "--tile", "16", "--tile-overlap", "2", str(src), "-o", str(tmp_path / "c"))
    assert json.loads(r3)["files"][0]["details"]["tiles"] == count_tiles(32, 32, tile=16, overlap=2, multiple=2) == 9
    assert run("image", "--model", str(model), "--tile", "-1", str(src))[0] == 2
    a, b = read_image(tmp_path / "a" / "p.png").pixels, read_image(tmp_path / "b" / "p.png").pixels
    assert a.shape == b.shape == (128, 128, 3) and not np.array_equal(a, b)  # different blend, same size


def test_auto_tile_is_large_against_the_overlap_and_odd_tiles_are_refused(model: Path, tmp_path: Path, monkeypatch) -> None:
    src = img(tmp_path / "p.png", 80, 72)
    code, out, _ = run("image", "--model", str(model), "--json", str(src), "-o", str(tmp_path / "o"))
    d = json.loads(out)["files"][0]["details"]
    # sr-tiny's descriptor says tile 16 with overlap 8, which redoes 4x the work; auto uses 8 x 8 = 64 px
    assert code == 0 and d["tile"] == 64 and d["tiles"] == count_tiles(72, 80, tile=64, overlap=8, multiple=2) == 4
    code, _, err = run("image", "--model", str(model), "--tile", "5", str(src), "-o", str(tmp_path / "o5"))
    assert code == 2 and "--tile 5: below this model's smallest tile, 16 px" in err and not (tmp_path / "o5").exists()
    import vrrestore.pipelines.image as pim

    monkeypatch.setattr(pim, "machine_memory", lambda: 4 << 30)  # 4 GiB: half is 2 GiB
    code, _, err = run("image", "--model", str(model), "--tile", "400", str(src), "-o", str(tmp_path / "o400"))
    assert code == 2 and "--tile 400: needs about 4.9 GiB" in err and "use --tile 256 or less" in err
    assert pim.max_tile(4, 2, 4 << 30) == 256 and pim.BYTES_PER_OUTPUT_PX * (256 * 4) ** 2 <= 2 << 30


def test_gray_16bit_stays_gray_16bit(model: Path, tmp_path: Path) -> None:
    code, _, err = restore(model, str(img(tmp_path / "g.png", gray16=True)), "-o", str(tmp_path / "o"))
    assert code == 0, err
    out = read_image(tmp_path / "o" / "g.png")
    assert out.is_gray and out.bit_depth == 16 and out.size == (64, 64)


def test_suffix_ext_and_quality(model: Path, tmp_path: Path) -> None:
    src = img(tmp_path / "p.png", 32, 32)
    for q in ("10", "95"):
        code, _, err = restore(model, str(src), "-o", str(tmp_path / "o"), "--ext", "jpg", "--quality", q, "--suffix", f"_q{q}")
        assert code == 0, err
    lo, hi = tmp_path / "o" / "p_q10.jpg", tmp_path / "o" / "p_q95.jpg"
    assert read_image(lo).format == "JPEG" and lo.stat().st_size < 0.7 * hi.stat().st_size
    code, _, err = run("image", "--model", str(model), str(src), "--quality", "0")
    assert code == 2 and "--quality" in err


def test_existing_outputs_skipped_unless_overwrite(model: Path, tmp_path: Path) -> None:
    src = img(tmp_path / "p.png")
    out = ("-o", str(tmp_path / "o"))
    assert restore(model, str(src), *out)[1]["files"][0]["status"] == "ok"
    assert restore(model, str(src), *out)[1]["files"][0]["status"] == "skipped"
    assert restore(model, str(src), *out, "--overwrite")[1]["files"][0]["status"] == "ok"


def test_recursive_mirrors_layout(model: Path, tmp_path: Path) -> None:
    img(tmp_path / "in" / "top.png")
    img(tmp_path / "in" / "sub" / "low.png")
    _, flat, _ = restore(model, str(tmp_path / "in"), "-o", str(tmp_path / "flat"))
    _, deep, _ = restore(model, str(tmp_path / "in"), "-o", str(tmp_path / "deep"), "--recursive")
    assert len(flat["files"]) == 1 and len(deep["files"]) == 2
    assert (tmp_path / "deep" / "sub" / "low.png").is_file() and not (tmp_path / "flat" / "sub").exists()


def test_bad_files_continue_and_fail_fast_stops(model: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"")
    img(tmp_path / "in" / "b.png")
    code, report, err = restore(model, str(tmp_path / "in"), "-o", str(tmp_path / "o"))
    assert code == 1 and [f["status"] for f in report["files"]] == ["failed", "ok"] and "empty file" in err
    code, report, _ = restore(model, str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--fail-fast")
    assert code == 1 and [f["status"] for f in report["files"]] == ["failed", "not_run"]
    assert not (tmp_path / "o2" / "b.png").exists()


def test_fidelity_reaches_the_model(model: Path, tmp_path: Path) -> None:
    src = img(tmp_path / "p.png")
    outs = {}
    for name, w in (("w0", "0"), ("w1", "1"), ("w1b", "1")):
        assert restore(model, str(src), "-o", str(tmp_path / name), "--fidelity", w)[0] == 0
        outs[name] = read_image(tmp_path / name / "p.png").pixels.astype(int)
    assert np.array_equal(outs["w1"], outs["w1b"])
    assert np.abs(outs["w0"] - outs["w1"]).mean() > 1.0


def test_precision_flag(model: Path, tmp_path: Path) -> None:
    src = img(tmp_path / "p.png")
    code, _, err = restore(model, str(src), "-o", str(tmp_path / "f32"), "--precision", "fp32")
    assert code == 0 and "warning" not in err
    code, _, err = restore(model, str(src), "-o", str(tmp_path / "bf16"), "--precision", "bf16")
    assert code == 0 and "bf16 on CPU is 10-300x slower" in err
    a = read_image(tmp_path / "f32" / "p.png").pixels.astype(int)
    b = read_image(tmp_path / "bf16" / "p.png").pixels.astype(int)
    assert 0 < np.abs(a - b).mean() < 20  # bf16 really ran: close, not identical
    assert run("image", "--precision", "fp8", str(src))[0] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_unavailable_exits_4(model: Path, tmp_path: Path) -> None:
    code, _, err = run("image", "--model", str(model), "--device", "cuda", str(img(tmp_path / "p.png")), "-o", str(tmp_path / "o"))
    assert code == 4 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1
    assert run("image", "--device", "cpu", "--model", str(model), str(tmp_path / "p.png"), "-o", str(tmp_path / "o"))[0] == 0


def test_weights_unavailable_exits_3(model: Path, tmp_path: Path) -> None:
    src = img(tmp_path / "p.png")
    code, _, err = run("image", "--model", str(tmp_path / "missing.safetensors"), str(src), "-o", str(tmp_path / "o"))
    assert code == 3 and "missing.safetensors" in err
    face = save_checkpoint(build_model("FaceRestorer", preset("face-tiny")), tmp_path / "face.safetensors")
    code, _, err = run("image", "--model", str(face), str(src), "-o", str(tmp_path / "o"))
    assert code == 3 and "face" in err
    assert not (tmp_path / "o" / "p.png").exists()


def test_nothing_to_do_needs_no_weights(tmp_path: Path) -> None:
    src = img(tmp_path / "p.png")
    (tmp_path / "o").mkdir()
    img(tmp_path / "o" / "p.png")  # already done
    code, out, _ = run("image", "--model", str(tmp_path / "missing.safetensors"), "--json", str(src), "-o", str(tmp_path / "o"))
    assert code == 0 and json.loads(out)["summary"]["skipped"] == 1
    code, _, err = run("image", str(tmp_path / "nope*.png"))
    assert code == 2 and "no image files" in err


def test_outscale_resizes_to_any_factor_keeping_alpha_depth_and_print_size(model: Path, tmp_path: Path) -> None:
    src = tmp_path / "p.png"
    write_image(Image(RNG.integers(0, 65536, (16, 20, 3), dtype=np.uint16), RNG.integers(0, 65536, (16, 20), dtype=np.uint16),
                      dpi=(72.0, 72.0)), src)
    for scale, size in (("2", (40, 32)), ("3.5", (70, 56)), ("4", (80, 64)), ("0.5", (10, 8))):
        code, report, err = restore(model, str(src), "-o", str(tmp_path / f"s{scale}"), "--outscale", scale)
        assert code == 0, err
        d = report["files"][0]["details"]
        assert d["output_size"] == list(size) and d["scale"] == 4 and d["outscale"] == float(scale)
        out = read_image(tmp_path / f"s{scale}" / "p.png")
        assert out.size == size and out.bit_depth == 16 and out.alpha is not None and out.alpha.shape == size[::-1]
        assert out.dpi == pytest.approx((72 * size[0] / 20, 72 * size[1] / 16), abs=0.05)  # same print size
    # x4 through --outscale 4 is the model's own output, untouched
    restore(model, str(src), "-o", str(tmp_path / "plain"))
    assert np.array_equal(read_image(tmp_path / "plain" / "p.png").pixels, read_image(tmp_path / "s4" / "p.png").pixels)
    assert run("image", "--model", str(model), str(src), "--outscale", "0")[0] == 2
    code, out, _ = run("image", "--help")
    assert "--outscale" in out and "-s" in out


def test_threads_flag_sets_the_cpu_threads_for_the_run(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vrrestore.pipelines.image as pim

    seen: list[int] = []
    real = pim.ImagePipeline.restore_array

    def spy(self, *a, **k):
        seen.append(torch.get_num_threads())
        return real(self, *a, **k)

    monkeypatch.setattr(pim.ImagePipeline, "restore_array", spy)
    before = torch.get_num_threads()
    code, _, err = restore(model, str(img(tmp_path / "p.png")), "-o", str(tmp_path / "o"), "--threads", "2")
    assert code == 0, err
    assert seen == [2] and torch.get_num_threads() == before  # restored for in-process callers
    assert run("image", "--model", str(model), "--threads", "0", str(tmp_path / "p.png"))[0] == 2


@pytest.mark.parametrize(("w", "h"), [(1, 1), (2, 2), (3, 5), (15, 1)])
def test_tiny_inputs_are_padded_to_the_smallest_tile_and_cropped_back(model: Path, tmp_path: Path, w: int, h: int) -> None:
    src = img(tmp_path / "p.png", w, h, alpha=True)
    code, report, err = restore(model, str(src), "-o", str(tmp_path / "o"))
    assert code == 0, err
    out = read_image(tmp_path / "o" / "p.png")
    assert out.size == (4 * w, 4 * h) and report["files"][0]["details"]["output_size"] == [4 * w, 4 * h]


def test_max_pixels_flag_and_env_var(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = img(tmp_path / "p.png", 40, 40)
    code, _, err = restore(model, str(src), "-o", str(tmp_path / "a"), "--max-pixels", "1000")
    assert code == 1 and "decompression bomb" in err and "--max-pixels 1600" in err
    assert restore(model, str(src), "-o", str(tmp_path / "b"), "--max-pixels", "0")[0] == 0  # 0 = no limit
    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "1000")
    assert restore(model, str(src), "-o", str(tmp_path / "c"))[0] == 1
    assert restore(model, str(src), "-o", str(tmp_path / "d"), "--max-pixels", "1600")[0] == 0  # the flag wins
    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "many")
    code, _, err = run("image", "--model", str(model), str(src), "-o", str(tmp_path / "e"))
    assert code == 2 and "VRRESTORE_MAX_PIXELS=many" in err


def test_device_spelling_is_a_usage_error(model: Path, tmp_path: Path) -> None:
    src = img(tmp_path / "p.png")
    code, _, err = run("image", "--model", str(model), "--device", "gpu", str(src), "-o", str(tmp_path / "o"))
    assert code == 2 and "did you mean --device cuda?" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "done").mkdir()
    img(tmp_path / "done" / "p.png")
    # found even when every output exists and nothing would run
    assert run("image", "--model", str(model), "--device", "cuda:x", str(src), "-o", str(tmp_path / "done"))[0] == 2


# ---------------------------------------------------------------------------- exit codes via main()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vrrestore", *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=120)


def test_main_exit_codes_and_json_on_stdout(model: Path, tmp_path: Path) -> None:
    img(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    p = cli("image", "--model", str(model), "--tile", "16", "--json", "in", "-o", "out", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    report = json.loads(p.stdout)
    assert report["summary"]["ok"] == 1 and report["summary"]["failed"] == 1
    assert "bad.png" in p.stderr and "failed files" in p.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["good.png"]
    p = cli("image", "--model", str(model), "missing/*.png", cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--quality", "0"], 2, "--quality"),  # rejected by the option parser
        (["--device", "gpu"], 2, "--device gpu"),
        (["--tile", "5"], 2, "--tile 5"),
        (["--model", "missing.safetensors"], 3, "missing.safetensors"),
        (["--device", "cuda"], 4, "CUDA"),
        (["--recursive", "nothing-here/*.png"], 2, "no image files"),
    ],
)
def test_json_on_every_exit_path_is_one_document(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], args: list[str], code: int, words: str) -> None:
    from cli_main import run_main

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA present")
    monkeypatch.chdir(tmp_path)
    src = img(tmp_path / "p.png")
    model_args = [] if "--model" in args else ["--model", str(model)]
    inputs = [] if any("nothing-here" in a for a in args) else [str(src)]
    got, out, err = run_main(monkeypatch, capsys, "image", *model_args, "--json", *args, *inputs, "-o", str(tmp_path / "o"))
    assert got == code, err
    report = json.loads(out)  # exactly one JSON document and nothing else on stdout
    assert report["exit_code"] == code and words in report["error"] and report["task"] == "image"
    assert set(report) >= {"summary", "files", "seconds"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_exit_130_and_the_rerun_resumes(model: Path, tmp_path: Path, sig: int) -> None:
    n = 20  # enough that a busy machine still signals the run mid-way (8 once finished before the signal)
    for k in range(n):
        img(tmp_path / "in" / f"{k:02d}.png", 48, 48)
    args = ("image", "--model", str(model), "--tile", "16", "--tile-overlap", "8", "in", "-o", "out")
    proc = subprocess.Popen([sys.executable, "-m", "vrrestore", *args], cwd=tmp_path, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (tmp_path / "out" / "00.png").exists():
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert 1 <= len(done) < n and all(not f.startswith(".") for f in done)  # no temp or partial files
    for name in done:
        assert read_image(tmp_path / "out" / name).size == (192, 192)
    p = cli(*args, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)["summary"]
    assert summary["skipped"] == len(done) and summary["ok"] == n - len(done)


# -------------------------------------------------------------------------------------------- doctor


def test_doctor_reports_devices_detectors_weights_and_caches(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["doctor"], env={"VRRESTORE_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")})
    out = result.stdout
    assert result.exit_code == 0, result.stderr
    assert f"torch {torch.__version__}" in out and "--device auto -> " in out
    assert "yuface" in out and "retinaface" in out and str(tmp_path / "cache" / "facexlib") in out
    assert ("weights registry unavailable" in out) or ("status" in out and "sr" in out)
    assert str(tmp_path / "cache") in out and str(tmp_path / "hf") in out
