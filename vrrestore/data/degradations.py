"""Synthetic degradations that turn an HQ image into a training/evaluation LQ image.

Two families, both written from the published descriptions (no upstream code):

* Faces (CodeFormer's recipe): mixed isotropic/anisotropic Gaussian blur (41x41, random rotation),
  downscale by a random factor, Gaussian noise, JPEG, rescale back to the face size; optional colour
  jitter and grayscale. The LQ has the HQ's size.
* SR: a second-order chain (Real-ESRGAN / BSRGAN style): [blur, random resize, noise, JPEG] twice,
  then a resize to HR / scale. ``bicubic-x*`` is the plain antialiased bicubic downscale;
  ``sr-x4-mix`` replaces the chain by it (sometimes JPEG-compressed) for a quarter of the images.

Both families can keep a share of inputs clean (``clean_prob``: the HQ itself for faces, the plain
bicubic downscale for SR, sometimes lightly JPEG-compressed), so that a model also learns to leave a
good input alone: ``face-mix`` and ``sr-x4-mix``.

Images are (H, W, 3) float32 RGB in [0, 1]. Every random draw comes from
``np.random.default_rng(seed)``, so one (image, recipe, seed) always gives the same bytes; the
global NumPy RNG is never touched. Outputs are rounded to the 8-bit grid, as a saved LQ would be.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

_INTERPS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)

Range = tuple[float, float]


@dataclass(frozen=True)
class FaceRecipe:
    """CodeFormer-style face degradation. Noise is in 8-bit levels (sigma / 255 in [0, 1] units)."""

    blur_sigma: Range = (0.1, 10.0)
    kernel_size: int = 41
    iso_prob: float = 0.5
    downscale: Range = (1.0, 12.0)
    noise: Range = (0.0, 15.0)
    jpeg: Range = (30.0, 90.0)
    color_jitter_prob: float = 0.0
    color_jitter_shift: float = 20.0
    gray_prob: float = 0.0
    # With probability ``clean_prob`` nothing above is applied: the LQ is the HQ itself, JPEG-compressed
    # with probability ``clean_jpeg_prob`` at a quality in ``clean_jpeg``. Trained on degraded faces
    # only, a restorer rewrites a sharp face into its prior's version of it (wax skin, identity drift).
    clean_prob: float = 0.0
    clean_jpeg_prob: float = 0.5
    clean_jpeg: Range = (75.0, 95.0)


@dataclass(frozen=True)
class DegradationPass:
    """One order of the SR chain: blur -> resize -> noise -> JPEG, each with its own probability/range.

    ``resize_probs`` are (up, down, keep); factors are relative to the pass's reference size.
    """

    blur_prob: float = 1.0
    kernel_sizes: tuple[int, int] = (7, 21)
    blur_sigma: Range = (0.2, 3.0)
    iso_prob: float = 0.5
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_up: Range = (1.0, 1.5)
    resize_down: Range = (0.15, 1.0)
    noise: Range = (1.0, 30.0)
    gray_noise_prob: float = 0.4
    jpeg: Range = (30.0, 95.0)


@dataclass(frozen=True)
class SRRecipe:
    """SR degradation: ``passes`` applied in order, then a resize to (H / scale, W / scale).

    The first pass works relative to the HR size, later ones relative to the LR size (as in
    Real-ESRGAN). ``final_resize='bicubic'`` is an antialiased bicubic (MATLAB ``imresize``-like);
    ``'random'`` draws area/bilinear/bicubic.
    """

    scale: int = 4
    passes: tuple[DegradationPass, ...] = field(default_factory=tuple)
    final_resize: str = "random"
    # With probability ``clean_prob`` the passes are skipped: the LR is the antialiased bicubic
    # downscale, JPEG-compressed with probability ``clean_jpeg_prob`` at a quality in ``clean_jpeg``.
    # A model that only ever sees the second-order chain learns to smooth everything, so a clean or
    # lightly compressed photo (what most users upscale) comes out softer than bicubic.
    clean_prob: float = 0.0
    clean_jpeg_prob: float = 0.5
    clean_jpeg: Range = (75.0, 95.0)


Recipe = FaceRecipe | SRRecipe

_FIRST = DegradationPass()
_SECOND = DegradationPass(
    blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_probs=(0.3, 0.4, 0.3), resize_up=(1.0, 1.2),
    resize_down=(0.3, 1.0), noise=(1.0, 25.0),
)

RECIPES: dict[str, Recipe] = {
    "face": FaceRecipe(),
    "face-eval": FaceRecipe(blur_sigma=(1.0, 4.0), downscale=(4.0, 8.0), noise=(0.0, 15.0), jpeg=(60.0, 90.0)),
    "face-mix": FaceRecipe(clean_prob=0.2),
    "face-large": FaceRecipe(blur_sigma=(1.0, 15.0), downscale=(4.0, 30.0), noise=(0.0, 20.0), jpeg=(30.0, 80.0)),
    "sr-x4": SRRecipe(scale=4, passes=(_FIRST, _SECOND)),
    "sr-x4-mix": SRRecipe(scale=4, passes=(_FIRST, _SECOND), clean_prob=0.25),
    "sr-x2": SRRecipe(scale=2, passes=(_FIRST, _SECOND)),
    "bicubic-x4": SRRecipe(scale=4, final_resize="bicubic"),
    "bicubic-x2": SRRecipe(scale=2, final_resize="bicubic"),
}


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A recipe by name (or passed through); unknown names raise ValueError listing the choices."""
    if isinstance(recipe, FaceRecipe | SRRecipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown degradation recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[recipe]


def recipe_scale(recipe: str | Recipe) -> int:
    """How much smaller the LQ is than the HQ: 1 for face recipes, the SR factor otherwise."""
    r = get_recipe(recipe)
    return r.scale if isinstance(r, SRRecipe) else 1


def derive_seed(base: int, *parts: object) -> int:
    """A 63-bit seed from a base seed and labels (a file's relative path, an epoch, an index).

    Hash-based so that seeds do not depend on iteration order or on Python's salted ``hash``.
    """
    text = ":".join([str(int(base)), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


# --------------------------------------------------------------------------------------------------
# Building blocks (public so tests and other recipes can use them one at a time)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> np.ndarray:
    """Normalised (size, size) anisotropic Gaussian with axes rotated by ``theta`` radians."""
    half = (size - 1) / 2.0
    ax = np.arange(size, dtype=np.float64) - half
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy  # coordinates along the kernel's own axes
    v = -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def random_kernel(rng: np.random.Generator, size: int, sigma: Range, iso_prob: float) -> np.ndarray:
    """Isotropic (prob ``iso_prob``) or anisotropic rotated Gaussian with sigmas drawn from ``sigma``."""
    if rng.random() < iso_prob:
        s = rng.uniform(*sigma)
        return gaussian_kernel(size, s, s)
    sx, sy = rng.uniform(*sigma), rng.uniform(*sigma)
    return gaussian_kernel(size, sx, sy, rng.uniform(-math.pi, math.pi))


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def resize(img: np.ndarray, width: int, height: int, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    return cv2.resize(img, (max(1, int(width)), max(1, int(height))), interpolation=interp)


def bicubic_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased bicubic (a = -0.5, kernel widened by the downscale factor), like MATLAB imresize."""
    out = img
    for axis, new in ((0, height), (1, width)):
        out = _resample_axis(out, new, axis)
    return out.astype(np.float32)


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def _resample_axis(img: np.ndarray, new: int, axis: int) -> np.ndarray:
    old = img.shape[axis]
    if new == old:
        return img
    scale = new / old
    width = 4.0 / scale if scale < 1 else 4.0
    centers = (np.arange(new) + 0.5) / scale - 0.5
    left = np.floor(centers - width / 2).astype(int) + 1
    taps = int(math.ceil(width)) + 1
    idx = left[:, None] + np.arange(taps)[None]
    dist = centers[:, None] - idx
    w = _cubic(dist * scale) * scale if scale < 1 else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    idx = np.clip(idx, 0, old - 1)  # replicate the border
    moved = np.moveaxis(img, axis, 0).astype(np.float64)
    out = np.einsum("nt,nt...->n...", w, moved[idx])
    return np.moveaxis(out, 0, axis)


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator, gray: bool = False) -> np.ndarray:
    """Additive N(0, sigma) noise, ``sigma`` in [0, 1] units; ``gray`` uses one field for all channels."""
    shape = img.shape[:2] + (1,) if gray else img.shape
    noise = rng.standard_normal(shape).astype(np.float32) * np.float32(sigma)
    return np.clip(img + noise, 0.0, 1.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through OpenCV's JPEG codec at ``quality`` (RGB in, RGB out)."""
    bgr = np.ascontiguousarray(to_uint8(img)[..., ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:  # pragma: no cover - cv2 only fails on empty images
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def quantize8(img: np.ndarray) -> np.ndarray:
    """Round to the 8-bit grid (what saving the LQ as PNG would do)."""
    return to_uint8(img).astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------------
# Recipes


def _clean_share(clean: Callable[[], np.ndarray], r: Recipe, rng: np.random.Generator) -> np.ndarray | None:
    """With probability ``r.clean_prob`` the clean LQ (``clean()``), sometimes JPEG-compressed; else
    None. Nothing is drawn when clean_prob is 0, so recipes without a clean share keep their bytes."""
    if r.clean_prob <= 0 or rng.random() >= r.clean_prob:
        return None
    img = clean()
    if rng.random() < r.clean_jpeg_prob:
        img = jpeg(img, int(rng.integers(int(r.clean_jpeg[0]), int(r.clean_jpeg[1]) + 1)))
    return img


def _degrade_face(hq: np.ndarray, r: FaceRecipe, rng: np.random.Generator) -> np.ndarray:
    h, w = hq.shape[:2]
    if (clean := _clean_share(lambda: hq, r, rng)) is not None:
        return clean
    img = blur(hq, random_kernel(rng, r.kernel_size, r.blur_sigma, r.iso_prob))
    f = rng.uniform(*r.downscale)
    img = resize(img, round(w / f), round(h / f), cv2.INTER_LINEAR)
    img = add_gaussian_noise(img, rng.uniform(*r.noise) / 255.0, rng)
    img = jpeg(img, int(rng.integers(int(r.jpeg[0]), int(r.jpeg[1]) + 1)))
    img = resize(img, w, h, cv2.INTER_LINEAR)
    if rng.random() < r.color_jitter_prob:
        shift = rng.uniform(-r.color_jitter_shift, r.color_jitter_shift, size=3).astype(np.float32) / 255.0
        img = np.clip(img + shift, 0.0, 1.0)
    if rng.random() < r.gray_prob:
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        img = np.repeat(gray[..., None], 3, axis=2)
    return img


def _apply_pass(img: np.ndarray, p: DegradationPass, ref_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    if rng.random() < p.blur_prob:
        size = int(rng.integers(p.kernel_sizes[0] // 2, p.kernel_sizes[1] // 2 + 1)) * 2 + 1
        img = blur(img, random_kernel(rng, size, p.blur_sigma, p.iso_prob))
    mode = rng.choice(3, p=np.asarray(p.resize_probs) / sum(p.resize_probs))
    factor = rng.uniform(*p.resize_up) if mode == 0 else rng.uniform(*p.resize_down) if mode == 1 else 1.0
    interp = _INTERPS[int(rng.integers(len(_INTERPS)))]
    img = resize(img, max(2, round(ref_hw[1] * factor)), max(2, round(ref_hw[0] * factor)), interp)
    img = add_gaussian_noise(img, rng.uniform(*p.noise) / 255.0, rng, gray=bool(rng.random() < p.gray_noise_prob))
    return jpeg(img, int(rng.integers(int(p.jpeg[0]), int(p.jpeg[1]) + 1)))


def _degrade_sr(hq: np.ndarray, r: SRRecipe, rng: np.random.Generator) -> np.ndarray:
    h, w = hq.shape[:2]
    if h % r.scale or w % r.scale:
        raise ValueError(f"image size {w}x{h} is not a multiple of the SR scale {r.scale}; crop it first")
    lh, lw = h // r.scale, w // r.scale
    if (clean := _clean_share(lambda: bicubic_resize(hq, lw, lh), r, rng)) is not None:
        return clean
    img = hq
    for i, p in enumerate(r.passes):
        img = _apply_pass(img, p, (h, w) if i == 0 else (lh, lw), rng)
    if r.final_resize == "bicubic":
        return bicubic_resize(img, lw, lh)
    return resize(img, lw, lh, _INTERPS[int(rng.integers(len(_INTERPS)))])


def degrade(hq: np.ndarray, recipe: str | Recipe, seed: int) -> np.ndarray:
    """Degrade an (H, W, 3) float32 RGB image in [0, 1]; the same seed gives the same output.

    Face recipes return hq's size; SR recipes return (H / scale, W / scale) (sides must divide).
    """
    if hq.ndim != 3 or hq.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {tuple(hq.shape)}")
    r = get_recipe(recipe)
    rng = np.random.default_rng(int(seed))
    img = np.ascontiguousarray(hq, dtype=np.float32)
    out = _degrade_face(img, r, rng) if isinstance(r, FaceRecipe) else _degrade_sr(img, r, rng)
    return quantize8(out)
