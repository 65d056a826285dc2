"""vrrestore.batch: input collection, output naming, skip/overwrite, failures, aborts, interrupt + resume, JSON."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from vrrestore.batch import (
    BatchOptions,
    collect_inputs,
    plan_batch,
    report_progress,
    run_batch,
)
from vrrestore.errors import DeviceError, InputError, UsageError, WeightsError
from vrrestore.io import Image, read_image, write_image

RNG = np.random.default_rng(0)


def make_image(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(Image(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), path)
    return path


def invert(inp: Path, out: Path) -> dict[str, Any]:
    """A cheap stand-in for a restorer: read, invert, write; report the size."""
    img = read_image(inp)
    write_image(img.replace(255 - img.pixels), out)
    return {"size": list(img.size)}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    make_image(src / "a.png")
    make_image(src / "b.jpg")
    make_image(src / "sub" / "c.png")
    make_image(src / "sub" / "deep" / "d.webp")
    (src / "notes.txt").write_text("not an image")
    make_image(src / ".hidden.png")
    return src


# ----------------------------------------------------------------------------------------- inputs


def test_folder_is_one_level_unless_recursive(tree: Path) -> None:
    flat = [str(rel) for _, rel in collect_inputs([str(tree)])]
    assert flat == ["a.png", "b.jpg"]  # no .txt, no hidden file, no sub-folders
    deep = [str(rel) for _, rel in collect_inputs([str(tree)], recursive=True)]
    assert deep == ["a.png", "b.jpg", "sub/c.png", "sub/deep/d.webp"]


def test_globs_files_and_dedup(tree: Path) -> None:
    got = collect_inputs([str(tree / "*.png"), str(tree / "a.png"), str(tree / "notes.txt")])
    assert [str(rel) for _, rel in got] == ["a.png", "notes.txt"]  # a named non-image is kept (and will fail)
    rec = collect_inputs([str(tree / "**" / "*.png")], recursive=True)
    assert [str(rel) for _, rel in rec] == ["a.png", "sub/c.png"]


def test_unmatched_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or folder"):
        collect_inputs([str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no image files"):
        collect_inputs([str(tmp_path / "empty")])
    with pytest.raises(UsageError, match="no image files"):
        collect_inputs([str(tmp_path / "*.png")])


# ---------------------------------------------------------------------------------------- outputs


def test_output_names_mirror_layout_with_suffix_and_ext(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = plan_batch([str(tree)], BatchOptions(output=out, suffix="_x4", recursive=True))
    assert [str(o.relative_to(out)) for _, o in plan] == ["a_x4.png", "b_x4.jpg", "sub/c_x4.png", "sub/deep/d_x4.webp"]
    plan = plan_batch([str(tree)], BatchOptions(output=out, ext=".TIFF"))
    assert [o.name for _, o in plan] == ["a.tiff", "b.tiff"]
    with pytest.raises(UsageError, match="--ext gif"):
        plan_batch([str(tree)], BatchOptions(output=out, ext="gif"))


def test_single_file_output_and_default_folder(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_batch([str(tree / "a.png")], BatchOptions(output=tmp_path / "one.jpg"))
    assert plan == [(tree / "a.png", tmp_path / "one.jpg")]
    with pytest.raises(UsageError, match="names one file"):
        plan_batch([str(tree)], BatchOptions(output=tmp_path / "one.jpg"))
    with pytest.raises(UsageError, match="disagree"):
        plan_batch([str(tree / "a.png")], BatchOptions(output=tmp_path / "one.jpg", ext="png"))
    monkeypatch.chdir(tmp_path)
    assert plan_batch([str(tree / "a.png")], BatchOptions())[0][1] == Path("results") / "a.png"


def test_refuses_to_overwrite_an_input(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (tree / "a.png").read_bytes()
    code = run_batch([str(tree / "a.png")], BatchOptions(output=tree, overwrite=True), invert, task="test")
    assert code == 2 and (tree / "a.png").read_bytes() == before
    err = capsys.readouterr().err
    assert "would overwrite an input" in err and len(err.strip().splitlines()) == 1
    assert run_batch([str(tree / "a.png")], BatchOptions(output=tree / "a.png"), invert, task="test") == 2
    # the same folder with a suffix is fine
    assert run_batch([str(tree / "a.png")], BatchOptions(output=tree, suffix="_r"), invert, task="test") == 0
    assert (tree / "a_r.png").exists()


def test_two_inputs_to_one_output_is_refused(tmp_path: Path) -> None:
    make_image(tmp_path / "x" / "p.png")
    make_image(tmp_path / "y" / "p.png")
    with pytest.raises(UsageError, match="would both write"):
        plan_batch([str(tmp_path / "x"), str(tmp_path / "y")], BatchOptions(output=tmp_path / "o"))


def test_recursive_scan_skips_the_output_folder(tmp_path: Path) -> None:
    make_image(tmp_path / "p.png")
    assert run_batch([str(tmp_path)], BatchOptions(output=tmp_path / "res", recursive=True), invert, task="t") == 0
    plan = plan_batch([str(tmp_path)], BatchOptions(output=tmp_path / "res", recursive=True))
    assert [i.name for i, _ in plan] == ["p.png"]  # not res/p.png


# ------------------------------------------------------------------------------------------ running


def test_skip_existing_then_overwrite(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert run_batch([str(tree)], BatchOptions(output=out), invert, task="t") == 0
    stamp = (out / "a.png").stat().st_mtime_ns
    calls: list[Path] = []

    def counting(i: Path, o: Path) -> dict[str, Any]:
        calls.append(i)
        return invert(i, o)

    capsys.readouterr()
    assert run_batch([str(tree)], BatchOptions(output=out, json=True), counting, task="t") == 0
    report = json.loads(capsys.readouterr().out)
    assert calls == [] and report["summary"]["skipped"] == 2 and (out / "a.png").stat().st_mtime_ns == stamp
    assert run_batch([str(tree)], BatchOptions(output=out, overwrite=True), counting, task="t") == 0
    assert len(calls) == 2


def test_bad_files_are_reported_and_the_rest_processed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    make_image(src / "a_good.png")
    (src / "b_empty.png").write_bytes(b"")
    good = (src / "a_good.png").read_bytes()
    (src / "c_corrupt.png").write_bytes(good[: len(good) // 2])
    (src / "d_text.jpg").write_text("this is not a jpeg\n" * 20)
    make_image(src / "e_good.png")
    out = tmp_path / "out"
    code = run_batch([str(src)], BatchOptions(output=out, json=True), invert, task="t")
    captured = capsys.readouterr()
    assert code == 1
    report = json.loads(captured.out)  # stdout holds the JSON and nothing else
    assert report["exit_code"] == 1 and report["summary"] == {"ok": 2, "skipped": 0, "failed": 3, "interrupted": 0, "not_run": 0}
    by_name = {Path(f["input"]).name: f for f in report["files"]}
    assert "empty file" in by_name["b_empty.png"]["error"]
    assert "damaged or truncated" in by_name["c_corrupt.png"]["error"]
    assert "not an image" in by_name["d_text.jpg"]["error"]
    assert by_name["a_good.png"]["details"] == {"size": [8, 6]}
    assert files_under(out) == ["a_good.png", "e_good.png"]  # no partial or temp files
    assert "failed files" in captured.err and "c_corrupt.png" in captured.err


def test_fail_fast_stops_at_first_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    (src).mkdir()
    (src / "a.png").write_bytes(b"")
    make_image(src / "b.png")
    code = run_batch([str(src)], BatchOptions(output=tmp_path / "out", fail_fast=True, json=True), invert, task="t")
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and [f["status"] for f in report["files"]] == ["failed", "not_run"]
    assert not (tmp_path / "out" / "b.png").exists()


@pytest.mark.parametrize(("error", "code"), [(WeightsError("no weights; pass --model"), 3), (DeviceError("CUDA gone"), 4), (UsageError("bad model"), 2)])
def test_errors_that_repeat_for_every_file_abort(tree: Path, tmp_path: Path, error: Exception, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[Path] = []

    def process(i: Path, o: Path) -> dict[str, Any]:
        calls.append(i)
        raise error

    assert run_batch([str(tree)], BatchOptions(output=tmp_path / "o", json=True), process, task="t") == code
    report = json.loads(capsys.readouterr().out)
    assert len(calls) == 1 and report["error"] == str(error)
    assert [f["status"] for f in report["files"]] == ["failed", "not_run"]


def test_failed_file_does_not_leave_its_output(tree: Path, tmp_path: Path) -> None:
    def writes_then_fails(i: Path, o: Path) -> dict[str, Any]:
        invert(i, o)
        raise InputError(f"{i}: face detector said no")

    out = tmp_path / "o"
    assert run_batch([str(tree / "a.png")], BatchOptions(output=out), writes_then_fails, task="t") == 1
    assert files_under(out) == []


def test_unexpected_exception_fails_only_that_file(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def flaky(i: Path, o: Path) -> dict[str, Any]:
        if i.name == "a.png":
            raise RuntimeError("boom")
        return invert(i, o)

    assert run_batch([str(tree)], BatchOptions(output=tmp_path / "o"), flaky, task="t") == 1
    assert files_under(tmp_path / "o") == ["b.jpg"]
    assert "RuntimeError: boom" in capsys.readouterr().err


def test_interrupted_batch_resumes_by_skipping_finished_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    for k in range(5):
        make_image(src / f"{k}.png")
    out = tmp_path / "out"

    def ctrl_c_on_third(i: Path, o: Path) -> dict[str, Any]:
        if i.name == "2.png":
            write_image(read_image(i), o.with_name("partial-marker.png"))  # something the file did before Ctrl-C
            (o.parent / "partial-marker.png").unlink()
            raise KeyboardInterrupt
        return invert(i, o)

    code = run_batch([str(src)], BatchOptions(output=out, json=True), ctrl_c_on_third, task="t")
    report = json.loads(capsys.readouterr().out)
    assert code == 130
    assert [f["status"] for f in report["files"]] == ["ok", "ok", "interrupted", "not_run", "not_run"]
    assert files_under(out) == ["0.png", "1.png"]
    seen: list[str] = []

    def recording(i: Path, o: Path) -> dict[str, Any]:
        seen.append(i.name)
        return invert(i, o)

    assert run_batch([str(src)], BatchOptions(output=out, json=True), recording, task="t") == 0
    report = json.loads(capsys.readouterr().out)
    assert seen == ["2.png", "3.png", "4.png"] and report["summary"]["skipped"] == 2


def test_usage_error_with_json_still_writes_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_batch([str(tmp_path / "nothing*.png")], BatchOptions(json=True), invert, task="t") == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exit_code"] == 2
    assert captured.err.count("\n") == 1 and "no image files" in captured.err


def test_report_progress_is_harmless_outside_a_batch_and_seen_inside(tree: Path, tmp_path: Path) -> None:
    report_progress(1, 2)  # no batch running: no-op
    seen: list[int] = []

    def with_tiles(i: Path, o: Path) -> dict[str, Any]:
        for k in range(3):
            report_progress(k + 1, 3)
            seen.append(k)
        return invert(i, o)

    assert run_batch([str(tree / "a.png")], BatchOptions(output=tmp_path / "o"), with_tiles, task="t") == 0
    assert seen == [0, 1, 2]


def test_progress_shows_files_and_tiles_on_a_terminal_only(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def with_tiles(i: Path, o: Path) -> dict[str, Any]:
        for k in range(3):
            report_progress(k + 1, 3)
        return invert(i, o)

    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=100)
    assert run_batch([str(tree / "a.png")], BatchOptions(output=tmp_path / "o"), with_tiles, task="demo", console=term) == 0
    assert "demo a.png" in buf.getvalue() and "tiles" in buf.getvalue()
    assert run_batch([str(tree / "b.jpg")], BatchOptions(output=tmp_path / "o"), with_tiles, task="demo") == 0
    err = capsys.readouterr().err  # not a terminal: log lines, no bars (no spinner, no ANSI)
    assert "\x1b[" not in err and "━" not in err
    assert "demo [1/1]" in err and "b.jpg: ok" in err


def test_log_lines_per_file_with_eta_when_stderr_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vrrestore import batch

    for k in range(4):
        make_image(tmp_path / "in" / f"{k}.png")
    clock = [1000.0]
    monkeypatch.setattr(batch.time, "monotonic", lambda: clock[0])

    def ten_seconds_each(i: Path, o: Path) -> dict[str, Any]:
        clock[0] += 10.0
        for k in range(1, 4):
            report_progress(k, 3, "tiles")
        return invert(i, o)

    (tmp_path / "out").mkdir()
    invert(tmp_path / "in" / "0.png", tmp_path / "out" / "0.png")  # already done: skipped, costs no time
    assert run_batch([str(tmp_path / "in")], BatchOptions(output=tmp_path / "out"), ten_seconds_each, task="demo") == 0
    lines = capsys.readouterr().err.splitlines()
    files = [ln for ln in lines if ln.startswith("demo [")]
    assert len(files) == 4 and "0.png: skipped" in files[0] and "ETA unknown" in files[0]
    assert "1.png: ok in 10.0 s" in files[1] and "0:10 elapsed, ETA 0:20" in files[1]  # 2 left at 10 s each
    assert files[3].endswith("0:30 elapsed, ETA 0:00")
    assert lines[-1] == "vrrestore demo: 4 file(s) in 30.0 s: 3 ok, 1 skipped, 0 failed"  # one line, no table
    assert not any("tiles 1/3" in ln for ln in lines)  # within a file: at most one line per LOG_EVERY seconds

    monkeypatch.setattr(batch, "LOG_EVERY", 5.0)

    def slow_tiles(i: Path, o: Path) -> dict[str, Any]:
        for k in range(1, 4):
            clock[0] += 6.0
            report_progress(k, 3, "tiles")
        return invert(i, o)

    assert run_batch([str(tmp_path / "in" / "1.png")], BatchOptions(output=tmp_path / "o2"), slow_tiles, task="demo") == 0
    err = capsys.readouterr().err
    assert "demo [1/1] 1.png: tiles 1/3, file ETA 0:12" in err and "tiles 2/3, file ETA 0:06" in err


def test_prepare_runs_once_only_when_there_is_work_and_its_errors_stop_the_batch(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[int] = []

    def prepare() -> None:
        calls.append(1)

    out = tmp_path / "o"
    assert run_batch([str(tree)], BatchOptions(output=out), invert, task="t", prepare=prepare) == 0
    assert calls == [1]
    assert run_batch([str(tree)], BatchOptions(output=out), invert, task="t", prepare=prepare) == 0
    assert calls == [1]  # everything skipped: no model load, no device needed

    def no_weights() -> None:
        raise WeightsError("no trained face model is available yet; pass --model PATH")

    capsys.readouterr()
    code = run_batch([str(tree)], BatchOptions(output=tmp_path / "o2", json=True), invert, task="t", prepare=no_weights)
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert code == 3 and report["exit_code"] == 3 and "pass --model PATH" in report["error"]
    assert [f["status"] for f in report["files"]] == ["not_run", "not_run"] and not (tmp_path / "o2").exists()


def test_unwritable_output_is_a_usage_error_before_any_work(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from vrrestore import batch

    calls: list[Path] = []

    def counting(i: Path, o: Path) -> dict[str, Any]:
        calls.append(i)
        return invert(i, o)

    (tmp_path / "file").write_text("not a folder")
    capsys.readouterr()
    assert run_batch([str(tree)], BatchOptions(output=tmp_path / "file" / "out", json=True), counting, task="t") == 2
    captured = capsys.readouterr()
    assert calls == [] and "is a file, not a folder" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert json.loads(captured.out)["exit_code"] == 2

    real_open = os.open

    def read_only(path: Any, flags: int, mode: int = 0o777) -> int:
        if ".vrrestore-write-test." in str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(batch.os, "open", read_only)
    assert run_batch([str(tree)], BatchOptions(output=tmp_path / "ro"), counting, task="t") == 2
    err = capsys.readouterr().err
    assert calls == [] and "cannot write in" in err and "Permission denied" in err and ".tmp" not in err
    assert len(err.strip().splitlines()) == 1


def test_input_folder_that_is_the_output_folder_says_so(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_batch([str(tree)], BatchOptions(output=tree, suffix="_x"), invert, task="t") == 2
    err = capsys.readouterr().err
    assert "is the output folder" in err and "--recursive" not in err and "pass another --output" in err
    with pytest.raises(UsageError, match="is the output folder or inside it"):
        plan_batch([str(tree / "sub")], BatchOptions(output=tree))


def test_contradictory_or_impossible_outputs_are_usage_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--suffix '_x' names outputs in a folder"):
        plan_batch([str(tree / "a.png")], BatchOptions(output=tmp_path / "one.png", suffix="_x"))
    for name in ("x.gif", "x.HEIC", "x.avif"):
        with pytest.raises(UsageError, match=f"cannot write .{name.split('.')[1].lower()} files"):
            plan_batch([str(tree)], BatchOptions(output=tmp_path / name))
        assert not (tmp_path / name).exists()
    assert plan_batch([str(tree / "a.png")], BatchOptions(output=tmp_path / "v1.2"))[0][1] == tmp_path / "v1.2" / "a.png"
