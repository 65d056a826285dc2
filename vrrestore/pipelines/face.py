"""Face pipeline: detect -> align to FFHQ -> restore (one batch for all faces) -> paste back.

Images are float32 RGB (H, W, 3) in [0, 1]. The model only ever sees aligned crops of its fixed size
(``descriptor.fixed_size``); everything else (detection, warping, background, grey handling) is here.
The background of the output is the input resized by ``upscale`` (Lanczos), or whatever the caller's
``background`` function makes of it (e.g. the SR model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from ..errors import UsageError
from ..face.align import estimate_affine, paste_face, warp_face
from ..face.detect import Detector, Face, FaceSelect, select_faces
from ..models.descriptor import ModelDescriptor, Precision

Background = Callable[[np.ndarray, int], np.ndarray]
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class FaceOptions:
    """What the ``vrrestore face`` flags control (see its ``--help``)."""

    fidelity: float = 0.5
    upscale: int = 2
    precision: Precision = "auto"
    faces: FaceSelect = "all"
    min_face_size: float = 0.0
    max_faces: int = 0
    aligned: bool = False
    batch_size: int = 0  # faces per forward pass; 0 = 4 on CPU, 32 on GPU


@dataclass
class FaceResult:
    """One processed image. ``faces``/``crops``/``restored``/``affines`` are parallel lists, largest face first."""

    image: np.ndarray
    faces: list[Face] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    restored: list[np.ndarray] = field(default_factory=list)
    affines: list[np.ndarray] = field(default_factory=list)
    detected: int = 0
    gray: bool = False


def is_near_gray(rgb: np.ndarray, tolerance: float = 2.0 / 255.0) -> bool:
    """True when all channels agree within 2 levels of 255 everywhere (a grey photo stored as RGB)."""
    if rgb.ndim == 2 or rgb.shape[2] == 1:
        return True
    a = rgb.astype(np.float32, copy=False)
    eps = 1e-6
    return bool(np.abs(a[..., 0] - a[..., 1]).max() <= tolerance + eps and np.abs(a[..., 1] - a[..., 2]).max() <= tolerance + eps)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luma (BT.601) replicated on 3 channels: restored faces of grey photos stay grey."""
    y = rgb @ LUMA
    return np.repeat(y[..., None], 3, axis=-1).astype(np.float32)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (w, h): INTER_AREA when shrinking, Lanczos when enlarging; float32 in [0, 1]."""
    h, w = rgb.shape[:2]
    if (w, h) == size:
        return np.array(rgb, dtype=np.float32, copy=True)
    shrink = size[0] < w and size[1] < h
    out = cv2.resize(np.asarray(rgb, dtype=np.float32), size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
    if out.ndim == 2:
        out = out[:, :, None]
    return np.clip(out, 0.0, 1.0, out=out)


def resize_background(rgb: np.ndarray, upscale: int) -> np.ndarray:
    """The plain background: the input resized by ``upscale`` (Lanczos)."""
    h, w = rgb.shape[:2]
    return _resize(rgb, (w * upscale, h * upscale))


def sr_background(model: ModelDescriptor, *, fidelity: float = 0.5, precision: Precision = "auto") -> Background:
    """A background function that runs an SR model over the whole photo (tiled, by ImagePipeline) and
    resizes its output to exactly ``upscale`` times the input when the model's scale differs."""
    from .image import ImagePipeline

    pipe = ImagePipeline(model, precision=precision)

    def run(rgb: np.ndarray, upscale: int) -> np.ndarray:
        out = pipe.restore_array(rgb, fidelity, out_dtype=np.float32)
        h, w = rgb.shape[:2]
        return _resize(out, (w * upscale, h * upscale))

    return run


class FacePipeline:
    """Restore every face of an image with one model; keep the model and detector loaded across images.

    ``detector`` may be None only with ``options.aligned`` (inputs are already aligned crops).
    """

    def __init__(
        self,
        model: ModelDescriptor,
        detector: Detector | None = None,
        options: FaceOptions | None = None,
        background: Background | None = None,
    ) -> None:
        if model.task != "face" or not model.fixed_size:
            raise UsageError(f"the face pipeline needs a face model with a fixed input size, not a {model.task} model ({model.architecture})")
        self.model = model
        self.options = options or FaceOptions()
        if detector is None and not self.options.aligned:
            raise UsageError("the face pipeline needs a detector unless inputs are aligned crops (--aligned)")
        if self.options.upscale < 1:
            raise UsageError(f"--upscale {self.options.upscale}: must be 1 or more")
        self.detector = detector
        self.background = background or resize_background

    @property
    def size(self) -> int:
        """Side of the aligned crop the model restores (its ``fixed_size``)."""
        return int(self.model.fixed_size)  # type: ignore[arg-type]

    def _batch_size(self) -> int:
        if self.options.batch_size > 0:
            return self.options.batch_size
        return 32 if self.model.device.type == "cuda" else 4

    def restore_crops(self, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Restore aligned (S, S, 3) float32 crops, ``batch_size`` at a time; same order out."""
        if not crops:
            return []
        out: list[np.ndarray] = []
        bs = self._batch_size()
        for i in range(0, len(crops), bs):
            x = torch.from_numpy(np.stack(crops[i : i + bs]).transpose(0, 3, 1, 2).copy())
            y = self.model(x, fidelity=self.options.fidelity, precision=self.options.precision)
            out.extend(np.ascontiguousarray(y.permute(0, 2, 3, 1).cpu().numpy(), dtype=np.float32))
        return out

    def detect(self, rgb: np.ndarray) -> tuple[list[Face], int]:
        """Selected faces (largest first) and how many the detector found before selection."""
        assert self.detector is not None
        found = self.detector.detect(to_uint8(rgb))
        o = self.options
        return select_faces(found, rgb.shape[:2], mode=o.faces, min_size=o.min_face_size, max_faces=o.max_faces), len(found)

    def run(self, rgb: np.ndarray) -> FaceResult:
        return self.run_many([rgb])[0]

    def run_many(self, images: Sequence[np.ndarray]) -> list[FaceResult]:
        """Process several images with one restoration batch across all of their faces (GPU throughput)."""
        images = [np.asarray(im, dtype=np.float32) for im in images]
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3:
                raise UsageError(f"the face pipeline takes (H, W, 3) RGB arrays, got shape {im.shape}")
        if self.options.aligned:
            return self._run_aligned(images)
        results: list[FaceResult] = []
        crops: list[np.ndarray] = []
        for im in images:
            faces, found = self.detect(im)
            kept, affines = [], []
            for f in faces:
                try:
                    affines.append(estimate_affine(f.landmarks, self.size))
                    kept.append(f)
                except ValueError:  # all 5 points on one spot: nothing to align, leave that face alone
                    continue
            faces = kept
            face_crops = [warp_face(im, m, self.size) for m in affines]
            crops.extend(face_crops)
            results.append(FaceResult(image=im, faces=faces, crops=face_crops, affines=affines, detected=found, gray=is_near_gray(im)))
        restored = iter(self.restore_crops(crops))
        scale = self.options.upscale
        for res in results:
            res.restored = [next(restored) for _ in res.crops]
            if res.gray:
                res.restored = [to_gray(r) for r in res.restored]
            canvas = np.array(self.background(res.image, scale), dtype=np.float32, copy=True)
            for face, m in zip(res.restored, res.affines, strict=True):
                paste_face(canvas, face, m, float(scale))
            np.clip(canvas, 0.0, 1.0, out=canvas)
            if res.gray:
                canvas = to_gray(canvas)
            res.image = canvas
        return results

    def _run_aligned(self, images: list[np.ndarray]) -> list[FaceResult]:
        """Inputs are aligned faces: resize to the model size, restore, resize to input size x upscale."""
        s = self.size
        crops = [_resize(im, (s, s)) for im in images]
        restored = self.restore_crops(crops)
        results = []
        for im, crop, rest in zip(images, crops, restored, strict=True):
            gray = is_near_gray(im)
            if gray:
                rest = to_gray(rest)
            h, w = im.shape[:2]
            out = _resize(rest, (w * self.options.upscale, h * self.options.upscale))
            results.append(FaceResult(image=out, crops=[crop], restored=[rest], detected=1, gray=gray))
        return results


def comparison(crop: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """Side-by-side crop | restored (same height), float32."""
    if crop.shape[:2] != restored.shape[:2]:
        crop = _resize(crop, (restored.shape[1], restored.shape[0]))
    return np.concatenate([crop, restored], axis=1)
