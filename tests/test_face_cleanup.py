"""Clean-up of raw detections (issue 13 item 3): implausible landmarks, duplicates, the mirror check.

The numbers of the portrait case are yuface's raw output on a 960 px close-up portrait (face 0.82, the
same face again at 0.64, the ear at 0.60), typed in here; the photo itself is research data and is not
used. A stand-in for the yuface module returns them, so the real YuFaceDetector code path runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from vrrestore.face import base as B
from vrrestore.face.base import Face

ASTRONAUT_POINTS = np.array([[202, 101], [246, 103], [223, 128], [202, 140], [244, 140]], dtype=np.float32)

# yuface raw format at 960 x 960: conf in 0..100, box x, y, w, h, points x0, y0, ... x4, y4 (integers)
PORTRAIT = {
    "face": (82, (212, 362, 426, 528), [378, 451, 592, 451, 528, 582, 392, 696, 584, 697]),
    "again": (64, (213, 163, 450, 503), [377, 456, 597, 456, 512, 591, 386, 638, 585, 638]),
    "ear": (60, (13, 232, 280, 472), [9, 407, 117, 410, 0, 506, 23, 586, 112, 588]),
}
W = 960


def _face(conf, box, pts) -> Face:
    x, y, w, h = box
    return Face(np.array([x, y, x + w, y + h], np.float32), np.array(pts, np.float32).reshape(5, 2), conf / 100)


def _mirrored_raw(conf, box, pts):
    """What yuface reports for the same face in the mirrored image (pixel x -> W - 1 - x, left <-> right)."""
    x, y, w, h = box
    p = np.array(pts).reshape(5, 2)
    p[:, 0] = W - 1 - p[:, 0]
    p = p[[1, 0, 2, 4, 3]]
    return conf, (W - x - w, y, w, h), p.ravel().tolist()


def test_box_iou_alone_cannot_tell_a_duplicate_from_crowd_neighbours():
    face, again = _face(*PORTRAIT["face"]), _face(*PORTRAIT["again"])
    assert B.box_iou(face.box, again.box) == pytest.approx(0.40, abs=0.01)
    # two neighbours in a crowd: boxes overlap more (IoU 0.45) but the faces are 0.9 eye distances apart
    a = Face(np.array([0, 0, 22, 28], np.float32), np.array([[6, 11], [15, 11], [11, 16], [7, 21], [15, 21]], np.float32), 0.86)
    b = Face(a.box + np.array([8.3, 0, 8.3, 0], np.float32), a.landmarks + np.array([8.3, 0], np.float32), 0.82)
    assert B.box_iou(a.box, b.box) == pytest.approx(0.45, abs=0.01)
    assert B.same_face(face, again) and not B.same_face(a, b)
    assert [f.score for f in B.suppress_duplicates([again, a, face, b])] == [0.86, 0.82, 0.82]  # portrait 0.64 merged
    kept = B.suppress_duplicates([again, face])
    assert len(kept) == 1 and kept[0] is face
    # boxes that are nearly one box are one face whatever their landmarks say
    c = Face(a.box + 0.5, a.landmarks[[0, 1, 2, 4, 3]] + np.array([0, 6], np.float32), 0.5)
    assert B.box_iou(a.box, c.box) > B.DUPLICATE_IOU and B.same_face(a, c)


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        (ASTRONAUT_POINTS, None),
        (ASTRONAUT_POINTS[[3, 4, 2, 0, 1]], "mouth not below the eye line"),  # mouth above the eyes
        (np.array([[0, 0], [10, 0], [5, 5], [40, 3], [50, 3]]), "mouth not below the eye line"),  # mouth 4 degrees off the eye line
        (ASTRONAUT_POINTS[[0, 1, 2, 4, 3]], "mouth corners in the opposite order to the eyes"),
        (np.full((5, 2), 7.0), "eyes or eyes and mouth on one spot"),
        (np.array([[1, 1], [np.nan, 1], [2, 2], [1, 3], [2, 3]]), "non-finite coordinates"),
    ],
)
def test_implausible_landmarks_are_named(points, reason):
    face = Face(np.array([180, 80, 270, 170], np.float32), np.asarray(points, np.float32), 0.9)
    assert B.implausible(face) == reason
    assert B.clean_detections([face]) == ([] if reason else [face])


def test_mirror_faces_maps_back_and_swaps_left_and_right():
    raw = _mirrored_raw(*PORTRAIT["face"])
    back = B.mirror_faces([_face(*raw)], W)[0]
    orig = _face(*PORTRAIT["face"])
    np.testing.assert_allclose(back.landmarks, orig.landmarks, atol=1e-4)
    np.testing.assert_allclose(back.box, orig.box + np.array([-1, 0, -1, 0]), atol=1e-4)  # box edges vs pixel centres


class FakeYuface:
    """Stands in for the yuface module: the portrait's detections, and what the mirrored image gives."""

    def __init__(self, image: np.ndarray, found: list, found_mirrored: list) -> None:
        self.bgr = np.ascontiguousarray(image[:, :, ::-1])
        self.results = {True: found, False: found_mirrored}
        self.calls: list[tuple[bool, float]] = []

    def detect(self, bgr: np.ndarray, threshold: float):
        original = bool(np.array_equal(bgr, self.bgr))
        self.calls.append((original, threshold))
        rows = [r for r in self.results[original] if r[0] >= 100 * threshold]
        confs = np.array([r[0] for r in rows], np.uint16).reshape(-1)
        boxes = np.array([r[1] for r in rows], np.uint16).reshape(-1, 4)
        points = np.array([r[2] for r in rows], np.uint16).reshape(-1, 10)
        return confs, boxes, points


@pytest.fixture
def portrait_detector(monkeypatch):
    pytest.importorskip("yuface")
    from vrrestore.face import detect as D

    image = np.random.default_rng(0).integers(0, 256, (W, W, 3), dtype=np.uint8)
    ear_elsewhere = (45, (0, 120, 220, 380), [30, 300, 130, 300, 50, 380, 40, 440, 120, 440])  # IoU 0.35 with the ear
    fake = FakeYuface(
        image,
        [PORTRAIT["face"], PORTRAIT["again"], PORTRAIT["ear"]],
        [_mirrored_raw(*PORTRAIT["face"]), _mirrored_raw(*PORTRAIT["again"]), _mirrored_raw(*ear_elsewhere)],
    )
    monkeypatch.setattr(D, "_import_yuface", lambda: fake)
    return D, image, fake


def test_yuface_detector_keeps_the_face_once_and_drops_the_ear(portrait_detector):
    D, image, fake = portrait_detector
    faces = D.make_detector("yuface").detect(image)
    assert len(faces) == 1
    assert faces[0].score == pytest.approx(0.82)
    np.testing.assert_allclose(faces[0].box, [212, 362, 638, 890])
    assert fake.calls == [(True, 0.5), (False, pytest.approx(0.5 * B.MIRROR_RELAX))]


def test_without_the_mirror_check_only_the_duplicate_goes(portrait_detector):
    D, image, fake = portrait_detector
    faces = D.YuFaceDetector(mirror_check=False).detect(image)
    assert [round(f.score, 2) for f in faces] == [0.82, 0.6]
    assert fake.calls == [(True, 0.5)]


def test_small_faces_skip_the_mirror_pass(monkeypatch):
    pytest.importorskip("yuface")
    from vrrestore.face import detect as D

    image = np.zeros((200, 200, 3), np.uint8)
    small = (90, (50, 50, 20, 24), [55, 58, 64, 58, 60, 63, 56, 68, 64, 68])
    fake = FakeYuface(image, [small], [])
    monkeypatch.setattr(D, "_import_yuface", lambda: fake)
    faces = D.make_detector("yuface").detect(image)
    assert len(faces) == 1 and faces[0].size < B.MIRROR_MIN_SIZE
    assert fake.calls == [(True, 0.5)]


def test_real_yuface_still_finds_both_faces_of_a_mirrored_pair(yuface_one_omp_thread):
    skdata = pytest.importorskip("skimage.data")
    from vrrestore.face.detect import make_detector

    astro = skdata.astronaut()
    pair = np.ascontiguousarray(np.concatenate([astro, astro[:, ::-1]], axis=1))
    faces = make_detector("yuface").detect(pair)
    assert len(faces) == 2
    assert sorted(round(float(f.center[0]) / 100) for f in faces) == [2, 8]
