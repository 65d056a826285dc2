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

    ``merge`` > 1 runs the transformer on merge x merge groups of tokens (concatenated, then
    embedded) and splits each output back into its tokens before the head. Attention cost falls
    by merge^4: over a 32x32 latent, full attention took 35% of a CPU training step.
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
        merge: int = 1,
    ) -> None:
        super().__init__()
        if latent_size % merge:
            raise ValueError(f"token merge {merge} does not divide the latent size {latent_size}")
        self.merge = merge
        self.latent_size = latent_size // merge
        self.feat_emb = nn.Linear(emb_dim * merge**2, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(1, d_model, self.latent_size, self.latent_size))
        nn.init.trunc_normal_(self.pos_emb, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(d_model, n_heads, mlp_ratio) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.split = nn.Linear(d_model, d_model * merge**2) if merge > 1 else None
        self.head = build_head(head, d_model, num_codes, emb_dim, soft_tau, vr_affine)

    def position(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_emb
        if (h, w) != (self.latent_size, self.latent_size):
            pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, lq_feat: torch.Tensor, codebook: torch.Tensor) -> HeadOutput:
        """lq_feat (B, d, h, w) -> HeadOutput with feat (B, h*w, d); h, w multiples of ``merge``."""
        m = self.merge
        h, w = lq_feat.shape[-2:]
        if h % m or w % m:
            raise ValueError(f"latent grid {h}x{w} is not a multiple of the token merge {m}")
        grouped = F.pixel_unshuffle(lq_feat, m) if m > 1 else lq_feat
        x = self.feat_emb(grouped.flatten(2).transpose(1, 2))
        pos = self.position(h // m, w // m).to(x.dtype)
        for layer in self.layers:
            x = layer(x, pos)
        x = self.norm(x)
        if self.split is not None:  # (B, h/m * w/m, D) -> (B, h*w, D) in raster order of the full grid
            b, _, d = x.shape
            x = self.split(x).transpose(1, 2).reshape(b, d * m * m, h // m, w // m)
            x = F.pixel_shuffle(x, m).flatten(2).transpose(1, 2)
        return self.head(x, codebook)
