"""Device selection: ``auto|cpu|cuda[:N]|mps`` -> torch.device, with one-line errors (exit code 4)."""

from __future__ import annotations

import torch

from .errors import DeviceError


def select_device(spec: str = "auto") -> torch.device:
    spec = spec.strip().lower()
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
        index = 0
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"--device {spec}: expected cuda:N with N a number") from None
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index)
    raise DeviceError(f"--device {spec}: expected auto, cpu, cuda, cuda:N or mps")
