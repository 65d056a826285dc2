"""PSNR/SSIM against exact values and scikit-image, in both conventions (faces RGB, SR Y + crop)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vrrestore.errors import InputError, VRRestoreError
from vrrestore.metrics.fidelity import psnr, psnr_torch, rgb_to_y, ssim

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """A fixed textured image and a blurred, noisy copy (uint8, 48x40x3)."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:48, 0:40] / 40.0
    base = np.stack([np.sin(7 * xx) * np.cos(3 * yy), xx * yy, np.cos(9 * xx * yy)], axis=-1) * 0.4 + 0.5
    a = np.clip(base + rng.normal(0, 0.08, base.shape), 0, 1)
    b = np.clip(0.7 * a + 0.3 * base + rng.normal(0, 0.05, base.shape), 0, 1)
    return (a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8)


def test_psnr_of_known_arrays() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    assert psnr(a, a + 10) == 10 * math.log10(255.0**2 / 100.0)  # MSE 100
    assert psnr(a, a + 10) == pytest.approx(28.130803608679106, abs=1e-12)
    half = np.full((8, 8, 3), 0.5, np.float32)
    assert psnr(np.zeros_like(half), half) == pytest.approx(20 * math.log10(2.0), abs=1e-12)  # 6.0206 dB
    assert psnr(a, a) == math.inf


def test_psnr_uint8_and_float_agree() -> None:
    a, b = _pair()
    assert psnr(a / 255.0, b / 255.0) == pytest.approx(psnr(a, b), abs=1e-9)
    assert psnr(a.astype(np.uint16) * 257, b.astype(np.uint16) * 257) == pytest.approx(psnr(a, b), abs=1e-9)


def test_psnr_crop_border() -> None:
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[:2], b[-2:], b[:, :2], b[:, -2:] = 255, 255, 255, 255  # 112 of 256 pixels differ by 255
    assert psnr(a, b, crop_border=2) == math.inf
    assert psnr(a, b) == pytest.approx(10 * math.log10(256 / 112), abs=1e-12)


def test_y_channel_is_matlab_bt601() -> None:
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.float64)
    np.testing.assert_allclose(rgb_to_y(px)[0], [16.0, 235.0, 81.481, 144.553, 40.966], atol=1e-9)
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert psnr(black, white, y_channel=True) == pytest.approx(20 * math.log10(255 / 219), abs=1e-12)


def test_ssim_matches_skimage_rgb() -> None:
    a, b = _pair()
    ref = skimage_metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2
    )
    got = ssim(a, b)
    assert abs(got - ref) < 1e-3
    assert abs(got - ref) < 1e-9  # same formula and window, so agreement is to float rounding
    assert got == pytest.approx(0.8136300, abs=1e-6)  # regression value (equal to scikit-image above)


def test_ssim_matches_skimage_y_with_crop() -> None:
    a, b = _pair()
    ya, yb = rgb_to_y(a.astype(np.float64))[4:-4, 4:-4], rgb_to_y(b.astype(np.float64))[4:-4, 4:-4]
    ref = skimage_metrics.structural_similarity(
        ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    got = ssim(a, b, crop_border=4, y_channel=True)
    assert abs(got - ref) < 1e-3
    assert got == pytest.approx(ref, abs=1e-9)
    assert psnr(a, b, crop_border=4, y_channel=True) != pytest.approx(psnr(a, b))  # the conventions differ


def test_ssim_identity_and_grayscale() -> None:
    a, b = _pair()
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a[..., 0], b[..., 0]) == pytest.approx(
        skimage_metrics.structural_similarity(
            a[..., 0], b[..., 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        ),
        abs=1e-9,
    )


@pytest.mark.parametrize(
    ("a", "b", "kwargs"),
    [
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), {}),
        (np.zeros((8, 8, 3), np.int32), np.zeros((8, 8, 3), np.int32), {}),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), {"crop_border": 4}),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), {"y_channel": True}),
    ],
)
def test_bad_inputs_raise_input_error(a: np.ndarray, b: np.ndarray, kwargs: dict) -> None:
    with pytest.raises(InputError) as info:
        psnr(a, b, **kwargs)
    assert isinstance(info.value, VRRestoreError) and "\n" not in str(info.value)


def test_ssim_needs_a_window() -> None:
    with pytest.raises(InputError):
        ssim(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 3), np.uint8))


def test_psnr_torch_batch() -> None:
    a, b = _pair()
    ta = torch.from_numpy(np.stack([a, a]).transpose(0, 3, 1, 2) / 255.0)
    tb = torch.from_numpy(np.stack([b, a]).transpose(0, 3, 1, 2) / 255.0)
    got = psnr_torch(ta, tb)
    assert got.shape == (2,)
    assert float(got[0]) == pytest.approx(psnr(a, b), abs=1e-4)
    assert math.isinf(float(got[1]))
