"""PatchGAN discriminator for the prior and fidelity stages."""

from __future__ import annotations

import torch
from torch import nn

from ..models.blocks import group_norm


class PatchDiscriminator(nn.Module):
    """Fully convolutional critic: one real/fake logit per receptive-field patch.

    Stride-2 4x4 convs doubling width (capped at 8x), GroupNorm instead of BatchNorm so that the
    critic has no running statistics (nothing to sync across ranks or to restore on resume).
    Input images in [-1, 1].
    """

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for i in range(1, layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), group_norm(out), nn.LeakyReLU(0.2, True)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
