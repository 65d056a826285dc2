"""What every face detector shares: the :class:`Face` record, the :class:`Detector` protocol, its error,
and the clean-up every backend applies to its raw detections.

This module imports no backend, so the backends (:mod:`.detect` for yuface, :mod:`.retinaface`) and
the code that picks one (:func:`vrrestore.face.detect.make_detector`) all depend on it and never on
each other's internals: the imports run one way.

Clean-up, in order (:func:`clean_detections`, then optionally :func:`confirmed_by_mirror`):

1. **Implausible landmarks are dropped** (:func:`implausible`): non-finite points, eyes or mouth on one
   spot, the mouth not below the eye line (the eye-to-mouth direction less than 30 degrees from the
   eye line, or on the wrong side of it), or the mouth corners in the opposite order to the eyes (a
   mirrored face). Alignment to the FFHQ template cannot make a face out of such points.
2. **Duplicates are merged** (:func:`suppress_duplicates`): two detections are one face when their
   five landmarks lie on average within ``DUPLICATE_LANDMARK_DISTANCE`` eye distances of each other,
   or their boxes overlap with IoU above ``DUPLICATE_IOU``; the higher score is kept. Box IoU alone
   cannot do this: a face found twice at two scales overlapped with IoU 0.40, while neighbouring real
   faces in a crowd overlap up to 0.46; their landmarks, though, are 0.13 vs at least 0.56 eye
   distances apart.
3. **Mirror check** (yuface): a detection of at least ``MIRROR_MIN_SIZE`` px must be found again, at
   a relaxed threshold, in the horizontally mirrored image (box IoU >= ``MIRROR_IOU``). Faces are
   mirror-symmetric, the textures that fool a detector (an ear, hair, a pattern) rarely are.

Measured with yuface on 93 photos (one-face portraits, group photos and crowds; 1,113 raw detections,
386 of them 30 px or larger): rule 1 dropped 2 (a 14 px blob, and a profile whose mouth was put above
its eyes), rule 2 one (a portrait's face found a second time at 0.64), rule 3 one (that portrait's ear,
0.60), and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import WeightsError

DUPLICATE_LANDMARK_DISTANCE = 0.3  # mean landmark distance, in eye distances, below which two detections are one face
DUPLICATE_IOU = 0.6  # box IoU above which two detections are one face whatever their landmarks say
MIN_MOUTH_ANGLE_SIN = 0.5  # sin of the angle between the eye line and the eye-to-mouth direction (30 degrees)
MIRROR_MIN_SIZE = 32.0  # px (shorter box side): smaller boxes are too coarse for the mirror check
MIRROR_IOU = 0.5
MIRROR_RELAX = 0.6  # the mirrored pass runs at this fraction of the detection threshold


class DetectorUnavailable(WeightsError):
    """The chosen face detector cannot run here (package missing, weights missing or not downloadable)."""


@dataclass(frozen=True)
class Face:
    """One detection: ``box`` (4,) x1, y1, x2, y2; ``landmarks`` (5, 2) x, y; ``score`` in [0, 1].

    Landmarks: left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner
    ("left" = smaller x), the order of the FFHQ alignment template.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """The box's shorter side, in pixels (what ``--min-face-size`` compares)."""
        return min(self.width, self.height)

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2], dtype=np.float32)

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    def scaled(self, factor: float) -> Face:
        return Face(self.box * factor, self.landmarks * factor, self.score)


class Detector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) uint8 RGB image, in its pixel coordinates, cleaned up (see module doc)."""
        ...


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    ih = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = iw * ih
    union = max(float(a[2] - a[0]), 0.0) * max(float(a[3] - a[1]), 0.0) + max(float(b[2] - b[0]), 0.0) * max(float(b[3] - b[1]), 0.0) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = iw * ih
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def implausible(face: Face) -> str | None:
    """Why ``face``'s five landmarks cannot be a face (a few words), or None if they can."""
    pts = np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2)
    if not np.isfinite(pts).all() or not np.isfinite(np.asarray(face.box, dtype=np.float64)).all():
        return "non-finite coordinates"
    le, re, _, lm, rm = pts
    eyes = re - le
    down = (lm + rm) / 2 - (le + re) / 2
    n_eyes, n_down = float(np.linalg.norm(eyes)), float(np.linalg.norm(down))
    if n_eyes < 1e-6 or n_down < 1e-6:
        return "eyes or eyes and mouth on one spot"
    # y points down in images: with the eyes left to right, the mouth lies on the +cross side.
    if float(eyes[0] * down[1] - eyes[1] * down[0]) / (n_eyes * n_down) < MIN_MOUTH_ANGLE_SIN:
        return "mouth not below the eye line"
    if float(np.dot(rm - lm, eyes)) <= 0.0:
        return "mouth corners in the opposite order to the eyes"
    return None


def same_face(a: Face, b: Face) -> bool:
    """True when two detections are one face (see the module doc for the rule and its numbers)."""
    scale = max(a.eye_distance, b.eye_distance, 1e-6)
    spread = float(np.linalg.norm(np.asarray(a.landmarks) - np.asarray(b.landmarks), axis=1).mean())
    return spread < DUPLICATE_LANDMARK_DISTANCE * scale or box_iou(a.box, b.box) > DUPLICATE_IOU


def suppress_duplicates(faces: list[Face]) -> list[Face]:
    """Keep the best-scoring detection of each face; highest score first."""
    kept: list[Face] = []
    for f in sorted(faces, key=lambda f: -f.score):
        if not any(same_face(f, k) for k in kept):
            kept.append(f)
    return kept


def clean_detections(faces: list[Face]) -> list[Face]:
    """Drop implausible detections, then merge duplicates; highest score first."""
    return suppress_duplicates([f for f in faces if implausible(f) is None])


def mirror_faces(faces: list[Face], width: int) -> list[Face]:
    """Detections made on ``rgb[:, ::-1]`` in the coordinates of ``rgb`` (pixel x -> width - 1 - x;
    left and right landmarks swap)."""
    out = []
    for f in faces:
        x1, y1, x2, y2 = (float(v) for v in f.box)
        box = np.array([width - 1 - x2, y1, width - 1 - x1, y2], dtype=np.float32)
        pts = np.asarray(f.landmarks, dtype=np.float32).copy()
        pts[:, 0] = width - 1 - pts[:, 0]
        out.append(Face(box, pts[[1, 0, 2, 4, 3]], f.score))
    return out


def confirmed_by_mirror(faces: list[Face], mirrored: list[Face]) -> list[Face]:
    """``faces`` that ``mirrored`` (the mirrored image's detections, mapped back) finds again; faces
    smaller than ``MIRROR_MIN_SIZE`` are kept unchecked."""
    return [
        f for f in faces
        if f.size < MIRROR_MIN_SIZE or any(box_iou(f.box, g.box) >= MIRROR_IOU for g in mirrored)
    ]
