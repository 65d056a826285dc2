"""Training checkpoint -> self-describing inference checkpoint (EMA weights, safetensors)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..checkpoint import _DTYPES, save_checkpoint, write_safetensors
from ..errors import UsageError
from . import ckpt
from .files import PRIOR_FORMAT
from .precondition import fold_heads
from .stages import build_restorer


def export(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], dtype: str = "fp16", *, overwrite: bool = True
) -> Path:
    """Write the EMA model of a code-, fidelity- or plain-stage checkpoint with save_checkpoint.

    The metadata's ``training`` entry summarises every stage that led to it (data, steps, seconds,
    head, preset, recipe); a whitened VR head is folded back into a plain one first.
    """
    path = Path(checkpoint)
    state = ckpt.load(path)
    if state["stage"] == "prior":
        return export_prior(state, out, dtype, path.name, overwrite=overwrite)
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
        return save_checkpoint(model, out, dtype=dtype, training=training, overwrite=overwrite)
    except ValueError as err:
        raise UsageError(str(err)) from None




def export_prior(
    state: dict[str, Any], out: str | os.PathLike[str], dtype: str, source: str = "", *, overwrite: bool = True
) -> Path:
    """Write a prior checkpoint's EMA VQAutoEncoder as safetensors: a few MiB, unlike prior.pt with its
    optimiser state, so a short GPU window can carry it to the next one (``train prior --init``)."""
    if dtype not in _DTYPES:
        raise UsageError(f"--dtype {dtype}: expected one of {', '.join(_DTYPES)}")
    meta = state["model"]
    tensors = {
        k: (v.to(_DTYPES[dtype]) if v.is_floating_point() else v).contiguous().cpu()
        for k, v in state["ema"]["model"].items()
    }
    metadata = {
        "format": PRIOR_FORMAT, "format_version": "1", "architecture": "VQAutoEncoder",
        "config": json.dumps(meta["config"]), "preset": str(meta.get("preset", "")), "dtype": dtype,
        "vrrestore_version": __version__,
        "training": json.dumps({**state.get("summary", {}), "source": source}),
    }
    return write_safetensors(tensors, out, metadata, overwrite=overwrite)
