"""Files shipped inside the vrrestore package (registry, bundled weights), as real paths.

A package installed from a zip (zipimport) has no paths on disk; such files are copied once into
``<vrrestore cache>/bundled/`` (and again when the packaged file's size changes).
"""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from .cache import cache_dir


def package_files() -> Any:
    """The installed package's files (a Traversable; a plain Path unless the package is zipped)."""
    return resources.files("vrrestore")


def package_file(relative: str) -> Path | None:
    """``vrrestore/<relative>`` as a real file path, or None if this installation lacks it."""
    res = package_files().joinpath(relative)
    if isinstance(res, Path):
        return res if res.is_file() else None
    if not res.is_file():
        return None
    data = res.read_bytes()
    target = cache_dir("bundled", create=True) / Path(relative).name
    if not target.is_file() or target.stat().st_size != len(data):
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


__all__ = ["package_file", "package_files"]
