"""Training checkpoint -> self-describing inference checkpoint (EMA weights, safetensors)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checkpoint import save_checkpoint
from ..errors import UsageError
from . import ckpt
from .precondition import fold_heads
from .stages import build_restorer


def export(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], dtype: str = "fp16") -> Path:
    """Write the EMA restorer of a code- or fidelity-stage checkpoint with save_checkpoint.

    The metadata's ``training`` entry summarises every stage that led to it (data, steps, seconds,
    head, preset, recipe); a whitened VR head is folded back into a plain one first.
    """
    path = Path(checkpoint)
    state = ckpt.load(path)
    if state["stage"] == "prior":
        raise UsageError(f"{path}: a prior checkpoint is not a restorer; train the code stage on it, then export that")
    meta = state["model"]
    model = build_restorer(meta, meta.get("precondition", "none"))
    model.load_state_dict(state["ema"]["model"])
    fold_heads(model).eval()
    summary: dict[str, Any] = dict(state.get("summary", {}))
    stages = [s for s in state.get("history", []) if s] + [summary]
    training = {
        **summary,
        "stages": stages,
        "total_seconds": round(sum(float(s.get("seconds", 0.0)) for s in stages), 1),
        "source": path.name,
    }
    try:
        return save_checkpoint(model, out, dtype=dtype, training=training)
    except ValueError as err:
        raise UsageError(str(err)) from None
