"""Token predictor shared by the restorers: LQ latent -> transformer -> codebook head -> feature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import TransformerLayer
from .heads import HeadKind, HeadOutput, build_head


class CodePredictor(nn.Module):
    """Embeds LQ latent tokens, runs a pre-LN transformer, and maps each token through the head.

    The learned position embedding is defined on the training latent grid and resized bilinearly for
    other grids, so models also run (less well) on inputs of other sizes, e.g. tiny test images.
    """

    def __init__(
        self,
        emb_dim: int,
        num_codes: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        mlp_ratio: float,
        latent_size: int,
        head: HeadKind,
        soft_tau: float = 1.0,
        vr_affine: bool = True,
    ) -> None:
        super().__init__()
        self.latent_size = latent_size
        self.feat_emb = nn.Linear(emb_dim, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(1, d_model, latent_size, latent_size))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(d_model, n_heads, mlp_ratio) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = build_head(head, d_model, num_codes, emb_dim, soft_tau, vr_affine)

    def position(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_emb
        if (h, w) != (self.latent_size, self.latent_size):
            pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, lq_feat: torch.Tensor, codebook: torch.Tensor) -> HeadOutput:
        """lq_feat (B, d, h, w) -> HeadOutput with feat (B, h*w, d)."""
        h, w = lq_feat.shape[-2:]
        x = self.feat_emb(lq_feat.flatten(2).transpose(1, 2))
        pos = self.position(h, w).to(x.dtype)
        for layer in self.layers:
            x = layer(x, pos)
        return self.head(self.norm(x), codebook)
