"""Training checkpoint -> self-describing inference checkpoint (EMA weights, safetensors)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .. import __version__
from ..checkpoint import _DTYPES, load_checkpoint, save_checkpoint, write_safetensors
from ..errors import UsageError
from ..models.config import config_from_dict, config_to_dict
from ..models.descriptor import architecture_of
from ..models.vqgan import VQAutoEncoder, VQConfig
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
        return export_prior(state, out, dtype, path.name)
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


PRIOR_FORMAT = "vrrestore-prior"
_PRIOR_PARTS = ("quantizer.", "decoder.")  # restorer weights owned by the prior


def export_prior(state: dict[str, Any], out: str | os.PathLike[str], dtype: str, source: str = "") -> Path:
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
    return write_safetensors(tensors, out, metadata)


def load_prior_file(path: str | os.PathLike[str]) -> tuple[VQAutoEncoder, dict[str, str]]:
    """The VQAutoEncoder (fp32) and metadata of an exported prior; UsageError if it is not one."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{p}: not a readable safetensors file ({err})") from None
    if meta.get("format") != PRIOR_FORMAT:
        raise UsageError(f"{p}: not an exported prior (format {meta.get('format')!r}); use `vrrestore train export RUN/prior.pt`")
    vq = VQAutoEncoder(config_from_dict(VQConfig, json.loads(meta["config"])))
    try:
        vq.load_state_dict({k: t.float() if t.is_floating_point() else t for k, t in tensors.items()})
    except RuntimeError as err:
        raise UsageError(f"{p}: tensors do not fit its own config ({str(err).splitlines()[0]})") from None
    return vq, meta


def check_prior_fits(vq: VQAutoEncoder, cfg: VQConfig, path: str | os.PathLike[str]) -> None:
    """Refuse an --init prior whose geometry differs from the preset's (shapes would silently clash)."""
    if config_to_dict(vq.cfg) != config_to_dict(cfg):
        raise UsageError(f"{path}: the prior's geometry does not match --preset; use the preset it was trained with")


def load_restorer_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Copy an exported restorer's weights into ``model``, except the prior's codebook and decoder
    (those come from the current prior, which may have moved on since the file was written)."""
    src = load_checkpoint(path).model
    if architecture_of(src) != architecture_of(model):
        raise UsageError(f"{path}: --init has another architecture, preset or head than this stage's model")
    state = {k: v for k, v in src.state_dict().items() if not k.startswith(_PRIOR_PARTS)}
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith(_PRIOR_PARTS) for k in result.missing_keys):
        raise UsageError(f"{path}: --init tensors do not match this stage's model")
