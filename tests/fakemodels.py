"""Untrained models that behave like trained ones where a test needs it."""

from __future__ import annotations

import torch
from torch import nn

from vrrestore.models.blocks import FuseBlock, OutputFuse


def with_trained_fusion(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Give every FuseBlock's and OutputFuse's zero-initialised last convs small random weights: an
    untrained block is the identity at every fidelity (by design), so a test of the knob needs a block
    that does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, FuseBlock):
                for last in (block.scale[-1], block.shift[-1]):
                    last.weight.copy_(torch.randn(last.weight.shape, generator=g) * std)
            elif isinstance(block, OutputFuse):
                last = block.body[-1]
                last.weight.copy_(torch.randn(last.weight.shape, generator=g) * std)
    return model
