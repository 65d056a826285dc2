"""PlainRestorer: the no-prior baseline the release models must beat.

The prior's own conv encoder and decoder (same stem, levels and latent width, so the same compute),
trained end to end from LQ faces to HQ faces with no codebook, no transformer and no fusion, plus a
global residual (the network predicts a correction to its input, which is how plain restoration nets
reach their PSNR quickly). It answers "is the VQGAN prior worth its CPU time?", so it is trained for
the same training seconds as the VR chain (see ``vrrestore.train.release``). Faces only: the size of
the input is the size of the output. Images are (B, 3, S, S) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .vqgan import Decoder, Encoder, VQConfig


@dataclass(frozen=True)
class PlainConfig:
    prior: VQConfig = field(default_factory=VQConfig)  # geometry of the encoder and decoder (codebook unused)


class PlainRestorer(nn.Module):
    def __init__(self, cfg: PlainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.prior)
        self.decoder = Decoder(cfg.prior)

    def forward(self, x: torch.Tensor, fidelity: float | torch.Tensor = 0.5) -> torch.Tensor:
        """``fidelity`` is accepted so every restorer runs through one descriptor; a plain net has no knob."""
        del fidelity
        feat, _ = self.encoder(x * 2.0 - 1.0)
        return x + 0.5 * self.decoder(feat)
