"""The JSON-lines manifest of a batch: one line per file, appended as each file ends, so it is both
the record of what a shard did and the log a rerun resumes from.

A line is ``{"input", "output", "status", "faces", "seconds", "error"}``. Each is flushed and
fsynced before the next file starts, so a process killed at any point keeps every line of the files
it finished (their outputs are written atomically before the line). A torn last line (a kill in the
middle of a write) is ignored when the manifest is read back. A rerun skips every file the manifest
records as ``ok`` whose output still exists, even with ``--overwrite``: the manifest belongs to one
job, and deleting it starts the job over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

from .errors import UsageError

FIELDS = ("input", "output", "status", "faces", "seconds", "error")
DONE = "ok"  # the status a rerun trusts
RECORDED = frozenset({"ok", "skipped"})  # statuses not written again for the same file


def row(src: str | os.PathLike[str], dst: str | os.PathLike[str], status: str, *, faces: int | None = None,
        seconds: float = 0.0, error: str | None = None) -> dict[str, Any]:
    """One manifest line (``src`` is the input, ``dst`` the output), fields in their fixed order."""
    return {"input": str(src), "output": str(dst), "status": status, "faces": faces,
            "seconds": round(float(seconds), 3), "error": error}


def read_manifest(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The rows of a manifest, oldest first; lines that are not a JSON object (a torn last line) are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict) and "input" in obj and "status" in obj:
                    yield obj
    except FileNotFoundError:
        return


class Manifest:
    """An append-only manifest file and what it already records.

    ``latest`` maps (input, output) to the newest row for that pair, so a rerun knows which files are
    done. Opening fails with UsageError (exit 2, before any work) if the file cannot be written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        for r in read_manifest(self.path):
            self.latest[(str(r["input"]), str(r.get("output")))] = r
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the whole batch
        except OSError as err:
            raise UsageError(
                f"--manifest {self.path}: cannot write it ({err.strerror or type(err).__name__}); pass another --manifest path"
            ) from None
        if self.path.stat().st_size and not self._ends_with_newline():
            self._file.write("\n")  # a torn last line stays on its own line

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def status(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str | None:
        """The last recorded status of this (input, output) pair, or None if the manifest never saw it."""
        r = self.latest.get((str(src), str(dst)))
        return None if r is None else str(r["status"])

    def is_done(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> bool:
        """Recorded ``ok`` and the output is still there: a rerun need not redo it."""
        return self.status(src, dst) == DONE and Path(dst).exists()

    def append(self, entry: Mapping[str, Any]) -> None:
        """Write one row durably (flush + fsync) before the caller moves on to the next file."""
        line = {k: entry.get(k) for k in FIELDS}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.latest[(str(line["input"]), str(line["output"]))] = line

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
