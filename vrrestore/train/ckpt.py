"""Training checkpoints: torch.save dicts of tensors, dicts, lists, numbers and strings only, so
they load with ``weights_only=True`` (RNG states are stored as tensors). They are ours, for resume
and for the next stage; `vrrestore train export` turns one into the self-describing inference file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError

FORMAT = "vrrestore-train"
VERSION = 1


def stage_file(run_dir: str | os.PathLike[str], stage: str) -> Path:
    """Where a run keeps its latest checkpoint of ``stage``: RUN_DIR/<stage>.pt."""
    return Path(run_dir) / f"{stage}.pt"


def resolve(path: str | os.PathLike[str], stage: str) -> Path:
    """A checkpoint file given itself or its run folder; UsageError naming what is missing."""
    p = Path(path)
    if p.is_dir():
        p = stage_file(p, stage)
    if not p.is_file():
        raise UsageError(f"{p}: no {stage} checkpoint there; train the {stage} stage first or pass its .pt file")
    return p


def save(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(path: str | os.PathLike[str], stage: str | None = None) -> dict[str, Any]:
    """Load (weights_only) and check the format and, if given, the stage."""
    p = resolve(path, stage) if stage else Path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not ours / damaged"
        raise UsageError(f"{p}: not a readable vrrestore training checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{p}: not a vrrestore training checkpoint")
    if stage and state.get("stage") != stage:
        raise UsageError(f"{p}: a {state.get('stage')} checkpoint, expected a {stage} one")
    return state
