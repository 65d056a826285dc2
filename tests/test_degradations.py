"""Degradations: reproducible by seed, right sizes, and each step changes the image the expected way."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vrrestore.data import RECIPES, FaceRecipe, SRRecipe, degrade, derive_seed, get_recipe, recipe_scale
from vrrestore.data.degradations import (
    add_gaussian_noise,
    bicubic_resize,
    blur,
    gaussian_kernel,
    jpeg,
    quantize8,
    random_kernel,
)


def textured(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth colour field + sharp edges + fine texture, in [0, 1] (has energy at all frequencies)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 4)
    img = (img - img.min()) / (img.max() - img.min()) * 0.6 + 0.2
    img[h // 4 : h // 2, w // 4 : 3 * w // 4] = (0.9, 0.1, 0.3)
    img += (rng.random((h, w, 3)).astype(np.float32) - 0.5) * 0.1
    return np.clip(img, 0, 1).astype(np.float32)


def high_freq_energy(img: np.ndarray) -> float:
    g = img.mean(axis=2)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(g - g.mean()))) ** 2
    h, w = g.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    return float(spec[r > min(h, w) / 4].sum() / spec.sum())


def blockiness(img: np.ndarray) -> float:
    """Mean |step| across 8x8 block borders divided by the mean |step| inside blocks (1 = no blocking)."""
    g = img.mean(axis=2).astype(np.float64)
    d = np.abs(np.diff(g, axis=1))
    cols = np.arange(d.shape[1])
    border = d[:, cols % 8 == 7].mean()
    inner = d[:, cols % 8 != 7].mean()
    return float(border / inner)


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_is_reproducible_and_sized(name: str) -> None:
    hq = textured(64, 64)
    a = degrade(hq, name, seed=7)
    b = degrade(hq, name, seed=7)
    c = degrade(hq, name, seed=8)
    s = recipe_scale(name)
    assert a.shape == (64 // s, 64 // s, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.allclose(a * 255, np.rint(a * 255), atol=1e-3)  # on the 8-bit grid, like a saved PNG
    if not name.startswith("bicubic"):  # bicubic is deterministic by design
        assert not np.array_equal(a, c)


def test_degrade_leaves_global_numpy_rng_alone() -> None:
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    degrade(textured(), "face", seed=1)
    degrade(textured(), "sr-x4", seed=1)
    assert np.random.random() == expected


def test_recipe_table_and_scales() -> None:
    assert recipe_scale("face") == recipe_scale("face-eval") == 1
    assert recipe_scale("sr-x4") == recipe_scale("bicubic-x4") == 4
    assert recipe_scale("sr-x2") == recipe_scale("bicubic-x2") == 2
    face, ev = get_recipe("face"), get_recipe("face-eval")
    assert isinstance(face, FaceRecipe) and face.blur_sigma == (0.1, 10.0) and face.downscale == (1.0, 12.0)
    assert face.noise == (0.0, 15.0) and face.jpeg == (30.0, 90.0) and face.kernel_size == 41
    assert ev.blur_sigma == (1.0, 4.0) and ev.downscale == (4.0, 8.0) and ev.noise == (0.0, 15.0) and ev.jpeg == (60.0, 90.0)
    sr = get_recipe("sr-x4")
    assert isinstance(sr, SRRecipe) and len(sr.passes) == 2  # second order
    with pytest.raises(ValueError, match="unknown degradation recipe"):
        get_recipe("nope")


def test_sr_mix_is_the_blind_chain_or_clean_bicubic() -> None:
    """sr-x4-mix: a quarter clean (the antialiased bicubic LR, half of it JPEG-compressed), the rest
    the blind chain; a clean_prob of 0 draws nothing extra, so sr-x4 keeps its bytes."""
    hq = textured(64, 64)
    bic = degrade(hq, "bicubic-x4", seed=0)
    blind = get_recipe("sr-x4")
    assert blind.clean_prob == 0.0 and get_recipe("sr-x4-mix").clean_prob == 0.25
    assert np.array_equal(degrade(hq, SRRecipe(scale=4, passes=blind.passes), seed=3), degrade(hq, "sr-x4", seed=3))
    assert np.array_equal(degrade(hq, SRRecipe(scale=4, passes=blind.passes, clean_prob=1.0, clean_jpeg_prob=0.0), seed=3), bic)
    jpegged = degrade(hq, SRRecipe(scale=4, passes=blind.passes, clean_prob=1.0, clean_jpeg_prob=1.0), seed=3)
    assert 0 < np.abs(jpegged - bic).mean() < 0.05  # quality 75-95: close to the clean LR, not equal
    kinds = {"bicubic": 0, "jpeg": 0, "blind": 0}
    for seed in range(400):
        out = degrade(hq, "sr-x4-mix", seed=seed)
        d = np.abs(out - bic).mean()
        kinds["bicubic" if d == 0 else "jpeg" if d < 0.05 else "blind"] += 1
    assert 70 <= kinds["bicubic"] + kinds["jpeg"] <= 130 and 25 <= kinds["bicubic"] <= 75, kinds


def test_face_mix_keeps_a_fifth_of_the_faces_clean() -> None:
    """face-mix: a fifth of the LQ faces are the HQ itself (half of those JPEG q75-95), the rest the
    blind face chain with the 'face' recipe's ranges; a clean_prob of 0 keeps 'face' byte for byte."""
    hq = quantize8(textured())
    face = get_recipe("face")
    assert isinstance(face, FaceRecipe) and face.clean_prob == 0.0
    assert np.array_equal(degrade(hq, FaceRecipe(), seed=4), degrade(hq, "face", seed=4))
    assert np.array_equal(degrade(hq, FaceRecipe(clean_prob=1.0, clean_jpeg_prob=0.0), seed=4), hq)
    jpegged = degrade(hq, FaceRecipe(clean_prob=1.0, clean_jpeg_prob=1.0), seed=4)
    assert jpegged.shape == hq.shape and 0 < np.abs(jpegged - hq).mean() < 0.05
    kinds = {"clean": 0, "jpeg": 0, "blind": 0}
    for seed in range(400):
        d = np.abs(degrade(hq, "face-mix", seed=seed) - hq).mean()
        kinds["clean" if d == 0 else "jpeg" if d < 0.03 else "blind"] += 1
    assert 55 <= kinds["clean"] + kinds["jpeg"] <= 105 and 20 <= kinds["clean"] <= 60, kinds


def test_custom_recipe_dataclass_is_accepted() -> None:
    r = FaceRecipe(blur_sigma=(2.0, 2.0), downscale=(2.0, 2.0), noise=(0.0, 0.0), jpeg=(95, 95))
    out = degrade(textured(), r, seed=0)
    assert out.shape == (64, 64, 3)


def test_sr_needs_sizes_divisible_by_scale() -> None:
    with pytest.raises(ValueError, match="multiple of the SR scale"):
        degrade(textured(62, 64), "bicubic-x4", seed=0)


def test_blur_lowers_high_frequency_energy() -> None:
    hq = textured()
    k = gaussian_kernel(41, 2.0, 2.0)
    assert k.shape == (41, 41) and abs(k.sum() - 1) < 1e-5
    assert high_freq_energy(blur(hq, k)) < 0.2 * high_freq_energy(hq)
    # anisotropic kernel: blurs along its long axis only (theta = 0 -> x axis)
    aniso = gaussian_kernel(41, 6.0, 0.3)
    out = blur(hq, aniso)
    gx = np.abs(np.diff(out, axis=1)).mean() / np.abs(np.diff(hq, axis=1)).mean()
    gy = np.abs(np.diff(out, axis=0)).mean() / np.abs(np.diff(hq, axis=0)).mean()
    assert gx < 0.5 * gy
    # random kernels from one generator state are the same
    assert np.array_equal(random_kernel(np.random.default_rng(3), 41, (0.1, 10), 0.5), random_kernel(np.random.default_rng(3), 41, (0.1, 10), 0.5))


def test_jpeg_adds_8x8_blocking() -> None:
    hq = textured(64, 64)
    before = blockiness(hq)
    after = blockiness(jpeg(hq, 10))
    assert abs(before - 1.0) < 0.15
    assert after > before + 0.3


def test_noise_raises_variance_by_sigma_squared() -> None:
    flat = np.full((128, 128, 3), 0.5, np.float32)
    noisy = add_gaussian_noise(flat, 10 / 255, np.random.default_rng(0))
    assert flat.var() == 0
    assert abs(noisy.std() - 10 / 255) < 0.05 * 10 / 255
    gray = add_gaussian_noise(flat, 10 / 255, np.random.default_rng(0), gray=True)
    assert np.array_equal(gray[..., 0], gray[..., 1])  # one field for all channels


def test_face_recipe_degrades_toward_lower_detail() -> None:
    hq = textured(64, 64)
    lq = degrade(hq, "face-eval", seed=3)  # >= x4 downscale and sigma >= 1 blur
    assert high_freq_energy(lq) < high_freq_energy(hq)
    assert np.abs(lq - hq).mean() > 0.01


def test_color_jitter_and_gray_options() -> None:
    hq = textured()
    gray = degrade(hq, FaceRecipe(gray_prob=1.0), seed=0)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    base = FaceRecipe(blur_sigma=(0.1, 0.1), downscale=(1, 1), noise=(0, 0), jpeg=(100, 100))
    shifted = degrade(hq, FaceRecipe(**{**base.__dict__, "color_jitter_prob": 1.0, "color_jitter_shift": 20.0}), seed=0)
    plain = degrade(hq, base, seed=0)
    assert 0.005 < np.abs((shifted - plain).mean(axis=(0, 1))).max() <= 20 / 255 + 1e-6


def test_bicubic_matches_area_average_on_constant_and_halves_linear_ramp() -> None:
    const = np.full((16, 16, 3), 0.25, np.float32)
    assert np.allclose(bicubic_resize(const, 4, 4), 0.25, atol=1e-6)
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None], (8, 1, 3))
    out = bicubic_resize(ramp, 16, 8)
    assert np.all(np.diff(out[4, 2:-2, 0]) > 0)  # monotone stays monotone
    assert abs(out[4, 8, 0] - ramp[4, 16:18, 0].mean()) < 0.01


def test_derive_seed_is_stable_and_order_free() -> None:
    assert derive_seed(0, "a/b.png") == derive_seed(0, "a/b.png")
    assert derive_seed(0, "a/b.png") != derive_seed(1, "a/b.png") != derive_seed(0, "a/c.png")
    assert derive_seed(5, "x") == 5150226655995758372  # pinned: changing it changes every dataset
