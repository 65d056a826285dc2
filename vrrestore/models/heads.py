"""Codebook heads: how a restorer turns per-token predictions into a feature for the frozen decoder.

All four share one interface: ``head(x, codebook) -> HeadOutput`` where ``x`` is (B, T, K) (logits,
regression weights or features, depending on the head) and ``codebook`` is the prior's (N, d)
code matrix. ``HeadOutput.feat`` is (B, T, d).

Codebook maths (distances, ``w @ C``, soft assignment) always runs in float32, even under autocast:
fp16 distances between 256-d vectors lose the nearest code, and ``w @ C`` sums 1024 products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

HeadKind = Literal["vq", "soft", "vr", "direct"]
HEAD_KINDS: tuple[HeadKind, ...] = ("vq", "soft", "vr", "direct")


@dataclass
class HeadOutput:
    """What a head returns: the feature to decode plus what its losses need."""

    feat: torch.Tensor
    logits: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    loss: torch.Tensor | None = None


def _fp32_off_autocast(device_type: str):  # noqa: ANN202 - a context manager
    return torch.autocast(device_type=device_type, enabled=False)


def fp32_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32 even under autocast: code logits and regression weights over 1,024
    codes are codebook maths (a bf16 argmax ties codes; bf16 weights sum 1,024 rounded terms)."""
    with _fp32_off_autocast(x.device.type):
        return F.linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())


class VectorQuantizer(nn.Module):
    """Nearest-code VQ with straight-through gradients; owns the codebook of the VQGAN prior.

    loss = ||sg(z) - q||^2 + beta * ||z - sg(q)||^2 (beta weighs the commitment term).
    Code usage is tracked as an EMA while training; :meth:`restart_dead_codes` re-seeds unused codes
    from encoder outputs so the codebook does not collapse.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, usage_decay: float = 0.99) -> None:
        super().__init__()
        self.num_codes, self.dim, self.beta, self.usage_decay = num_codes, dim, beta, usage_decay
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        self.register_buffer("usage", torch.ones(num_codes), persistent=False)

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding.weight

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (B, T) of the nearest code for tokens z (B, T, d), computed in fp32."""
        with _fp32_off_autocast(z.device.type):
            zf = z.float().reshape(-1, self.dim)
            c = self.codebook.float()
            # ||z||^2 is the same for every code, so argmin needs only ||c||^2 - 2 z.c: one fused addmm.
            dist = torch.addmm(c.pow(2).sum(1)[None], zf, c.t(), alpha=-2.0)
            return dist.argmin(dim=1).reshape(z.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.codebook)

    def forward(self, z: torch.Tensor, codebook: torch.Tensor | None = None) -> HeadOutput:
        idx = self.nearest(z)
        q = self.lookup(idx).to(z.dtype)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        if self.training:
            with torch.no_grad():
                counts = torch.bincount(idx.flatten(), minlength=self.num_codes).float()
                self.usage.mul_(self.usage_decay).add_(counts / max(idx.numel(), 1) * self.num_codes, alpha=1 - self.usage_decay)
        return HeadOutput(feat=z + (q - z).detach(), indices=idx, loss=loss)

    @torch.no_grad()
    def restart_dead_codes(self, z: torch.Tensor, threshold: float = 0.03) -> int:
        """Replace codes whose usage EMA fell under ``threshold`` by random tokens of ``z``; returns how many."""
        dead = (self.usage < threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pool = z.detach().reshape(-1, self.dim).float()
        pick = torch.randint(0, pool.shape[0], (dead.numel(),), device=pool.device)
        self.embedding.weight.data[dead] = pool[pick].to(self.embedding.weight.dtype)
        self.usage[dead] = 1.0
        return int(dead.numel())


class IndexPrediction(nn.Module):
    """The VQ restorer head (CodeFormer): predict logits over codes, decode the argmax code.

    The feature carries no gradient (it is a lookup); training uses cross-entropy on ``logits``.
    """

    def __init__(self, in_dim: int, num_codes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, num_codes, bias=False)

    def forward(self, x: torch.Tensor, codebook: torch.Tensor) -> HeadOutput:
        logits = fp32_linear(self.proj, x)
        idx = logits.argmax(dim=-1)
        return HeadOutput(feat=F.embedding(idx, codebook).to(x.dtype), logits=logits, indices=idx)


class SoftQuantizer(nn.Module):
    """Soft assignment ablation: softmax(logits / tau) @ C, a convex combination of codes."""

    def __init__(self, in_dim: int, num_codes: int, tau: float = 1.0) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, num_codes, bias=False)
        self.tau = tau

    def forward(self, x: torch.Tensor, codebook: torch.Tensor) -> HeadOutput:
        logits = fp32_linear(self.proj, x)
        with _fp32_off_autocast(x.device.type):
            probs = torch.softmax(logits.float() / self.tau, dim=-1)
            feat = probs @ codebook.float()
        return HeadOutput(feat=feat.to(x.dtype), logits=logits, weights=probs)


class VectorRegression(nn.Module):
    """Vector Regression: real-valued weights over the whole codebook, feature = w @ C (no softmax).

    Supervised with the HQ encoder's pre-quantization features. ``w`` may be negative. With
    ``affine=True`` (default) the predicted weights are shifted to sum to one,
    w = v + (1 - sum(v)) / N, so feature = mean(C) + v @ (C - mean(C)). That is still w @ C over the
    whole codebook, but the codebook's common direction no longer dominates C^T C, which is what
    makes the plain parametrisation train slowly or diverge (see README, "Why VR trains").
    """

    def __init__(self, in_dim: int, num_codes: int, affine: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, num_codes, bias=False)
        self.affine = affine

    def forward(self, x: torch.Tensor, codebook: torch.Tensor) -> HeadOutput:
        if torch.is_grad_enabled():
            return self.combine(fp32_linear(self.proj, x), codebook, self.affine)
        return self.fused(x, codebook)

    def fused(self, x: torch.Tensor, codebook: torch.Tensor) -> HeadOutput:
        """Inference shortcut: w @ C = x @ (W^T C) (+ mean code for affine), one (D x d) matmul per
        token instead of (D x N) then (N x d). Same function; the weights are not materialised."""
        with _fp32_off_autocast(x.device.type):
            c = codebook.float()
            wt = self.proj.weight.float().t()
            if self.affine:
                mu = c.mean(0)
                feat = torch.addmm(mu, x.float().reshape(-1, x.shape[-1]), wt @ (c - mu))
            else:
                feat = x.float().reshape(-1, x.shape[-1]) @ (wt @ c)
        return HeadOutput(feat=feat.reshape(*x.shape[:-1], c.shape[1]).to(x.dtype))

    @staticmethod
    def combine(weights: torch.Tensor, codebook: torch.Tensor, affine: bool = False) -> HeadOutput:
        """feature = w @ C in fp32; with ``affine`` the weights are first shifted to sum to one."""
        with _fp32_off_autocast(weights.device.type):
            w = weights.float()
            if affine:
                w = w + (1.0 - w.sum(-1, keepdim=True)) / codebook.shape[0]
            feat = w @ codebook.float()
        return HeadOutput(feat=feat.to(weights.dtype), weights=w)


def oracle_weights(feat: torch.Tensor, codebook: torch.Tensor, affine: bool = False) -> torch.Tensor:
    """Minimum-norm weights with w @ C == f whenever rank(C) (centred, for ``affine``) equals d.

    Plain: w* = f @ pinv(C). Affine (weights summing to one): w* = 1/N + (f - mean(C)) @ pinv(C - mean(C)).
    """
    with _fp32_off_autocast(feat.device.type):
        c = codebook.float()
        if not affine:
            return feat.float() @ torch.linalg.pinv(c)
        mu = c.mean(0)
        return 1.0 / c.shape[0] + (feat.float() - mu) @ torch.linalg.pinv(c - mu)


class DirectRegression(nn.Module):
    """No-codebook ablation: a plain linear map from token to feature."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: torch.Tensor, codebook: torch.Tensor | None = None) -> HeadOutput:
        return HeadOutput(feat=self.proj(x))


def build_head(
    kind: HeadKind, in_dim: int, num_codes: int, dim: int, tau: float = 1.0, vr_affine: bool = True
) -> nn.Module:
    """The restorer head named by ``kind`` (vq | soft | vr | direct)."""
    if kind == "vq":
        return IndexPrediction(in_dim, num_codes)
    if kind == "soft":
        return SoftQuantizer(in_dim, num_codes, tau)
    if kind == "vr":
        return VectorRegression(in_dim, num_codes, vr_affine)
    if kind == "direct":
        return DirectRegression(in_dim, dim)
    raise ValueError(f"unknown head {kind!r}; expected one of {', '.join(HEAD_KINDS)}")
