"""Training-time reparametrisation of the VR head that makes its optimisation well conditioned.

The VR head predicts raw weights v = h @ A^T and decodes feature = v @ C (``center``: v @ (C - mean(C))
plus mean(C)). Gradient steps on A move the effective map A^T C by (step) @ C^T C, so a codebook
with a dominant direction or a wide singular-value spread trains slowly or diverges. ``whiten``
trains B with A = P^T B, where P = U S^-1 U^T + (I - U U^T) for the SVD C_c = U S V^T of the
(centred) codebook: then P C_c = U V^T has all singular values 1. The function is unchanged at
initialisation (B0 = P^-T A0), and :func:`fold_heads` writes A = P^T B back into a plain
``VectorRegression`` for export, so inference never sees the reparametrisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.heads import HeadOutput, VectorRegression


def whitening_matrix(codebook: torch.Tensor, affine: bool, rel_eps: float = 1e-6) -> torch.Tensor:
    """P (N, N) with P @ C' orthonormal-columned on span(C'), C' = C centred when ``affine``."""
    c = codebook.detach().double()
    if affine:
        c = c - c.mean(0, keepdim=True)
    u, s, _ = torch.linalg.svd(c, full_matrices=False)
    keep = s > s.max() * rel_eps
    u, s = u[:, keep], s[keep]
    n = c.shape[0]
    p = (u / s) @ u.T + torch.eye(n, dtype=c.dtype) - u @ u.T
    return p.float()


class WhitenedVR(nn.Module):
    """A ``VectorRegression`` trained through B (see module doc); identical outputs for A = P^T B."""

    def __init__(self, in_dim: int, num_codes: int, affine: bool) -> None:
        super().__init__()
        self.affine = affine
        self.weight_b = nn.Parameter(torch.zeros(num_codes, in_dim))
        self.register_buffer("p", torch.eye(num_codes))

    @torch.no_grad()
    def init_from(self, head: VectorRegression, codebook: torch.Tensor) -> None:
        """Take ``head``'s current function: P from the codebook, B = P^-T A."""
        self.p.copy_(whitening_matrix(codebook, self.affine))
        a = head.proj.weight.detach().double()
        self.weight_b.copy_(torch.linalg.solve(self.p.double().T, a).float())

    def folded_weight(self) -> torch.Tensor:
        return self.p.T @ self.weight_b

    def forward(self, x: torch.Tensor, codebook: torch.Tensor) -> HeadOutput:
        raw = F.linear(x, self.folded_weight().to(x.dtype))
        return VectorRegression.combine(raw, codebook, self.affine)


def whiten_heads(model: nn.Module) -> VectorRegression:
    """Swap the model's ``predictor.head`` (a VectorRegression) for a WhitenedVR (P, B still unset:
    load them, or call ``init_from``); returns the plain head it replaced."""
    head = model.predictor.head  # type: ignore[union-attr]
    if not isinstance(head, VectorRegression):
        raise ValueError("whitening applies to the vr head only")
    n, d = head.proj.weight.shape
    model.predictor.head = WhitenedVR(d, n, head.affine).to(head.proj.weight.device)  # type: ignore[union-attr]
    return head


def fold_heads(model: nn.Module) -> nn.Module:
    """Replace a WhitenedVR head by the equivalent plain VectorRegression (in place; returns model)."""
    head = getattr(getattr(model, "predictor", None), "head", None)
    if isinstance(head, WhitenedVR):
        n, d = head.weight_b.shape
        plain = VectorRegression(d, n, head.affine)
        with torch.no_grad():
            plain.proj.weight.copy_(head.folded_weight())
        model.predictor.head = plain.to(head.weight_b.device)  # type: ignore[union-attr]
    return model
