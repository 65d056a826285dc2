"""FFHQ-style face alignment, its inverse, and feathered paste-back.

A face's 5 landmarks are fitted to the FFHQ 5-point template at the model's face size with a similarity
transform (rotation, uniform scale, translation; robust LMEDS fit). The crop is warped with that
transform; the restored crop is warped back with its inverse and blended through a mask that is the
crop square eroded by 5 % of its side and Gaussian-blurred proportionally (facexlib's recipe, built in
crop space so it turns with the face). Pixels outside the warped mask are never touched.

Coordinates follow OpenCV: pixel (i, j) has its centre at x = j, y = i.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],  # left eye
        [318.90277, 240.1936],  # right eye
        [256.63416, 314.01935],  # nose tip
        [201.26117, 371.41043],  # left mouth corner
        [313.08905, 371.15118],  # right mouth corner
    ],
    dtype=np.float64,
)
EDGE_FRACTION = 0.05  # erosion of the paste mask, as a fraction of the crop side
BORDER_GRAY = (132, 133, 135)  # RGB fill where a crop leaves the image (facexlib's constant)


def face_template(size: int) -> np.ndarray:
    """The FFHQ 5-point template (5, 2) for a ``size`` x ``size`` crop."""
    return FFHQ_TEMPLATE_512 * (size / 512.0)


def _similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity src -> dst (Umeyama without reflection); fallback when LMEDS gives up."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s**2).sum()
    if var < 1e-12:
        raise ValueError("degenerate landmarks: all points coincide")
    a = (s * d).sum() / var  # s*cos
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / var  # s*sin
    lin = np.array([[a, -b], [b, a]])
    return np.hstack([lin, (mu_d - lin @ mu_s)[:, None]])


def estimate_affine(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) similarity mapping image coordinates to the aligned ``size`` crop."""
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    dst = face_template(size)
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if m is None or not np.isfinite(m).all() or abs(np.linalg.det(m[:, :2])) < 1e-9:
        m = _similarity_lstsq(src, dst)
    return m.astype(np.float64)


def affine_scale(m: np.ndarray) -> float:
    """Uniform scale of a similarity (destination pixels per source pixel)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(m)[:, :2]))))


def _antialias_sigma(scale: float) -> float:
    """Gaussian sigma (source pixels) to blur before shrinking by ``scale`` < 1; 0 if not shrinking.

    Deliberately mild (0.3 instead of the textbook 0.5): a stronger blur visibly softens pasted faces
    (identity round trip on astronaut: p99 error 8 -> 15 levels), a weaker one lets hair alias.
    """
    return 0.0 if scale >= 0.8 else 0.3 * float(np.sqrt(max(1.0 / scale**2 - 1.0, 0.0)))


def _roi(corners: np.ndarray, h: int, w: int, pad: int) -> tuple[int, int, int, int] | None:
    x0 = max(int(np.floor(corners[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(corners[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + pad + 1, w)
    y1 = min(int(np.ceil(corners[:, 1].max())) + pad + 1, h)
    return None if x0 >= x1 or y0 >= y1 else (x0, y0, x1, y1)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _square(size: int) -> np.ndarray:
    e = -0.5, size - 0.5
    return np.array([[e[0], e[0]], [e[1], e[0]], [e[1], e[1]], [e[0], e[1]]], dtype=np.float64)


def warp_face(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """The aligned ``size`` x ``size`` crop of ``image`` (H, W, C) under ``m``; float32 stays float32.

    Works on the region of the image the crop sees (fast on big photos), blurs it first when the crop
    shrinks the face (no aliasing), and fills the part of the crop outside the photo by reflection.
    """
    h, w = image.shape[:2]
    inv = cv2.invertAffineTransform(m)
    scale = affine_scale(m)
    sigma = _antialias_sigma(scale)
    roi = _roi(_apply(inv, _square(size)), h, w, pad=4 + int(np.ceil(3 * sigma)))
    if roi is None:  # crop entirely outside the image: nothing to see
        fill = np.asarray(BORDER_GRAY, dtype=np.float32) / (255.0 if image.dtype != np.uint8 else 1.0)
        return np.broadcast_to(fill[: image.shape[2]], (size, size, image.shape[2])).astype(image.dtype)
    x0, y0, x1, y1 = roi
    src = image[y0:y1, x0:x1]
    if sigma > 0:
        src = cv2.GaussianBlur(src, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    m_roi = m.copy()
    m_roi[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    # the roi reaches the image border wherever the crop leaves the image, so reflection happens there
    border = cv2.BORDER_REFLECT_101 if (x1 - x0 > 1 and y1 - y0 > 1) else cv2.BORDER_REPLICATE
    out = cv2.warpAffine(src, m_roi, (size, size), flags=cv2.INTER_CUBIC, borderMode=border)
    if out.ndim == 2:
        out = out[:, :, None]
    if out.dtype == np.float32:
        np.clip(out, 0.0, 1.0, out=out)
    return out


@lru_cache(maxsize=8)
def crop_mask(size: int, edge: float = EDGE_FRACTION) -> np.ndarray:
    """Paste mask in crop space (size, size) float32: the square eroded by ``edge * size`` and blurred
    with sigma 0.3 * edge * size, so it is 0 at the crop border and 1 from about 1.6 * edge inside."""
    margin = max(1, round(edge * size))
    mask = np.zeros((size, size), dtype=np.float32)
    mask[margin : size - margin, margin : size - margin] = 1.0
    sigma = max(0.3 * edge * size, 0.5)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    mask[[0, -1], :] = 0.0
    mask[:, [0, -1]] = 0.0
    mask.setflags(write=False)
    return mask


def paste_affine(m: np.ndarray, scale: float) -> np.ndarray:
    """(2, 3) map from crop pixels to the output image, which is the input resized by ``scale``
    (pixel centres follow cv2.resize: x_out = scale * x_in + (scale - 1) / 2)."""
    inv = cv2.invertAffineTransform(np.asarray(m, dtype=np.float64))
    out = inv * scale
    out[:, 2] += (scale - 1.0) / 2.0
    return out


def paste_face(canvas: np.ndarray, face: np.ndarray, m: np.ndarray, scale: float = 1.0, edge: float = EDGE_FRACTION) -> None:
    """Blend one restored crop ``face`` (S, S, C) float32 into ``canvas`` (H, W, C) float32 in place.

    ``m`` is the image -> crop transform used to cut the face from the input; ``canvas`` is that input
    resized by ``scale``.
    """
    size = face.shape[0]
    h, w = canvas.shape[:2]
    p = paste_affine(m, scale)
    roi = _roi(_apply(p, _square(size)), h, w, pad=2)
    if roi is None:
        return
    x0, y0, x1, y1 = roi
    p_roi = p.copy()
    p_roi[:, 2] -= (x0, y0)
    k = affine_scale(p)  # output pixels per crop pixel
    sigma = _antialias_sigma(k)
    src = cv2.GaussianBlur(face, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101) if sigma > 0 else face
    dsize = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(src, p_roi, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(crop_mask(size, edge), p_roi, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if warped.ndim == 2:
        warped = warped[:, :, None]
    region = canvas[y0:y1, x0:x1]
    mask = mask[:, :, None]
    region += mask * (warped - region)


def paste_faces(background: np.ndarray, faces: list[np.ndarray], affines: list[np.ndarray], scale: float = 1.0) -> np.ndarray:
    """Copy of ``background`` (float32, the input resized by ``scale``) with every face pasted in turn."""
    out = np.array(background, dtype=np.float32, copy=True)
    for face, m in zip(faces, affines, strict=True):
        paste_face(out, np.asarray(face, dtype=np.float32), m, scale)
    np.clip(out, 0.0, 1.0, out=out)
    return out
