"""SRRestorer: FeMaSR-style blind super-resolution (x2, x4) on a VQGAN prior of HR patches.

LR image -> conv encoder down to the prior's latent grid -> transformer -> head -> frozen prior
decoder, with LR-encoder features fused into the decoder (fidelity ``w``) and, with ``out_fuse``,
an image-level path against the bicubic-upsampled input after it (OutputFuse). The prior downsamples by
8, so an LR side must be a multiple of 8 / scale. Images are (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Downsample, FuseBlock, ResBlock, group_norm
from .face import RestoreOutput, fidelity_tensor, output_fuse
from .heads import HeadKind, VectorQuantizer
from .predictor import CodePredictor
from .vqgan import Decoder, VQAutoEncoder, VQConfig, from_tokens, unshuffled


@dataclass(frozen=True)
class SRConfig:
    prior: VQConfig = field(
        default_factory=lambda: VQConfig(
            img_size=256, base_channels=64, channel_mult=(1, 2, 4, 4), res_blocks=2, attn_resolutions=(),
            codebook_size=1024, emb_dim=512,
        )
    )
    scale: int = 4
    lq_channels: int = 128
    lq_blocks: int = 2
    d_model: int = 256
    n_layers: int = 16
    n_heads: int = 8
    mlp_ratio: float = 2.0
    head: HeadKind = "vr"
    soft_tau: float = 1.0
    vr_affine: bool = True  # VR weights shifted to sum to one (see VectorRegression)
    token_merge: int = 1  # transformer on merge x merge token groups (see CodePredictor)
    # OutputFuse against the bicubic-upsampled input; False in checkpoints written before it existed
    out_fuse: bool = False
    # OutputFuse's width and residual blocks; checkpoints written before these fields have 32 and 0
    out_fuse_width: int = 32
    out_fuse_blocks: int = 0

    @property
    def size_multiple(self) -> int:
        """LR sides must be multiples of this for the latent grid (and its token groups) to be whole."""
        return max(1, self.prior.downsample * self.token_merge // self.scale)


class LREncoder(nn.Module):
    """LR image -> prior latent grid; keeps its features by the HR-resolution label they line up with."""

    def __init__(self, cfg: SRConfig) -> None:
        super().__init__()
        n_down = int(math.log2(cfg.prior.downsample // cfg.scale))
        if 2**n_down * cfg.scale != cfg.prior.downsample:
            raise ValueError(f"scale {cfg.scale} does not divide the prior's downsampling {cfg.prior.downsample}")
        c = cfg.lq_channels
        self.labels = [cfg.prior.img_size // (cfg.scale * 2**i) for i in range(n_down + 1)]
        self.conv_in = nn.Conv2d(3, c, 3, padding=1)
        self.levels = nn.ModuleList(nn.Sequential(*[ResBlock(c) for _ in range(cfg.lq_blocks)]) for _ in self.labels)
        self.downs = nn.ModuleList([Downsample(c) for _ in range(n_down)] + [nn.Identity()])
        self.norm_out = group_norm(c)
        self.conv_out = nn.Conv2d(c, cfg.prior.emb_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        h = self.conv_in(x)
        feats: dict[int, torch.Tensor] = {}
        for label, level, down in zip(self.labels, self.levels, self.downs, strict=True):
            h = level(h)
            feats[label] = h
            h = down(h)
        return self.conv_out(F.silu(self.norm_out(h))), feats


class SRRestorer(nn.Module):
    def __init__(self, cfg: SRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.prior
        self.lq_encoder = LREncoder(cfg)
        self.predictor = CodePredictor(
            p.emb_dim, p.codebook_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio,
            p.latent_size, cfg.head, cfg.soft_tau, cfg.vr_affine, cfg.token_merge,
        )
        self.quantizer = VectorQuantizer(p.codebook_size, p.emb_dim, p.beta)
        self.decoder = Decoder(p)
        ch_at = dict(zip(p.level_resolutions(), p.level_channels(), strict=True))
        # Fuse where an LR feature lines up with a decoder level, skipping the latent level itself.
        self.fuse = nn.ModuleDict(
            {str(r): nn.ModuleList([nn.Conv2d(cfg.lq_channels, ch_at[r], 1), FuseBlock(ch_at[r])])
             for r in self.lq_encoder.labels if r in ch_at and r != p.latent_size}
        )
        self.out_fuse = output_fuse(p, cfg.out_fuse, cfg.out_fuse_width, cfg.out_fuse_blocks)

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.codebook

    def load_prior(self, prior: VQAutoEncoder) -> None:
        """Take codebook and decoder from a trained HR prior (the LR encoder has no counterpart)."""
        self.quantizer.load_state_dict(prior.quantizer.state_dict())
        self.decoder.load_state_dict(prior.decoder.state_dict())

    def restore(self, x: torch.Tensor, fidelity: float | torch.Tensor = 0.5) -> RestoreOutput:
        lq_feat, skips = self.lq_encoder(x * 2.0 - 1.0)
        head = self.predictor(lq_feat, self.codebook)
        w = fidelity_tensor(fidelity, x.shape[0], x.device)

        def fuse(res: int, h: torch.Tensor) -> torch.Tensor:
            key = str(res)
            if key not in self.fuse:
                return h
            proj, block = self.fuse[key]
            return block(proj(skips[res]), h, w)

        out_fuse, refine = self.out_fuse, None
        if out_fuse is not None:
            up = F.interpolate(x * 2.0 - 1.0, scale_factor=self.cfg.scale, mode="bicubic", align_corners=False)
            lq = unshuffled(up, self.cfg.prior.stem)
            refine = lambda h, o: out_fuse(h, o, lq, w)  # noqa: E731
        out = self.decoder(from_tokens(head.feat, lq_feat.shape[-2:]), fuse, refine)
        return RestoreOutput(image=(out + 1.0) * 0.5, head=head, lq_feat=lq_feat)

    def forward(self, x: torch.Tensor, fidelity: float | torch.Tensor = 0.5) -> torch.Tensor:
        return self.restore(x, fidelity).image


def sr_presets() -> dict[str, SRConfig]:
    """``sr-x4-s``/``sr-x2-s``/``sr-tiny`` are trainable here; ``sr-x4-base`` is FeMaSR's geometry."""
    small_prior = VQConfig(
        img_size=256, base_channels=32, channel_mult=(1, 2, 4, 4), res_blocks=1, attn_resolutions=(),
        codebook_size=1024, emb_dim=256,
    )
    tiny_prior = VQConfig(
        img_size=64, base_channels=16, channel_mult=(1, 2, 4, 4), res_blocks=1, attn_resolutions=(),
        codebook_size=256, emb_dim=64,
    )
    small = dict(lq_channels=64, lq_blocks=2, d_model=256, n_layers=4, n_heads=8)
    # CPU preset: the face-cpu geometry (stem 4, 32x32x256 latent of a 256 px HR patch) with one res
    # block per level, and a 3-layer transformer over 2x2 token groups: under 10 GFLOP per 64x64 LR input,
    # which leaves OutputFuse room for two 32-wide residual blocks only.
    cpu_prior = VQConfig(
        img_size=256, base_channels=64, channel_mult=(1, 2), res_blocks=1, attn_resolutions=(),
        codebook_size=1024, emb_dim=256, stem=4, mid_attn=False,
    )
    return {
        "sr-x4-cpu": SRConfig(
            prior=cpu_prior, scale=4, lq_channels=64, lq_blocks=1, d_model=192, n_layers=3, n_heads=6, token_merge=2,
            out_fuse=True, out_fuse_blocks=2,
        ),
        "sr-tiny": SRConfig(prior=tiny_prior, scale=4, lq_channels=16, lq_blocks=1, d_model=64, n_layers=2, n_heads=4,
                            out_fuse=True),
        "sr-x4-s": SRConfig(prior=small_prior, scale=4, **small),
        "sr-x2-s": SRConfig(prior=small_prior, scale=2, **small),
        "sr-x4-base": SRConfig(),
    }
