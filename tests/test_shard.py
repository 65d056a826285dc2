"""Array jobs: --shard (and its scheduler defaults), the JSON-lines manifest as the resume log,
--files-from, and a worker killed in the middle of a shard."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vrrestore.batch import BatchOptions, listed_inputs, plan_batch, select_shard
from vrrestore.checkpoint import save_checkpoint
from vrrestore.cli import app
from vrrestore.errors import UsageError
from vrrestore.io import Image, write_image
from vrrestore.manifest import FIELDS, Manifest, read_manifest
from vrrestore.models import build_model, preset
from vrrestore.shard import Shard, parse_shard, resolve_shard, shard_from_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RNG = np.random.default_rng(0)
SCHEDULER_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP",
                  "JOB_COMPLETION_INDEX", "JOB_COMPLETIONS", "RANK", "WORLD_SIZE")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in SCHEDULER_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model("SRRestorer", preset("sr-tiny")), tmp_path_factory.mktemp("m") / "sr.safetensors")


def photos(folder: Path, n: int, sub: str | None = None) -> list[Path]:
    out = []
    for i in range(n):
        p = folder / (sub or "") / f"p{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_image(Image(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)), p)
        out.append(p)
    return out


def image(model: Path, *args: str, stdin: str | None = None) -> tuple[int, dict, str]:
    r = CliRunner().invoke(app, ["image", "-m", str(model), "--precision", "fp32", "--json", *args], input=stdin)
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, json.loads(r.stdout), r.stderr


def statuses(report: dict) -> dict[str, str]:
    return {Path(f["input"]).name: f["status"] for f in report["files"]}


# ------------------------------------------------------------------------------------- shard specs


def test_shard_specs_and_their_errors() -> None:
    assert parse_shard("3/10") == Shard(3, 10) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    assert Shard(3, 10).tag == "3-of-10" and Shard(3, 100).tag == "03-of-100" and Shard(0, 1).tag == "0-of-1"
    for bad, says in [("3/2", "shard index 3 is not below the count 2; shards are numbered 0 to 1"),
                      ("0/0", "the shard count must be 1 or more"), ("x", "expected INDEX/COUNT"),
                      ("-1/2", "expected INDEX/COUNT"), ("1/2/3", "expected INDEX/COUNT")]:
        with pytest.raises(UsageError, match=f"--shard {bad}: .*") as info:
            parse_shard(bad)
        assert says in str(info.value) and "\n" not in str(info.value)


def test_scheduler_environments_give_the_default_shard() -> None:
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(2, 4, "SLURM_ARRAY_TASK_ID")
    # sbatch --array=1-4 and --array=10-16:2 are numbered from their first index, in their step
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}).index == 0
    slurm = {"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert shard_from_env(slurm) == Shard(2, 4, "SLURM_ARRAY_TASK_ID")
    k8s = {"JOB_COMPLETION_INDEX": "5", "JOB_COMPLETIONS": "8"}
    assert shard_from_env(k8s) == Shard(5, 8, "JOB_COMPLETION_INDEX/JOB_COMPLETIONS")
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2, "RANK/WORLD_SIZE")
    assert shard_from_env({**k8s, "RANK": "0", "WORLD_SIZE": "2"}).source.startswith("JOB_COMPLETION_INDEX")
    assert resolve_shard("0/1", {"RANK": "1", "WORLD_SIZE": "2"}) == Shard(0, 1)  # --shard wins
    for env, says in [({"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not"),
                      ({"JOB_COMPLETION_INDEX": "3"}, "set it to the Job's .spec.completions"),
                      ({"RANK": "0"}, "RANK is set but WORLD_SIZE is not"),
                      ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK/WORLD_SIZE 2/2: shard index 2 is not below the count 2"),
                      ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x': not a whole number"),
                      ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2"}, "not one of 2 evenly spaced array indices")]:
        with pytest.raises(UsageError) as info:
            shard_from_env(env)
        assert says in str(info.value) and "--shard" in str(info.value)


def test_shards_cover_every_input_exactly_once_whatever_the_argument_order(tmp_path: Path) -> None:
    files = photos(tmp_path / "in", 7) + photos(tmp_path / "in", 4, sub="sub")
    opts = BatchOptions(output=tmp_path / "out", recursive=True)
    plan = plan_batch([str(tmp_path / "in")], opts)
    parts = [select_shard(plan, Shard(i, 3)) for i in range(3)]
    assert sorted(p for part in parts for p in part) == sorted(plan) and sum(map(len, parts)) == len(files) == 11
    assert [len(p) for p in parts] == [4, 4, 3]
    folder = plan_batch([str(tmp_path / "in")], BatchOptions(output=tmp_path / "out"))
    reordered = plan_batch([str(f) for f in reversed(files[:7])], BatchOptions(output=tmp_path / "out"))
    assert select_shard(reordered, Shard(1, 3)) == select_shard(folder, Shard(1, 3))  # the same files, whatever the order


# -------------------------------------------------------------------------------------- the CLI


def test_two_shards_write_disjoint_halves_and_their_manifests(model: Path, tmp_path: Path) -> None:
    photos(tmp_path / "in", 5)
    out = tmp_path / "out"
    code0, rep0, err0 = image(model, str(tmp_path / "in"), "-o", str(out), "--shard", "0/2")
    code1, rep1, _ = image(model, str(tmp_path / "in"), "-o", str(out), "--shard", "1/2")
    assert code0 == code1 == 0
    assert "image: shard 0/2 (from --shard): 3 of 5 file(s)" in err0
    assert set(statuses(rep0)) == {"p00.png", "p02.png", "p04.png"} and set(statuses(rep1)) == {"p01.png", "p03.png"}
    assert sorted(p.name for p in out.glob("*.png")) == [f"p{i:02d}.png" for i in range(5)]
    assert rep0["shard"] == {"index": 0, "count": 2, "source": "--shard"}
    assert rep0["manifest"] == str(out / "vrrestore-manifest.shard-0-of-2.jsonl")
    rows = list(read_manifest(out / "vrrestore-manifest.shard-0-of-2.jsonl"))
    assert [tuple(r) for r in rows] == [FIELDS] * 3
    assert [(Path(r["input"]).name, r["status"], r["faces"], r["error"]) for r in rows] == [
        ("p00.png", "ok", None, None), ("p02.png", "ok", None, None), ("p04.png", "ok", None, None)]
    assert all(r["seconds"] > 0 and Path(r["output"]).parent == out for r in rows)


def test_bad_shard_specs_are_usage_errors(model: Path, tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    for spec in ("3/2", "0/0", "x"):
        code, rep, err = image(model, str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--shard", spec)
        assert code == 2 and rep["exit_code"] == 2 and f"--shard {spec}:" in rep["error"]
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_scheduler_sets_the_shard_and_the_flag_wins(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos(tmp_path / "in", 4)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    code, rep, err = image(model, str(tmp_path / "in"), "-o", str(tmp_path / "a"))
    assert code == 0 and set(statuses(rep)) == {"p01.png", "p03.png"} and "(from SLURM_ARRAY_TASK_ID)" in err
    assert (tmp_path / "a" / "vrrestore-manifest.shard-1-of-2.jsonl").is_file()
    code, rep, _ = image(model, str(tmp_path / "in"), "-o", str(tmp_path / "b"), "--shard", "0/1")
    assert code == 0 and len(rep["files"]) == 4 and rep["shard"]["source"] == "--shard"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "x")
    code, rep, _ = image(model, str(tmp_path / "in"), "-o", str(tmp_path / "c"))
    assert code == 2 and "SLURM_ARRAY_TASK_COUNT='x': not a whole number" in rep["error"]


def test_manifest_is_the_resume_log(model: Path, tmp_path: Path) -> None:
    photos(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    log = tmp_path / "logs" / "job-{shard}.jsonl"
    out = str(tmp_path / "out")
    code, rep, _ = image(model, str(tmp_path / "in"), "-o", out, "--manifest", str(log))
    assert code == 1 and rep["manifest"] == str(tmp_path / "logs" / "job-all.jsonl") and rep["shard"] is None
    path = tmp_path / "logs" / "job-all.jsonl"
    assert [r["status"] for r in read_manifest(path)] == ["failed", "ok", "ok", "ok"]
    with open(path, "a") as f:
        f.write('{"input": "torn')  # a kill in the middle of a line
    # even with --overwrite, what the manifest records as done is not redone; the failed file is retried
    code, rep, _ = image(model, str(tmp_path / "in"), "-o", out, "--manifest", str(log), "--overwrite")
    assert code == 1 and statuses(rep) == {"broken.png": "failed", "p00.png": "skipped", "p01.png": "skipped", "p02.png": "skipped"}
    assert "done in an earlier run (recorded in" in rep["files"][1]["error"]
    rows = list(read_manifest(path))
    assert [r["status"] for r in rows] == ["failed", "ok", "ok", "ok", "failed"]  # no rows repeated for done files
    (tmp_path / "out" / "p01.png").unlink()  # a lost output is redone
    code, rep, _ = image(model, str(tmp_path / "in"), "-o", out, "--manifest", str(log))
    assert statuses(rep)["p01.png"] == "ok" and statuses(rep)["p00.png"] == "skipped"
    # outputs that existed before the job are skipped and recorded once
    code, rep, _ = image(model, str(tmp_path / "in" / "p00.png"), "-o", out, "--manifest", str(tmp_path / "other.jsonl"))
    code, rep, _ = image(model, str(tmp_path / "in" / "p00.png"), "-o", out, "--manifest", str(tmp_path / "other.jsonl"))
    assert [r["status"] for r in read_manifest(tmp_path / "other.jsonl")] == ["skipped"]


def test_unwritable_manifest_is_a_usage_error(model: Path, tmp_path: Path) -> None:
    photos(tmp_path / "in", 1)
    (tmp_path / "file").write_text("")
    code, rep, err = image(model, str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--manifest", str(tmp_path / "file" / "m.jsonl"))
    assert code == 2 and "is a file, not a folder" in rep["error"] and len(err.strip().splitlines()) == 1


def test_files_from_a_list_with_a_missing_file(model: Path, tmp_path: Path) -> None:
    a = photos(tmp_path / "in" / "a", 2)
    b = photos(tmp_path / "in" / "b", 1)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{a[0]}\n\n{tmp_path / 'in' / 'a' / 'gone.png'}\n{a[1]}\n{b[0]}\n")
    code, rep, _ = image(model, "--files-from", str(listing), "-o", str(tmp_path / "out"), "--shard", "0/1")
    assert code == 1  # one listed file is missing: reported, the rest done
    # a shard takes the list sorted by path: a/gone.png, a/p00.png, a/p01.png, b/p00.png
    assert [(Path(f["input"]).name, f["status"]) for f in rep["files"]] == [
        ("gone.png", "failed"), ("p00.png", "ok"), ("p01.png", "ok"), ("p00.png", "ok")]
    assert "gone.png: no such file" in rep["files"][0]["error"]
    # outputs mirror the listed paths below the deepest folder holding them all
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == ["a/p00.png", "a/p01.png", "b/p00.png"]
    rows = list(read_manifest(tmp_path / "out" / "vrrestore-manifest.shard-0-of-1.jsonl"))
    assert (Path(rows[0]["input"]).name, rows[0]["status"]) == ("gone.png", "failed") and len(rows) == 4

    code, rep, _ = image(model, "--files-from", "-", "-o", str(tmp_path / "stdin"), stdin=f"{a[0]}\0{b[0]}\0")
    assert code == 0 and [f["input"] for f in rep["files"]] == [str(a[0]), str(b[0])]
    assert (tmp_path / "stdin" / "a" / "p00.png").is_file() and (tmp_path / "stdin" / "b" / "p00.png").is_file()
    code, rep, _ = image(model, str(b[0]), "--files-from", str(listing), "-o", str(tmp_path / "both"))
    assert len(rep["files"]) == 4  # an input named twice is done once
    (tmp_path / "empty.txt").write_text("\n\n")
    for bad, says in [("empty.txt", "the list is empty"), ("nope.txt", "cannot read the list")]:
        code, rep, _ = image(model, "--files-from", str(tmp_path / bad), "-o", str(tmp_path / "x"))
        assert code == 2 and f"--files-from {tmp_path / bad}: {says}" in rep["error"]
    code, rep, _ = image(model, "-o", str(tmp_path / "x"))
    assert code == 2 and "no inputs" in rep["error"]


def test_listed_inputs_are_relative_to_their_common_folder(tmp_path: Path) -> None:
    got = listed_inputs([str(tmp_path / "x" / "a.png"), str(tmp_path / "x" / "y" / "b.png")])
    assert [str(rel) for _, rel in got] == ["a.png", "y/b.png"]
    assert [str(rel) for _, rel in listed_inputs(["only.png"])] == ["only.png"]


def test_face_takes_the_same_sharding_flags(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model("FaceRestorer", preset("face-tiny")), tmp_path / "f.safetensors")
    crops = photos(tmp_path / "crops", 3)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, crops)))
    r = CliRunner().invoke(app, ["face", "-m", str(ckpt), "--aligned", "-s", "1", "--precision", "fp32", "--json",
                                 "--files-from", str(listing), "--shard", "1/2", "-o", str(tmp_path / "out"),
                                 "--manifest", str(tmp_path / "m-{shard}.jsonl")])
    assert r.exit_code == 0, r.stderr
    assert [Path(f["input"]).name for f in json.loads(r.stdout)["files"]] == ["p01.png"]
    rows = list(read_manifest(tmp_path / "m-1-of-2.jsonl"))
    assert [(Path(r["input"]).name, r["status"], r["faces"]) for r in rows] == [("p01.png", "ok", 1)]


def test_help_documents_the_new_flags() -> None:
    for command in ("face", "image"):
        text = " ".join(CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "240"}).stdout.split())
        for words in ("--shard", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "RANK/WORLD_SIZE", "--files-from",
                      "--manifest", "vrrestore-manifest.shard-I-of-N.jsonl"):
            assert words in text, (command, words)


def test_manifest_survives_a_torn_line_and_appends_on_a_new_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"input": "a", "output": "b", "status": "ok"}\n{"input": "c", "outp')
    with Manifest(path) as m:
        assert m.status("a", "b") == "ok" and m.status("c", "d") is None
        m.append({"input": "c", "output": "d", "status": "failed", "error": "boom"})
    rows = list(read_manifest(path))
    assert [(r["input"], r["status"]) for r in rows] == [("a", "ok"), ("c", "failed")]


# ------------------------------------------------------------------------- a worker that dies


CRASHER = textwrap.dedent("""
    import os, sys
    import vrrestore.api as api
    real = api.Restorer.restore_file
    seen = []
    def restore_file(self, src, dst, **kw):
        seen.append(src)
        if len(seen) == 3:
            os._exit(9)  # killed outright: no cleanup, no summary, no report
        return real(self, src, dst, **kw)
    api.Restorer.restore_file = restore_file
    from vrrestore.cli import main
    sys.argv = ["vrrestore", *sys.argv[1:]]
    main()
""")


def test_a_worker_killed_mid_shard_keeps_its_outputs_and_the_rerun_does_only_the_rest(model: Path, tmp_path: Path) -> None:
    photos(tmp_path / "in", 5)
    args = ["image", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model), "--precision", "fp32",
            "--shard", "0/1", "--json", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in SCHEDULER_VARS:
        env.pop(var, None)
    dead = subprocess.run([sys.executable, "-c", CRASHER, *args], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert dead.returncode == 9, dead.stderr
    manifest = tmp_path / "out" / "vrrestore-manifest.shard-0-of-1.jsonl"
    assert [(Path(r["input"]).name, r["status"]) for r in read_manifest(manifest)] == [("p00.png", "ok"), ("p01.png", "ok")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p00.png", "p01.png", manifest.name]  # no partial or temp file
    again = subprocess.run([sys.executable, "-m", "vrrestore", *args], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert statuses(json.loads(again.stdout)) == {"p00.png": "skipped", "p01.png": "skipped", "p02.png": "ok", "p03.png": "ok", "p04.png": "ok"}
    assert [r["status"] for r in read_manifest(manifest)] == ["ok"] * 5


def test_scale_bench_splits_start_up_from_the_steady_rate() -> None:
    """bench/scale.py's line through (images, wall s): intercept = what a run pays once, 1/slope = images/s."""
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        scale = importlib.import_module("scale")
    finally:
        sys.path.pop(0)
    start, steady = scale.fit([(32, 3.0 + 32 / 10.0), (128, 3.0 + 128 / 10.0)])
    assert start == pytest.approx(3.0) and steady == pytest.approx(10.0)
    assert scale.fit([(64, 8.0)]) == (0.0, 8.0)  # one count: no split, the end-to-end rate
    assert scale.counts_arg("128,32,32") == [32, 128]
    for bad, says in (("32,abc", "whole numbers"), ("0,4", "1 or more"), ("", "whole numbers")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            scale.counts_arg(bad)
    r = subprocess.run([sys.executable, str(Path(scale.__file__)), "--images", "32,abc"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("argument --images: '32,abc': expected comma-separated whole numbers, e.g. 32,128")
