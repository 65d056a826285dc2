"""FFHQ alignment, its inverse, and feathered paste-back, on synthetic geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vrrestore.face.align import (
    FFHQ_TEMPLATE_512,
    affine_scale,
    crop_mask,
    estimate_affine,
    face_template,
    paste_affine,
    paste_face,
    paste_faces,
    warp_face,
)


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_template_values_and_scaling():
    assert FFHQ_TEMPLATE_512[0].tolist() == pytest.approx([192.98138, 239.94708])
    assert FFHQ_TEMPLATE_512[4].tolist() == pytest.approx([313.08905, 371.15118])
    np.testing.assert_allclose(face_template(256), FFHQ_TEMPLATE_512 / 2)
    np.testing.assert_allclose(face_template(64), FFHQ_TEMPLATE_512 / 8)


@pytest.mark.parametrize("size", [64, 256, 512])
def test_estimate_affine_recovers_a_known_similarity(size):
    to_image = similarity(12.0, 0.35, 140.0, 60.0)  # template (crop) -> image
    landmarks = apply(to_image, face_template(size) / (size / 512))
    m = estimate_affine(landmarks, size)
    np.testing.assert_allclose(apply(m, landmarks), face_template(size), atol=1e-3 * size / 64)
    assert affine_scale(m) == pytest.approx(size / 512 / 0.35, rel=1e-4)


def test_estimate_affine_is_robust_to_one_bad_landmark():
    landmarks = apply(similarity(-8.0, 0.5, 50.0, 90.0), FFHQ_TEMPLATE_512)
    landmarks[2] += (25.0, -18.0)  # the nose is way off
    m = estimate_affine(landmarks, 512)
    good = [0, 1, 3, 4]
    assert np.abs(apply(m, landmarks[good]) - FFHQ_TEMPLATE_512[good]).max() < 1.0


def test_estimate_affine_rejects_degenerate_points():
    with pytest.raises(ValueError, match="degenerate"):
        estimate_affine(np.full((5, 2), 10.0), 512)


def test_warp_face_with_a_pure_shift_is_an_exact_crop():
    rng = np.random.default_rng(0)
    img = rng.random((120, 160, 3), dtype=np.float32)
    m = np.array([[1.0, 0.0, -30.0], [0.0, 1.0, -20.0]])  # crop origin at image (30, 20)
    crop = warp_face(img, m, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.float32
    np.testing.assert_allclose(crop, img[20:84, 30:94], atol=1e-5)


def test_warp_face_antialiases_when_shrinking():
    yy, xx = np.mgrid[:800, :800]
    checker = (((yy // 2) + (xx // 2)) % 2).astype(np.float32)
    img = np.repeat(checker[:, :, None], 3, axis=2)
    crop = warp_face(img, similarity(0.0, 0.2, -20.0, -20.0), 64)  # 5x smaller
    assert abs(float(crop.mean()) - 0.5) < 0.03
    assert float(crop.std()) < 0.05  # an aliased 2 px checker would come out as stripes (std ~0.3+)


def test_warp_face_fills_outside_the_photo_by_reflection():
    img = np.full((100, 100, 3), 0.7, np.float32)
    crop = warp_face(img, np.array([[1.0, 0.0, 40.0], [0.0, 1.0, 40.0]]), 80)  # crop origin at (-40, -40)
    np.testing.assert_allclose(crop, 0.7, atol=1e-5)
    assert warp_face(img, np.array([[1.0, 0.0, 1000.0], [0.0, 1.0, 0.0]]), 16).shape == (16, 16, 3)


def test_crop_mask_is_feathered_and_zero_at_the_border():
    size = 512
    mask = crop_mask(size)
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert mask[0].max() == 0 and mask[:, -1].max() == 0
    assert mask[size // 2, size // 2] == pytest.approx(1.0)
    row = mask[size // 2, : size // 2]
    assert (np.diff(row) >= -1e-6).all()  # rises monotonically from the edge
    assert row[int(0.05 * size)] == pytest.approx(0.5, abs=0.05)  # half-way at the erosion line
    assert row[int(0.10 * size)] > 0.99 and row[2] < 0.01
    assert np.abs(np.diff(row)).max() < 0.06  # no hard edge: at most 6 % per pixel at 512
    np.testing.assert_allclose(mask, mask.T, atol=1e-6)
    small = crop_mask(64)[32]  # face-tiny: same shape, a few pixels wide
    assert small[0] == 0 and small[1] < 0.1 and small[2] < 0.5 < small[3] and small[6] > 0.99


def test_paste_face_touches_only_the_warped_square_and_has_no_hard_edge():
    canvas = np.zeros((300, 300, 3), np.float32)
    m = estimate_affine(apply(similarity(20.0, 0.3, 90.0, 70.0), FFHQ_TEMPLATE_512), 128)
    before = canvas.copy()
    out = paste_faces(canvas, [np.ones((128, 128, 3), np.float32)], [m])
    np.testing.assert_array_equal(canvas, before)  # paste_faces works on a copy
    square = apply(cv2.invertAffineTransform(m), np.array([[-0.5, -0.5], [127.5, -0.5], [127.5, 127.5], [-0.5, 127.5]]))
    footprint = np.zeros((300, 300), np.uint8)
    cv2.fillConvexPoly(footprint, np.round(square).astype(np.int32), 1)
    footprint = cv2.dilate(footprint, np.ones((3, 3), np.uint8))
    assert out[..., 0][footprint == 0].max() == 0.0  # nothing outside the face square changes
    centre = apply(cv2.invertAffineTransform(m), np.array([[64.0, 64.0]]))[0]
    assert out[round(centre[1]), round(centre[0])].min() == pytest.approx(1.0, abs=1e-4)
    gy, gx = np.gradient(out[..., 0])
    side = 128 / affine_scale(m)  # 154 image pixels
    # a Gaussian-blurred step with sigma 1.5 % of the face side rises at most 1 / (sigma sqrt(2 pi)) per pixel
    assert np.hypot(gx, gy).max() < 1.1 / (0.015 * side * np.sqrt(2 * np.pi)) < 0.2


def test_paste_affine_matches_resize_pixel_centres():
    m = similarity(0.0, 2.0, -100.0, -50.0)  # image -> crop
    for scale in (1, 2, 4):
        p = paste_affine(m, scale)
        crop_pt = apply(m, np.array([[70.0, 40.0]]))
        np.testing.assert_allclose(apply(p, crop_pt)[0], np.array([70.0, 40.0]) * scale + (scale - 1) / 2, atol=1e-9)


def test_paste_into_an_upscaled_canvas_lands_where_resize_puts_the_face():
    img = np.zeros((200, 200, 3), np.float32)
    cv2.circle(img, (90, 110), 12, (1.0, 1.0, 1.0), -1)
    m = np.array([[2.0, 0.0, 31.5 - 180.0], [0.0, 2.0, 31.5 - 220.0]])  # 64 px crop centred on (90, 110)
    face = warp_face(img, m, 64)
    canvas = np.zeros((600, 600, 3), np.float32)
    paste_face(canvas, face, m, scale=3.0)
    ys, xs = np.nonzero(canvas[..., 0] > 0.5)
    assert xs.mean() == pytest.approx(90 * 3 + 1, abs=0.3) and ys.mean() == pytest.approx(110 * 3 + 1, abs=0.3)
