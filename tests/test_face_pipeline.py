"""Face pipeline with stand-in restorers (identity, negative, recorder) on real photos from scikit-image."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch
from torch import nn

from vrrestore.errors import UsageError
from vrrestore.face.align import estimate_affine
from vrrestore.models.descriptor import ModelDescriptor
from vrrestore.pipelines.face import FaceOptions, FacePipeline, comparison, is_near_gray, resize_background


pytestmark = pytest.mark.usefixtures("yuface_one_omp_thread")

skdata = pytest.importorskip("skimage.data")
pytest.importorskip("yuface")


class StandIn(nn.Module):
    """A FaceRestorer-shaped module: (B, 3, S, S), fidelity -> (B, 3, S, S); records its calls."""

    def __init__(self, fn=lambda x: x) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the descriptor a device
        self.fn = fn
        self.calls: list[tuple[tuple[int, ...], object]] = []

    def forward(self, x: torch.Tensor, fidelity=0.5) -> torch.Tensor:
        self.calls.append((tuple(x.shape), fidelity))
        return self.fn(x)


def descriptor(module: nn.Module, size: int = 512) -> ModelDescriptor:
    return ModelDescriptor(module, task="face", architecture="StandIn", head="none", scale=1, size_multiple=1, fixed_size=size, tiling=None)


@pytest.fixture(scope="module")
def detector():
    from vrrestore.face.detect import make_detector

    return make_detector("yuface")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut().astype(np.float32) / 255.0


def square_footprint(m: np.ndarray, size: int, hw: tuple[int, int], scale: float = 1.0, grow: int = 2) -> np.ndarray:
    """Output pixels the pasted crop square can touch (the crop square mapped back, grown by a few px)."""
    inv = cv2.invertAffineTransform(m)
    e = size - 0.5
    pts = np.array([[-0.5, -0.5], [e, -0.5], [e, e], [-0.5, e]]) @ inv[:, :2].T + inv[:, 2]
    pts = pts * scale + (scale - 1) / 2
    mask = np.zeros(hw, np.uint8)
    cv2.fillConvexPoly(mask, np.round(pts).astype(np.int32), 1)
    return cv2.dilate(mask, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)).astype(bool)


def test_identity_restorer_returns_the_input(detector, astronaut):
    model = StandIn()
    res = FacePipeline(descriptor(model), detector, FaceOptions(upscale=1)).run(astronaut)
    assert len(res.faces) == 1 and res.detected == 1 and not res.gray
    assert res.crops[0].shape == (512, 512, 3) and model.calls == [((1, 3, 512, 512), 0.5)]
    diff = np.abs(res.image - astronaut).max(axis=2) * 255
    touched = square_footprint(res.affines[0], 512, astronaut.shape[:2])
    assert diff[~touched].max() == 0.0  # outside the pasted square: bit-identical
    x1, y1, x2, y2 = res.faces[0].box.astype(int)
    inside = diff[y1:y2, x1:x2]
    # measured: face box mean 1.9, p99 9 levels of 255 (cubic up-warp, mildly anti-aliased linear down-warp)
    assert inside.mean() < 3.0 and np.percentile(inside, 99) < 15 and diff.max() < 60
    assert diff[touched].mean() < 2.0  # measured 1.4


def test_identity_with_upscale_matches_the_resized_background(detector, astronaut):
    res = FacePipeline(descriptor(StandIn()), detector, FaceOptions(upscale=2)).run(astronaut)
    bg = resize_background(astronaut, 2)
    assert res.image.shape == (1024, 1024, 3)
    diff = np.abs(res.image - bg).max(axis=2) * 255
    touched = square_footprint(res.affines[0], 512, (1024, 1024), scale=2.0)
    assert diff[~touched].max() == 0.0
    assert diff[touched].mean() < 1.5 and diff.max() < 40  # measured 0.8 and 28


def test_two_faces_are_restored_in_one_batch(detector, astronaut):
    pair = np.concatenate([astronaut, astronaut], axis=1)  # 512 x 1024, the same face twice
    model = StandIn(lambda x: 1.0 - x)
    res = FacePipeline(descriptor(model, 256), detector, FaceOptions(upscale=1, fidelity=0.8)).run(pair)
    assert len(res.faces) == 2
    assert model.calls == [((2, 3, 256, 256), 0.8)]  # both faces, one forward pass, fidelity passed on
    for f in res.faces:
        cx, cy = f.center.astype(int)
        patch = (slice(cy - 10, cy + 10), slice(cx - 10, cx + 10))
        assert np.abs(res.image[patch] - (1.0 - pair[patch])).mean() < 0.05  # restored (negated) here
    np.testing.assert_array_equal(res.image[400:], pair[400:])  # below the faces: untouched
    assert {round(float(f.center[0])) // 512 for f in res.faces} == {0, 1}


def test_batches_span_images_and_respect_batch_size(detector, astronaut):
    model = StandIn()
    pipe = FacePipeline(descriptor(model, 64), detector, FaceOptions(upscale=1))
    results = pipe.run_many([astronaut, astronaut[:, ::-1].copy()])
    assert [len(r.faces) for r in results] == [1, 1]
    assert model.calls == [((2, 3, 64, 64), 0.5)]  # one forward for the faces of both images
    model.calls.clear()
    pipe.options.batch_size = 1
    pipe.run_many([astronaut, astronaut])
    assert [c[0][0] for c in model.calls] == [1, 1]


def test_no_face_is_copied_through(detector):
    coffee = skdata.coffee().astype(np.float32) / 255.0
    model = StandIn()
    res = FacePipeline(descriptor(model), detector, FaceOptions(upscale=1)).run(coffee)
    assert res.faces == [] and res.detected == 0 and model.calls == []
    np.testing.assert_array_equal(res.image, coffee)
    res2 = FacePipeline(descriptor(model), detector, FaceOptions(upscale=3)).run(coffee)
    np.testing.assert_array_equal(res2.image, resize_background(coffee, 3))


def test_gray_photo_stays_gray(detector):
    cam = np.repeat(skdata.camera()[:, :, None], 3, axis=2).astype(np.float32) / 255.0
    assert is_near_gray(cam) and not is_near_gray(skdata.astronaut().astype(np.float32) / 255)
    reddish = StandIn(lambda x: torch.cat([x[:, :1] * 0 + 1.0, x[:, 1:]], dim=1))  # paints faces red
    res = FacePipeline(descriptor(reddish, 128), detector, FaceOptions(upscale=1)).run(cam)
    assert res.gray and len(res.faces) == 1
    out = res.image
    assert np.abs(out[..., 0] - out[..., 1]).max() < 1e-6 and np.abs(out[..., 1] - out[..., 2]).max() < 1e-6
    r = res.restored[0]
    assert np.abs(r[..., 0] - r[..., 2]).max() < 1e-6
    cx, cy = res.faces[0].center.astype(int)
    assert not np.allclose(out[cy, cx], cam[cy, cx], atol=0.05)  # the face did change (luma of the red)


def test_near_gray_threshold_is_two_levels():
    img = np.full((8, 8, 3), 0.5, np.float32)
    img[0, 0, 1] += 2 / 255
    assert is_near_gray(img)
    img[0, 0, 1] += 1 / 255
    assert not is_near_gray(img)


def test_face_selection_options(detector, astronaut):
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    pad = np.zeros((512, 256, 3), np.float32)
    pad[128:384] = small
    scene = np.concatenate([astronaut, pad], axis=1)  # a big face and a half-size face
    pipe = FacePipeline(descriptor(StandIn(), 64), detector, FaceOptions(upscale=1))
    assert len(pipe.run(scene).faces) == 2
    pipe.options.faces = "largest"
    (big,) = pipe.run(scene).faces
    assert big.center[0] < 512
    pipe.options.faces = "all"
    pipe.options.max_faces = 1
    assert pipe.run(scene).faces[0].center[0] < 512
    pipe.options.max_faces = 0
    pipe.options.min_face_size = 70
    res = pipe.run(scene)
    assert len(res.faces) == 1 and res.detected == 2


def test_crop_size_is_the_descriptor_fixed_size(detector, astronaut):
    model = StandIn()
    res = FacePipeline(descriptor(model, 64), detector, FaceOptions(upscale=1)).run(astronaut)
    assert res.crops[0].shape == (64, 64, 3) and model.calls[0][0] == (1, 3, 64, 64)
    np.testing.assert_allclose(estimate_affine(res.faces[0].landmarks, 64), res.affines[0])


def test_aligned_inputs_skip_detection(astronaut):
    model = StandIn()
    crop = np.ascontiguousarray(astronaut[40:240, 120:320])  # 200 x 200 "aligned" face
    res = FacePipeline(descriptor(model, 128), None, FaceOptions(aligned=True, upscale=2)).run(crop)
    assert model.calls == [((1, 3, 128, 128), 0.5)]
    assert res.image.shape == (400, 400, 3) and res.faces == [] and len(res.restored) == 1
    # identity restorer: 200 -> 128 -> 400 only loses what 128 px cannot hold
    assert np.abs(res.image - resize_background(crop, 2)).mean() < 0.02
    assert comparison(res.crops[0], res.restored[0]).shape == (128, 256, 3)


def test_custom_background_is_used(detector, astronaut):
    calls = []

    def black(rgb, upscale):
        calls.append(upscale)
        return np.zeros((rgb.shape[0] * upscale, rgb.shape[1] * upscale, 3), np.float32)

    res = FacePipeline(descriptor(StandIn(), 64), detector, FaceOptions(upscale=2), background=black).run(astronaut)
    assert calls == [2] and res.image[900:].max() == 0.0 and res.image[200, 440].min() > 0.1  # face on black


def test_pipeline_refuses_wrong_models_and_options(detector):
    sr = ModelDescriptor(StandIn(), task="sr", architecture="X", head="vr", scale=4, size_multiple=8, fixed_size=None, tiling=None)
    with pytest.raises(UsageError, match="face model"):
        FacePipeline(sr, detector)
    with pytest.raises(UsageError, match="detector"):
        FacePipeline(descriptor(StandIn()), None)
    with pytest.raises(UsageError, match="upscale"):
        FacePipeline(descriptor(StandIn()), detector, FaceOptions(upscale=0))
