"""vrrestore.api.Restorer: weights resolved as the CLI resolves them, numpy and PIL in and out, both
modes, the options, pickling (models load once per process), and the CLI running on it."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fakehub import entry_dict, write_registry
from fakemodels import with_trained_fusion
from PIL import Image as PILImage
from typer.testing import CliRunner

from vrrestore import weights as W
from vrrestore.api import Restorer, RestorerConfig
from vrrestore.checkpoint import save_checkpoint
from vrrestore.cli import app
from vrrestore.errors import DeviceError, UsageError, WeightsError
from vrrestore.io import Image, read_image, write_image
from vrrestore.models import build_model, preset
from vrrestore.pipelines.face import FaceOptions, FacePipeline
from vrrestore.pipelines.image import ImagePipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RNG = np.random.default_rng(0)
FAST = {"precision": "fp32", "tile": 16, "tile_overlap": 4}  # exact comparisons: no measured bf16


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("VRRESTORE_WEIGHTS_DIR", "VRRESTORE_REGISTRY", "HF_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "vcache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a refused port: nothing leaves the machine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    return {
        "sr": save_checkpoint(with_trained_fusion(build_model("SRRestorer", preset("sr-tiny"))), d / "sr-tiny.safetensors"),
        "face": save_checkpoint(build_model("FaceRestorer", preset("face-tiny")), d / "face-tiny.safetensors"),
    }


def rgb(h: int = 16, w: int = 20) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def direct_sr(ckpt: Path, x: np.ndarray, fidelity: float = 0.5) -> np.ndarray:
    """What the image pipeline itself makes of ``x`` (uint8 RGB), for exact comparisons."""
    pipe = ImagePipeline(W.load_model(str(ckpt), "sr"), precision="fp32", tile=16, overlap=4)
    return pipe.restore(Image(x), fidelity).pixels


# ------------------------------------------------------------------------------------------ building


def test_from_file_takes_the_mode_from_the_checkpoint_and_loads_now(ckpts) -> None:
    sr = Restorer.from_file(ckpts["sr"], **FAST)
    assert sr.mode == "image" and sr.loaded and sr.scale == 4.0 and sr.model.task == "sr"
    face = Restorer.from_file(ckpts["face"], aligned=True, precision="fp32")
    assert face.mode == "face" and face.model.fixed_size == 64 and face.scale == 2.0
    assert Path(sr.config.model).is_absolute()  # a worker elsewhere finds the same file
    lazy = Restorer.from_file(ckpts["sr"], lazy=True, **FAST)
    assert not lazy.loaded and lazy(rgb()).shape == (64, 80, 3) and lazy.loaded


def test_from_file_refuses_what_the_cli_refuses(ckpts, tmp_path) -> None:
    with pytest.raises(WeightsError, match=r"nope\.safetensors: no such file"):
        Restorer.from_file(tmp_path / "nope.safetensors")
    with pytest.raises(WeightsError, match="is a face model; `vrrestore image` needs an sr model"):
        Restorer.from_file(ckpts["face"], mode="image")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        Restorer.from_file(bad)


def test_from_pretrained_resolves_names_exactly_as_the_cli(ckpts, tmp_path, monkeypatch, capsys) -> None:
    """Registry name -> VRRESTORE_WEIGHTS_DIR / bundled / Hub cache / download, verified: weights.load_model's rules."""
    data = ckpts["sr"].read_bytes()
    registry = write_registry(tmp_path / "reg.json", [
        entry_dict("sr-t", data, task="sr", preset="sr-tiny", repo_id="o/never-contacted", revision="a" * 40, default=True),
        entry_dict("face-t", None, default=True),  # unpublished
    ])
    monkeypatch.setenv("VRRESTORE_REGISTRY", str(registry))
    wdir = tmp_path / "wdir"
    wdir.mkdir()
    shutil.copy(ckpts["sr"], wdir / "sr-t.safetensors")
    monkeypatch.setenv("VRRESTORE_WEIGHTS_DIR", str(wdir))

    r = Restorer.from_pretrained("sr-t", **FAST)
    assert r.mode == "image" and r.model.metadata["registry_name"] == "sr-t"
    assert r.model.metadata["path"] == str(wdir / "sr-t.safetensors")
    assert Restorer.from_pretrained(mode="image", **FAST).model.metadata["registry_name"] == "sr-t"  # the default

    # the same one-line errors and exit codes as `vrrestore face`
    with pytest.raises(WeightsError) as api_err:
        Restorer.from_pretrained()
    from cli_main import run_main

    code, _, err = run_main(monkeypatch, capsys, "face", str(tmp_path / "x.png"))
    assert code == 2  # no such input: found before the weights
    src = tmp_path / "x.png"
    write_image(Image(rgb()), src)
    code, _, err = run_main(monkeypatch, capsys, "face", str(src), "-o", str(tmp_path / "o"))
    assert code == api_err.value.exit_code == 3 and str(api_err.value) in " ".join(err.split())
    assert "no trained face model is available yet (face-t is unpublished)" in str(api_err.value)

    (wdir / "sr-t.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # corrupt: verified, refused
    with pytest.raises(WeightsError, match="sha256"):
        Restorer.from_pretrained("sr-t")
    with pytest.raises(UsageError, match="unknown model 'nope'; choose one of sr-t, face-t"):
        Restorer.from_pretrained("nope")
    with pytest.raises(UsageError, match=r"use Restorer\.from_file"):
        Restorer.from_pretrained(str(ckpts["sr"]))


# ----------------------------------------------------------------------------------- numpy and PIL


def test_image_mode_arrays_match_the_pipeline_in_every_layout_and_dtype(ckpts) -> None:
    r = Restorer.from_file(ckpts["sr"], **FAST)
    x = rgb()
    want = direct_sr(ckpts["sr"], x)
    assert np.array_equal(r(x), want) and r(x).dtype == np.uint8

    batch = np.stack([x, x[::-1]])
    out = r(batch)
    assert isinstance(out, np.ndarray) and out.shape == (2, 64, 80, 3)
    assert np.array_equal(out[0], want) and np.array_equal(out[1], direct_sr(ckpts["sr"], x[::-1].copy()))

    gray, rgba = x[:, :, 0], np.dstack([x, np.full(x.shape[:2], 200, np.uint8)])
    as_list = r([x, gray, rgba, gray[:, :, None], np.dstack([gray, gray])])
    assert [a.shape for a in as_list] == [(64, 80, 3), (64, 80), (64, 80, 4), (64, 80, 1), (64, 80, 2)]
    assert np.array_equal(as_list[2][:, :, :3], want) and (as_list[2][:, :, 3] == 200).all()  # alpha upscaled apart

    wide = r(x.astype(np.uint16) * 257)
    assert wide.dtype == np.uint16 and np.abs(wide.astype(int) // 257 - want.astype(int)).max() <= 1
    f = r(x.astype(np.float64) / 255.0)
    assert f.dtype == np.float64 and f.shape == (64, 80, 3) and np.abs(f * 255.0 - want).max() <= 1.0


def test_pil_images_come_back_as_pil_in_their_mode(ckpts) -> None:
    r = Restorer.from_file(ckpts["sr"], **FAST)
    x = rgb()
    outs = r([PILImage.fromarray(x), PILImage.fromarray(x[:, :, 0]), PILImage.fromarray(np.dstack([x, x[:, :, 0]])),
              PILImage.fromarray(x).convert("P")])
    assert [(o.mode, o.size) for o in outs] == [("RGB", (80, 64)), ("L", (80, 64)), ("RGBA", (80, 64)), ("RGB", (80, 64))]
    assert np.array_equal(np.asarray(outs[0]), direct_sr(ckpts["sr"], x))
    single = r(PILImage.fromarray(x))
    assert isinstance(single, PILImage.Image)


def test_bad_images_are_one_clear_error(ckpts) -> None:
    r = Restorer.from_file(ckpts["sr"], lazy=True, **FAST)
    with pytest.raises(TypeError, match="got shape"):
        r(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(TypeError, match="uint8, uint16 or float"):
        r(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError, match="NaN"):
        r(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(TypeError, match="numpy array or a PIL image"):
        r(["photo.png"])


def test_face_mode_aligned_matches_the_pipeline_and_batches_all_faces(ckpts, monkeypatch) -> None:
    r = Restorer.from_file(ckpts["face"], aligned=True, upscale=1, precision="fp32")
    crops = [RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    pipe = FacePipeline(W.load_model(str(ckpts["face"]), "face"), None, FaceOptions(upscale=1, precision="fp32", aligned=True))
    want = [Image(c).replace(res.image).pixels for c, res in zip(crops, pipe.run_many([Image(c).rgb_float() for c in crops]), strict=True)]
    calls: list[int] = []
    real = FacePipeline.restore_crops
    monkeypatch.setattr(FacePipeline, "restore_crops", lambda self, cs: calls.append(len(cs)) or real(self, cs))
    got = r(crops)
    assert calls == [3]  # one call for the faces of the whole batch
    assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    res = r.restore(Image(crops[0]))
    assert res.details == {"faces": 1} and len(res.face.restored) == 1 and res.source.pixels is not None


def test_face_mode_detects_and_reports(ckpts) -> None:
    skdata = pytest.importorskip("skimage.data")
    pytest.importorskip("yuface")
    said: list[str] = []
    r = Restorer.from_file(ckpts["face"], detector="yuface", upscale=1, precision="fp32", log=said.append)
    res = r.restore(Image(np.ascontiguousarray(skdata.astronaut())))
    assert res.details == {"faces": 1, "detector": "yuface", "detected": 1} and res.image.size == (512, 512)
    blank = r.restore(Image(np.full((64, 64, 3), 128, np.uint8)))
    assert blank.details["faces"] == 0 and blank.details["warning"] == "no face found"
    auto = Restorer.from_file(ckpts["face"], upscale=1, precision="fp32", log=said.append)
    assert auto.loaded and any(s.startswith("detector: ") for s in said)


# ------------------------------------------------------------------------------------------- options


def test_fidelity_device_and_precision_options(ckpts) -> None:
    x = rgb()
    w0 = Restorer.from_file(ckpts["sr"], fidelity=0.0, **FAST)(x).astype(int)
    w1 = Restorer.from_file(ckpts["sr"], fidelity=1.0, **FAST)(x).astype(int)
    assert np.abs(w0 - w1).mean() > 1.0
    assert Restorer.from_file(ckpts["sr"], device="cpu", **FAST).device.type == "cpu"
    with pytest.raises(UsageError, match="--device gpu: expected auto, cpu, cuda, cuda:N or mps"):
        Restorer.from_file(ckpts["sr"], device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):  # exit code 4, as the CLI
            Restorer.from_file(ckpts["sr"], device="cuda")
    said: list[str] = []
    bf16 = Restorer.from_file(ckpts["sr"], precision="bf16", tile=16, tile_overlap=4, log=said.append)
    assert said == ["warning: --precision bf16 on CPU is 10-300x slower than fp32"]
    assert 0 < np.abs(bf16(x).astype(int) - Restorer.from_file(ckpts["sr"], **FAST)(x).astype(int)).mean() < 20
    for bad, match in [({"precision": "fp8"}, "--precision fp8"), ({"fidelity": 1.5}, "--fidelity 1.5"),
                       ({"upscale": 3}, "--upscale: only for face mode"), ({"tile": -1}, "must be 0 or more")]:
        with pytest.raises(UsageError, match=match):
            Restorer.from_file(ckpts["sr"], lazy=True, **bad)
    with pytest.raises(UsageError, match="--outscale: only for image mode"):
        Restorer.from_file(ckpts["face"], lazy=True, outscale=2.0)
    with pytest.raises(UsageError, match="--detector does nothing with --aligned"):
        Restorer.from_file(ckpts["face"], lazy=True, aligned=True, detector="yuface")
    out = Restorer.from_file(ckpts["sr"], outscale=2.0, **FAST)
    assert out(x).shape == (32, 40, 3) and out.scale == 2.0


# ------------------------------------------------------------------------------- pickling, workers


def test_pickled_restorer_is_small_and_loads_once_per_process(ckpts, monkeypatch) -> None:
    r = Restorer.from_file(ckpts["sr"], **FAST)
    x = rgb()
    want = r(x)
    blob = pickle.dumps(r)
    assert len(blob) < 2048 and b"torch" not in blob  # the config only, never the model
    loads: list[str] = []
    real = W.load_model
    monkeypatch.setattr(W, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    copies = [pickle.loads(blob) for _ in range(3)]
    assert not any(c.loaded for c in copies)
    assert all(np.array_equal(c(x), want) for c in copies)
    assert loads == [r.config.model]  # three tasks in one worker process, one model load
    assert copies[0].pipeline is copies[2].pipeline
    assert pickle.loads(pickle.dumps(RestorerConfig(mode="image", model="m"))) == RestorerConfig(mode="image", model="m")


def test_the_cli_runs_on_the_api(ckpts, tmp_path, monkeypatch) -> None:
    """`vrrestore image` builds one Restorer for the batch and restores every file through it."""
    from vrrestore import api

    made: list[RestorerConfig] = []
    restored: list[str] = []
    real_load, real_file = api.Restorer.load, api.Restorer.restore_file

    def load(self):
        if not self.loaded:
            made.append(self.config)
        return real_load(self)

    monkeypatch.setattr(api.Restorer, "load", load)
    monkeypatch.setattr(api.Restorer, "restore_file", lambda self, src, dst, **kw: restored.append(Path(src).name) or real_file(self, src, dst, **kw))
    for name in ("a.png", "b.png"):
        write_image(Image(rgb()), tmp_path / name)
    res = CliRunner().invoke(app, ["image", "-m", str(ckpts["sr"]), str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                                   "-o", str(tmp_path / "o"), "--precision", "fp32", "--tile", "16", "--tile-overlap", "4",
                                   "-w", "0.25", "--json"])
    assert res.exit_code == 0, res.stderr
    assert len(made) == 1 and made[0].mode == "image" and made[0].fidelity == 0.25 and made[0].tile == 16
    assert restored == ["a.png", "b.png"]
    report = json.loads(res.stdout)
    assert report["files"][0]["details"]["output_size"] == [80, 64] and report["shard"] is None
    assert np.array_equal(read_image(tmp_path / "o" / "a.png").pixels, direct_sr(ckpts["sr"], read_image(tmp_path / "a.png").pixels, 0.25))
