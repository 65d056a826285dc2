"""A model descriptor (after spandrel): what a caller must know to run a restorer correctly.

Scale, input size rules, dtype support and tiling policy travel with the model, so pipelines never
special-case architectures. Calling the descriptor runs inference with the right precision and
falls back to fp32 if half precision produced NaN/inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .config import config_from_dict, config_to_dict
from .face import FaceConfig, FaceRestorer
from .plain import PlainConfig, PlainRestorer
from .sr import SRConfig, SRRestorer

Task = Literal["face", "sr"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
ARCHITECTURES: dict[str, tuple[type[nn.Module], type]] = {
    "FaceRestorer": (FaceRestorer, FaceConfig),
    "SRRestorer": (SRRestorer, SRConfig),
    "PlainRestorer": (PlainRestorer, PlainConfig),
}


@dataclass(frozen=True)
class TilingPolicy:
    """Tiles are given in input pixels; ``tile`` is a default the pipeline may shrink to fit memory."""

    tile: int = 128
    overlap: int = 16
    min_tile: int = 32


@dataclass
class ModelDescriptor:
    model: nn.Module
    task: Task
    architecture: str
    head: str
    scale: int
    size_multiple: int
    fixed_size: int | None
    tiling: TilingPolicy | None
    supports_fp16: bool = True
    supports_bf16: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    last_fell_back_to_fp32: bool = False
    # What "auto" means on a CPU. Whoever loads the model decides it by measurement
    # (vrrestore.precision: bf16 only where AMX/AVX512-BF16 make it faster); models never probe.
    cpu_auto: Literal["fp32", "bf16"] = "fp32"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> ModelDescriptor:
        self.model.to(device)
        return self

    def resolve_precision(self, precision: Precision) -> torch.dtype:
        """'auto': ``cpu_auto`` on a CPU (bf16 is 50-300x slower without AMX, so it is measured); bf16
        or fp16 on CUDA."""
        if precision == "fp32":
            return torch.float32
        if precision == "fp16":
            return torch.float16
        if precision == "bf16":
            return torch.bfloat16
        if self.device.type != "cuda":
            cpu_bf16 = self.device.type == "cpu" and self.cpu_auto == "bf16" and self.supports_bf16
            return torch.bfloat16 if cpu_bf16 else torch.float32
        if self.supports_bf16 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if self.supports_fp16 else torch.float32

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, fidelity: float = 0.5, precision: Precision = "auto") -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> restored (B, 3, H*scale, W*scale) in [0, 1], float32."""
        self.model.eval()
        dtype = self.resolve_precision(precision)
        x = x.to(self.device, torch.float32)
        self.last_fell_back_to_fp32 = False
        if dtype != torch.float32:
            with torch.autocast(self.device.type, dtype=dtype):
                out = self.model(x, fidelity).float()
            if torch.isfinite(out).all():
                return out.clamp_(0.0, 1.0)
            self.last_fell_back_to_fp32 = True
        return self.model(x, fidelity).float().clamp_(0.0, 1.0)


def build_model(architecture: str, config: dict[str, Any] | FaceConfig | SRConfig | PlainConfig) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    cls, cfg_cls = ARCHITECTURES[architecture]
    cfg = config_from_dict(cfg_cls, config) if isinstance(config, dict) else config
    return cls(cfg)


def describe(model: nn.Module, metadata: dict[str, Any] | None = None) -> ModelDescriptor:
    """Descriptor for a FaceRestorer, SRRestorer or PlainRestorer instance."""
    if isinstance(model, FaceRestorer):
        c = model.cfg
        return ModelDescriptor(
            model, "face", "FaceRestorer", c.head, scale=1, size_multiple=c.prior.downsample * c.token_merge,
            fixed_size=c.prior.img_size, tiling=None, metadata=metadata or {},
        )
    if isinstance(model, SRRestorer):
        c = model.cfg
        tile = max(c.prior.img_size // c.scale, 4 * c.size_multiple)
        return ModelDescriptor(
            model, "sr", "SRRestorer", c.head, scale=c.scale, size_multiple=c.size_multiple, fixed_size=None,
            tiling=TilingPolicy(tile=tile, overlap=max(8, tile // 8), min_tile=max(16, 2 * c.size_multiple)),
            metadata=metadata or {},
        )
    if isinstance(model, PlainRestorer):  # the no-prior face baseline: head "plain", no fidelity knob
        p = model.cfg.prior
        return ModelDescriptor(
            model, "face", "PlainRestorer", "plain", scale=1, size_multiple=p.downsample, fixed_size=p.img_size,
            tiling=None, metadata=metadata or {},
        )
    raise TypeError(f"no descriptor for {type(model).__name__}")


def architecture_of(model: nn.Module) -> tuple[str, dict[str, Any]]:
    for name, (cls, _) in ARCHITECTURES.items():
        if isinstance(model, cls):
            return name, config_to_dict(model.cfg)  # type: ignore[attr-defined]
    raise TypeError(f"{type(model).__name__} is not a vrrestore architecture")
