"""PSNR and SSIM computed the way the papers we compare against compute them (BasicSR's formulas).

Two conventions matter and the caller picks one:

* faces (CodeFormer, DAEFR): RGB, ``crop_border=0``, ``y_channel=False``;
* SR (FeMaSR, AdaCode): ``y_channel=True`` (BT.601 Y as MATLAB ``rgb2ycbcr``, not rounded) and
  ``crop_border=scale``.

Images are (H, W, 3) or (H, W) arrays, uint8 in [0, 255] or float in [0, 1]; both are scored on the
[0, 255] scale in float64 without rounding, so pass uint8 when you want the numbers of saved PNGs.
SSIM is BasicSR's: 11x11 Gaussian window (sigma 1.5), valid region only, mean over channels; it
matches scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)`` up to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InputError

_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


_WINDOW = _gaussian_1d()


def to_255(img: np.ndarray) -> np.ndarray:
    """uint8 as is, uint16 rescaled, float [0, 1] times 255; always float64 on the [0, 255] scale."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float64)
    if img.dtype == np.uint16:
        return img.astype(np.float64) * (255.0 / 65535.0)
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float64) * 255.0
    raise InputError(f"metrics need uint8, uint16 or float images, got dtype {img.dtype}")


def rgb_to_y(img255: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image on the [0, 255] scale: 16 + (65.481 R + 128.553 G + 24.966 B) / 255.

    Same as MATLAB ``rgb2ycbcr`` (and BasicSR ``to_y_channel``) without the final rounding to uint8.
    """
    coeffs = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0
    return img255 @ coeffs + 16.0


def _prepare(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"metric inputs differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)):
        raise InputError(f"metric inputs must be (H, W), (H, W, 1) or (H, W, 3), got {a.shape}")
    if crop_border < 0:
        raise InputError(f"crop_border must be >= 0, got {crop_border}")
    fa, fb = to_255(a), to_255(b)
    if y_channel:
        if fa.ndim != 3 or fa.shape[2] != 3:
            raise InputError(f"y_channel=True needs RGB (H, W, 3) inputs, got {a.shape}")
        fa, fb = rgb_to_y(fa), rgb_to_y(fb)
    if fa.ndim == 2:
        fa, fb = fa[..., None], fb[..., None]
    if crop_border:
        fa = fa[crop_border:-crop_border, crop_border:-crop_border]
        fb = fb[crop_border:-crop_border, crop_border:-crop_border]
    if fa.shape[0] == 0 or fa.shape[1] == 0:
        raise InputError(f"crop_border={crop_border} leaves nothing of a {a.shape[:2]} image")
    return fa, fb


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB on the [0, 255] scale (MSE over all kept pixels and channels); inf if identical."""
    fa, fb = _prepare(a, b, crop_border, y_channel)
    mse = float(np.mean((fa - fb) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """Separable 11x11 Gaussian, 'valid' region only (what BasicSR keeps after ``[5:-5, 5:-5]``)."""
    k = len(_WINDOW)
    h, w = x.shape
    rows = sum(_WINDOW[i] * x[i : h - k + 1 + i] for i in range(k))
    return sum(_WINDOW[j] * rows[:, j : w - k + 1 + j] for j in range(k))


def _ssim_plane(x: np.ndarray, y: np.ndarray) -> float:
    mu_x, mu_y = _filter_valid(x), _filter_valid(y)
    sxx = _filter_valid(x * x) - mu_x**2
    syy = _filter_valid(y * y) - mu_y**2
    sxy = _filter_valid(x * y) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + _C1) * (2.0 * sxy + _C2)
    den = (mu_x**2 + mu_y**2 + _C1) * (sxx + syy + _C2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """SSIM (BasicSR): Gaussian 11x11 / sigma 1.5 statistics, valid region, mean of per-channel SSIM."""
    fa, fb = _prepare(a, b, crop_border, y_channel)
    if fa.shape[0] < len(_WINDOW) or fa.shape[1] < len(_WINDOW):
        raise InputError(f"SSIM needs at least 11x11 pixels after cropping, got {fa.shape[:2]}")
    return float(np.mean([_ssim_plane(fa[..., c], fb[..., c]) for c in range(fa.shape[2])]))


def psnr_torch(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR (B,) of (B, C, H, W) batches on ``data_range`` (no rounding; for training logs)."""
    if a.shape != b.shape:
        raise InputError(f"psnr_torch inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)
