"""The batch loop shared by the file commands (`image`, `face`): inputs -> planned outputs -> process each.

The rules are the same for every command. Inputs are files, folders (one level unless ``recursive``,
mirrored under the output folder) and globs. Outputs get predictable names. An existing output is
skipped, so an interrupted batch resumes. An input is never overwritten. One bad file is reported
and the rest go on. Errors that would repeat for every file (weights, device, usage) stop the batch
with their own exit code. Progress and the summary table go to stderr, the optional JSON report to
stdout.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    DeviceError,
    UsageError,
    VRRestoreError,
    WeightsError,
)
from .io import SUPPORTED_EXTS

DEFAULT_OUTPUT = Path("results")
Status = Literal["ok", "skipped", "failed", "interrupted", "not_run"]
Process = Callable[[Path, Path], dict[str, Any]]
_ABORTING = (WeightsError, DeviceError, UsageError)  # would fail the same way for every later file


@dataclass(frozen=True)
class BatchOptions:
    output: Path | None = None
    suffix: str = ""
    ext: str | None = None
    quality: int = 95
    overwrite: bool = False
    recursive: bool = False
    fail_fast: bool = False
    json: bool = False


@dataclass
class FileResult:
    input: Path
    output: Path
    status: Status
    error: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": str(self.input), "output": str(self.output), "status": self.status, "error": self.error,
            "seconds": round(self.seconds, 3), "details": self.details,
        }


# ------------------------------------------------------------------------------------- sub-progress

_REPORTER: ContextVar[Callable[[int, int, str], None] | None] = ContextVar("vrrestore_batch_progress", default=None)


def report_progress(done: int, total: int, unit: str = "tiles") -> None:
    """Advance the current file's sub-bar (tiles, faces). Does nothing outside run_batch, so pipelines may always call it."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(done, total, unit)


# ----------------------------------------------------------------------------------------- planning


def _is_image_name(p: Path) -> bool:
    return not p.name.startswith(".") and p.suffix.lower().lstrip(".") in SUPPORTED_EXTS


def _inside(p: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        p.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _glob_base(pattern: str) -> Path:
    """The leading part of a glob pattern that has no wildcards: the folder matches are made relative to."""
    parts: list[str] = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def collect_inputs(inputs: Sequence[str], *, recursive: bool = False, exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """(file, path relative to the folder or glob root it came from) for each input, deduplicated, in order.

    Files named on the command line are taken as they are, so a non-image named on purpose gets
    reported. Folders and globs yield only image files, and skip hidden files and anything under
    ``exclude`` (the output folder). An input that matches nothing raises UsageError.
    """
    found: list[tuple[Path, Path]] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_file():
            found.append((p, Path(p.name)))
            continue
        if p.is_dir():
            candidates = sorted(p.rglob("*") if recursive else p.iterdir())
            base = p
        elif glob.has_magic(raw):
            candidates = sorted(Path(m) for m in glob.glob(os.path.expanduser(raw), recursive=recursive))
            base = _glob_base(os.path.expanduser(raw))
        else:
            raise UsageError(f"{raw}: no such file or folder, and no files match it")
        items = []
        for c in candidates:
            if not c.is_file() or not _is_image_name(c) or _inside(c, exclude):
                continue
            rel = c.relative_to(base) if c.is_relative_to(base) else Path(c.name)
            if any(part.startswith(".") for part in rel.parts[:-1]):
                continue
            items.append((c, rel))
        if not items:
            hint = "" if recursive or not p.is_dir() else "; add --recursive to include sub-folders"
            raise UsageError(f"{raw}: no image files ({', '.join(SUPPORTED_EXTS)}) found{hint}")
        found.extend(items)
    seen: set[Path] = set()
    unique = []
    for path, rel in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, rel))
    return unique


def _normalise_ext(ext: str | None) -> str | None:
    if ext is None:
        return None
    e = ext.lower().lstrip(".")
    if e not in SUPPORTED_EXTS:
        raise UsageError(f"--ext {ext}: expected one of {', '.join(SUPPORTED_EXTS)}")
    return e


def plan_batch(inputs: Sequence[str], opts: BatchOptions) -> list[tuple[Path, Path]]:
    """(input, output) pairs. UsageError for anything that is wrong before work starts.

    That covers unmatched inputs, a bad --ext or --suffix, an output that is an input, and two
    inputs that map to one output.
    """
    ext = _normalise_ext(opts.ext)
    if os.sep in opts.suffix or "/" in opts.suffix:
        raise UsageError(f"--suffix {opts.suffix!r}: must not contain a path separator")
    out = opts.output.expanduser() if opts.output is not None else None
    as_file = out is not None and not out.is_dir() and out.suffix.lower().lstrip(".") in SUPPORTED_EXTS
    folder = None if as_file else (out or DEFAULT_OUTPUT)
    items = collect_inputs(inputs, recursive=opts.recursive, exclude=folder.resolve() if folder else None)
    plan: list[tuple[Path, Path]] = []
    if as_file:
        assert out is not None
        if len(items) != 1 or len(inputs) != 1:
            raise UsageError(f"--output {out}: names one file but there are {len(items)} inputs; pass a folder")
        if ext is not None and out.suffix.lower().lstrip(".") != ext:
            raise UsageError(f"--output {out} and --ext {ext} disagree; drop one of them")
        plan.append((items[0][0], out))
    else:
        assert folder is not None
        for path, rel in items:
            own = path.suffix.lower().lstrip(".")
            e = ext or (own if own in SUPPORTED_EXTS else "png")
            plan.append((path, folder / rel.parent / f"{rel.stem}{opts.suffix}.{e}"))
    owners: dict[Path, Path] = {}
    inputs_resolved = {p.resolve() for p, _ in items}
    for path, target in plan:
        key = target.resolve()
        if key in inputs_resolved:
            raise UsageError(f"{path}: the output {target} would overwrite an input; pass another --output folder or a --suffix")
        if key in owners:
            raise UsageError(f"{owners[key]} and {path} would both write {target}; use --suffix or separate runs")
        owners[key] = path
    return plan


# ------------------------------------------------------------------------------------------ running


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _discard_new(path: Path, existed: bool) -> None:
    """Remove an output that a failed or interrupted file created, so a resumed batch redoes it."""
    if not existed and path.exists():
        path.unlink()


@contextmanager
def _progress(console: Console, task: str, total: int) -> Iterator[tuple[Progress, Any]]:
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    with progress:
        yield progress, progress.add_task(task, total=total)


def run_batch(
    inputs: Sequence[str],
    opts: BatchOptions,
    process: Process,
    *,
    task: str,
    console: Console | None = None,
) -> int:
    """Run ``process(input, output)`` for each planned file. Returns the exit code: 0, 1, 2, 3, 4 or 130.

    ``process`` writes the output itself and returns details for the report. An InputError or any
    other exception fails that file only. Weights, device and usage errors stop the batch with their
    exit code. Ctrl-C stops it with 130. An output that a failed file created is removed.
    """
    console = console or Console(stderr=True)
    started = time.monotonic()
    try:
        plan = plan_batch(inputs, opts)
    except UsageError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        if opts.json:
            _emit_json(task, [], EXIT_USAGE, str(err), time.monotonic() - started)
        return EXIT_USAGE

    results: list[FileResult] = []
    code: int | None = None
    abort: str | None = None
    try:
        with _progress(console, task, len(plan)) as (progress, files_bar):
            for inp, out in plan:
                progress.update(files_bar, description=f"{task} {inp.name}")
                if out.exists() and not opts.overwrite:
                    results.append(FileResult(inp, out, "skipped", "output exists; --overwrite replaces it"))
                    progress.advance(files_bar)
                    continue
                result, stop = _run_one(inp, out, process, progress, console)
                results.append(result)
                progress.advance(files_bar)
                if stop is not None:
                    code, abort = stop
                    break
                if result.status == "failed" and opts.fail_fast:
                    break
    except KeyboardInterrupt as err:
        if isinstance(err, _Interrupted):
            results.append(err.result)
        code = EXIT_INTERRUPTED
    done = {r.input for r in results}
    results += [FileResult(i, o, "not_run") for i, o in plan if i not in done]
    if code is None:
        code = EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK
    elapsed = time.monotonic() - started
    _print_summary(console, task, results, elapsed, abort, code)
    if opts.json:
        _emit_json(task, results, code, abort, elapsed)
    return code


def _run_one(
    inp: Path, out: Path, process: Process, progress: Progress, console: Console
) -> tuple[FileResult, tuple[int, str | None] | None]:
    """One file. Returns its result and, if the batch must stop, (exit code, message)."""
    existed = out.exists()
    sub: list[Any] = []

    def reporter(done: int, total: int, unit: str) -> None:
        if not sub:
            sub.append(progress.add_task(f"  {unit}", total=total))
        progress.update(sub[0], completed=done, total=total)

    token = _REPORTER.set(reporter)
    t0 = time.monotonic()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        details = process(inp, out) or {}
        return FileResult(inp, out, "ok", None, time.monotonic() - t0, dict(details)), None
    except KeyboardInterrupt:
        _discard_new(out, existed)
        raise _Interrupted(FileResult(inp, out, "interrupted", "interrupted", time.monotonic() - t0)) from None
    except _ABORTING as err:
        _discard_new(out, existed)
        msg = _one_line(err)
        return FileResult(inp, out, "failed", msg, time.monotonic() - t0), (err.exit_code, msg)
    except VRRestoreError as err:
        msg = _one_line(err)
    except Exception as err:  # noqa: BLE001 - one bad file must not stop the batch
        msg = f"{inp}: {type(err).__name__}: {_one_line(err)}"
    finally:
        _REPORTER.reset(token)
        if sub:
            progress.remove_task(sub[0])
    _discard_new(out, existed)
    console.print(f"[red]failed:[/red] {msg}", highlight=False, soft_wrap=True)
    return FileResult(inp, out, "failed", msg, time.monotonic() - t0), None


class _Interrupted(KeyboardInterrupt):
    def __init__(self, result: FileResult) -> None:
        super().__init__()
        self.result = result


def _counts(results: Sequence[FileResult]) -> dict[str, int]:
    keys: tuple[Status, ...] = ("ok", "skipped", "failed", "interrupted", "not_run")
    return {k: sum(r.status == k for r in results) for k in keys}


def _print_summary(console: Console, task: str, results: list[FileResult], elapsed: float, abort: str | None, code: int) -> None:
    counts = _counts(results)
    table = Table(title=f"vrrestore {task}: {len(results)} file(s) in {elapsed:.1f} s", title_justify="left")
    table.add_column("status")
    table.add_column("files", justify="right")
    for status, n in counts.items():
        if n or status in ("ok", "failed"):
            table.add_row(status.replace("_", " "), str(n))
    console.print(table)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        ft = Table(title="failed files", title_justify="left")
        ft.add_column("file", overflow="fold")
        ft.add_column("error", overflow="fold")
        for r in failed:
            ft.add_row(str(r.input), r.error or "")
        console.print(ft)
    if abort:
        console.print(f"[red]error:[/red] {abort}", highlight=False, soft_wrap=True)
    if code == EXIT_INTERRUPTED:
        console.print("[yellow]interrupted[/yellow]: finished outputs are kept; run the same command again to resume")


def _emit_json(task: str, results: list[FileResult], code: int, error: str | None, elapsed: float) -> None:
    report = {
        "task": task, "exit_code": code, "error": error, "seconds": round(elapsed, 3),
        "summary": _counts(results), "files": [r.to_dict() for r in results],
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    sys.stdout.flush()
