"""The high-quality prior: a VQGAN autoencoder (encoder, codebook, decoder) with configurable geometry.

Images are (B, 3, H, W) in [-1, 1] here; the restorers convert from [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttnBlock, Downsample, ResBlock, Upsample, group_norm
from .heads import HeadOutput, VectorQuantizer

FuseFn = Callable[[int, torch.Tensor], torch.Tensor]
# (last decoder feature, output before the pixel shuffle) -> refined output (restorer OutputFuse)
RefineFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def unshuffled(image: torch.Tensor, stem: int) -> torch.Tensor:
    """An image in the stem's layout: what the encoder's first conv reads and the decoder's last conv
    writes before its pixel shuffle (so OutputFuse can compare the two)."""
    return F.pixel_unshuffle(image, stem) if stem > 1 else image


@dataclass(frozen=True)
class VQConfig:
    """Geometry of the prior. ``img_size`` is the training size; the nets are fully convolutional
    except for attention, so other sizes that are multiples of ``downsample`` also run."""

    img_size: int = 512
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 8)
    res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    codebook_size: int = 1024
    emb_dim: int = 256
    beta: float = 0.25
    # Pixel-(un)shuffle factor of the first/last layer. 4 moves every conv to 1/16 of the pixels, which
    # is what makes CPU training affordable; 1 is the classic full-resolution VQGAN stem.
    stem: int = 1
    mid_attn: bool = True  # self-attention in the latent-level middle blocks

    @property
    def downsample(self) -> int:
        return self.stem * 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.img_size // self.downsample

    def level_channels(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_mult]

    def level_resolutions(self) -> list[int]:
        """Training-size spatial resolution of each level, finest first (after the stem)."""
        return [self.img_size // (self.stem * 2**i) for i in range(len(self.channel_mult))]


def _mid(ch: int, attn: bool) -> nn.Sequential:
    return nn.Sequential(ResBlock(ch), AttnBlock(ch), ResBlock(ch)) if attn else nn.Sequential(ResBlock(ch), ResBlock(ch))


class Encoder(nn.Module):
    """Conv encoder to an ``emb_dim`` latent; also returns each level's feature keyed by resolution."""

    def __init__(self, cfg: VQConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        chs = cfg.level_channels()
        self.conv_in = nn.Conv2d(in_channels * cfg.stem**2, chs[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = chs[0]
        for i, (ch, res) in enumerate(zip(chs, cfg.level_resolutions(), strict=True)):
            blocks: list[nn.Module] = []
            for _ in range(cfg.res_blocks):
                blocks.append(ResBlock(prev, ch))
                prev = ch
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(ch))
            self.levels.append(nn.Sequential(*blocks))
            self.downs.append(Downsample(ch) if i < len(chs) - 1 else nn.Identity())
        self.mid = _mid(prev, cfg.mid_attn)
        self.norm_out = group_norm(prev)
        self.conv_out = nn.Conv2d(prev, cfg.emb_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        h = self.conv_in(unshuffled(x, self.cfg.stem))
        feats: dict[int, torch.Tensor] = {}
        for res, level, down in zip(self.cfg.level_resolutions(), self.levels, self.downs, strict=True):
            h = level(h)
            feats[res] = h
            h = down(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h))), feats


class Decoder(nn.Module):
    """Mirror of the encoder. ``fuse(res, h)`` is called after each level's blocks and ``refine`` on the
    output before its pixel shuffle (restorer fusion)."""

    def __init__(self, cfg: VQConfig, out_channels: int = 3) -> None:
        super().__init__()
        self.cfg = cfg
        chs = cfg.level_channels()[::-1]
        ress = cfg.level_resolutions()[::-1]
        prev = chs[0]
        self.conv_in = nn.Conv2d(cfg.emb_dim, prev, 3, padding=1)
        self.mid = _mid(prev, cfg.mid_attn)
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        for i, (ch, res) in enumerate(zip(chs, ress, strict=True)):
            blocks: list[nn.Module] = []
            for _ in range(cfg.res_blocks):
                blocks.append(ResBlock(prev, ch))
                prev = ch
                if res in cfg.attn_resolutions:
                    blocks.append(AttnBlock(ch))
            self.levels.append(nn.Sequential(*blocks))
            self.ups.append(Upsample(ch) if i < len(chs) - 1 else nn.Identity())
        self.norm_out = group_norm(prev)
        self.conv_out = nn.Conv2d(prev, out_channels * cfg.stem**2, 3, padding=1)

    def forward(self, z: torch.Tensor, fuse: FuseFn | None = None, refine: RefineFn | None = None) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for res, level, up in zip(self.cfg.level_resolutions()[::-1], self.levels, self.ups, strict=True):
            h = level(h)
            if fuse is not None:
                h = fuse(res, h)
            h = up(h)
        h = F.silu(self.norm_out(h))
        out = self.conv_out(h)
        if refine is not None:
            out = refine(h, out)
        return F.pixel_shuffle(out, self.cfg.stem) if self.cfg.stem > 1 else out


class VQAutoEncoder(nn.Module):
    """Encoder -> nearest-code VQ -> decoder. ``encode`` gives the pre-quantization features VR is
    supervised with; ``decode`` accepts any (B, d, h, w) feature, quantized or not."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.emb_dim, cfg.beta)
        self.decoder = Decoder(cfg)

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.codebook

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latent (B, d, h, w) of images in [-1, 1]."""
        return self.encoder(x)[0]

    def quantize(self, z: torch.Tensor) -> HeadOutput:
        out = self.quantizer(to_tokens(z))
        out.feat = from_tokens(out.feat, z.shape[-2:])
        return out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, HeadOutput]:
        q = self.quantize(self.encode(x))
        return self.decode(q.feat), q


def to_tokens(z: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) -> (B, h*w, d)."""
    return z.flatten(2).transpose(1, 2)


def from_tokens(t: torch.Tensor, hw: tuple[int, int] | torch.Size) -> torch.Tensor:
    """(B, h*w, d) -> (B, d, h, w)."""
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], int(hw[0]), int(hw[1]))
