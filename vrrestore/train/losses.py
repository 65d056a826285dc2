"""Losses of the three stages (written from the papers' descriptions)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("vrrestore.train")


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -mean(D(fake))."""
    return hinge_g_per_sample(fake_logits).mean()


def hinge_g_per_sample(fake_logits: torch.Tensor) -> torch.Tensor:
    """(B,) generator hinge losses, for losses weighted per sample (the fidelity stage)."""
    return -fake_logits.flatten(1).mean(dim=1)


def fidelity_loss_scales(w: torch.Tensor, gain: float, fade: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (pixel, texture) loss multipliers at fidelity ``w``: (1 + gain*w, 1 / (1 + gain*w)),
    the texture one times (1 - w) with ``fade``.

    One loss for every w gives the knob nothing to learn (our first models got *worse* PSNR at
    w = 1); so L1 grows with w and the perceptual and GAN terms shrink with it, and the ratio of
    the two moves by (1 + gain)^2 from w = 0 (quality) to w = 1 (fidelity). gain 0 = one loss.
    Without ``fade`` w = 1 still carries a quarter of the texture terms (gain 3), and 800 face steps
    left w = 1 0.4 dB *below* where it started (a fixed blend of decoder output and input); with it
    w = 1 trains on L1 alone, the end of the knob that PSNR judges.
    """
    pix = 1.0 + gain * w.float()
    tex = (1.0 - w.float()) / pix if fade else 1.0 / pix
    return pix, tex


def adaptive_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """Balance the GAN term against the reconstruction term at the generator's last layer:
    ||d rec / d W|| / (||d g / d W|| + 1e-4), clamped to [0, max_weight] and detached (VQGAN)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach()


def codebook_target_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Feature MSE in fp32 (features are compared token by token)."""
    return F.mse_loss(pred.float(), target.float())


def oracle_weight_loss(weights: torch.Tensor, oracle: torch.Tensor) -> torch.Tensor:
    """MSE(w, w*) relative to mean(w*^2): scale-free, so one weight suits any codebook."""
    oracle = oracle.float()
    return F.mse_loss(weights.float(), oracle) / oracle.pow(2).mean().clamp_min(1e-12)


class Perceptual(nn.Module):
    """LPIPS (alex or vgg) as a loss on [0, 1] images, or nothing (one log line) when its weights are
    missing. Alex costs ~1.7 GFLOP per 256 px pair against VGG's ~50: on a CPU VGG would cost more
    than the generator it trains."""

    def __init__(
        self, weight: float, device: torch.device, say: Callable[[str], None] | None = None, net: str = "alex"
    ) -> None:
        super().__init__()
        self.weight = weight
        self.net: nn.Module | None = None
        self.reason = "weight 0"
        if weight <= 0:
            return
        try:
            from ..metrics.lpips import LPIPSUnavailable, load_lpips
        except ImportError as err:  # pragma: no cover - the metrics package ships with vrrestore
            self.reason = f"vrrestore.metrics.lpips not importable ({err})"
        else:
            try:
                self.net = load_lpips(net, device=device)  # type: ignore[arg-type]
                self.net.eval().requires_grad_(False)
                self.reason = ""
            except LPIPSUnavailable as err:
                self.reason = str(err)
        if self.net is None:
            (say or log.warning)(f"perceptual loss off: LPIPS-{net} unavailable ({self.reason})")

    @property
    def enabled(self) -> bool:
        return self.net is not None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.per_sample(x, y).mean()

    def per_sample(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) distances: the fidelity stage weights each sample by its own fidelity."""
        if self.net is None:
            return x.new_zeros(x.shape[0])
        return self.net(x, y).float().reshape(x.shape[0])
