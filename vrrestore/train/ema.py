"""Exponential moving average of a model's weights (what gets exported)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """EMA copy of ``model``. The decay ramps up as min(decay, (1 + n) / (10 + n)) so that short runs
    do not export weights still dominated by the initialisation. Buffers and frozen parameters are
    copied, trainable ones averaged."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        src = dict(model.named_parameters())
        for name, p in self.model.named_parameters():
            q = src[name]
            if q.requires_grad:
                p.lerp_(q.detach().to(p.dtype), 1.0 - d)
            else:
                p.copy_(q.detach())
        src_buf = dict(model.named_buffers())
        for name, b in self.model.named_buffers():
            b.copy_(src_buf[name])

    def state_dict(self) -> dict[str, object]:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]
        self.updates = int(state["updates"])  # type: ignore[call-overload]
