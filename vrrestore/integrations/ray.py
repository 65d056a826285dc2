"""Ray Data: restore a photo archive on a Ray cluster, with one model per actor in an actor pool.

Install the extra with ``pip install "vrrestore[ray]"``. Then::

    from vrrestore.api import Restorer
    from vrrestore.integrations.ray import restore_with_ray

    run = restore_with_ray("s3://bucket/scans/", "/shared/restored", Restorer.from_pretrained("vr-face-s", lazy=True))
    print(run.summary, run.manifest)

:func:`restore_with_ray` is the file-to-file recipe. The driver plans the files as the CLI does:
the same output names, ``recursive``, ``suffix``, ``ext`` and ``files_from``. A URI such as ``s3://...``
is listed with pyarrow's file systems, which are the ones Ray Data reads through. Files that are
already done are left out: their output exists, or the manifest records them as ok. The remaining
(input, output) rows go to ``map_batches`` over an ``ActorPoolStrategy`` pool of :class:`RestoreFiles`
actors. Each actor loads its Restorer once and reads, restores and writes its files (atomic writes).
It returns one manifest row per file, and the driver appends each row to the manifest as it arrives.
A file that fails is a ``failed`` row and the others go on.

Actors use a GPU each when the cluster has GPUs, and CPUs otherwise. Outputs and the manifest go to
a folder that every worker can write: a local disk for one machine, a shared file system for a
cluster.

If a worker process dies (out of memory, a crash in native code), Ray restarts it and retries its
batch. Before each image an actor counts an attempt in a marker file next to the manifest, and
clears the marker when the image is done. An image that has already killed ``max_attempts`` workers
is then recorded as failed instead of being tried again, so one poisoned file cannot stall the job.
Outputs finished before a crash are kept, and a rerun does only what is missing.

:func:`restore_dataset` and :class:`RestoreArrays` are for your own Ray Data pipeline. They restore
an image column (as ``ray.data.read_images`` makes one) and keep the other columns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..api import Restorer, RestorerConfig
from ..batch import (
    BatchOptions,
    check_targets,
    check_writable,
    is_image_name,
    normalise_ext,
    output_path,
    plan_batch,
    skip_reason,
)
from ..errors import UsageError, VRRestoreError
from ..io import SUPPORTED_EXTS
from ..manifest import RECORDED, Manifest, row

EXTRA = 'pip install "vrrestore[ray]"'
MANIFEST_NAME = "vrrestore-manifest.ray.jsonl"
ROW = "row"  # the one column RestoreFiles returns: a manifest row as JSON (no schema to unify across blocks)


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or UsageError saying how to install the extra."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise UsageError(f"Ray Data is not installed ({err}); install the extra: {EXTRA}") from None
    return ray


def is_uri(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _config(restorer: Restorer | RestorerConfig | None, options: dict[str, Any]) -> RestorerConfig:
    if isinstance(restorer, Restorer):
        config = restorer.config
    elif isinstance(restorer, RestorerConfig):
        config = restorer
    elif restorer is None:
        config = RestorerConfig()
    else:
        raise TypeError(f"restorer must be a Restorer or a RestorerConfig, not {type(restorer).__name__}")
    return (replace(config, **options) if options else config).check()


# ------------------------------------------------------------------------------------------ planning


def list_uri(root: str, *, recursive: bool = False) -> list[tuple[str, Path]]:
    """(file URI, path relative to ``root``) for the image files under a URI (``s3://``, ``gs://``,
    ``file://``...), sorted; hidden files and folders are left out, as in a local folder."""
    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(root)
        info = fs.get_file_info(base)
    except (OSError, ValueError) as err:
        raise UsageError(f"{root}: cannot open it ({_one_line(err)}); check the URI and its credentials") from None
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"{root}: no such file or folder")
    if info.type == pafs.FileType.File:
        return [(root, Path(PurePosixPath(base).name))]
    found = []
    prefix = root.rstrip("/")
    for fi in sorted(fs.get_file_info(pafs.FileSelector(base, recursive=recursive)), key=lambda f: f.path):
        if fi.type != pafs.FileType.File:
            continue
        rel = PurePosixPath(fi.path).relative_to(PurePosixPath(base))
        if any(part.startswith(".") for part in rel.parts[:-1]) or not is_image_name(Path(rel.name)):
            continue
        found.append((f"{prefix}/{rel}", Path(*rel.parts)))
    if not found:
        hint = "" if recursive else "; pass recursive=True to include sub-folders"
        raise UsageError(f"{root}: no image files ({', '.join(SUPPORTED_EXTS)}) found{hint}")
    return found


def plan_inputs(
    inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *, suffix: str = "", ext: str | None = None,
    recursive: bool = False, files_from: str | os.PathLike[str] | None = None,
) -> list[tuple[str, Path]]:
    """(input, output) for every file: local paths exactly as the CLI plans them, URIs listed with pyarrow."""
    if is_uri(output):
        raise UsageError(
            f"{output}: outputs go to a folder every worker can write, not a URI; mount the bucket (s3fs, gcsfuse) "
            "and pass its path"
        )
    folder = Path(output).expanduser()
    if not folder.is_dir() and folder.suffix.lower().lstrip(".") in SUPPORTED_EXTS:
        raise UsageError(f"{output}: names one file; restore_with_ray writes into a folder, so pass a folder")
    local = [str(i) for i in inputs if not is_uri(i)]
    remote = [str(i) for i in inputs if is_uri(i)]
    plan: list[tuple[str, Path]] = []
    if local or files_from is not None:
        opts = BatchOptions(output=folder, suffix=suffix, ext=ext, recursive=recursive,
                            files_from=Path(files_from) if files_from is not None else None)
        plan += [(str(src), dst) for src, dst in plan_batch(local, opts)]
    e = normalise_ext(ext)
    for root in remote:
        plan += [(uri, output_path(rel, folder, suffix, e)) for uri, rel in list_uri(root, recursive=recursive)]
    if not plan:
        raise UsageError("no inputs: pass image files, folders, globs or URIs, or files_from=LIST")
    if remote:
        check_targets(plan)
    return plan


# ------------------------------------------------------------------------------------------- workers


class RestoreFiles:
    """The actor of :func:`restore_with_ray`. It loads one Restorer when it starts (so once per actor)
    and turns each batch of ``input``/``output`` rows into manifest rows, one JSON string per file."""

    def __init__(
        self, config: RestorerConfig, *, quality: int = 95, max_pixels: int | None = None, overwrite: bool = False,
        threads: int | None = None, attempts: str | None = None, max_attempts: int = 3,
    ) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.restorer = Restorer(config).load()
        self.quality, self.max_pixels, self.overwrite = quality, max_pixels, overwrite
        self.attempts = Path(attempts) if attempts else None
        self.max_attempts = max_attempts
        self._filesystems: dict[str, Any] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.restore_one(str(src), str(dst)) for src, dst in zip(batch["input"], batch["output"], strict=True)]
        return {ROW: np.array([json.dumps(r) for r in rows], dtype=object)}

    def restore_one(self, src: str, dst: str) -> dict[str, Any]:
        """Restore ``src`` into ``dst``; every failure becomes the row's error, never an exception."""
        t0 = time.perf_counter()
        out = Path(dst)
        if out.exists() and not self.overwrite:  # finished by an attempt of this batch that then crashed
            return row(src, dst, "skipped", error="output exists; overwrite=True replaces it")
        marker = self._marker(src)
        tried = self._count(marker)
        if tried >= self.max_attempts:
            return row(src, dst, "failed", error=(
                f"{src}: the worker died {tried} time(s) on this image (out of memory, or a crash in native code); "
                "left out, a rerun tries it again"))
        self._write_count(marker, tried + 1)
        try:
            res = self._restore(src, out)
            faces = res.details.get("faces")
            return row(src, dst, "ok", faces=faces if isinstance(faces, int) else None, seconds=time.perf_counter() - t0)
        except VRRestoreError as err:
            return row(src, dst, "failed", seconds=time.perf_counter() - t0, error=_one_line(err))
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
            return row(src, dst, "failed", seconds=time.perf_counter() - t0, error=f"{src}: {type(err).__name__}: {_one_line(err)}")
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)

    def _restore(self, src: str, out: Path) -> Any:
        if not is_uri(src):
            return self.restorer.restore_file(src, out, quality=self.quality, max_pixels=self.max_pixels)
        from ..io import read_image, write_image

        with tempfile.TemporaryDirectory(prefix="vrrestore-") as tmp:
            local = Path(tmp) / PurePosixPath(src).name
            self._fetch(src, local)
            try:
                img = read_image(local, max_pixels=self.max_pixels)
            except VRRestoreError as err:  # name the URI, not the temp copy
                raise type(err)(str(err).replace(str(local), src)) from None
            res = self.restorer.restore(img)
        write_image(res.image, out, quality=self.quality)
        return res

    def _fetch(self, uri: str, local: Path) -> None:
        import pyarrow.fs as pafs

        scheme = uri.split("://", 1)[0]
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
            fs = self._filesystems.setdefault(scheme, fs)
            with fs.open_input_stream(path) as f, open(local, "wb") as dst:
                shutil.copyfileobj(f, dst)
        except FileNotFoundError:
            raise VRRestoreError(f"{uri}: no such file") from None
        except OSError as err:
            raise VRRestoreError(f"{uri}: cannot read ({_one_line(err)})") from None

    def _marker(self, src: str) -> Path | None:
        if self.attempts is None:
            return None
        return self.attempts / hashlib.sha1(src.encode("utf-8", "surrogateescape")).hexdigest()

    @staticmethod
    def _count(marker: Path | None) -> int:
        try:
            return int(marker.read_text()) if marker is not None else 0
        except (OSError, ValueError):
            return 0

    @staticmethod
    def _write_count(marker: Path | None, n: int) -> None:
        if marker is not None:
            try:
                marker.write_text(str(n))
            except OSError:
                pass  # without a marker a poisoned image is only retried as often as Ray retries


class RestoreArrays:
    """For your own Ray Data pipeline: restore the image arrays of ``column`` in each batch, keep the
    other columns. One Restorer per actor, loaded when the actor starts."""

    def __init__(self, config: RestorerConfig, *, column: str = "image", threads: int | None = None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.restorer = Restorer(config).load()
        self.column = column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(batch)
        out[self.column] = _column(self.restorer(list(batch[self.column])))
        return out


def _column(images: list[np.ndarray]) -> np.ndarray:
    """One array when every image has the same shape, else an object array of images (a ragged column)."""
    if images and all(im.shape == images[0].shape and im.dtype == images[0].dtype for im in images):
        return np.stack(images)
    col = np.empty(len(images), dtype=object)
    for i, im in enumerate(images):
        col[i] = im
    return col


# -------------------------------------------------------------------------------------------- driver


@dataclass
class Placement:
    """How many actors, and what each one gets."""

    actors: int
    cpus: float
    gpus: float
    config: RestorerConfig


def place(
    config: RestorerConfig, *, actors: int | None, cpus_per_actor: float, gpus_per_actor: float | None, ray: Any, work: int,
) -> Placement:
    """One GPU per actor when the cluster has GPUs (and the config does not ask for the CPU), else CPUs;
    as many actors as the cluster holds, unless ``actors`` says otherwise, and never more than the work."""
    if not ray.is_initialized():
        ray.init()
    resources = ray.cluster_resources()
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if resources.get("GPU", 0) >= 1 and config.device in ("auto", "cuda") else 0.0
    if actors is None:
        if gpus_per_actor > 0:
            actors = int(resources.get("GPU", 0) // gpus_per_actor)
        else:
            actors = int(resources.get("CPU", 1) // max(cpus_per_actor, 1e-9))
    if actors < 1:
        raise UsageError(f"actors={actors}: the pool needs at least one actor; pass actors=1 or more")
    device = config.device
    if device == "auto":  # an actor uses what it was given, not a GPU another actor holds
        device = "cuda" if gpus_per_actor > 0 else "cpu"
    return Placement(min(actors, max(1, work)), cpus_per_actor, gpus_per_actor, replace(config, device=device))


@dataclass
class RayRun:
    """What :func:`restore_with_ray` did: one manifest row per planned file (skipped ones included)."""

    rows: list[dict[str, Any]]
    manifest: Path
    seconds: float
    actors: int

    @property
    def summary(self) -> dict[str, int]:
        counts = {"ok": 0, "skipped": 0, "failed": 0}
        for r in self.rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        """As the CLI's: 1 if some file failed, else 0."""
        return 1 if any(r["status"] == "failed" for r in self.rows) else 0


def restore_with_ray(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    restorer: Restorer | RestorerConfig | None = None,
    *,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    batch_size: int = 4,
    manifest: str | os.PathLike[str] | None = None,
    suffix: str = "",
    ext: str | None = None,
    quality: int = 95,
    overwrite: bool = False,
    recursive: bool = False,
    files_from: str | os.PathLike[str] | None = None,
    max_pixels: int | None = None,
    max_attempts: int = 3,
    worker: type[RestoreFiles] = RestoreFiles,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> RayRun:
    """Restore files with Ray Data and write the outputs and a manifest under ``output``.

    ``inputs``: files, folders, globs or URIs (``s3://``, ``gs://``, ``file://``...); ``files_from``: a
    list file. ``restorer``: whose config the actors load (its models are not shipped), or
    ``options`` for a new one (``mode=``, ``model=``, ``fidelity=``...). ``actors``: size of the
    actor pool (default: the cluster's GPUs, else its CPUs / ``cpus_per_actor``). ``manifest``:
    default ``output/vrrestore-manifest.ray.jsonl``; it is the resume log, as for the CLI.
    ``worker``: the actor class, e.g. a subclass of :class:`RestoreFiles`. ``on_row`` is called with
    each row as it arrives. Weights are checked on the driver first (WeightsError, before any actor
    starts); an error that would fail every image is raised, while one image's failure is only a row.
    """
    ray = require_ray()
    started = time.monotonic()
    if batch_size < 1 or max_attempts < 1:
        raise UsageError(f"batch_size={batch_size}, max_attempts={max_attempts}: both must be 1 or more")
    config = _config(restorer, options)
    sources = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    plan = plan_inputs(sources, output, suffix=suffix, ext=ext, recursive=recursive, files_from=files_from)
    where = Path(manifest).expanduser() if manifest is not None else Path(output).expanduser() / MANIFEST_NAME
    check_writable([where])
    rows: list[dict[str, Any]] = []

    def keep(r: dict[str, Any], log: Manifest) -> None:
        if not (r["status"] == "skipped" and log.status(r["input"], r["output"]) in RECORDED):
            log.append(r)
        rows.append(r)
        if on_row is not None:
            on_row(r)

    with Manifest(where) as log:
        opts = BatchOptions(overwrite=overwrite)
        todo = []
        for src, dst in plan:
            why = skip_reason(src, dst, opts, log)
            if why is None:
                todo.append((src, dst))
            else:
                keep(row(src, dst, "skipped", error=why), log)
        placed = None
        if todo:
            check_writable([dst for _, dst in todo])
            _check_weights(config)
            placed = place(config, actors=actors, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, ray=ray,
                           work=math.ceil(len(todo) / batch_size))
            attempts = where.parent / f".{where.name}.attempts"
            shutil.rmtree(attempts, ignore_errors=True)  # a new run gives every image its attempts again
            attempts.mkdir(parents=True, exist_ok=True)
            try:
                for r in _run(ray, todo, placed, worker, batch_size=batch_size, kwargs={
                    "quality": quality, "max_pixels": max_pixels, "overwrite": overwrite,
                    "threads": max(1, int(cpus_per_actor)), "attempts": str(attempts), "max_attempts": max_attempts,
                }):
                    keep(r, log)
            except Exception as err:
                cause = _vrrestore_cause(err)
                if cause is not None:
                    raise cause from None
                raise
            shutil.rmtree(attempts, ignore_errors=True)
    return RayRun(rows, where, time.monotonic() - started, placed.actors if placed else 0)


def _run(
    ray: Any, todo: list[tuple[str, Path]], placed: Placement, worker: type[RestoreFiles], *, batch_size: int,
    kwargs: dict[str, Any],
) -> Any:
    """The rows of the Ray Data pipeline, as they finish: from_items -> map_batches over the actor pool."""
    items = [{"input": src, "output": str(dst)} for src, dst in todo]
    blocks = min(len(items), max(1, math.ceil(len(items) / batch_size)), 64 * placed.actors)
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = ds.map_batches(
        worker,
        fn_constructor_kwargs={"config": placed.config, **kwargs},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=placed.actors),
        num_cpus=placed.cpus,
        num_gpus=placed.gpus or None,
        udf_modifying_row_count=False,
    )
    for r in ds.iter_rows():
        yield json.loads(r[ROW])


def _check_weights(config: RestorerConfig) -> None:
    """Resolve (and if need be download) the weights on the driver, so a missing model is one
    WeightsError before any actor starts, not a failure in every actor."""
    from ..weights import resolve_weights

    resolve_weights(config.model, config.task)  # type: ignore[arg-type]
    if config.mode == "face" and config.background_sr:
        resolve_weights(config.bg_model, "sr")


def _vrrestore_cause(err: BaseException) -> VRRestoreError | None:
    """The VRRestoreError inside a Ray error (an actor that could not start), if there is one."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = getattr(e, "cause", None)  # a RayTaskError: the exception the actor raised
        if isinstance(inner, VRRestoreError):
            return inner
        if isinstance(e, VRRestoreError):
            return e
        stack += [inner, e.__cause__, e.__context__]
    return None


def restore_dataset(
    ds: Any, restorer: Restorer | RestorerConfig | None = None, *, column: str = "image", actors: int = 1,
    cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, batch_size: int = 4, **options: Any,
) -> Any:
    """``ds`` with the image arrays of ``column`` restored by a pool of ``actors`` :class:`RestoreArrays`
    actors (lazy, like every Ray Data transform). For example
    ``restore_dataset(ray.data.read_images("s3://bucket/faces/"), Restorer.from_pretrained(lazy=True), actors=4)``.

    Leave the upstream read tasks a CPU: with ``actors * cpus_per_actor`` equal to the cluster's CPUs
    the actors hold them all and Ray Data cannot schedule the reads that would feed them.
    """
    ray = require_ray()
    config = _config(restorer, options)
    if config.device == "auto":
        config = replace(config, device="cuda" if gpus_per_actor > 0 else "cpu")
    return ds.map_batches(
        RestoreArrays,
        fn_constructor_kwargs={"config": config, "column": column, "threads": max(1, int(cpus_per_actor))},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
        udf_modifying_row_count=False,
    )
