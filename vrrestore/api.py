"""The Python API: :class:`Restorer`, what ``vrrestore face`` and ``vrrestore image`` run underneath,
and what each worker of a cluster job builds.

    from vrrestore.api import Restorer

    faces = Restorer.from_pretrained("vr-face-s", fidelity=0.7)       # face mode (detect, restore, paste back)
    photos = Restorer.from_file("my-sr.safetensors", outscale=2)      # image mode (tiled SR), from its metadata
    restored = faces([array, pil_image])                              # a batch in, the same kinds out

Weights are resolved exactly as the command line resolves ``--model`` (a path, else
``$VRRESTORE_WEIGHTS_DIR``, the bundled file, the Hub cache, a pinned and verified download).

A Restorer is a :class:`RestorerConfig` (frozen, a few hundred bytes when pickled) plus the models it
loads, once. Pickling keeps only the config: a Restorer sent to another process loads its models
there on first use, and once per process however many times it is sent (see :func:`_shared_state`),
so one model per worker, never one per image. A Restorer is not thread-safe: give each thread its own.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import UsageError, WeightsError
from .io import Image

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

    from .models.descriptor import ModelDescriptor
    from .pipelines.face import FacePipeline, FaceResult
    from .pipelines.image import ImagePipeline

Mode = Literal["face", "image"]
MODES: tuple[Mode, ...] = ("face", "image")
TASK_OF_MODE = {"face": "face", "image": "sr"}  # the checkpoint task each mode runs
MODE_OF_TASK = {task: mode for mode, task in TASK_OF_MODE.items()}
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
FACE_SELECT = ("all", "largest", "center")
# The command-line flag of each option, so that errors read the same from the API and the CLI.
FLAGS = {
    "detector": "--detector", "det_threshold": "--det-threshold", "faces": "--faces", "min_face_size": "--min-face-size",
    "max_faces": "--max-faces", "draw_boxes": "--draw-boxes", "bg_upsampler": "--bg-upsampler", "bg_model": "--bg-model",
    "upscale": "--upscale", "aligned": "--aligned", "tile": "--tile", "tile_overlap": "--tile-overlap",
    "outscale": "--outscale", "face_batch_size": "face_batch_size",
}
FACE_ONLY = ("upscale", "aligned", "detector", "det_threshold", "faces", "min_face_size", "max_faces", "bg_upsampler",
             "bg_model", "face_batch_size")
IMAGE_ONLY = ("tile", "tile_overlap", "outscale")
DETECTION = ("detector", "det_threshold", "faces", "min_face_size", "max_faces", "bg_upsampler", "bg_model")
_SHARED_MAX = 4  # configs whose models one process keeps for unpickled Restorers
_logger = logging.getLogger("vrrestore")


@dataclass(frozen=True)
class RestorerConfig:
    """Everything that decides what a Restorer computes; the same names and meanings as the CLI flags.

    ``model`` is kept as given (a registry name, a path, or None for the mode's default) and resolved in
    the process that loads it, so a config sent to a cluster node finds that node's cache.
    """

    mode: Mode = "face"
    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    fidelity: float = 0.5
    # face mode
    upscale: int = 2
    aligned: bool = False
    detector: str = "auto"
    det_threshold: float | None = None
    faces: str = "all"
    min_face_size: float = 0.0
    max_faces: int = 0
    bg_upsampler: str = "none"
    bg_model: str | None = None
    face_batch_size: int = 0  # faces per forward pass; 0 = 4 on CPU, 32 on GPU
    # image mode
    tile: int = 0
    tile_overlap: int | None = None
    outscale: float | None = None

    @property
    def task(self) -> str:
        return TASK_OF_MODE[self.mode]

    @property
    def background_sr(self) -> bool:
        """Face mode: the background is upscaled by an SR model (``--bg-model`` implies it)."""
        return self.bg_upsampler == "sr" or self.bg_model is not None

    def check(self) -> RestorerConfig:
        """This config, or UsageError (exit 2) for a value or a combination that cannot work."""
        from .device import check_device_spec

        if self.mode not in MODES:
            raise UsageError(f"mode {self.mode!r}: expected face or image")
        check_device_spec(self.device)
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if not 0.0 <= self.fidelity <= 1.0:
            raise UsageError(f"--fidelity {self.fidelity}: must be between 0 and 1")
        defaults = RestorerConfig()
        other = FACE_ONLY if self.mode == "image" else IMAGE_ONLY
        wrong = [FLAGS[n] for n in other if getattr(self, n) != getattr(defaults, n)]
        if wrong:
            raise UsageError(f"{', '.join(wrong)}: only for {'face' if self.mode == 'image' else 'image'} mode; drop it or change the mode")
        if self.mode == "face":
            self._check_face(defaults)
        elif self.tile < 0 or (self.tile_overlap is not None and self.tile_overlap < 0):
            raise UsageError(f"--tile {self.tile} / --tile-overlap {self.tile_overlap}: must be 0 or more")
        elif self.outscale is not None and not self.outscale > 0:
            raise UsageError(f"--outscale {self.outscale}: must be more than 0")
        return self

    def _check_face(self, defaults: RestorerConfig) -> None:
        from .face.detect import DETECTORS

        if self.upscale < 1:
            raise UsageError(f"--upscale {self.upscale}: must be 1 or more")
        if self.detector not in DETECTORS:
            raise UsageError(f"--detector {self.detector}: expected one of {', '.join(DETECTORS)}")
        if self.faces not in FACE_SELECT:
            raise UsageError(f"--faces {self.faces}: expected one of {', '.join(FACE_SELECT)}")
        if self.bg_upsampler not in ("none", "sr"):
            raise UsageError(f"--bg-upsampler {self.bg_upsampler}: expected none or sr")
        if self.aligned:
            refuse_with_aligned(self.ignored_by_aligned())

    def ignored_by_aligned(self) -> list[str]:
        """The flags of the detection and background options set here, which aligned crops would ignore."""
        defaults = RestorerConfig()
        return [FLAGS[n] for n in DETECTION if getattr(self, n) != getattr(defaults, n)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refuse_with_aligned(flags: Sequence[str]) -> None:
    """UsageError naming the options that aligned crops would silently ignore (no detection is run)."""
    if flags:
        one = len(flags) == 1
        raise UsageError(
            f"{', '.join(flags)} {'does' if one else 'do'} nothing with --aligned (no detection, the whole crop is the "
            f"face); drop {'it' if one else 'them'} or drop --aligned"
        )


@dataclass
class Restored:
    """One restored image: the output (an ``io.Image``, metadata kept), the input it came from, what the
    report says about it, and in face mode the detected faces, crops and restored faces."""

    image: Image
    source: Image
    details: dict[str, Any] = field(default_factory=dict)
    face: FaceResult | None = None


@dataclass
class _Loaded:
    """What loading a config produces, kept for the life of the Restorer (or of the worker process)."""

    device: torch.device
    pipeline: FacePipeline | ImagePipeline


_SHARED: OrderedDict[RestorerConfig, _Loaded] = OrderedDict()


def _shared_state(config: RestorerConfig, load: Callable[[], _Loaded]) -> _Loaded:
    """The models of ``config`` in this process, loaded on the first request. Only unpickled Restorers use
    it: a task that receives the same pickled Restorer a thousand times loads its model once."""
    if config not in _SHARED:
        _SHARED[config] = load()
        while len(_SHARED) > _SHARED_MAX:
            _SHARED.popitem(last=False)
    _SHARED.move_to_end(config)
    return _SHARED[config]


def _default_log(message: str) -> None:
    (_logger.warning if message.startswith("warning:") else _logger.info)(message)


class Restorer:
    """Restore faces (``mode="face"``) or whole photos (``mode="image"``) with a vrrestore model.

    Build one with :meth:`from_pretrained` or :meth:`from_file`; ``Restorer(config)`` or
    ``Restorer(mode=..., model=..., ...)`` makes one that loads on first use (or at :meth:`load`).
    ``log`` receives one-line messages (which detector ``auto`` chose, warnings); default: the
    ``vrrestore`` logger. ``on_tile(done, total)`` is called after each tile in image mode.
    """

    def __init__(
        self,
        config: RestorerConfig | None = None,
        *,
        log: Callable[[str], None] | None = None,
        on_tile: Callable[[int, int], None] | None = None,
        **options: Any,
    ) -> None:
        config = config if config is not None else RestorerConfig()
        self.config = (replace(config, **options) if options else config).check()
        self.log = log or _default_log
        self.on_tile = on_tile
        self._state: _Loaded | None = None
        self._shared = False

    # ------------------------------------------------------------------------------------ building

    @classmethod
    def from_pretrained(
        cls, name: str | None = None, *, mode: Mode | None = None, lazy: bool = False,
        log: Callable[[str], None] | None = None, **options: Any,
    ) -> Restorer:
        """A model from the weights registry (``vrrestore weights list``); None = the mode's default.

        The mode follows from the model's task unless given. The weights are resolved and loaded now
        (WeightsError, exit code 3, if they are unavailable), or on first use with ``lazy=True``.
        """
        from .weights import load_registry, looks_like_path, unknown_name_message

        if name is not None and looks_like_path(name):
            raise UsageError(f"{name}: is a file path, not a registry name; use Restorer.from_file({name!r})")
        if mode is None:
            if name is None:
                mode = "face"
            else:
                registry = load_registry()
                if name not in registry:
                    raise UsageError(unknown_name_message(name, registry))
                mode = MODE_OF_TASK[registry[name].task]  # type: ignore[assignment]
        restorer = cls(RestorerConfig(mode=mode, model=name, **options), log=log)
        return restorer if lazy else restorer.load()

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, mode: Mode | None = None, lazy: bool = False,
        log: Callable[[str], None] | None = None, **options: Any,
    ) -> Restorer:
        """A vrrestore ``.safetensors`` checkpoint (e.g. from ``vrrestore train export``); the mode follows
        from its metadata unless given. The path is made absolute, so workers elsewhere find the same file."""
        from .checkpoint import read_metadata

        p = Path(path).expanduser().absolute()
        if mode is None:
            if not p.is_file():
                raise WeightsError(f"{path}: no such file; pass a .safetensors checkpoint")
            task = read_metadata(p).get("task", "")
            if task not in MODE_OF_TASK:
                raise WeightsError(f"{path}: the checkpoint names no task (face or sr); re-export it with `vrrestore train export`")
            mode = MODE_OF_TASK[task]  # type: ignore[assignment]
        restorer = cls(RestorerConfig(mode=mode, model=str(p), **options), log=log)
        return restorer if lazy else restorer.load()

    def load(self) -> Restorer:
        """Pick the device and load the model(s) and detector now (once); returns self."""
        if self._state is None:
            self._state = _shared_state(self.config, self._load) if self._shared else self._load()
        return self

    @property
    def loaded(self) -> bool:
        return self._state is not None

    def _load(self) -> _Loaded:
        from .device import select_device

        cfg = self.config
        device = select_device(cfg.device)
        if device.type == "cpu" and cfg.precision in ("fp16", "bf16"):
            self.log(f"warning: --precision {cfg.precision} on CPU is 10-300x slower than fp32")
        pipeline = self._face_pipeline(device) if cfg.mode == "face" else self._image_pipeline(device)
        return _Loaded(device, pipeline)

    def _image_pipeline(self, device: torch.device) -> ImagePipeline:
        from . import weights
        from .pipelines.image import ImagePipeline

        cfg = self.config
        return ImagePipeline(
            weights.load_model(cfg.model, "sr", device), precision=cfg.precision,  # type: ignore[arg-type]
            tile=cfg.tile, overlap=cfg.tile_overlap, on_tile=self.on_tile, outscale=cfg.outscale,
        )

    def _face_pipeline(self, device: torch.device) -> FacePipeline:
        from . import weights
        from .face.detect import make_detector, resolve_detector
        from .pipelines import face as pf

        cfg = self.config
        model = weights.load_model(cfg.model, "face", device)
        background = None
        if cfg.background_sr:
            sr_model = weights.load_model(cfg.bg_model, "sr", device, option="--bg-model")
            try:
                background = pf.sr_background(sr_model, fidelity=cfg.fidelity, precision=cfg.precision)  # type: ignore[arg-type]
            except ImportError as err:
                raise UsageError(f"--bg-upsampler sr: the image pipeline cannot be imported ({err}); use --bg-upsampler none") from None
        detector = None
        if not cfg.aligned:  # last: it may download
            backend, why = resolve_detector(cfg.detector)
            if cfg.detector == "auto":
                self.log(f"detector: {backend} ({why})")
            detector = make_detector(backend, device=device, threshold=cfg.det_threshold, log=self.log)
        options = pf.FaceOptions(
            fidelity=cfg.fidelity, upscale=cfg.upscale, precision=cfg.precision, faces=cfg.faces,  # type: ignore[arg-type]
            min_face_size=cfg.min_face_size, max_faces=cfg.max_faces, aligned=cfg.aligned, batch_size=cfg.face_batch_size,
        )
        return pf.FacePipeline(model, detector, options, background)

    # ----------------------------------------------------------------------------------- properties

    @property
    def mode(self) -> Mode:
        return self.config.mode

    @property
    def pipeline(self) -> FacePipeline | ImagePipeline:
        """The loaded pipeline (loads on first access)."""
        self.load()
        assert self._state is not None
        return self._state.pipeline

    @property
    def model(self) -> ModelDescriptor:
        """The restoration model's descriptor (scale, task, device, metadata such as its file path)."""
        return self.pipeline.model

    @property
    def device(self) -> torch.device:
        self.load()
        assert self._state is not None
        return self._state.device

    @property
    def scale(self) -> float:
        """Output size / input size: --upscale in face mode, --outscale (default: the model's) in image mode."""
        if self.mode == "face":
            return float(self.config.upscale)
        return float(self.config.outscale) if self.config.outscale is not None else float(self.model.scale)

    # ------------------------------------------------------------------------------------ restoring

    def restore(self, image: Image) -> Restored:
        """One ``io.Image`` (e.g. from ``io.read_image``): alpha, grey, 16 bit and metadata are kept."""
        return self.restore_many([image])[0]

    def restore_many(self, images: Sequence[Image]) -> list[Restored]:
        """Several images; in face mode all their faces go through the model in shared batches."""
        pipeline = self.pipeline
        if self.mode == "image":
            return [self._restore_photo(pipeline, im) for im in images]  # type: ignore[arg-type]
        results = pipeline.run_many([im.rgb_float() for im in images])  # type: ignore[union-attr]
        return [self._face_restored(im, res) for im, res in zip(images, results, strict=True)]

    def _face_restored(self, img: Image, res: FaceResult) -> Restored:
        details: dict[str, Any] = {"faces": len(res.restored)}
        detector = self.pipeline.detector  # type: ignore[union-attr]
        if detector is not None:
            details.update(detector=detector.name, detected=res.detected)
            if not res.faces:
                details["warning"] = (
                    "no face found" if res.detected == 0
                    else f"{res.detected} face(s) found, none kept by --faces/--min-face-size/--max-faces"
                )
        return Restored(img.replace(res.image, scale=self.config.upscale), img, details, res)

    def _restore_photo(self, pipe: ImagePipeline, img: Image) -> Restored:
        fallbacks, backoffs = pipe.fp32_fallbacks, len(pipe.backoffs)
        out = pipe.restore(img, self.config.fidelity)
        details = {
            "size": list(img.size), "output_size": list(out.size), "scale": pipe.model.scale,
            "outscale": self.config.outscale if self.config.outscale is not None else pipe.model.scale,
            "bit_depth": img.bit_depth, "gray": img.is_gray, "alpha": img.alpha is not None,
            "tile": pipe.tile, "tiles": pipe.tiles_for(img),
            "tile_backoffs": pipe.backoffs[backoffs:], "fp32_fallbacks": pipe.fp32_fallbacks - fallbacks,
        }
        return Restored(out, img, details)

    def restore_file(
        self, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, quality: int = 95, max_pixels: int | None = None
    ) -> Restored:
        """Read ``src``, restore it and write ``dst`` atomically (its suffix picks the format). InputError
        names ``src`` if it cannot be read; nothing is written then."""
        from .io import read_image, write_image

        res = self.restore(read_image(src, max_pixels=max_pixels))
        write_image(res.image, dst, quality=quality)
        return res

    def __call__(self, images: Any) -> Any:
        """Restore numpy arrays or PIL images and return the same kinds.

        A list (or tuple) gives a list; an (N, H, W[, C]) array gives an array; one image gives one
        image. Arrays are (H, W) grey, (H, W, 1|2|3|4) grey / grey+alpha / RGB / RGBA, in uint8,
        uint16 or float in [0, 1] (computed at 16 bit); the output has the input's layout and dtype.
        """
        single = _is_single(images)
        batch = [images] if single else list(images)
        converted = [_to_image(x) for x in batch]
        restored = self.restore_many([img for img, _ in converted])
        out = [_from_image(r.image, kind) for r, (_, kind) in zip(restored, converted, strict=True)]
        if single:
            return out[0]
        if isinstance(images, np.ndarray):
            return np.stack(out)
        return out

    # ------------------------------------------------------------------------------------- pickling

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}  # models, callbacks and open files stay behind

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self.log = _default_log
        self.on_tile = None
        self._state = None
        self._shared = True

    def __repr__(self) -> str:
        set_ = {f.name: getattr(self.config, f.name) for f in fields(self.config)
                if getattr(self.config, f.name) != getattr(RestorerConfig(), f.name) and f.name != "mode"}
        opts = "".join(f", {k}={v!r}" for k, v in set_.items())
        return f"Restorer(mode={self.mode!r}{opts}, loaded={self.loaded})"


# ---------------------------------------------------------------------------------- numpy and PIL


@dataclass(frozen=True)
class _Kind:
    """How an input image was given, so the output comes back the same way."""

    pil_mode: str | None  # None for numpy
    dtype: np.dtype
    channels: int  # 0 = (H, W); else the size of the last axis
    icc_profile: bytes | None = None


def _is_single(images: Any) -> bool:
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return False
        if images.ndim in (2, 3):
            return True
        raise TypeError(f"expected an (H, W), (H, W, C) or (N, H, W, C) array, got shape {images.shape}")
    return not isinstance(images, (list, tuple))


def _to_image(x: Any) -> tuple[Image, _Kind]:
    from PIL import Image as PILImage

    if isinstance(x, PILImage.Image):
        return _from_pil(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"expected a numpy array or a PIL image, got {type(x).__name__}")
    if x.ndim == 2:
        channels = 0
    elif x.ndim == 3 and x.shape[2] in (1, 2, 3, 4):
        channels = x.shape[2]
    else:
        raise TypeError(f"expected an (H, W) or (H, W, 1|2|3|4) image array, got shape {x.shape}")
    if x.dtype in (np.uint8, np.uint16):
        px = x
    elif x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise ValueError("the image array holds NaN or infinite values; expected floats in [0, 1]")
        from .io import quantize

        px = quantize(x, np.uint16)
    else:
        raise TypeError(f"expected uint8, uint16 or float pixels, got {x.dtype}")
    kind = _Kind(None, x.dtype, channels)
    return _split(px, channels), kind


def _split(px: np.ndarray, channels: int) -> Image:
    """An ``io.Image`` from a (H, W[, C]) uint array: grey, grey+alpha, RGB or RGBA."""
    if channels == 0:
        return Image(np.ascontiguousarray(px))
    if channels == 1:
        return Image(np.ascontiguousarray(px[:, :, 0]))
    if channels == 2:
        return Image(np.ascontiguousarray(px[:, :, 0]), np.ascontiguousarray(px[:, :, 1]))
    alpha = np.ascontiguousarray(px[:, :, 3]) if channels == 4 else None
    return Image(np.ascontiguousarray(px[:, :, :3]), alpha)


def _from_pil(im: PILImage.Image) -> tuple[Image, _Kind]:
    if im.mode.startswith("I;16"):
        px = np.asarray(im).astype(np.uint16)
        return Image(px), _Kind(im.mode, np.dtype(np.uint16), 0, im.info.get("icc_profile"))
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):  # P, PA, CMYK, YCbCr, I, F ...
        has_alpha = "transparency" in im.info or im.mode.endswith("A")
        im = im.convert("RGBA" if has_alpha else "RGB")
    px = np.asarray(im)
    channels = {"L": 0, "LA": 2, "RGB": 3, "RGBA": 4}[im.mode]
    return _split(px, channels), _Kind(im.mode, np.dtype(np.uint8), channels, im.info.get("icc_profile"))


def _from_image(img: Image, kind: _Kind) -> Any:
    px = img.pixels
    if kind.channels == 0:
        arr = px
    elif kind.channels == 1:
        arr = px[:, :, None]
    elif kind.channels == 2:
        arr = np.stack([px, img.alpha], axis=-1)
    elif kind.channels == 4:
        arr = np.concatenate([px, img.alpha[:, :, None]], axis=-1)
    else:
        arr = px
    if kind.pil_mode is not None:
        from PIL import Image as PILImage

        out = PILImage.fromarray(np.ascontiguousarray(arr))
        if kind.icc_profile:
            out.info["icc_profile"] = kind.icc_profile
        return out
    if kind.dtype.kind == "f":
        return (arr.astype(np.float32) / np.float32(65535.0)).astype(kind.dtype, copy=False)
    return np.ascontiguousarray(arr)
