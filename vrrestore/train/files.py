"""Exported files that start or continue a training stage: priors (``train export RUN/prior.pt``)
and restorers. Stages and the exporter both import this; it imports neither (no import cycle)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..checkpoint import load_checkpoint
from ..errors import UsageError
from ..models.config import config_from_dict, config_to_dict
from ..models.descriptor import architecture_of
from ..models.vqgan import VQAutoEncoder, VQConfig

PRIOR_FORMAT = "vrrestore-prior"
PRIOR_PARTS = ("quantizer.", "decoder.")  # restorer weights owned by the prior


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


FUSE_FIELDS = ("out_fuse", "out_fuse_width", "out_fuse_blocks")  # OutputFuse's geometry


def untrained_fuse(state: Mapping[str, torch.Tensor]) -> bool:
    """True if a restorer's state dict has no OutputFuse or one still at its zero-init identity (the
    code stage's: it runs at w = 0, where OutputFuse gets no gradient)."""
    last = max((int(k.split(".")[2]) for k in state if k.startswith("out_fuse.body.")), default=None)
    return last is None or not any(bool(state[f"out_fuse.body.{last}.{p}"].any()) for p in ("weight", "bias"))


def output_fuse_as_preset(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], preset_config: Any,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], bool]:
    """A restorer's (config, state) with OutputFuse's geometry as ``preset_config`` has it, where its
    own block is untrained: the state then drops the old block, so the model builds a fresh one (the
    identity) and starts exactly as the file. A trained block, or the same geometry, is kept. Returns
    (config, state, refitted)."""
    have = config_to_dict(config_from_dict(type(preset_config), dict(config)))
    want = config_to_dict(preset_config)
    if all(have.get(k) == want.get(k) for k in FUSE_FIELDS) or not untrained_fuse(state):
        return dict(config), dict(state), False
    return ({**have, **{k: want[k] for k in FUSE_FIELDS}},
            {k: v for k, v in state.items() if not k.startswith("out_fuse.")}, True)


def load_restorer_weights(model: nn.Module, path: str | os.PathLike[str], with_decoder: bool = False) -> None:
    """Copy an exported restorer's weights into ``model``, except the prior's codebook and decoder
    (those come from the current prior, which may have moved on since the file was written); with
    ``with_decoder`` the file's decoder too (a fidelity stage that trains it continues from its own).
    A file whose OutputFuse is absent (written before its preset gained it) or untrained (the code
    stage never trains it) fits a preset with another OutputFuse geometry too: the model keeps its own
    zero-init block (the identity), so it starts exactly as the file's."""
    src = load_checkpoint(path).model
    (src_arch, src_cfg), (arch, cfg) = architecture_of(src), architecture_of(model)
    refit = untrained_fuse(src.state_dict()) and any(src_cfg.get(k) != cfg.get(k) for k in FUSE_FIELDS)
    if refit:
        src_cfg = {**src_cfg, **{k: cfg.get(k) for k in FUSE_FIELDS}}
    if src_arch != arch or src_cfg != cfg:
        fields = sorted(k for k in {*src_cfg, *cfg} if src_cfg.get(k) != cfg.get(k))
        raise UsageError(f"{path}: --init is not this stage's model ({src_arch} vs {arch}"
                         f"{'; differs in ' + ', '.join(fields) if fields else ''})")
    prior_parts = ("quantizer.",) if with_decoder else PRIOR_PARTS
    skip = (*prior_parts, "out_fuse.") if refit else prior_parts
    state = {k: v for k, v in src.state_dict().items() if not k.startswith(skip)}
    with torch.no_grad():
        result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or any(not k.startswith(skip) for k in result.missing_keys):
        raise UsageError(f"{path}: --init tensors do not match this stage's model")


def load_plain_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Copy an exported no-prior baseline (PlainRestorer) into ``model``: every tensor, it owns no prior."""
    src = load_checkpoint(path).model
    if architecture_of(src) != architecture_of(model):
        raise UsageError(f"{path}: --init is not a plain baseline of this preset")
    with torch.no_grad():
        model.load_state_dict(src.state_dict())
