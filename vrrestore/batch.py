"""The batch loop shared by the file commands (`image`, `face`): inputs -> planned outputs -> process each.

The rules are the same for every command. Inputs are files, folders (one level unless ``recursive``,
mirrored under the output folder) and globs. Outputs get predictable names. An existing output is
skipped, so an interrupted batch resumes. An input is never overwritten. One bad file is reported
and the rest go on. Errors that would repeat for every file (weights, device, usage) stop the batch
with their own exit code. Whatever is wrong before work starts (no inputs, an unwritable or
impossible output, contradictory options) is found up front: exit 2, one line.

Array jobs: ``shard`` (``--shard I/N``, or the scheduler's environment, see :mod:`vrrestore.shard`)
keeps every N-th file of the sorted plan, and a JSON-lines manifest (:mod:`vrrestore.manifest`)
records each file as it ends; a rerun skips what the manifest records as done. ``files_from`` reads
the inputs from a list file, for lists too long for a command line.

Progress goes to stderr: bars on a terminal; otherwise (a log file, CI, a pipe) one line per file
with the ETA, and a line within a long file at most every ``LOG_EVERY`` seconds. With ``json`` every
exit path writes exactly one JSON report to stdout (``emit_json``).
"""

from __future__ import annotations

import glob
import json
import mimetypes
import os
import secrets
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
    DeviceError,
    UsageError,
    VRRestoreError,
    WeightsError,
)
from .io import SUPPORTED_EXTS
from .manifest import RECORDED, Manifest
from .manifest import row as manifest_row
from .shard import Shard, resolve_shard

DEFAULT_OUTPUT = Path("results")
Status = Literal["ok", "skipped", "failed", "interrupted", "not_run"]
Process = Callable[[Path, Path], dict[str, Any]]
_ABORTING = (WeightsError, DeviceError, UsageError)  # would fail the same way for every later file
LOG_EVERY = 30.0  # seconds between progress lines within one file when stderr is not a terminal
# Suffixes that name an image file we cannot write: ``-o x.gif`` is a mistake, not a folder name.
_OTHER_IMAGE_EXTS = frozenset(
    {"gif", "apng", "avif", "heic", "heif", "jxl", "jp2", "j2k", "ico", "psd", "svg", "tga", "ppm", "pgm", "pbm",
     "pnm", "exr", "hdr", "dng", "raw", "cr2", "cr3", "nef", "arw", "orf", "rw2", "qoi", "jfif", "jpe", "dib", "pdf"}
)
_json_written = 0  # JSON reports written by emit_json in this process (the CLI's safety net reads it)


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
    files_from: Path | None = None  # a list of input files, one per line ("-" = stdin)
    shard: str | None = None  # "I/N"; None = from the environment (vrrestore.shard), if set there
    manifest: Path | None = None  # None = <output folder>/vrrestore-manifest.shard-I-of-N.jsonl for a shard


MANIFEST_NAME = "vrrestore-manifest.shard-{shard}.jsonl"


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

    def manifest_row(self) -> dict[str, Any]:
        faces = self.details.get("faces")
        return manifest_row(self.input, self.output, self.status, faces=faces if isinstance(faces, int) else None,
                            seconds=self.seconds, error=self.error)


# ------------------------------------------------------------------------------------- sub-progress

_REPORTER: ContextVar[Callable[[int, int, str], None] | None] = ContextVar("vrrestore_batch_progress", default=None)


def report_progress(done: int, total: int, unit: str = "tiles") -> None:
    """Advance the current file's sub-bar (tiles, faces). Does nothing outside run_batch, so pipelines may always call it."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter(done, total, unit)


# ----------------------------------------------------------------------------------------- planning


def is_image_name(p: Path) -> bool:
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
        excluded = 0
        for c in candidates:
            if not c.is_file() or not is_image_name(c):
                continue
            if _inside(c, exclude):
                excluded += 1
                continue
            rel = c.relative_to(base) if c.is_relative_to(base) else Path(c.name)
            if any(part.startswith(".") for part in rel.parts[:-1]):
                continue
            items.append((c, rel))
        if not items and excluded:
            raise UsageError(
                f"{raw}: is the output folder or inside it ({exclude}), and outputs are never read back as inputs; "
                "pass another --output folder"
            )
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


def read_file_list(path: Path) -> list[str]:
    """The entries of a ``--files-from`` list: one path per line (or NUL-separated, as ``find -print0``
    writes), ``-`` = stdin; blank lines are ignored. UsageError if the list itself cannot be read."""
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).expanduser().read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise UsageError(f"--files-from {path}: cannot read the list ({err.strerror or type(err).__name__}); pass a text file with one image path per line") from None
    entries = [e.rstrip("\r") for e in (text.split("\0") if "\0" in text else text.splitlines())]
    entries = [e for e in entries if e.strip()]
    if not entries:
        raise UsageError(f"--files-from {path}: the list is empty; put one image path per line in it")
    return entries


def listed_inputs(entries: Sequence[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to the deepest folder that holds every listed file) for each entry.

    Entries are taken as named: one that does not exist or is no image is planned like any other and
    fails on its own when processed (reported; the rest go on). The names are computed without
    touching the file system, so a missing entry cannot stop the plan.
    """
    paths = [Path(e).expanduser() for e in entries]
    absolute = [os.path.abspath(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.dirname(a) for a in absolute])
    except ValueError:  # different drives: no common folder
        return [(p, Path(p.name)) for p in paths]
    return [(p, Path(os.path.relpath(a, root))) for p, a in zip(paths, absolute, strict=True)]


def normalise_ext(ext: str | None) -> str | None:
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
    ext = normalise_ext(opts.ext)
    if os.sep in opts.suffix or "/" in opts.suffix:
        raise UsageError(f"--suffix {opts.suffix!r}: must not contain a path separator")
    out, as_file = _output_spec(opts)
    if out is not None and not out.is_dir() and _names_unwritable_image(out):
        raise UsageError(
            f"--output {out}: cannot write {out.suffix.lower()} files; name a .{' / .'.join(SUPPORTED_EXTS)} file, "
            "or a folder"
        )
    if as_file and opts.suffix:
        raise UsageError(f"--suffix {opts.suffix!r} names outputs in a folder, but --output {out} is one file; drop one of them")
    if not inputs and opts.files_from is None:
        raise UsageError("no inputs: name image files, folders or globs, or pass --files-from LIST")
    folder = None if as_file else (out or DEFAULT_OUTPUT)
    items = collect_inputs(inputs, recursive=opts.recursive, exclude=folder.resolve() if folder else None)
    if opts.files_from is not None:
        items = _unique(items + listed_inputs(read_file_list(opts.files_from)))
    plan: list[tuple[Path, Path]] = []
    if as_file:
        assert out is not None
        if len(items) != 1 or len(inputs) + (opts.files_from is not None) != 1:
            raise UsageError(f"--output {out}: names one file but there are {len(items)} inputs; pass a folder")
        if ext is not None and out.suffix.lower().lstrip(".") != ext:
            raise UsageError(f"--output {out} and --ext {ext} disagree; drop one of them")
        plan.append((items[0][0], out))
    else:
        assert folder is not None
        plan.extend((path, output_path(rel, folder, opts.suffix, ext)) for path, rel in items)
    check_targets(plan, {p.resolve() for p, _ in items})
    return plan


def output_path(rel: Path, folder: Path, suffix: str = "", ext: str | None = None) -> Path:
    """Where the input at ``rel`` (relative to its folder or glob root) is written below ``folder``:
    the same sub-folders and stem, plus ``suffix``, with ``ext`` or the input's own format (else png)."""
    own = rel.suffix.lower().lstrip(".")
    e = ext or (own if own in SUPPORTED_EXTS else "png")
    return folder / rel.parent / f"{rel.stem}{suffix}.{e}"


def check_targets(plan: Sequence[tuple[Any, Path]], inputs: set[Path] | frozenset[Path] = frozenset()) -> None:
    """UsageError if an output would overwrite an input (``inputs``: resolved paths) or two inputs share an output."""
    owners: dict[Path, Any] = {}
    for path, target in plan:
        key = target.resolve()
        if key in inputs:
            raise UsageError(f"{path}: the output {target} would overwrite an input; pass another --output folder or a --suffix")
        if key in owners:
            raise UsageError(f"{owners[key]} and {path} would both write {target}; use --suffix or separate runs")
        owners[key] = path


def _output_spec(opts: BatchOptions) -> tuple[Path | None, bool]:
    """(--output as given, whether it names one file rather than a folder)."""
    out = opts.output.expanduser() if opts.output is not None else None
    return out, out is not None and not out.is_dir() and out.suffix.lower().lstrip(".") in SUPPORTED_EXTS


def _unique(items: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """First occurrence of each file (by absolute path, without touching the file system)."""
    seen: set[str] = set()
    unique = []
    for path, rel in items:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, rel))
    return unique


def select_shard(plan: Sequence[tuple[Path, Path]], shard: Shard | None) -> list[tuple[Path, Path]]:
    """This shard's part of the plan: sorted by input path (the same order in every process), every N-th."""
    if shard is None:
        return list(plan)
    return shard.select(sorted(plan, key=lambda item: str(item[0])))


def manifest_path(opts: BatchOptions, shard: Shard | None) -> Path | None:
    """Where this run's manifest goes: ``--manifest`` (``{shard}`` in it becomes ``I-of-N``), else for a
    shard the output folder's ``vrrestore-manifest.shard-I-of-N.jsonl``; None = no manifest."""
    tag = shard.tag if shard is not None else "all"
    if opts.manifest is not None:
        return Path(str(opts.manifest.expanduser()).replace("{shard}", tag))
    if shard is None:
        return None
    out, as_file = _output_spec(opts)
    folder = out.parent if as_file and out is not None else (out or DEFAULT_OUTPUT)
    return folder / MANIFEST_NAME.format(shard=tag)


def _names_unwritable_image(out: Path) -> bool:
    """True for ``x.gif`` and the like: an image name we cannot write, which must not become a folder."""
    ext = out.suffix.lower().lstrip(".")
    if not ext or ext in SUPPORTED_EXTS:
        return False
    return ext in _OTHER_IMAGE_EXTS or (mimetypes.guess_type(f"x.{ext}")[0] or "").startswith("image/")


def check_writable(targets: Sequence[Path]) -> None:
    """UsageError, before any work, if an output cannot be created where it is planned.

    Probes the nearest existing folder above each output with a real file (os.access is wrong for
    root, ACLs and read-only mounts), so an unwritable --output fails in one line, not once per file.
    """
    probed: set[Path] = set()
    for target in targets:
        folder = target.parent
        anc = folder
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if anc in probed:
            continue
        probed.add(anc)
        if not anc.is_dir():
            raise UsageError(f"--output {folder}: {anc} is a file, not a folder; pass another --output")
        probe = anc / f".vrrestore-write-test.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as err:
            raise UsageError(
                f"--output {folder}: cannot write in {anc} ({err.strerror or type(err).__name__}); "
                "pass another --output folder or fix its permissions"
            ) from None


# ------------------------------------------------------------------------------------------ running


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _discard_new(path: Path, existed: bool) -> None:
    """Remove an output that a failed or interrupted file created, so a resumed batch redoes it."""
    if not existed and path.exists():
        path.unlink()


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class _LogLines:
    """Progress for a log (stderr not a terminal): one line per finished file with the ETA, and at most
    one line per ``LOG_EVERY`` seconds inside a long file. Lines never wrap (soft_wrap)."""

    def __init__(self, console: Console, task: str, total: int) -> None:
        self.console, self.task, self.total = console, task, total
        self.started = time.monotonic()
        self.worked = 0.0  # seconds spent on files that were really processed
        self.processed = 0
        self.done = 0
        self.last_line = self.started

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)
        self.last_line = time.monotonic()

    def eta(self, remaining: int) -> str:
        if not self.processed:
            return "ETA unknown"
        return f"ETA {_clock(self.worked / self.processed * remaining)}"

    def file_done(self, result: FileResult) -> None:
        self.done += 1
        if result.status != "skipped":
            self.processed += 1
            self.worked += result.seconds
        self.say(
            f"{self.task} [{self.done}/{self.total}] {result.input} -> {result.output}: {result.status.replace('_', ' ')} "
            f"in {result.seconds:.1f} s; "
            f"{_clock(time.monotonic() - self.started)} elapsed, {self.eta(self.total - self.done)}"
        )

    def within(self, name: str, done: int, total: int, unit: str, file_started: float) -> None:
        now = time.monotonic()
        if now - self.last_line < LOG_EVERY or done <= 0 or total <= 0:
            return
        spent = now - file_started
        left = spent / done * (total - done)
        self.say(f"{self.task} [{self.done + 1}/{self.total}] {name}: {unit} {done}/{total}, file ETA {_clock(left)}")


@contextmanager
def _progress(console: Console, task: str, total: int) -> Iterator[tuple[Progress, Any]]:
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    with progress:
        yield progress, progress.add_task(task, total=total)


def fail(task: str, err: VRRestoreError, opts: BatchOptions, console: Console | None = None, started: float | None = None) -> int:
    """A batch that cannot start (bad option, no device, no weights): one red line, the JSON report if
    asked, and the error's exit code. Commands call it for errors found before :func:`run_batch`."""
    console = console or Console(stderr=True)
    console.print(f"[red]error:[/red] {_one_line(err)}", highlight=False, soft_wrap=True)
    if opts.json:
        emit_json(task, [], err.exit_code, _one_line(err), time.monotonic() - (started or time.monotonic()))
    return err.exit_code


def run_batch(
    inputs: Sequence[str],
    opts: BatchOptions,
    process: Process,
    *,
    task: str,
    console: Console | None = None,
    prepare: Callable[[], None] | None = None,
) -> int:
    """Run ``process(input, output)`` for each planned file. Returns the exit code: 0, 1, 2, 3, 4 or 130.

    ``process`` writes the output itself and returns details for the report. An InputError or any
    other exception fails that file only. Weights, device and usage errors stop the batch with their
    exit code. Ctrl-C (and SIGTERM, see ``cli.main``) stops it with 130. An output that a failed file
    created is removed. ``prepare`` (load the model, pick the device) runs once, after the plan and
    the writability check and only if some file needs work; its errors stop the batch with their
    exit code and every file reported as not run.
    """
    console = console or Console(stderr=True)
    started = time.monotonic()
    manifest: Manifest | None = None
    try:
        plan = plan_batch(inputs, opts)
        shard = resolve_shard(opts.shard)
        everything = len(plan)
        plan = select_shard(plan, shard)
        where = manifest_path(opts, shard)
        check_writable([where] if where is not None else [])
        manifest = Manifest(where) if where is not None else None
        pending = [out for inp, out in plan if not skip_reason(inp, out, opts, manifest)]
        check_writable(pending)
    except UsageError as err:
        if manifest is not None:
            manifest.close()
        return fail(task, err, opts, console, started)
    extra = {"shard": shard.to_dict() if shard else None, "manifest": str(manifest.path) if manifest else None}
    if shard is not None:
        console.print(
            f"{task}: shard {shard.label} (from {shard.source}): {len(plan)} of {everything} file(s)"
            + (f"; manifest {manifest.path}" if manifest else ""), highlight=False, soft_wrap=True, markup=False,
        )
    try:
        return _run_plan(plan, pending, opts, process, task=task, console=console, prepare=prepare, manifest=manifest,
                         started=started, extra=extra)
    finally:
        if manifest is not None:
            manifest.close()


def skip_reason(inp: Path | str, out: Path, opts: BatchOptions, manifest: Manifest | None) -> str | None:
    """Why ``inp`` needs no work (done by an earlier run of this job, or an output that exists), else None."""
    if manifest is not None and manifest.is_done(inp, out):
        return f"done in an earlier run (recorded in {manifest.path}); delete the manifest to redo it"
    if out.exists() and not opts.overwrite:
        return "output exists; --overwrite replaces it"
    return None


def _run_plan(
    plan: list[tuple[Path, Path]], pending: list[Path], opts: BatchOptions, process: Process, *, task: str,
    console: Console, prepare: Callable[[], None] | None, manifest: Manifest | None, started: float,
    extra: dict[str, Any],
) -> int:
    """The loop of :func:`run_batch` over a checked plan; every finished file goes to the manifest at once."""

    def record(result: FileResult) -> None:
        if manifest is None:
            return
        if result.status == "skipped" and manifest.status(result.input, result.output) in RECORDED:
            return  # a rerun does not repeat what the manifest already says
        manifest.append(result.manifest_row())

    results: list[FileResult] = []
    code: int | None = None
    abort: str | None = None
    log = None if console.is_terminal else _LogLines(console, task, len(plan))
    try:
        if pending and prepare is not None:
            try:
                prepare()
            except VRRestoreError as err:  # nothing ran: one line, no summary table
                console.print(f"[red]error:[/red] {_one_line(err)}", highlight=False, soft_wrap=True)
                if opts.json:
                    not_run = [FileResult(i, o, "not_run") for i, o in plan]
                    emit_json(task, not_run, err.exit_code, _one_line(err), time.monotonic() - started, extra)
                return err.exit_code
        with _progress(console, task, len(plan)) as (progress, files_bar):
            for inp, out in plan:
                progress.update(files_bar, description=f"{task} {inp.name}")
                why = skip_reason(inp, out, opts, manifest)
                if why is not None:
                    results.append(FileResult(inp, out, "skipped", why))
                    record(results[-1])
                    progress.advance(files_bar)
                    if log is not None:
                        log.file_done(results[-1])
                    continue
                result, stop = _run_one(inp, out, process, progress, console, log)
                results.append(result)
                record(result)
                progress.advance(files_bar)
                if log is not None:
                    log.file_done(result)
                if stop is not None:
                    code, abort = stop
                    break
                if result.status == "failed" and opts.fail_fast:
                    break
    except KeyboardInterrupt as err:
        if isinstance(err, _Interrupted):
            results.append(err.result)
            record(err.result)
        code = EXIT_INTERRUPTED
    done = {r.input for r in results}
    results += [FileResult(i, o, "not_run") for i, o in plan if i not in done]
    if code is None:
        code = EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK
    elapsed = time.monotonic() - started
    _print_summary(console, task, results, elapsed, abort, code)
    if opts.json:
        emit_json(task, results, code, abort, elapsed, extra)
    return code


def _run_one(
    inp: Path, out: Path, process: Process, progress: Progress, console: Console, log: _LogLines | None = None
) -> tuple[FileResult, tuple[int, str | None] | None]:
    """One file. Returns its result and, if the batch must stop, (exit code, message)."""
    existed = out.exists()
    sub: list[Any] = []
    t0 = time.monotonic()

    def reporter(done: int, total: int, unit: str) -> None:
        if log is not None:
            log.within(inp.name, done, total, unit, t0)
            return
        if not sub:
            sub.append(progress.add_task(f"  {unit}", total=total))
        progress.update(sub[0], completed=done, total=total)

    token = _REPORTER.set(reporter)
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
    failed = [r for r in results if r.status == "failed"]
    if console.is_terminal:
        table = Table(title=f"vrrestore {task}: {len(results)} file(s) in {elapsed:.1f} s", title_justify="left")
        table.add_column("status")
        table.add_column("files", justify="right")
        for status, n in counts.items():
            if n or status in ("ok", "failed"):
                table.add_row(status.replace("_", " "), str(n))
        console.print(table)
        if failed:
            ft = Table(title="failed files", title_justify="left")
            ft.add_column("file", overflow="fold")
            ft.add_column("error", overflow="fold")
            for r in failed:
                ft.add_row(str(r.input), r.error or "")
            console.print(ft)
    else:  # a log: plain lines that never wrap
        parts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items() if n or status in ("ok", "failed"))
        console.print(f"vrrestore {task}: {len(results)} file(s) in {elapsed:.1f} s: {parts}", highlight=False, soft_wrap=True, markup=False)
        if failed:
            console.print("failed files:", highlight=False, soft_wrap=True, markup=False)
            for r in failed:
                console.print(f"  {r.input}: {r.error or ''}", highlight=False, soft_wrap=True, markup=False)
    if abort:
        console.print(f"[red]error:[/red] {abort}", highlight=False, soft_wrap=True)
    if code == EXIT_INTERRUPTED:
        console.print("[yellow]interrupted[/yellow]: finished outputs are kept; run the same command again to resume")


def json_reports_written() -> int:
    """How many JSON reports :func:`emit_json` has written in this process (``cli.main`` uses it so that
    every exit path with --json writes exactly one)."""
    return _json_written


def emit_json(
    task: str, results: list[FileResult], code: int, error: str | None, elapsed: float, extra: dict[str, Any] | None = None
) -> None:
    """The one JSON report on stdout: task, exit_code, error, seconds, summary, files (and, from a
    batch that got that far, shard and manifest)."""
    global _json_written
    report = {
        "task": task, "exit_code": code, "error": error, "seconds": round(elapsed, 3),
        "summary": _counts(results), "files": [r.to_dict() for r in results], **(extra or {}),
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    sys.stdout.flush()
    _json_written += 1
