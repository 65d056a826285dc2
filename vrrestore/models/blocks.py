"""Building blocks shared by the VQGAN prior and the restorers (GroupNorm/SiLU conv nets, attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups where the channel count allows (VQGAN convention)."""
    groups = 32 if channels % 32 == 0 else max(g for g in (16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GN, SiLU, conv) x2 with a 1x1 shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int | None = None) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (used at the coarsest resolutions only)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = group_norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv with right/bottom padding, so even sizes halve exactly."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (no checkerboard artefacts)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TransformerLayer(nn.Module):
    """Pre-LN transformer layer; the position embedding is added to queries and keys (CodeFormer style)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qk = nn.Linear(dim, 2 * dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q, k = self.qk(h + pos).chunk(2, dim=-1)
        v = self.v(h)
        split = lambda z: z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        att = F.scaled_dot_product_attention(split(q), split(k), split(v))
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class FuseBlock(nn.Module):
    """Controllable feature transformation: dec + w * (dec * scale + shift), scale/shift from [enc, dec].

    With w = 0 the output is exactly the decoder feature, whatever the encoder branch holds. The last
    convs of scale and shift start at zero, so an untrained block is the identity at every w: the
    fidelity stage then only adds what helps. With the default init, w = 1 started as a random
    perturbation of the prior's features, and 500 CPU steps left our first face model worse at w = 1
    than at w = 0 (23.3 vs 24.9 dB).
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.encode = ResBlock(2 * ch, ch)
        self.scale = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 3, padding=1))
        self.shift = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 3, padding=1))
        for last in (self.scale[-1], self.shift[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, enc: torch.Tensor, dec: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = self.encode(torch.cat([enc, dec], dim=1))
        return dec + w.view(-1, 1, 1, 1).to(dec.dtype) * (dec * self.scale(h) + self.shift(h))


class OutputFuse(nn.Module):
    """Image-level fidelity path after the frozen decoder: out + w * (a * (lq - out) + b).

    ``out`` is the decoder's output before its pixel shuffle and ``lq`` the input image (an SR input
    upsampled to the output size) unshuffled the same way; a and b (per pixel and channel) come from
    [decoder feature, out, lq] through a conv, ``blocks`` residual blocks and a last conv that starts
    at zero. FuseBlock acts before the frozen decoder, so it cannot undo what the decoder gets wrong
    (colours, fine identity detail); the gate a can copy the input there, as the global residual of a
    plain restoration net does, and b adds what neither has. Without residual blocks (the first CPU
    models) the path learned no more than a fixed blend of the two (bench/fidelity_probe.py). An
    untrained block and w = 0 both give exactly the prior's output.
    """

    def __init__(self, feat_ch: int, out_ch: int, hidden: int = 32, blocks: int = 0) -> None:
        super().__init__()
        trunk: list[nn.Module] = [ResBlock(hidden) for _ in range(blocks)]
        if blocks:
            trunk.append(nn.SiLU())  # ResBlock is pre-activation: its output has no nonlinearity yet
        self.body = nn.Sequential(
            nn.Conv2d(feat_ch + 2 * out_ch, hidden, 3, padding=1), nn.SiLU(), *trunk,
            nn.Conv2d(hidden, 2 * out_ch, 3, padding=1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def gate(self, feat: torch.Tensor, out: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-pixel gate a on the input and the added b (bench/fidelity_probe.py reports a)."""
        a, b = self.body(torch.cat([feat.to(out.dtype), out, lq.to(out.dtype)], dim=1)).chunk(2, dim=1)
        return a, b

    def forward(self, feat: torch.Tensor, out: torch.Tensor, lq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        lq = lq.to(out.dtype)
        a, b = self.gate(feat, out, lq)
        return out + w.view(-1, 1, 1, 1).to(out.dtype) * (a * (lq - out) + b)
