"""Faces: detection with 5 landmarks (yuface offline, RetinaFace with facexlib's weights), FFHQ alignment
and feathered paste-back. numpy/cv2 in and out; the restoration itself is :mod:`vrrestore.pipelines.face`.

Nothing is imported lazily here except the backends: ``yuface`` is imported when a YuFaceDetector is
built, the RetinaFace network module when a RetinaFace detector is.
"""

from .base import Detector, DetectorUnavailable, Face
from .align import FFHQ_TEMPLATE_512, crop_mask, estimate_affine, face_template, paste_face, paste_faces, warp_face
from .detect import (
    DETECTORS,
    YuFaceDetector,
    draw_faces,
    make_detector,
    resolve_detector,
    select_faces,
)

__all__ = [
    "DETECTORS", "FFHQ_TEMPLATE_512", "Detector", "DetectorUnavailable", "Face", "YuFaceDetector", "crop_mask",
    "draw_faces", "estimate_affine", "face_template", "make_detector", "paste_face", "paste_faces", "resolve_detector",
    "select_faces", "warp_face",
]
