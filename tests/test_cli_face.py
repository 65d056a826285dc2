"""`vrrestore face` end to end: a tiny random face-tiny checkpoint (64 px crops), yuface, real photos."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fakemodels import with_trained_fusion
from PIL import Image as PILImage
from typer.testing import CliRunner

from vrrestore.checkpoint import save_checkpoint
from vrrestore.cli import app
from vrrestore.errors import WeightsError
from vrrestore.models import build_model, preset


pytestmark = pytest.mark.usefixtures("yuface_one_omp_thread")

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("yuface")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """An empty vrrestore cache (so auto picks yuface), and no network."""
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("face_cli")
    torch.manual_seed(0)
    ckpt = save_checkpoint(with_trained_fusion(build_model("FaceRestorer", preset("face-tiny"))), d / "f.safetensors")
    astro = skdata.astronaut()
    out = {"ckpt": ckpt}
    for name, arr in {
        "astro": astro,
        "coffee": skdata.coffee(),
        "pair": np.concatenate([astro, astro[:, ::-1]], axis=1),
        "aligned": cv2.resize(astro[20:250, 110:340], (128, 128), interpolation=cv2.INTER_AREA),
    }.items():
        PILImage.fromarray(arr).save(d / f"{name}.png")
        out[name] = d / f"{name}.png"
    PILImage.fromarray(skdata.camera()).save(d / "camera.png")  # mode L
    out["camera"] = d / "camera.png"
    return out


def run(files, *args: str):  # noqa: ANN201 - click Result
    """One CLI run. Tests that do not look at the main output write BMP at x1: PNG-encoding a 1024 px
    image costs ~0.7 s on this shared CPU, which is most of a run."""
    return runner.invoke(app, ["face", "-m", str(files["ckpt"]), *args])


FAST = ("-s", "1", "--ext", "bmp")


def report(result) -> dict:  # noqa: ANN001
    return json.loads(result.stdout)


def size(path: Path) -> tuple[int, int]:
    with PILImage.open(path) as im:
        return im.size


def test_help_documents_every_flag_and_the_no_face_rule():
    result = runner.invoke(app, ["face", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for flag in ("--detector", "--upscale", "--bg-upsampler", "--bg-model", "--faces", "--min-face-size", "--det-threshold", "--max-faces",
                 "--aligned", "--save-faces", "--save-crops", "--save-comparison", "--draw-boxes", "--fidelity", "--model"):
        assert flag in text, flag
    assert "no face is found" in text and "exit code 0" in text
    assert "130 interrupted" in text and "--threads" in text and "--max-pixels" in text  # every exit code, every flag
    assert "copied" not in text and "still upscaled" in text


def test_default_run_restores_the_face_and_upscales_x2(files, tmp_path):
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "out"), "--json")
    assert r.exit_code == 0, r.stderr
    assert "detector: yuface" in r.stderr  # auto says which detector it picked
    details = report(r)["files"][0]["details"]
    assert details == {"faces": 1, "detector": "yuface", "detected": 1}
    out = tmp_path / "out" / "astro.png"
    assert size(out) == (1024, 1024)
    assert not (tmp_path / "out" / "restored_faces").exists()  # extras only on request
    got = np.asarray(PILImage.open(out)).astype(np.float32)
    ref = cv2.resize(skdata.astronaut(), (1024, 1024), interpolation=cv2.INTER_LANCZOS4).astype(np.float32)
    assert np.abs(got - ref)[700:].max() <= 1.0  # below the face: just the resized background
    assert np.abs(got - ref)[150:300, 400:500].mean() > 10  # the (random) restorer changed the face


def test_explicit_detector_and_upscale(files, tmp_path):
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "x.png"), "--detector", "yuface", "-s", "3")
    assert r.exit_code == 0, r.stderr
    assert "detector:" not in r.stderr
    assert size(tmp_path / "x.png") == (1536, 1536)


def test_photo_without_face_is_copied_with_a_warning_and_exit_0(files, tmp_path):
    r = run(files, str(files["coffee"]), "-o", str(tmp_path / "out"), "-s", "1", "--json")
    assert r.exit_code == 0
    assert "warning:" in r.stderr and "no face found" in r.stderr
    assert report(r)["files"][0]["details"]["faces"] == 0
    np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / "out" / "coffee.png")), skdata.coffee())


def test_extras_go_to_sibling_folders(files, tmp_path):
    out = tmp_path / "res"
    r = run(files, str(files["astro"]), "-o", str(out), "-s", "1", "--save-faces", "--save-crops", "--save-comparison", "--draw-boxes")
    assert r.exit_code == 0, r.stderr
    assert size(out / "restored_faces" / "astro_00.png") == (64, 64)
    assert size(out / "cropped_faces" / "astro_00.png") == (64, 64)
    assert size(out / "comparison" / "astro_00.png") == (128, 64)
    boxes = out / "detections" / "astro.png"
    assert size(boxes) == (512, 512)
    drawn = np.asarray(PILImage.open(boxes)).astype(int) - skdata.astronaut().astype(int)
    assert (np.abs(drawn).sum(axis=2) > 0).sum() > 200  # the box and landmarks are drawn
    crop = np.asarray(PILImage.open(out / "cropped_faces" / "astro_00.png"))
    assert np.array_equal(np.asarray(PILImage.open(out / "comparison" / "astro_00.png"))[:, :64], crop)


def test_two_faces_and_selection_flags(files, tmp_path):
    def faces(*flags: str) -> tuple[int, list[str]]:
        out = tmp_path / "_".join(flags or ("all",))
        r = run(files, str(files["pair"]), "-o", str(out), *FAST, "--json", "--save-faces", *flags)
        assert r.exit_code == 0, r.stderr
        saved = sorted(p.name for p in (out / "restored_faces").glob("*.png")) if (out / "restored_faces").exists() else []
        return report(r)["files"][0]["details"]["faces"], saved

    assert faces() == (2, ["pair_00.png", "pair_01.png"])
    assert faces("--faces", "largest") == (1, ["pair_00.png"])
    assert faces("--faces", "center")[0] == 1
    assert faces("--max-faces", "1")[0] == 1
    n, saved = faces("--min-face-size", "1000")
    assert (n, saved) == (0, [])


def test_min_face_size_warns_that_faces_were_left_out(files, tmp_path):
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "o"), *FAST, "--min-face-size", "500")
    assert r.exit_code == 0 and "none kept" in r.stderr


def test_det_threshold(files, tmp_path):
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "o"), *FAST, "--det-threshold", "0.99", "--json")
    assert r.exit_code == 0 and report(r)["files"][0]["details"]["detected"] == 0 and "no face found" in r.stderr
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "p"), *FAST, "--det-threshold", "0.5", "--json")
    assert report(r)["files"][0]["details"]["detected"] == 1


def test_gray_input_stays_gray(files, tmp_path):
    r = run(files, str(files["camera"]), "-o", str(tmp_path / "g"), "-s", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert report(r)["files"][0]["details"]["faces"] == 1
    with PILImage.open(tmp_path / "g" / "camera.png") as im:
        assert im.mode == "L" and im.size == (512, 512)


def test_aligned_inputs(files, tmp_path):
    r = run(files, str(files["aligned"]), "-o", str(tmp_path / "a"), "--aligned", "-s", "2", "--save-faces", "--json")
    assert r.exit_code == 0, r.stderr
    assert "detector" not in r.stderr
    assert report(r)["files"][0]["details"] == {"faces": 1}
    assert size(tmp_path / "a" / "aligned.png") == (256, 256)
    assert size(tmp_path / "a" / "restored_faces" / "aligned_00.png") == (64, 64)


def test_fidelity_reaches_the_model(files, tmp_path):
    faces = []
    for w in ("0", "1"):
        out = tmp_path / f"w{w}"
        r = run(files, str(files["astro"]), "-o", str(out), *FAST, "-w", w, "--save-faces")
        assert r.exit_code == 0, r.stderr
        faces.append(np.asarray(PILImage.open(out / "restored_faces" / "astro_00.png")).astype(int))
    assert np.abs(faces[0] - faces[1]).mean() > 1.0


def test_retinaface_without_weights_or_network_is_one_line_exit_3(files, tmp_path):
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "o"), "--detector", "retinaface")
    assert r.exit_code == 3
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("downloading https://github.com/xinntao/facexlib/releases/")
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "detection_Resnet50_Final.pth" in errors[0] and "--detector yuface" in errors[0]
    assert len(lines) == 2
    assert not (tmp_path / "o").exists()


def test_auto_uses_cached_retinaface_weights(files, tmp_path):
    from vrrestore.face.retinaface import RetinaFaceNet, weights_path

    torch.manual_seed(0)
    path = weights_path("mobilenet0.25")
    path.parent.mkdir(parents=True)
    torch.save({"module." + k: v for k, v in RetinaFaceNet("mobilenet0.25").state_dict().items()}, path)
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "o"), *FAST, "--max-faces", "2", "--json")
    assert r.exit_code == 0, r.stderr
    assert "detector: retinaface-mobile" in r.stderr
    assert report(r)["files"][0]["details"]["detector"] == "retinaface-mobile"


class InvertX2(torch.nn.Module):
    """A stand-in x2 SR model: nearest upscale, colours inverted (so its output is easy to recognise)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, fidelity=0.5) -> torch.Tensor:
        return 1.0 - torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")


def test_bg_upsampler_sr(files, tmp_path, monkeypatch):
    import vrrestore.weights as W
    from vrrestore.models.descriptor import ModelDescriptor

    real = W.load_model
    sr = ModelDescriptor(InvertX2(), task="sr", architecture="InvertX2", head="none", scale=2, size_multiple=1, fixed_size=None, tiling=None)
    monkeypatch.setattr(W, "load_model", lambda model, task, device="cpu", **kw: sr if task == "sr" else real(model, task, device, **kw))
    r = run(files, str(files["coffee"]), "-o", str(tmp_path / "o"), "--bg-upsampler", "sr", "-s", "3", "--ext", "bmp")
    assert r.exit_code == 0, r.stderr
    got = np.asarray(PILImage.open(tmp_path / "o" / "coffee.bmp")).astype(np.float32)
    inverted = 255.0 - cv2.resize(cv2.resize(skdata.coffee(), (1200, 800), interpolation=cv2.INTER_NEAREST), (1800, 1200), interpolation=cv2.INTER_LANCZOS4)
    assert got.shape == (1200, 1800, 3) and np.abs(got - inverted).mean() < 2.0  # SR x2 output, resized to x3

    def unavailable(model, task, device="cpu", **kw):
        if task == "sr":
            raise WeightsError("vr-sr-x4-s is not published yet; train one or pass --model")
        return real(model, task, device, **kw)

    monkeypatch.setattr(W, "load_model", unavailable)
    r = run(files, str(files["coffee"]), "-o", str(tmp_path / "p"), *FAST, "--bg-upsampler", "sr")
    assert r.exit_code == 3 and "not published" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_device_errors_are_one_line(files, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "o"), "--device", "cuda")
    assert r.exit_code == 4 and "CUDA is not available" in r.stderr
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "p"), *FAST, "--device", "cpu", "--precision", "fp32")
    assert r.exit_code == 0


@pytest.mark.parametrize(
    "extra",
    [["--draw-boxes"], ["--faces", "largest"], ["--det-threshold", "0.3"], ["--max-faces", "1"], ["--detector", "yuface"],
     ["--min-face-size", "10"], ["--bg-upsampler", "sr"]],
)
def test_options_that_aligned_would_ignore_are_refused(files, tmp_path, extra):
    r = run(files, str(files["aligned"]), "-o", str(tmp_path / "a"), "--aligned", *extra)
    assert r.exit_code == 2 and f"{extra[0]} does nothing with --aligned" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


def test_json_report_when_the_model_is_missing_and_threads(files, tmp_path, monkeypatch):
    r = runner.invoke(app, ["face", "-m", str(tmp_path / "nope.safetensors"), str(files["astro"]), "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 3
    rep = json.loads(r.stdout)
    assert rep["exit_code"] == 3 and "nope.safetensors" in rep["error"] and rep["files"][0]["status"] == "not_run"
    import vrrestore.pipelines.face as pf

    seen = []
    real = pf.FacePipeline.restore_crops
    monkeypatch.setattr(pf.FacePipeline, "restore_crops", lambda self, crops: seen.append(torch.get_num_threads()) or real(self, crops))
    before = torch.get_num_threads()
    r = run(files, str(files["astro"]), "-o", str(tmp_path / "t"), *FAST, "--threads", "2")
    assert r.exit_code == 0, r.stderr
    assert seen == [2] and torch.get_num_threads() == before


# ------------------------------------------------------------------ --bg-model (issue 13 item 2)


@pytest.fixture(scope="module")
def bg_files(tmp_path_factory) -> dict[str, Path]:
    """A random sr-tiny (x4) checkpoint and a small photo without a face (so only the background runs)."""
    d = tmp_path_factory.mktemp("bg")
    torch.manual_seed(1)
    sr = save_checkpoint(build_model("SRRestorer", preset("sr-tiny")), d / "sr-tiny.safetensors")
    small = d / "small.png"
    PILImage.fromarray(np.ascontiguousarray(skdata.coffee()[100:164, 200:296])).save(small)  # 96 x 64
    return {"sr": sr, "small": small}


def test_bg_model_runs_the_given_sr_checkpoint(files, bg_files, tmp_path):
    from vrrestore.io import read_image
    from vrrestore.pipelines.image import ImagePipeline
    from vrrestore.weights import load_model

    r = run(files, str(bg_files["small"]), "-o", str(tmp_path / "o.png"), "--bg-model", str(bg_files["sr"]), "-s", "2")
    assert r.exit_code == 0, r.stderr
    got = np.asarray(PILImage.open(tmp_path / "o.png")).astype(np.float32)
    assert got.shape == (128, 192, 3)
    # the background is the SR model's x4 output resized to x2, not the Lanczos resize
    sr = ImagePipeline(load_model(str(bg_files["sr"]), "sr")).restore_array(read_image(bg_files["small"]).rgb_float(), 0.5, out_dtype=np.float32)
    want = cv2.resize(sr, (192, 128), interpolation=cv2.INTER_AREA) * 255.0
    lanczos = cv2.resize(np.asarray(PILImage.open(bg_files["small"])), (192, 128), interpolation=cv2.INTER_LANCZOS4).astype(np.float32)
    assert np.abs(got - want).mean() < 1.0 < np.abs(got - lanczos).mean()


def test_bg_upsampler_sr_without_an_sr_model_names_the_bg_model_flag(files, tmp_path, monkeypatch):
    from fakehub import entry_dict, write_registry

    reg = write_registry(tmp_path / "registry.json", [entry_dict("sr-u", None, task="sr", preset="sr-tiny", default=True)])
    monkeypatch.setenv("VRRESTORE_REGISTRY", str(reg))  # a registry whose default SR model is not trained yet
    r = run(files, str(files["coffee"]), "-o", str(tmp_path / "o"), *FAST, "--bg-upsampler", "sr")
    assert r.exit_code == 3, r.stderr
    line = " ".join(r.stderr.split())
    assert "no trained sr model is available yet (sr-u is unpublished); pass --bg-model PATH" in line
    assert "--model PATH" not in line.replace("--bg-model PATH", "")
    assert len(r.stderr.strip().splitlines()) == 1


def test_bg_model_refuses_a_face_model_naming_the_flag(files, bg_files, tmp_path):
    r = run(files, str(bg_files["small"]), "-o", str(tmp_path / "o.png"), "--bg-model", str(files["ckpt"]))
    assert r.exit_code == 3 and "--bg-model needs an sr model" in " ".join(r.stderr.split()), r.stderr
    r = run(files, str(bg_files["small"]), "-o", str(tmp_path / "p.png"), "--bg-model", "vr-face-s")
    assert r.exit_code == 2 and "vr-face-s is a face model; --bg-model needs an sr model" in " ".join(r.stderr.split()), r.stderr


def test_bg_model_with_aligned_is_refused(files, bg_files, tmp_path):
    r = run(files, str(files["aligned"]), "--aligned", "-o", str(tmp_path / "o.png"), "--bg-model", str(bg_files["sr"]))
    assert r.exit_code == 2 and "--bg-model does nothing with --aligned" in " ".join(r.stderr.split()), r.stderr
