"""Face detection with 5 landmarks behind one small protocol, plus face selection.

Backends: ``yuface`` (libfacedetection, model compiled into a 475 KB wheel: offline, no torchvision) and
RetinaFace (:mod:`vrrestore.face.retinaface`, facexlib's weights, downloaded once). Landmarks are, in
image coordinates: left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner
("left" = smaller x), the order of the FFHQ alignment template. The shared types and the clean-up of
raw detections (implausible landmarks, duplicates, the mirror check) live in :mod:`.base`; this module
imports the RetinaFace module only inside the functions that build or query it, and that module
imports only :mod:`.base`, so the imports run one way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np
import torch

from ..errors import UsageError
from .base import (
    MIRROR_MIN_SIZE,
    MIRROR_RELAX,
    Detector,
    DetectorUnavailable,
    Face,
    clean_detections,
    confirmed_by_mirror,
    mirror_faces,
)

DetectorName = Literal["auto", "yuface", "retinaface", "retinaface-mobile"]
DETECTORS: tuple[str, ...] = ("auto", "yuface", "retinaface", "retinaface-mobile")
FaceSelect = Literal["all", "largest", "center"]
DEFAULT_THRESHOLDS = {"yuface": 0.5, "retinaface": 0.8, "retinaface-mobile": 0.8}


def _import_yuface():  # noqa: ANN202 - returns the module
    try:
        import yuface
    except ImportError as err:
        raise DetectorUnavailable(
            f"--detector yuface: the yuface package cannot be imported ({err}); it has wheels for CPython 3.11 on "
            "x86-64 Linux only, so use --detector retinaface (downloads its weights once)"
        ) from None
    return yuface


def yuface_available() -> bool:
    try:
        _import_yuface()
    except DetectorUnavailable:
        return False
    return True


class YuFaceDetector:
    """libfacedetection (YuNet-style CNN) through the ``yuface`` wheel.

    The library warns and degrades above ~960 px, so larger images are shrunk (INTER_AREA) for detection
    and the results scaled back. Its coordinates are integers, so landmarks are good to about 1-3 px at
    the detection scale. Raw detections are cleaned up as :mod:`vrrestore.face.base` describes; with
    ``mirror_check`` (default) faces of 32 px or more must also be found in the mirrored image, which
    costs a second detection pass only on images where such a face was found.
    """

    name = "yuface"

    def __init__(self, threshold: float = DEFAULT_THRESHOLDS["yuface"], max_side: int = 960, mirror_check: bool = True) -> None:
        self._yuface = _import_yuface()
        self.threshold = threshold
        self.max_side = max_side
        self.mirror_check = mirror_check

    def raw(self, rgb: np.ndarray, threshold: float) -> list[Face]:
        """The library's detections at ``threshold``, in image coordinates, before any clean-up."""
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        img = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(img[:, :, ::-1], dtype=np.uint8)
        confs, boxes, points = self._yuface.detect(bgr, threshold)
        faces = []
        for conf, (x, y, bw, bh), pts in zip(confs.astype(np.float32), boxes.astype(np.float32), points.astype(np.float32), strict=True):
            # integer pixel indices -> continuous coordinates of the same pixel centres, then back to full size
            box = np.array([x, y, x + bw, y + bh], dtype=np.float32)
            inv = 1.0 / scale
            faces.append(Face(box * inv, pts.reshape(5, 2) * inv + 0.5 * (inv - 1.0), float(conf) / 100.0))
        faces.sort(key=lambda f: -f.score)
        return faces

    def detect(self, rgb: np.ndarray) -> list[Face]:
        faces = clean_detections(self.raw(rgb, self.threshold))
        if self.mirror_check and any(f.size >= MIRROR_MIN_SIZE for f in faces):
            mirrored = self.raw(np.ascontiguousarray(rgb[:, ::-1]), self.threshold * MIRROR_RELAX)
            faces = confirmed_by_mirror(faces, mirror_faces(mirrored, rgb.shape[1]))
        return faces


def retinaface_cached(variant: str) -> bool:
    from .retinaface import weights_cached

    return weights_cached(variant)  # type: ignore[arg-type]


def resolve_detector(name: str) -> tuple[str, str]:
    """The concrete backend for ``name`` and, for ``auto``, why it was picked (one line)."""
    if name not in DETECTORS:
        raise UsageError(f"--detector {name}: expected one of {', '.join(DETECTORS)}")
    if name != "auto":
        return name, ""
    if retinaface_cached("resnet50"):
        return "retinaface", "RetinaFace-R50 weights found in the cache"
    if retinaface_cached("mobilenet0.25"):
        return "retinaface-mobile", "RetinaFace-MobileNet weights found in the cache"
    if yuface_available():
        return "yuface", "no RetinaFace weights in the cache; `--detector retinaface` downloads them"
    raise DetectorUnavailable(
        "--detector auto: no RetinaFace weights in the cache and yuface cannot be imported; use --detector retinaface "
        "(downloads 105 MB once) or install yuface on CPython 3.11 x86-64"
    )


def make_detector(
    name: str = "auto",
    *,
    device: torch.device | str = "cpu",
    threshold: float | None = None,
    download: bool = True,
    log: Callable[[str], None] | None = None,
) -> Detector:
    """Build a detector by name (``auto|yuface|retinaface|retinaface-mobile``); ``threshold=None`` = its default."""
    backend, _ = resolve_detector(name)
    thr = DEFAULT_THRESHOLDS[backend] if threshold is None else float(threshold)
    if backend == "yuface":
        return YuFaceDetector(threshold=thr)
    from .retinaface import RetinaFaceDetector

    variant = "resnet50" if backend == "retinaface" else "mobilenet0.25"
    return RetinaFaceDetector(variant, device=device, threshold=thr, download=download, log=log)


def select_faces(
    faces: list[Face],
    image_hw: tuple[int, int],
    *,
    mode: FaceSelect = "all",
    min_size: float = 0.0,
    max_faces: int = 0,
) -> list[Face]:
    """Filter by size, then keep ``all`` / the ``largest`` / the one nearest the ``center``; at most
    ``max_faces`` (0 = no limit), largest first. The result is ordered largest first (output file indices)."""
    if mode not in ("all", "largest", "center"):
        raise UsageError(f"--faces {mode}: expected all, largest or center")
    kept = sorted((f for f in faces if f.size >= min_size), key=lambda f: -f.width * f.height)
    if not kept:
        return []
    if mode == "largest":
        kept = kept[:1]
    elif mode == "center":
        h, w = image_hw
        mid = np.array([w / 2, h / 2], dtype=np.float32)
        kept = [min(kept, key=lambda f: float(np.linalg.norm(f.center - mid)))]
    if max_faces > 0:
        kept = kept[:max_faces]
    return kept


def draw_faces(rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A uint8 copy of ``rgb`` with each box, its landmarks, index and score drawn on it."""
    out = np.ascontiguousarray(rgb.copy())
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    thick = max(1, round(max(out.shape[:2]) / 500))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]  # eyes, nose, mouth corners
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = (round(float(v)) for v in f.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thick, cv2.LINE_AA)
        r = max(2, round(f.size / 40))
        for c, (x, y) in zip(colours, f.landmarks, strict=True):
            cv2.circle(out, (round(float(x)), round(float(y))), r, c, -1, cv2.LINE_AA)
        cv2.putText(out, f"{i} {f.score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 255, 0), thick, cv2.LINE_AA)
    return out
