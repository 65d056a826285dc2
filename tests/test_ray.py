"""Ray Data integration (the ``vrrestore[ray]`` extra), for real: a local Ray instance with 2 CPUs,
started here, a few small images and a random sr-tiny / face-tiny model built here."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vrrestore.api import Restorer
from vrrestore.checkpoint import save_checkpoint
from vrrestore.errors import UsageError, WeightsError
from vrrestore.integrations.ray import RestoreFiles
from vrrestore.io import Image, read_image, write_image
from vrrestore.manifest import read_manifest
from vrrestore.models import build_model, preset

RAY_MISSING = 'Ray Data is not installed; `pip install "vrrestore[ray]"` (CI installs it) to run the Ray tests'
RNG = np.random.default_rng(0)
SR = {"precision": "fp32", "tile": 16, "tile_overlap": 4}


@pytest.fixture(scope="module")
def ray_local():
    if importlib.util.find_spec("ray") is None:
        pytest.skip(RAY_MISSING)
    ray = pytest.importorskip("ray", reason=RAY_MISSING)
    pytest.importorskip("ray.data", reason=RAY_MISSING)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=96 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the crashing worker below travels by value
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ray_models")
    torch.manual_seed(0)
    return {
        "sr": save_checkpoint(build_model("SRRestorer", preset("sr-tiny")), d / "sr-tiny.safetensors"),
        "face": save_checkpoint(build_model("FaceRestorer", preset("face-tiny")), d / "face-tiny.safetensors"),
    }


def photos(folder: Path, n: int, size: int = 16) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        write_image(Image(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)), folder / f"p{i}.png")
        out.append(folder / f"p{i}.png")
    return out


def test_restore_with_ray_records_failures_and_resumes(ray_local, models, tmp_path) -> None:
    from vrrestore.integrations.ray import restore_with_ray

    srcs = photos(tmp_path / "in", 4)
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    restorer = Restorer.from_file(models["sr"], lazy=True, **SR)
    out = tmp_path / "out"
    run = restore_with_ray(tmp_path / "in", out, restorer, actors=2, batch_size=2)
    assert run.actors == 2 and run.summary == {"ok": 4, "skipped": 0, "failed": 1} and run.exit_code == 1
    broken = next(r for r in run.rows if r["status"] == "failed")
    assert broken["input"].endswith("broken.png") and "not an image file Pillow can read" in broken["error"]
    # the same pixels as the API in this process (fp32), written where the CLI would write them
    local = Restorer.from_file(models["sr"], **SR)
    for src in srcs:
        assert np.array_equal(read_image(out / src.name).pixels, local(read_image(src).pixels))
    rows = list(read_manifest(run.manifest))
    assert run.manifest == out / "vrrestore-manifest.ray.jsonl" and len(rows) == 5
    assert {tuple(r) for r in rows} == {("input", "output", "status", "faces", "seconds", "error")}
    assert not list(out.glob(".*"))  # no temp files, no attempt markers left

    (out / "p2.png").unlink()
    again = restore_with_ray(tmp_path / "in", out, restorer, actors=2, batch_size=2)
    by_name = {Path(r["input"]).name: r for r in again.rows}
    assert by_name["p2.png"]["status"] == "ok" and by_name["broken.png"]["status"] == "failed"
    assert [by_name[f"p{i}.png"]["status"] for i in (0, 1, 3)] == ["skipped"] * 3
    assert "done in an earlier run" in by_name["p0.png"]["error"]
    assert len(list(read_manifest(run.manifest))) == 7  # only the redone and the retried file were added


class CrashOnP1(RestoreFiles):
    """A worker whose process dies outright on one image, as a native crash or the OOM killer would."""

    def _restore(self, src, out):
        if src.endswith("/p1.png"):
            os._exit(17)
        return super()._restore(src, out)


def test_uri_inputs_and_a_worker_that_dies_on_one_image(ray_local, models, tmp_path) -> None:
    from vrrestore.integrations.ray import restore_with_ray

    photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    run = restore_with_ray(f"file://{tmp_path / 'in'}", out, Restorer.from_file(models["sr"], lazy=True, **SR),
                           actors=1, batch_size=1, max_attempts=1, worker=CrashOnP1)
    by_name = {Path(r["input"]).name: r for r in run.rows}
    assert by_name["p1.png"]["status"] == "failed" and "the worker died 1 time(s) on this image" in by_name["p1.png"]["error"]
    assert by_name["p0.png"]["status"] == by_name["p2.png"]["status"] == "ok"
    assert by_name["p0.png"]["input"] == f"file://{tmp_path / 'in' / 'p0.png'}"
    assert sorted(p.name for p in out.glob("*.png")) == ["p0.png", "p2.png"]  # nothing finished was lost


def test_restore_dataset_over_read_images_matches_the_api(ray_local, models, tmp_path) -> None:
    from vrrestore.integrations.ray import restore_dataset

    photos(tmp_path / "faces", 3, size=64)
    restorer = Restorer.from_file(models["face"], lazy=True, aligned=True, upscale=1, precision="fp32")
    ds = ray_local.data.read_images(str(tmp_path / "faces"), include_paths=True, mode="RGB")
    rows = restore_dataset(ds, restorer, actors=1, batch_size=2).take_all()  # 1 of the 2 CPUs stays free for read tasks
    local = Restorer.from_file(models["face"], aligned=True, upscale=1, precision="fp32")
    assert len(rows) == 3
    for r in rows:  # faces of a batch go through the model together: batch-size rounding, at most 1 level
        diff = np.abs(r["image"].astype(int) - local(read_image(r["path"]).pixels).astype(int))
        assert r["image"].shape == (64, 64, 3) and diff.max() <= 1 and diff.mean() < 0.05


def test_bad_input_is_one_clear_error_before_any_actor_starts(ray_local, models, tmp_path) -> None:
    from vrrestore.integrations.ray import restore_with_ray

    photos(tmp_path / "in", 1)
    with pytest.raises(WeightsError, match="nope.safetensors: no such file"):
        restore_with_ray(tmp_path / "in", tmp_path / "out", mode="image", model=str(tmp_path / "nope.safetensors"))
    with pytest.raises(UsageError, match="not a URI; mount the bucket"):
        restore_with_ray(tmp_path / "in", "s3://bucket/out", Restorer.from_file(models["sr"], lazy=True))
    with pytest.raises(UsageError, match="no such file or folder"):
        restore_with_ray(f"file://{tmp_path / 'missing'}", tmp_path / "out", Restorer.from_file(models["sr"], lazy=True))


def test_without_ray_the_extra_is_named(monkeypatch) -> None:
    """Runs with or without Ray installed: the one line a user without the extra sees."""
    from vrrestore.integrations import ray as integration

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError) as info:
        integration.require_ray()
    assert 'install the extra: pip install "vrrestore[ray]"' in str(info.value)
