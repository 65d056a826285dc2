"""Where vrrestore keeps files it can rebuild (never the Hub cache, which huggingface_hub owns).

``$VRRESTORE_CACHE`` wins, then ``$XDG_CACHE_HOME/vrrestore``, then ``~/.cache/vrrestore``. Read at call
time so a test or a wrapper script can change it after import.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str, create: bool = False) -> Path:
    """The vrrestore cache folder (or a sub-path of it); ``create`` makes the folder if it is missing."""
    root = os.environ.get("VRRESTORE_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vrrestore"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
