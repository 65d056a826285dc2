"""Device selection: ``auto|cpu|cuda[:N]|mps`` -> torch.device, with one-line errors.

A spelling that names no device (``gpu``, ``cuda:x``) is a usage error (exit 2), found before any
work; a real device this machine lacks is a device error (exit 4).
"""

from __future__ import annotations

import re

import torch

from .errors import DeviceError, UsageError

_SPEC = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_HINTS = {"gpu": "cuda", "cuda0": "cuda:0", "nvidia": "cuda", "metal": "mps", "apple": "mps"}


def check_device_spec(spec: str) -> str:
    """The normalised spec, or UsageError if it is not auto, cpu, cuda, cuda:N or mps."""
    norm = spec.strip().lower()
    if not _SPEC.fullmatch(norm):
        hint = f" (did you mean --device {_HINTS[norm]}?)" if norm in _HINTS else ""
        raise UsageError(f"--device {spec}: expected auto, cpu, cuda, cuda:N or mps{hint}")
    return norm


def select_device(spec: str = "auto") -> torch.device:
    spec = check_device_spec(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: Apple MPS is not available on this machine; use --device cpu")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: CUDA is not available (torch {torch.__version__}); use --device cpu")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise AssertionError(spec)  # check_device_spec let through a spec this function does not handle
