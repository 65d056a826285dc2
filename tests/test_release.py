"""Release schedules: pieces within a budget, exports + progress, exact resume on the same machine,
and continuation from the committed weights alone (a new machine / clean checkout)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_main import run_main
from test_train import make_images

from vrrestore.checkpoint import load_checkpoint
from vrrestore.train import release as rel
from vrrestore.train.files import load_prior_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_schedule(prior_steps: int = 4, code_steps: int = 3, fid_steps: int = 2) -> rel.Schedule:
    fid = dict(disc_width=8, adaptive_every=2, disc_start=0)
    return rel.Schedule(
        name="tiny", task="face", preset="face-tiny", data=("train",), eval_data="test", eval_recipe="face",
        batch_size=2, seed=0, eval_images=2,
        units=(
            rel.Unit("prior", prior_steps, lr=1e-3, options=dict(disc_start=2, disc_width=8, continuous_prob=0.5, perceptual_weight=0.0)),
            rel.Unit("code", code_steps, "vr", lr=1e-3),
            rel.Unit("code", code_steps, "vq", lr=1e-3),
            rel.Unit("fidelity", fid_steps, "vr", lr=1e-4, options=dict(fid, perceptual_weight=0.0)),
            rel.Unit("fidelity", fid_steps, "vq", lr=1e-4, options=dict(fid, perceptual_weight=0.0)),
        ),
        release={"vr": "vr-tiny", "vq": "vq-tiny"},
    )


@pytest.fixture()
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    make_images(data / "train", n=6, size=64)
    make_images(data / "test", n=2, size=64, seed=9)
    monkeypatch.setattr(rel, "RESERVE_S", 0.0)
    monkeypatch.setattr(rel, "MIN_PIECE_S", 0.0)
    return {"data": data, "out": tmp_path / "release" / "tiny", "state": tmp_path / "state"}


def _run(world: dict[str, Path], schedule: rel.Schedule, minutes: float = 30.0) -> list[rel.PieceResult]:
    return rel.run(schedule, minutes, world["out"], world["state"], world["data"], say=lambda _s: None)


def test_whole_schedule_exports_every_unit_with_progress_and_eval(world: dict[str, Path]) -> None:
    sch = tiny_schedule()
    results = _run(world, sch)
    assert [r.unit for r in results] == ["prior", "code-vr", "code-vq", "fidelity-vr", "fidelity-vq"]
    assert all(r.reason == "done" for r in results)
    progress = json.loads((world["out"] / "progress.json").read_text())
    for u in sch.units:
        rec = progress["units"][u.name]
        assert rec["step"] == u.steps and rec["images_seen"] == u.steps * 2
        assert (world["out"] / rec["file"]).is_file() and len(rec["sha256"]) == 64
        assert rec["seconds"] > 0 and rec["cpu_hours"] == pytest.approx(rec["seconds"] / 3600, abs=1e-3)
        assert rec["machines"][0]["threads"] == 1
    ev = progress["units"]["prior"]["eval"]
    assert ev["images"] == 2 and 5.0 < ev["psnr_continuous"] < 60.0 and 5.0 < ev["psnr_quantized"] < 60.0
    assert ev["codebook_size"] == 256 and 1 <= ev["codes_used"] <= 256
    fid = progress["units"]["fidelity-vr"]["eval"]
    assert set(fid) >= {"w0", "w0.5", "w1"} and fid["w0.5"]["psnr"] > 5.0
    # the exported restorers are complete inference models with the schedule's heads
    assert load_checkpoint(world["out"] / "fidelity-vq.safetensors").head == "vq"
    assert load_checkpoint(world["out"] / "fidelity-vr.safetensors").head == "vr"
    # a second call has nothing left to do
    assert _run(world, sch) == []


def test_budget_stops_a_unit_and_the_next_call_resumes_it_exactly(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    sch = tiny_schedule(prior_steps=6)
    from vrrestore.train import loop

    real_train = loop.train

    def stop_after_3(cfg, resume=False, stop=None, init_state=None):  # noqa: ANN001, ANN202
        return real_train(cfg, resume=resume, stop=lambda s: s >= 3, init_state=init_state)

    monkeypatch.setattr(loop, "train", stop_after_3)
    first = _run(world, sch)
    assert [(r.unit, r.step, r.reason) for r in first] == [("prior", 3, "interrupted")]
    assert json.loads((world["out"] / "progress.json").read_text())["units"]["prior"]["step"] == 3
    monkeypatch.setattr(loop, "train", real_train)
    second = _run(world, sch, minutes=30.0)
    assert second[0].unit == "prior" and second[0].step == 6
    log = [json.loads(x) for x in (world["state"] / "tiny" / "prior" / "log.jsonl").read_text().splitlines()]
    starts = [r for r in log if r["event"] == "start"]
    assert [s["resumed"] for s in starts] == [False, True] and starts[1]["step"] == 3


def test_a_local_state_trained_another_way_is_not_resumed(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A state interrupted before its first export has no record that could mark it stale: the runner
    keeps what it was trained as (revision, recipe, upstream) beside it and starts the unit again when
    that is not what the unit is now; the same unit resumes it exactly."""
    sch = tiny_schedule(prior_steps=6)
    from vrrestore.train import loop

    real_train = loop.train

    def stop_after_3(cfg, resume=False, stop=None, init_state=None):  # noqa: ANN001, ANN202
        return real_train(cfg, resume=resume, stop=lambda s: s >= 3, init_state=init_state)

    def forget_the_export() -> None:  # as if Ctrl-C had ended the run before it exported
        progress_file = world["out"] / "progress.json"
        progress = json.loads(progress_file.read_text())
        progress["units"].pop("prior")
        progress_file.write_text(json.dumps(progress))
        (world["out"] / "prior.safetensors").unlink()

    monkeypatch.setattr(loop, "train", stop_after_3)
    _run(world, sch)
    forget_the_export()
    newer = dataclasses.replace(sch, units=(dataclasses.replace(sch.units[0], revision=2), *sch.units[1:]))
    said: list[str] = []
    monkeypatch.setattr(loop, "train", real_train)
    results = rel.run(newer, 30.0, world["out"], world["state"], world["data"], say=said.append)
    assert (results[0].unit, results[0].start_step, results[0].step) == ("prior", 0, 6)
    assert "prior: the local state was trained as another revision, recipe or upstream; starting it again" in said
    log = [json.loads(x) for x in (world["state"] / "tiny" / "prior" / "log.jsonl").read_text().splitlines()]
    assert [r["resumed"] for r in log if r["event"] == "start"] == [False]
    # the unit as it is now: an interrupted state of it resumes exactly
    shutil.rmtree(world["state"])
    shutil.rmtree(world["out"])
    monkeypatch.setattr(loop, "train", stop_after_3)
    _run(world, newer)
    forget_the_export()
    monkeypatch.setattr(loop, "train", real_train)
    assert _run(world, newer)[0].step == 6
    log = [json.loads(x) for x in (world["state"] / "tiny" / "prior" / "log.jsonl").read_text().splitlines()]
    assert [r["resumed"] for r in log if r["event"] == "start"] == [False, True]


def test_new_machine_continues_from_committed_weights(world: dict[str, Path]) -> None:
    """Clean checkout: only release/<schedule>/ survives; a longer schedule continues from it."""
    short = tiny_schedule(prior_steps=4, code_steps=3)
    _run(world, short)
    prior_before, _ = load_prior_file(world["out"] / "prior.safetensors")
    shutil.rmtree(world["state"])  # the new machine has no training state
    longer = dataclasses.replace(short, units=tuple(
        dataclasses.replace(u, steps=5) if u.name == "code-vr" else u for u in short.units))
    results = _run(world, longer)
    assert [r.unit for r in results] == ["code-vr", "fidelity-vr"]  # the prior and code-vq stay done
    assert results[0].start_step == 3 and results[0].step == 5
    log = [json.loads(x) for x in (world["state"] / "tiny" / "code-vr" / "log.jsonl").read_text().splitlines()]
    start = [r for r in log if r["event"] == "start"]
    assert len(start) == 1 and start[0]["step"] == 3 and not start[0]["resumed"]
    assert [r["step"] for r in log if r["event"] == "step"] == [5]
    # the prior it trained on is the committed one, unchanged
    prior_after, _ = load_prior_file(world["out"] / "prior.safetensors")
    for a, b in zip(prior_before.state_dict().values(), prior_after.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # code-vr changed, so fidelity-vr (downstream) was trained again from the new file
    progress = json.loads((world["out"] / "progress.json").read_text())
    assert progress["units"]["fidelity-vr"]["upstream_sha256"] == progress["units"]["code-vr"]["sha256"]


def test_cli_release_status_and_unknown_schedule(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(monkeypatch, capsys, "train", "release", "nope", "--minutes", "5")
    assert code == 2 and "unknown schedule" in err and "face" in err
    code, out, _ = run_main(monkeypatch, capsys, "train", "release", "face", "--status", "--out", str(world["out"].parent))
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["prior", f"0/{rel.SCHEDULES['face'].unit('prior').steps}"]
    assert lines[-1].split()[:2] == ["plain", "0/0"]  # the baseline's goal is minutes, not steps
    code, _, err = run_main(monkeypatch, capsys, "train", "release", "face", "--out", str(world["out"].parent))
    assert code == 2 and "--minutes" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(monkeypatch, capsys, "train", "release", "face", "face", "--minutes", "5")
    assert code == 2 and "name each schedule once" in err
    code, out, _ = run_main(monkeypatch, capsys, "train", "release", "face", "sr", "--status", "--out", str(world["out"].parent))
    lines = out.splitlines()
    assert code == 0 and lines[0] == "[face]" and "[sr]" in lines and lines[lines.index("[sr]") + 1].startswith("prior")


def test_cli_release_runs_schedules_in_order_within_one_budget(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`release face sr --minutes 60`: face gets the budget, sr what face left of it."""
    import time

    calls: list[tuple[str, float, str]] = []
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])

    def fake_run(sch: rel.Schedule, minutes: float, out_dir: Path, *_a: object, **_k: object) -> list[rel.PieceResult]:
        calls.append((sch.name, round(minutes, 3), out_dir.name))
        clock[0] += 25 * 60.0  # this schedule's pieces took 25 minutes
        return []

    checked: list[str] = []
    monkeypatch.setattr(rel, "run", fake_run)
    monkeypatch.setattr(rel, "check_data", lambda sch, _root: checked.append(sch.name))
    code, _, err = run_main(monkeypatch, capsys, "train", "release", "face", "sr", "--minutes", "60", "--out", str(world["out"].parent))
    assert code == 0, err
    assert checked == ["face", "sr"] and calls == [("face", 60.0, "face"), ("sr", 35.0, "sr")]


def test_cli_release_units_limits_what_trains(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--units fidelity-vr,fidelity-vq` reaches every schedule's run; an unknown unit is one line, exit 2."""
    seen: list[tuple[str, tuple[str, ...]]] = []
    monkeypatch.setattr(rel, "run", lambda sch, *_a, only=(), **_k: seen.append((sch.name, only)) or [])
    monkeypatch.setattr(rel, "check_data", lambda *_a: None)
    out = str(world["out"].parent)
    code, _, err = run_main(monkeypatch, capsys, "train", "release", "face", "sr", "--minutes", "60", "--out", out,
                            "--units", "fidelity-vr, fidelity-vq")
    assert code == 0, err
    assert seen == [("face", ("fidelity-vr", "fidelity-vq")), ("sr", ("fidelity-vr", "fidelity-vq"))]
    seen.clear()
    code, _, _ = run_main(monkeypatch, capsys, "train", "release", "face", "--minutes", "60", "--out", out)
    assert code == 0 and seen == [("face", ())]
    for bad in ("fidelity-xx", ","):
        code, _, err = run_main(monkeypatch, capsys, "train", "release", "sr", "--minutes", "60", "--out", out, "--units", bad)
        assert code == 2 and "--units" in err and "fidelity-vr" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_main(monkeypatch, capsys, "train", "release", "sr", "--minutes", "60", "--out", out, "--units", "plain")
    assert code == 2 and "'plain'" in err  # the sr schedule has no plain baseline
    monkeypatch.setattr(rel, "unit_done", lambda u, _p: u.name == "fidelity-vr")  # only the named unit is done
    code, _, err = run_main(monkeypatch, capsys, "train", "release", "sr", "--minutes", "60", "--out", out, "--units", "fidelity-vr")
    assert code == 0 and "nothing left to train among --units fidelity-vr" in " ".join(err.split())


def test_missing_data_is_found_before_any_training(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(rel.SCHEDULES, "tiny", tiny_schedule())
    monkeypatch.setitem(rel.SCHEDULES, "tiny2", dataclasses.replace(tiny_schedule(), name="tiny2", eval_data="gone"))
    rel.check_data(rel.SCHEDULES["tiny"], world["data"])  # all there: no error
    trained: list[str] = []
    monkeypatch.setattr(rel, "run", lambda sch, *_a, **_k: trained.append(sch.name) or [])
    code, _, err = run_main(monkeypatch, capsys, "train", "release", "tiny", "tiny2", "--minutes", "60",
                            "--out", str(tmp_path / "rel"), "--data-root", str(world["data"]))
    assert code == 2 and trained == [] and len(err.strip().splitlines()) == 1
    assert f"{world['data'] / 'gone'}: not found (data entry 'gone' of the tiny2 schedule)" in err


def test_plain_baseline_trains_for_the_time_the_vr_chain_took(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rel, "MATCH_TOLERANCE_S", 0.0)
    base = tiny_schedule()
    plain = rel.Unit("plain", 100_000, lr=1e-3, cosine=False, match=("prior", "code-vr", "fidelity-vr"))
    sch = dataclasses.replace(base, units=(*base.units, plain))
    assert [u.name for u in sch.chain("vr")] == ["prior", "code-vr", "fidelity-vr"]  # the baseline ships in no chain
    results = _run(world, sch)
    assert [r.unit for r in results][-1] == "plain" and results[-1].reason == "time budget"
    progress = json.loads((world["out"] / "progress.json").read_text())
    rec, units = progress["units"]["plain"], progress["units"]
    target = sum(units[n]["seconds"] for n in plain.match)
    assert target - 0.5 <= rec["seconds"] <= target + 5.0 and 0 < rec["step"] < plain.steps
    assert set(rec["eval"]) == {"images", "recipe", "w0", "input"} and rec["eval"]["w0"]["psnr"] > 5.0
    assert load_checkpoint(world["out"] / "plain.safetensors").head == "plain"
    assert rel.unit_done(plain, progress) and _run(world, sch) == []
    # a longer VR chain (say a longer prior) leaves the baseline behind: it is owed the difference
    units["prior"]["seconds"] += 3.0
    assert not rel.unit_done(plain, progress)


# ------------------------------------------------------------------------------------------------
# the sr schedule: data entries outside the data root, held-out SR images of any size


def tiny_sr_schedule(prior_steps: int = 3, code_steps: int = 2, fid_steps: int = 1) -> rel.Schedule:
    """The face tiny schedule's chain on sr-tiny, with a cache data entry like the sr schedule's."""
    fid = dict(disc_width=8, adaptive_every=2, disc_start=0, perceptual_weight=0.0)
    return rel.Schedule(
        name="tiny-sr", task="sr", preset="sr-tiny", data=("train", "cache:data/wallpapers"), eval_data="sr_test",
        eval_recipe="sr-x4", batch_size=2, seed=0, eval_images=3,
        units=(
            rel.Unit("prior", prior_steps, lr=1e-3, options=dict(disc_start=2, disc_width=8, continuous_prob=0.5, perceptual_weight=0.0)),
            rel.Unit("code", code_steps, "vr", lr=1e-3),
            rel.Unit("fidelity", fid_steps, "vr", lr=1e-4, options=fid),
        ),
        release={"vr": "vr-tiny-sr"},
    )


def _sr_test_images(folder: Path) -> None:
    """Set14-like held-out HR images: sizes not multiples of 8 (one not even of 4), one grey."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(68, 92), (76, 60), (70, 90)]):
        img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 2)
        img = (255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if i == 1 else img)


def test_data_entries_resolve_under_the_data_root_the_cache_or_as_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    assert rel.data_path("packs/sr_train_480.tar", root) == root / "packs/sr_train_480.tar"
    assert rel.data_path("cache:data/wallpapers", root) == tmp_path / "cache" / "data" / "wallpapers"
    assert rel.data_path(str(tmp_path / "elsewhere"), root) == tmp_path / "elsewhere"
    with pytest.raises(rel.UsageError, match=r"wallpapers: not found .*run `vrrestore train wallpapers` first"):
        rel.data_path("cache:data/wallpapers", root, check=True)
    sch = dataclasses.replace(tiny_sr_schedule(), data=("train", "cache:data/wallpapers", str(tmp_path / "abs")))
    (tmp_path / "cache" / "data" / "wallpapers").mkdir(parents=True)
    cfg = rel.unit_config(sch, sch.units[0], tmp_path / "run", root)
    assert cfg.data == (str(root / "train"), str(tmp_path / "cache/data/wallpapers"), str(tmp_path / "abs"))
    monkeypatch.chdir(tmp_path)  # a relative root is resolved: a resumed state keeps its saved data paths
    assert rel.unit_config(sch, sch.units[0], tmp_path / "run", Path("data")).data == cfg.data


def test_sr_schedule_is_the_face_chain_on_sr_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vrrestore.data.degradations import RECIPES, SRRecipe
    from vrrestore.models import preset

    sr, face = rel.SCHEDULES["sr"], rel.SCHEDULES["face"]
    assert (sr.task, sr.preset, sr.batch_size, sr.eval_data) == ("sr", "sr-x4-cpu", 8, "sr_hq/Set14/HR")
    assert sr.data == ("packs/sr_train_480.tar", "cache:data/wallpapers")
    assert preset(sr.preset).scale == 4
    assert isinstance(RECIPES[sr.eval_recipe], SRRecipe) and RECIPES[sr.eval_recipe].final_resize == "random"  # blind
    assert [u.name for u in sr.units] == [u.name for u in face.units if u.name != "plain"]  # the baseline is face-only
    assert {u.name: u.steps for u in sr.units} == {"prior": 4000, "code-vr": 1200, "fidelity-vr": 1500, "code-vq": 1200, "fidelity-vq": 1500}
    assert face.units[-1] == rel.PLAIN_UNIT and rel.PLAIN_UNIT.match == ("prior", "code-vr", "fidelity-vr")
    for a, b in zip(sr.units, face.units, strict=False):
        assert (a.lr, a.warmup_steps, a.cosine, a.options) == (b.lr, b.warmup_steps, b.cosine, b.options)
    assert sr.release == {"vr": "vr-sr-x4-s", "vq": "vq-sr-x4-s"}
    registry = json.loads((Path(rel.__file__).parents[1] / "weights.json").read_text())
    assert set(sr.release.values()) <= {m["name"] for m in registry["models"]}
    # SR's code and fidelity stages degrade with sr-x4-mix (blind chain + clean quarter), the face
    # fidelity stage with face-mix (a clean fifth); the prior sees HQ only; the rest keep the task default
    assert {u.name: sr.recipe(u) for u in sr.units} == {
        "prior": "", "code-vr": "sr-x4-mix", "fidelity-vr": "sr-x4-mix", "code-vq": "sr-x4-mix", "fidelity-vq": "sr-x4-mix"}
    assert {u.name: face.recipe(u) for u in face.units} == {
        "prior": "", "code-vr": "", "fidelity-vr": "face-mix", "code-vq": "", "fidelity-vq": "face-mix", "plain": ""}
    assert RECIPES["sr-x4-mix"].clean_prob == 0.25 and RECIPES["face-mix"].clean_prob == 0.2
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "data" / "wallpapers").mkdir(parents=True)
    for name in ("code-vr", "fidelity-vq"):
        cfg = rel.unit_config(sr, sr.unit(name), tmp_path / "run", tmp_path / "root")
        assert getattr(cfg, cfg.stage).recipe == "sr-x4-mix"
        assert cfg.data == (str(tmp_path / "root/packs/sr_train_480.tar"), str(tmp_path / "cache/data/wallpapers"))
    assert not hasattr(rel.unit_config(sr, sr.unit("prior"), tmp_path / "run", tmp_path / "root").prior, "recipe")
    (tmp_path / "root/faces_hq/train").mkdir(parents=True)
    (tmp_path / "root/packs").mkdir()
    (tmp_path / "root/packs/faces_train_256.tar").touch()
    face_cfg = rel.unit_config(face, face.unit("code-vr"), tmp_path / "run", tmp_path / "root")
    assert face_cfg.code.recipe == ""
    assert rel.unit_config(face, face.unit("fidelity-vq"), tmp_path / "run", tmp_path / "root").fidelity.recipe == "face-mix"


def test_a_record_of_another_recipe_is_stale(tmp_path: Path) -> None:
    """Changing a schedule's training recipe retrains its code/fidelity units, not the prior; records
    written before recipes were recorded count as the task default."""
    sr, face = rel.SCHEDULES["sr"], rel.SCHEDULES["face"]
    code = face.unit("code-vr")
    rec = {"revision": code.revision}
    assert rel._stale_reason(face, code, rec, tmp_path, missing_upstream_is_stale=False) == ""
    why = rel._stale_reason(sr, sr.unit("code-vr"), rec, tmp_path, missing_upstream_is_stale=False)
    assert why == "its degradation recipe changed (default -> sr-x4-mix)"
    assert rel._stale_reason(sr, sr.unit("code-vr"), dict(rec, recipe="sr-x4-mix"), tmp_path, False) == ""
    fid = face.unit("fidelity-vr")
    why = rel._stale_reason(face, fid, {"revision": fid.revision}, tmp_path, False)
    assert why == "its degradation recipe changed (default -> face-mix)"
    assert rel._stale_reason(face, fid, {"revision": fid.revision, "recipe": "face-mix"}, tmp_path, False) == ""
    prior = sr.unit("prior")
    assert rel._stale_reason(sr, prior, {"revision": prior.revision}, tmp_path, False) == ""


def test_tiny_sr_schedule_trains_and_evaluates_on_odd_sized_images(world: dict[str, Path], tmp_path: Path) -> None:
    make_images(tmp_path / "cache" / "data" / "wallpapers", n=2, size=80, seed=5)
    _sr_test_images(world["data"] / "sr_test")
    sch = tiny_sr_schedule()
    results = rel.run(sch, 30.0, world["out"].with_name("tiny-sr"), world["state"], world["data"], say=lambda _s: None)
    assert [(r.unit, r.reason) for r in results] == [("prior", "done"), ("code-vr", "done"), ("fidelity-vr", "done")]
    progress = json.loads((world["out"].with_name("tiny-sr") / "progress.json").read_text())
    assert all("eval_error" not in r for r in progress["units"].values()), progress
    prior = progress["units"]["prior"]["eval"]
    assert prior["images"] == 3 and 5.0 < prior["psnr_quantized"] < 60.0
    fid = progress["units"]["fidelity-vr"]["eval"]
    assert fid["images"] == 3 and fid["recipe"] == "sr-x4" and set(fid) >= {"w0", "w0.5", "w1"}
    assert all(5.0 < fid[w]["psnr"] < 60.0 for w in ("w0", "w0.5", "w1"))
    log = [json.loads(x) for x in (world["state"] / "tiny-sr" / "prior" / "log.jsonl").read_text().splitlines()]
    assert any(r["event"] == "start" for r in log)


def test_sr_schedule_without_wallpapers_says_which_command_fills_them(world: dict[str, Path]) -> None:
    _sr_test_images(world["data"] / "sr_test")
    with pytest.raises(rel.UsageError, match="run `vrrestore train wallpapers` first"):
        rel.run(tiny_sr_schedule(), 30.0, world["out"].with_name("tiny-sr"), world["state"], world["data"], say=lambda _s: None)


def test_evaluate_restorer_pads_for_a_token_merging_sr_model(tmp_path: Path) -> None:
    """sr-x4-cpu merges 2x2 latent tokens: its LR input must divide by 4, not just by the
    prior's 8 / scale 4 = 2; the size multiple says so, so Set14's sizes run."""
    from vrrestore.checkpoint import save_checkpoint
    from vrrestore.models import preset
    from vrrestore.models.descriptor import build_model

    cfg = dataclasses.replace(preset("sr-tiny"), token_merge=2)
    torch.manual_seed(0)
    file = save_checkpoint(build_model("SRRestorer", cfg), tmp_path / "merge2.safetensors")
    assert cfg.size_multiple == 4 and preset("sr-tiny").size_multiple == 2 and preset("sr-x4-cpu").size_multiple == 4
    _sr_test_images(tmp_path / "sr_test")  # LR 17x23, 19x15, 17x22
    sch = tiny_sr_schedule()
    ev = rel.evaluate_restorer(file, sch, tmp_path, (0.0, 1.0))
    assert ev["images"] == 3 and 0.0 < ev["w0"]["psnr"] < 60.0 and 0.0 < ev["w1"]["psnr"] < 60.0
    # the record carries the bicubic upscale of the same LR inputs, scored the same way (Y, crop 4)
    from vrrestore.benchmark import baseline_output, synthetic_dataset
    from vrrestore.metrics.fidelity import psnr

    ds = synthetic_dataset(tmp_path / sch.eval_data, sch.eval_recipe, seed=0, limit=sch.eval_images, task="sr")
    want = np.mean([psnr(baseline_output("bicubic", s.lq, s.gt.shape[:2]), s.gt, 4, True) for s in ds.samples])
    assert set(ev) == {"images", "recipe", "w0", "w1", "bicubic"} and ev["bicubic"]["psnr"] == round(float(want), 3)


def test_publish_bundles_current_chains_only(world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sch = tiny_schedule()
    _run(world, sch)
    pkg = tmp_path / "pkg"
    (pkg / "bundled").mkdir(parents=True)
    (pkg / "weights.json").write_text(json.dumps({"schema": 1, "models": [{"name": "vr-tiny"}, {"name": "vq-tiny"}]}))
    said: list[str] = []
    assert rel.publish(sch, world["out"], pkg, say=said.append) == ["vr-tiny", "vq-tiny"]
    reg = {e["name"]: e for e in json.loads((pkg / "weights.json").read_text())["models"]}
    progress = json.loads((world["out"] / "progress.json").read_text())
    vr = reg["vr-tiny"]
    assert vr["sha256"] == rel.sha256_file(pkg / "bundled" / "vr-tiny.safetensors") == progress["units"]["fidelity-vr"]["sha256"]
    assert vr["status"] == "published" and vr["head"] == "vr" and vr["bundled"] == "bundled/vr-tiny.safetensors"
    assert vr["metrics"]["images_seen"] == sum(progress["units"][n]["images_seen"] for n in ("prior", "code-vr", "fidelity-vr"))
    assert vr["metrics"]["psnr_w0"] == progress["units"]["fidelity-vr"]["eval"]["w0"]["psnr"]
    assert vr["metrics"]["prior_psnr_continuous"] == progress["units"]["prior"]["eval"]["psnr_continuous"]
    assert vr["metrics"]["recipes"] == "code-vr face / fidelity-vr face"  # the task default, by name
    assert "overrides" not in vr  # trained on today's preset
    # a preset that has moved on since the chain trained (here: lost OutputFuse): the entry pins the file
    from vrrestore import weights as W
    from vrrestore.models import preset

    with monkeypatch.context() as m:
        m.setattr(W, "_preset", lambda name: dataclasses.replace(preset(name), out_fuse=False))
        assert rel.publish(sch, world["out"], pkg, say=said.append) == ["vr-tiny", "vq-tiny"]
        pinned = {e["name"]: e for e in json.loads((pkg / "weights.json").read_text())["models"]}
        assert pinned["vr-tiny"]["overrides"] == pinned["vq-tiny"]["overrides"] == {"out_fuse": True}
    # a longer prior: until the runner retrains the units below it, neither chain may be published
    longer = dataclasses.replace(sch, units=tuple(dataclasses.replace(u, steps=6) if u.name == "prior" else u for u in sch.units))
    rel.run(longer, 30.0, world["out"], world["state"], world["data"], say=lambda _s: None, only=("prior",))
    said.clear()
    assert rel.publish(longer, world["out"], pkg, say=said.append) == []
    assert all("code-" in line and "fidelity-" in line and "older files" in line for line in said) and len(said) == 2
    status = {line.split()[0]: line.split() for line in rel.describe_progress(longer, json.loads((world["out"] / "progress.json").read_text()), world["out"])}
    assert status["prior"][1] == "6/6" and "stale" not in status["prior"]
    assert all(status[n][2] == "stale" for n in ("code-vr", "code-vq", "fidelity-vr", "fidelity-vq"))
    assert json.loads((pkg / "weights.json").read_text())["models"][0]["sha256"] == vr["sha256"]  # left as it was


def test_registry_metrics_name_the_recipe_each_stage_trained_with() -> None:
    """Records keep only a non-default recipe; the registry names every stage's, so an entry stays true
    after the schedule's recipes change (vq-face-s trained on 'face' throughout, vr-face-s's fidelity
    stage on 'face-mix')."""
    sr = rel.SCHEDULES["sr"]
    rec = dict(step=1, images_seen=8, cpu_hours=0.1)
    recs = {"prior": dict(rec, stage="prior"), "code-vr": dict(rec, stage="code"),
            "fidelity-vr": dict(rec, stage="fidelity", recipe="sr-x4-mix")}
    assert rel.registry_metrics(sr, recs)["recipes"] == "code-vr sr-x4 / fidelity-vr sr-x4-mix"


def test_a_new_unit_revision_retrains_that_unit_only(world: dict[str, Path], tmp_path: Path) -> None:
    sch = tiny_schedule()
    _run(world, sch)
    before = json.loads((world["out"] / "progress.json").read_text())["units"]
    assert all(rec["revision"] == 1 for rec in before.values())
    new = dataclasses.replace(sch, units=tuple(dataclasses.replace(u, revision=2) if u.name == "fidelity-vr" else u for u in sch.units))
    status = {line.split()[0]: line.split() for line in rel.describe_progress(new, json.loads((world["out"] / "progress.json").read_text()), world["out"])}
    assert status["fidelity-vr"][2] == "stale" and all("stale" not in status[n] for n in ("prior", "code-vr", "code-vq", "fidelity-vq"))
    pkg = tmp_path / "pkg"
    (pkg / "bundled").mkdir(parents=True)
    (pkg / "weights.json").write_text(json.dumps({"schema": 1, "models": [{"name": "vr-tiny"}, {"name": "vq-tiny"}]}))
    assert rel.publish(new, world["out"], pkg, say=lambda _s: None) == ["vq-tiny"]  # the VR chain waits for its retrain
    said: list[str] = []
    results = rel.run(new, 30.0, world["out"], world["state"], world["data"], say=said.append)
    assert [r.unit for r in results] == ["fidelity-vr"] and results[0].start_step == 0
    assert "fidelity-vr: its training changed (revision 1 -> 2); training it again" in said
    after = json.loads((world["out"] / "progress.json").read_text())["units"]
    assert after["fidelity-vr"]["revision"] == 2 and after["fidelity-vr"]["updated"] >= before["fidelity-vr"]["updated"]
    assert all(after[n]["sha256"] == before[n]["sha256"] for n in ("prior", "code-vr", "code-vq", "fidelity-vq"))
    assert rel.publish(new, world["out"], pkg, say=lambda _s: None) == ["vr-tiny", "vq-tiny"]


def test_the_face_schedule_retrains_code_and_fidelity_written_before_output_fuse(tmp_path: Path) -> None:
    """Records without a revision (all before it existed) are revision 1. Code records of revision 1
    and fidelity records before 6 count as stale (OutputFuse made code 2 and fidelity 3; the fusion
    learning rate made fidelity 4, the gate's start 5, texture_fade 6, OutputFuse's residual blocks 7, and
    actually building them over an older code stage 8); the prior (same file, same sha) stays current, as does a record at
    today's revision."""
    face = rel.SCHEDULES["face"]
    revision = {u.name: u.revision for u in face.units}
    assert (revision["code-vr"], revision["fidelity-vr"], revision["fidelity-vq"]) == (2, 8, 8)
    assert all(face.unit(n).options["fusion_lr"] == 5e-4 == 5 * face.unit(n).lr for n in ("fidelity-vr", "fidelity-vq"))
    assert all(face.unit(n).options["gate_init"] == 0.5 for n in ("fidelity-vr", "fidelity-vq"))
    assert all(face.unit(n).options["texture_fade"] is True for n in ("fidelity-vr", "fidelity-vq"))
    for name in ("prior", "code-vr", "code-vq"):
        (tmp_path / f"{name}.safetensors").write_bytes(name.encode())
    sha = {n: rel.sha256_file(tmp_path / f"{n}.safetensors") for n in ("prior", "code-vr", "code-vq")}
    progress = {"units": {
        "prior": {"step": 1}, "code-vr": {"upstream_sha256": sha["prior"]},
        "code-vq": {"upstream_sha256": sha["prior"], "revision": 2},
        "fidelity-vr": {"upstream_sha256": sha["code-vr"], "revision": 2},
        "fidelity-vq": {"upstream_sha256": sha["code-vq"], "revision": 8, "recipe": "face-mix"},
    }}
    current = {u.name: rel.unit_current(face, u, progress, tmp_path) for u in face.units if u.name in progress["units"]}
    assert current == {"prior": True, "code-vr": False, "code-vq": True, "fidelity-vr": False, "fidelity-vq": True}
    # revision 7 trained the code stage's old two-conv OutputFuse: stale
    progress["units"]["fidelity-vq"]["revision"] = 7
    assert not rel.unit_current(face, face.unit("fidelity-vq"), progress, tmp_path)


def test_seconds_add_up_across_a_new_machine_and_an_exact_resume_there(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """New machine (count restarts at 0 from the committed weights), then an exact resume of that
    run: the record's seconds keep the first machine's part, so a matched budget is not owed twice."""
    from vrrestore.train import loop

    real_train = loop.train
    only = ("prior",)
    sch = tiny_schedule(prior_steps=4)
    rel.run(sch, 30.0, world["out"], world["state"], world["data"], say=lambda _s: None, only=only)
    first = json.loads((world["out"] / "progress.json").read_text())["units"]["prior"]["seconds"]
    shutil.rmtree(world["state"])
    longer = dataclasses.replace(sch, units=tuple(dataclasses.replace(u, steps=8) if u.name == "prior" else u for u in sch.units))

    def stop_at_6(cfg, resume=False, stop=None, init_state=None):  # noqa: ANN001, ANN202
        return real_train(cfg, resume=resume, stop=lambda s: s >= 6, init_state=init_state)

    monkeypatch.setattr(loop, "train", stop_at_6)
    rel.run(longer, 30.0, world["out"], world["state"], world["data"], say=lambda _s: None, only=only)
    rec = json.loads((world["out"] / "progress.json").read_text())["units"]["prior"]
    assert rec["step"] == 6 and rec["seconds_base"] == pytest.approx(first, abs=0.1) and rec["seconds"] > first
    second = rec["seconds"]
    monkeypatch.setattr(loop, "train", real_train)
    rel.run(longer, 30.0, world["out"], world["state"], world["data"], say=lambda _s: None, only=only)
    rec = json.loads((world["out"] / "progress.json").read_text())["units"]["prior"]
    log = [json.loads(x) for x in (world["state"] / "tiny" / "prior" / "log.jsonl").read_text().splitlines()]
    assert [r["resumed"] for r in log if r["event"] == "start"] == [False, True]  # the last piece is an exact resume
    assert rec["step"] == 8 and rec["seconds_base"] == pytest.approx(first, abs=0.1) and rec["seconds"] > second


def test_cli_release_says_nothing_is_left_only_when_all_is_done(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(rel, "MIN_PIECE_S", 1e9)  # no budget is enough: nothing trains
    monkeypatch.setitem(rel.SCHEDULES, "tiny", tiny_schedule())
    args = ("train", "release", "tiny", "--minutes", "1", "--out", str(world["out"].parent), "--state", str(world["state"]),
            "--data-root", str(world["data"]))
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0 and "prior: 1.0 min left in the budget; stopping here" in err and "nothing left" not in err
    monkeypatch.setattr(rel, "MIN_PIECE_S", 0.0)
    _run(world, tiny_schedule())
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0 and "nothing left to train" in err
