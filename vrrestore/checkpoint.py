"""Self-describing safetensors checkpoints.

``__metadata__`` holds: format ("vrrestore"), format_version, architecture, config (JSON), head, task,
vrrestore_version and training (JSON summary). Loading rebuilds the model from that metadata alone and
refuses files that lack it, that name another format, or whose tensors do not match the architecture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from . import __version__
from .errors import CheckpointError, UsageError
from .models.descriptor import ModelDescriptor, architecture_of, build_model, describe
from .precision import decide as decide_precision

FORMAT = "vrrestore"
FORMAT_VERSION = "1"
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    dtype: str = "fp32",
    training: dict[str, Any] | None = None,
    extra: dict[str, str] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``model`` atomically as a vrrestore safetensors file (floating tensors cast to ``dtype``).

    ``overwrite=False`` refuses an existing file (UsageError) instead of replacing it.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    arch, cfg = architecture_of(model)
    desc = describe(model)
    tensors = {
        k: (v.detach().to(_DTYPES[dtype]) if v.is_floating_point() else v.detach()).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "config": json.dumps(cfg),
        "head": desc.head,
        "task": desc.task,
        "vrrestore_version": __version__,
        "dtype": dtype,
        "training": json.dumps(training or {}),
        **(extra or {}),
    }
    return write_safetensors(tensors, path, meta, overwrite=overwrite)


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str], *, overwrite: bool = True
) -> Path:
    """Write a safetensors file atomically (temp file in the same folder, then rename).

    The file gets mode 0o666 minus the umask, like any file the user creates (mkstemp's 0o600 made
    exported weights unreadable to anyone else). ``overwrite=False`` refuses an existing file.
    """
    from .io import atomic_write

    path = Path(path)
    if not overwrite and path.exists():
        raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    data = save(tensors, metadata=metadata)  # bytes: safetensors' own save_file makes 0o600 files
    atomic_write(path, lambda f: f.write(data))
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The checkpoint's metadata, or CheckpointError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a safetensors file ({err}); foreign .pth files can be converted with `vrrestore weights import`"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a vrrestore checkpoint (metadata format={meta.get('format')!r}); "
            "convert foreign weights with `vrrestore weights import`"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {meta.get('format_version')!r} is not supported by vrrestore "
            f"{__version__} (expects {FORMAT_VERSION}); upgrade vrrestore"
        )
    return meta


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ModelDescriptor:
    """Rebuild the model described by the file's metadata and load its tensors (as fp32)."""
    meta = read_metadata(path)
    try:
        model = build_model(meta["architecture"], json.loads(meta["config"]))
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: checkpoint metadata does not describe a known model ({err})") from None
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            t = f.get_tensor(key)
            state[key] = t.float() if t.is_floating_point() else t
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError:  # shape mismatch
        result = None
    if result is None or result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: tensors do not match {meta['architecture']} "
            + ("(tensor shapes differ)" if result is None else
               f"(missing {len(result.missing_keys)}, unexpected {len(result.unexpected_keys)})")
            + "; the file is damaged or mislabelled"
        )
    model.eval().to(device)
    desc = describe(model, metadata=meta)
    if desc.device.type == "cpu":  # what --precision auto means here: measured once per machine
        desc.cpu_auto = decide_precision(desc.device, "auto", bf16_ok=desc.supports_bf16).precision  # type: ignore[assignment]
    return desc
