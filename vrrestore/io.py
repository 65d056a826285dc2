"""Image files in and out, without losing what restoration tools usually drop.

Pillow reads every format and its metadata. EXIF orientation is applied to the pixels. ICC and EXIF
are kept, with the orientation reset to 1. Alpha is kept apart from the colour. 16-bit stays 16-bit.
Pillow decodes 16-bit colour as 8-bit, so OpenCV decodes those pixels. It cannot write them with
metadata, so 16-bit PNG and TIFF are encoded here, with zlib. XMP and the resolution (dpi) travel
too; dpi is multiplied by the upscale, so the printed size stays the same. Every write is atomic: a
temp file in the same folder, then os.replace.

Decompression bombs (a small file that claims a huge pixel count) are refused before decoding, by one
rule used everywhere images are read (``pixel_limit``).
"""

from __future__ import annotations

import os
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import (
    ImageCms,
    PngImagePlugin,
    TiffImagePlugin,
    TiffTags,
    UnidentifiedImageError,
)

from .errors import InputError, UsageError

SUPPORTED_EXTS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp")
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP"}
_NO_ALPHA_FORMATS = ("JPEG", "BMP")
_ORIENTATION = 0x0112
_SUB_IFDS = (0x8769, 0x8825)  # Exif, GPS
# TIFF layout tags: they describe the source file, so they are not copied into a new file's EXIF.
_LAYOUT_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 266, 269, 273, 277, 278, 279, 280, 281, 284, 288, 289, 290, 291, 292, 293,
     297, 317, 318, 319, 320, 321, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 513, 514, 529, 530, 531, 532, 700,
     0xA005, 34675, 0x8769, 0x8825}
)
_ROWS = 256  # rows per chunk when converting or encoding large arrays, so temporaries stay small
_XMP_KEY = "XML:com.adobe.xmp"  # the PNG iTXt keyword for XMP

# Decompression-bomb rule. A file may decode to max(DEFAULT_MAX_PIXELS, BOMB_PIXELS_PER_BYTE x its
# size) pixels. Real photos hold 1-10 pixels per byte (JPEG q95 of an x8 upscale: 8.4), so any honest
# file of any size passes, and so do our own outputs; a flat 30000x30000 PNG holds 343 per byte.
# An explicit limit (--max-pixels, $VRRESTORE_MAX_PIXELS) replaces the rule; 0 means no limit.
DEFAULT_MAX_PIXELS = 1 << 28  # 268,435,456: 256 MP
BOMB_PIXELS_PER_BYTE = 16
MAX_PIXELS_ENV = "VRRESTORE_MAX_PIXELS"
_PIL_LIMIT_LOCK = threading.Lock()


@dataclass
class Image:
    """Decoded pixels plus what must survive a round trip.

    ``pixels`` is (H, W, 3) RGB or (H, W) gray, uint8 or uint16. ``alpha`` is straight (not
    premultiplied) with the same dtype, or None. ``exif`` is Pillow's ``Exif.tobytes()`` form, with
    the orientation already applied to the pixels and reset to 1. ``xmp`` is the raw XMP packet (its
    tiff:Orientation reset the same way). ``dpi`` is (x, y) pixels per inch, or None when the file
    states none.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    source: Path | None = None
    format: str | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be uint8 or uint16, not {self.pixels.dtype}")
        if not (self.pixels.ndim == 2 or (self.pixels.ndim == 3 and self.pixels.shape[2] == 3)):
            raise ValueError(f"pixels must be (H, W) or (H, W, 3), not {self.pixels.shape}")
        if self.alpha is not None and (self.alpha.shape != self.pixels.shape[:2] or self.alpha.dtype != self.pixels.dtype):
            raise ValueError(f"alpha {self.alpha.shape} {self.alpha.dtype} does not match pixels {self.pixels.shape} {self.pixels.dtype}")

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def is_gray(self) -> bool:
        return self.pixels.ndim == 2

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]

    def rgb_float(self) -> np.ndarray:
        """(H, W, 3) float32 RGB in [0, 1]. Gray is replicated to three channels.

        The colour under fully transparent pixels is replaced by colour pushed in from the nearest
        visible pixels. That colour is undefined: often black, or whatever the editor left there.
        A model or a resize would otherwise bleed it into the visible edges.
        """
        rgb = _to_float(self.pixels)
        if self.is_gray:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        if self.alpha is not None:
            rgb = fill_transparent(rgb, self.alpha > 0)
        return rgb

    def replace(self, rgb: np.ndarray, scale: int = 1) -> Image:
        """A new Image with these (H*scale, W*scale, 3) RGB pixels. The metadata is kept and the alpha resized by ``scale``.

        ``rgb`` is float in [0, 1], or already uint8/uint16. Float values are rounded to this
        image's bit depth. Gray images become gray again (Rec.601 luma, which is exact for R=G=B).
        """
        h, w = self.pixels.shape[0] * scale, self.pixels.shape[1] * scale
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != (h, w):
            raise ValueError(f"expected ({h}, {w}, 3) RGB for scale {scale}, got {rgb.shape}")
        return self.with_pixels(rgb)

    def with_pixels(self, rgb: np.ndarray) -> Image:
        """A new Image with these (H', W', 3) RGB pixels of any size, e.g. after an ``--outscale`` resize.

        Alpha is resized to the new size and dpi scaled by the same factor per axis (same print size);
        ICC, EXIF and XMP are kept. ``rgb`` is float in [0, 1] or uint8/uint16, as for :meth:`replace`.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
            raise ValueError(f"expected (H, W, 3) RGB, got {rgb.shape}")
        h, w = rgb.shape[:2]
        dtype = self.pixels.dtype
        if rgb.dtype.kind == "f":
            src = np.ascontiguousarray(rgb, dtype=np.float32)
            pixels = quantize(cv2.cvtColor(src, cv2.COLOR_RGB2GRAY) if self.is_gray else src, dtype)
        else:
            pixels = _convert_depth(rgb, dtype)
            if self.is_gray:
                pixels = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
        alpha = None
        if self.alpha is not None:
            alpha = self.alpha if self.alpha.shape == (h, w) else resize_alpha(self.alpha, (w, h))
        dpi = None
        if self.dpi is not None:
            dpi = (self.dpi[0] * w / self.pixels.shape[1], self.dpi[1] * h / self.pixels.shape[0])
        return Image(pixels, alpha, self.source, self.format, self.icc_profile, self.exif, self.xmp, dpi)


# --------------------------------------------------------------------------------------------- pixels


def quantize(x: np.ndarray, dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """Float [0, 1] -> uint8/uint16, rounded to nearest. Works in row chunks so temporaries stay small."""
    maxv = float(np.iinfo(dtype).max)
    out = np.empty(x.shape, dtype)
    for y0 in range(0, x.shape[0], _ROWS):
        chunk = np.asarray(x[y0 : y0 + _ROWS], dtype=np.float32) * maxv
        chunk += 0.5
        np.clip(chunk, 0.0, maxv, out=chunk)
        out[y0 : y0 + _ROWS] = chunk  # the cast truncates, which after +0.5 rounds
    return out


def _to_float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)


def _convert_depth(a: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    if a.dtype == dtype:
        return a
    if a.dtype == np.uint8 and dtype == np.uint16:
        return a.astype(np.uint16) * 257
    if a.dtype == np.uint16 and dtype == np.uint8:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ValueError(f"cannot convert {a.dtype} pixels to {np.dtype(dtype)}")


def resize_alpha(alpha: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of an alpha plane to size (w, h), clipped to the dtype's range (cubic overshoots)."""
    out = cv2.resize(_to_float(alpha), size, interpolation=cv2.INTER_CUBIC)
    return quantize(out, alpha.dtype)


def fill_transparent(rgb: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Replace colour where ``visible`` is False by a smooth push-pull fill from the visible pixels.

    Each coarser level holds the mask-weighted mean colour. Going back down, each level keeps its
    own visible colour and takes the upsampled coarse estimate where it has none.
    """
    if visible.all() or not visible.any():
        return rgb
    weights = [visible.astype(np.float32)]
    sums = [rgb * weights[0][:, :, None]]
    while min(weights[-1].shape) > 1 and not (weights[-1] > 0).all():
        h, w = weights[-1].shape
        size = (max(1, (w + 1) // 2), max(1, (h + 1) // 2))
        weights.append(cv2.resize(weights[-1], size, interpolation=cv2.INTER_AREA))
        sums.append(cv2.resize(sums[-1], size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], 3))
    est = sums[-1] / np.maximum(weights[-1], 1e-12)[:, :, None]
    for s, wt in zip(reversed(sums[:-1]), reversed(weights[:-1]), strict=True):
        up = cv2.resize(est, (wt.shape[1], wt.shape[0]), interpolation=cv2.INTER_LINEAR).reshape(s.shape)
        # s is (visible mean colour) * wt, so this blends smoothly between own colour and the estimate.
        est = s + (1.0 - wt)[:, :, None] * up
    out = rgb.copy()
    out[~visible] = est[~visible]
    return out


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W[, C]) array, as ImageOps.exif_transpose does."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = a.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        a = a.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        a = a.swapaxes(0, 1)[::-1]
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------------------------------------- read


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _env_max_pixels() -> int | None:
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(f"{MAX_PIXELS_ENV}={raw}: expected a whole number of pixels (0 = no limit)")
    return value


def pixel_limit(file_bytes: int, max_pixels: int | None = None) -> int | None:
    """The most pixels a file of ``file_bytes`` may decode to; None = no limit.

    ``max_pixels`` (the --max-pixels flag) beats ``$VRRESTORE_MAX_PIXELS``; either replaces the
    default rule, and 0 means no limit. The default is max(256 MP, 16 pixels per byte of file): a
    bomb is a file that claims far more pixels than its size can honestly hold.
    """
    setting = max_pixels if max_pixels is not None else _env_max_pixels()
    if setting is not None:
        if setting < 0:
            raise UsageError(f"--max-pixels {setting}: expected 0 (no limit) or a positive number of pixels")
        return setting or None
    return max(DEFAULT_MAX_PIXELS, BOMB_PIXELS_PER_BYTE * file_bytes)


def check_pixels(name: str | Path, width: int, height: int, file_bytes: int, max_pixels: int | None = None) -> None:
    """InputError (one line, naming the file and the override) if the size breaks :func:`pixel_limit`."""
    limit = pixel_limit(file_bytes, max_pixels)
    if limit is None or width * height <= limit:
        return
    raise InputError(
        f"{name}: refused as a possible decompression bomb: {width}x{height} = {width * height / 1e6:.0f} MP in a "
        f"{_human_bytes(file_bytes)} file is over the {limit / 1e6:.0f} MP limit; if you trust it, pass "
        f"--max-pixels {width * height} or set {MAX_PIXELS_ENV}={width * height} (0 = no limit)"
    )


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} bytes"


@contextmanager
def _pil_unlimited() -> Iterator[None]:
    """Pillow's own bomb check off while we open a header (our rule, ``check_pixels``, replaces it)."""
    with _PIL_LIMIT_LOCK:
        old = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            PILImage.MAX_IMAGE_PIXELS = old


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image's header without decoding its pixels; None if Pillow cannot identify it."""
    try:
        with _pil_unlimited():
            return PILImage.open(BytesIO(data)).size
    except Exception:  # noqa: BLE001 - any failure here means "not an image we can size"
        return None


def read_image(path: str | Path, *, max_pixels: int | None = None) -> Image:
    """Decode ``path`` upright (EXIF orientation applied). Raises InputError naming the file.

    ``max_pixels``: the --max-pixels override of the decompression-bomb rule (see :func:`pixel_limit`).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or _one_line(err)}); check its permissions") from None
    if not data:
        raise InputError(f"{path}: empty file (0 bytes); re-export or remove it")
    try:
        return _decode(data, path, max_pixels)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file Pillow can read (supported: {', '.join(SUPPORTED_EXTS)})") from None
    except (InputError, UsageError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, cv2.error, IndexError) as err:
        raise InputError(f"{path}: damaged or truncated image ({_one_line(err)}); re-export it") from None


def _decode(data: bytes, path: Path, max_pixels: int | None) -> Image:
    with _pil_unlimited():
        im = PILImage.open(BytesIO(data))
    check_pixels(path, *im.size, len(data), max_pixels)
    fmt = im.format
    try:
        exif_obj = im.getexif()
    except Exception:  # noqa: BLE001 - broken EXIF must not make the pixels unreadable
        exif_obj = PILImage.Exif()
    orientation = int(exif_obj.get(_ORIENTATION, 1) or 1)
    icc = im.info.get("icc_profile") or None
    exif = _clean_exif(exif_obj)
    xmp = _read_xmp(im, reset_orientation=orientation != 1)
    dpi = _read_dpi(im)
    if _is_16bit_colour(im, data):
        pixels, alpha = _decode_16bit_colour(data, path, gray=_png_is_gray(data))
    else:
        im.load()
        pixels, alpha, icc = _pil_pixels(im, path, icc)
    pixels = _orient(pixels, orientation)
    alpha = None if alpha is None else _orient(alpha, orientation)
    if dpi is not None and orientation in (5, 6, 7, 8):
        dpi = (dpi[1], dpi[0])
    return Image(pixels, alpha, path, fmt, icc, exif, xmp, dpi)


_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation\s*=\s*["\'])\d(["\'])|(<tiff:Orientation>)\s*\d\s*(</tiff:Orientation>)')


def _read_xmp(im: PILImage.Image, *, reset_orientation: bool) -> bytes | None:
    """The raw XMP packet; its tiff:Orientation set to 1 when the EXIF orientation was applied to the pixels."""
    xmp = im.info.get("xmp") or im.info.get(_XMP_KEY)
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if not isinstance(xmp, bytes) or not xmp:
        return None
    if reset_orientation:
        xmp = _XMP_ORIENTATION.sub(lambda m: (m[1] + b"1" + m[2]) if m[1] else (m[3] + b"1" + m[4]), xmp)
    return xmp


def _read_dpi(im: PILImage.Image) -> tuple[float, float] | None:
    """Stated resolution in pixels per inch; None when absent or a placeholder (TIFF writers put 1x1 there)."""
    dpi = im.info.get("dpi")
    try:
        x, y = float(dpi[0]), float(dpi[1])  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return None
    return (x, y) if x > 1 and y > 1 else None


def _is_16bit_colour(im: PILImage.Image, data: bytes) -> bool:
    """16-bit images with more than one channel, which Pillow would decode as 8-bit."""
    if im.mode.startswith("I"):
        return False
    if im.format == "PNG":
        return data[24] == 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return 16 in (bits if isinstance(bits, tuple) else (bits,))
    return False


def _png_is_gray(data: bytes) -> bool:
    return data[:4] == b"\x89PNG" and data[25] in (0, 4)


def _decode_16bit_colour(data: bytes, path: Path, *, gray: bool) -> tuple[np.ndarray, np.ndarray | None]:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise InputError(f"{path}: cannot decode this 16-bit image (layout not supported by OpenCV); convert it to 8-bit or RGB")
    if arr.ndim == 2:
        return arr, None
    alpha = arr[:, :, 3].copy() if arr.shape[2] == 4 else None
    if gray:
        return arr[:, :, 0].copy(), alpha
    return np.ascontiguousarray(arr[:, :, 2::-1]), alpha


def _pil_pixels(im: PILImage.Image, path: Path, icc: bytes | None) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
    """8-bit (and single-channel 16-bit) pixels from Pillow as (pixels, alpha, icc)."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.uint16), None, icc
    if mode == "I":
        if im.format == "PNG" or (im.format == "TIFF" and 16 in _as_tuple(im.tag_v2.get(258, (32,)))):
            return np.clip(np.asarray(im), 0, 65535).astype(np.uint16), None, icc
        raise InputError(f"{path}: 32-bit integer images are not supported; convert it to 16-bit")
    if mode == "F":
        raise InputError(f"{path}: 32-bit float images are not supported; convert it to 16-bit")
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(im, icc)), None, _srgb_profile() if icc else None
    has_trns = "transparency" in im.info
    if mode == "1" or (mode == "L" and not has_trns):
        return np.asarray(im.convert("L")), None, icc
    if mode in ("LA", "La") or (mode == "L" and has_trns):
        la = np.asarray(im.convert("LA"))
        return la[:, :, 0].copy(), la[:, :, 1].copy(), icc
    if mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and has_trns) or (mode == "P" and im.palette and im.palette.mode == "RGBA"):
        rgba = np.asarray(im.convert("RGBA"))
        return rgba[:, :, :3].copy(), rgba[:, :, 3].copy(), icc
    try:
        return np.asarray(im.convert("RGB")), None, icc
    except ValueError:
        raise InputError(f"{path}: colour mode {mode} is not supported; convert it to RGB") from None


def _as_tuple(v: object) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _cmyk_to_rgb(im: PILImage.Image, icc: bytes | None) -> PILImage.Image:
    """Through the embedded CMYK profile when there is one (press CMYK is far from naive 255-C-K)."""
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(BytesIO(icc))
            dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            out = ImageCms.profileToProfile(im, src, dst, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
            if out is not None:
                return out
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: the naive conversion below is still a usable picture
    return im.convert("RGB")


def _clean_exif(exif: PILImage.Exif) -> bytes | None:
    """EXIF without layout tags or the thumbnail, orientation reset to 1; None if nothing is left or it does not parse."""
    try:
        out = PILImage.Exif()
        for tag, value in exif.items():
            if tag not in _LAYOUT_TAGS:
                out[tag] = value
        for sub in _SUB_IFDS:
            d = {k: v for k, v in exif.get_ifd(sub).items() if k != 0xA005}
            if d:
                out.get_ifd(sub).update(d)
        if _ORIENTATION in out:
            out[_ORIENTATION] = 1
        if not len(out) and not any(out.get_ifd(s) for s in _SUB_IFDS):
            return None
        return out.tobytes()
    except Exception:  # noqa: BLE001 - unparseable EXIF in an input is dropped, not fatal
        return None


def _exif_for_write(exif: bytes | None) -> bytes | None:
    if not exif:
        return None
    try:
        e = PILImage.Exif()
        e.load(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
        return _clean_exif(e)
    except Exception:  # noqa: BLE001 - see _clean_exif
        return None


# --------------------------------------------------------------------------------------------- write


def write_image(image: Image, path: str | Path, *, quality: int = 95) -> None:
    """Write atomically. The format comes from the suffix: png, jpg/jpeg, webp, tif/tiff or bmp.

    16-bit is kept in PNG and TIFF and rounded to 8-bit elsewhere. JPEG and BMP cannot hold alpha,
    so the image is composited over white. WebP cannot hold gray, so it stores RGB. WebP at quality
    100 is lossless (exact, colour under transparent pixels included). BMP has no ICC, EXIF or XMP;
    WebP has no dpi. 16-bit gray+alpha TIFF is written as RGBA, because neither Pillow nor OpenCV
    reads 2-channel 16-bit TIFF back.
    """
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in _PIL_FORMAT:
        raise UsageError(f"{path}: cannot write .{ext} files; use one of {', '.join(SUPPORTED_EXTS)}")
    if not 1 <= quality <= 100:
        raise UsageError(f"{path}: quality must be 1-100, not {quality}")
    fmt = _PIL_FORMAT[ext]
    exif = _exif_for_write(image.exif)
    pixels, alpha = image.pixels, image.alpha
    xmp, dpi = image.xmp, image.dpi
    if image.bit_depth == 16 and fmt == "PNG":
        atomic_write(path, lambda f: _write_png16(f, pixels, alpha, image.icc_profile, exif, xmp, dpi))
        return
    if fmt == "TIFF":
        atomic_write(path, lambda f: _write_tiff(f, pixels, alpha, image.icc_profile, exif, xmp, dpi))
        return
    if image.bit_depth == 16:
        pixels = _convert_depth(pixels, np.uint8)
        alpha = None if alpha is None else _convert_depth(alpha, np.uint8)
    if alpha is not None and fmt in _NO_ALPHA_FORMATS:
        pixels, alpha = _over_white(pixels, alpha), None
    pil = PILImage.fromarray(pixels)
    if alpha is not None:
        pil.putalpha(PILImage.fromarray(alpha))
    if fmt == "WEBP" and pil.mode in ("L", "LA"):
        pil = pil.convert("RGBA" if pil.mode == "LA" else "RGB")
    kwargs: dict[str, object] = {}
    if fmt != "BMP":
        if image.icc_profile:
            kwargs["icc_profile"] = image.icc_profile
        if exif:
            kwargs["exif"] = exif
        if xmp and fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            info.add_itxt(_XMP_KEY, xmp.decode("utf-8", "replace"))
            kwargs["pnginfo"] = info
        elif xmp:
            kwargs["xmp"] = xmp
    if dpi is not None and fmt != "WEBP":
        kwargs["dpi"] = dpi
    if fmt == "JPEG":
        kwargs["quality"] = quality
    elif fmt == "WEBP":
        kwargs.update(quality=quality, lossless=quality == 100, exact=True)
    atomic_write(path, lambda f: pil.save(f, format=fmt, **kwargs))


def _over_white(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = np.empty_like(pixels)
    for y0 in range(0, pixels.shape[0], _ROWS):
        a = _to_float(alpha[y0 : y0 + _ROWS])
        if pixels.ndim == 3:
            a = a[:, :, None]
        out[y0 : y0 + _ROWS] = quantize(_to_float(pixels[y0 : y0 + _ROWS]) * a + (1.0 - a), pixels.dtype)
    return out


_TMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files of ``path`` left by a writer that was killed (SIGKILL, power loss): those whose
    process id is no longer running. A live writer's temp file is never touched."""
    removed = []
    try:
        siblings = list(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for tmp in siblings:
        m = _TMP_NAME.fullmatch(tmp.name)
        if m and m["name"] == path.name and int(m["pid"]) != os.getpid() and not _pid_alive(int(m["pid"])):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob wildcards escaped, for Path.glob."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write`` on a temp file next to ``path`` and move it into place only once it is complete.

    The temp name is ``.<name>.<pid>-<random>.tmp``: hidden, so folder scans skip it. It is removed if
    ``write`` fails or is interrupted (Ctrl-C, and SIGTERM, which the CLI turns into an interrupt),
    and a later write of the same file removes one whose writer was killed outright. It is created
    with mode 0o666, which the umask reduces, unlike mkstemp's 0o600. OSError becomes InputError
    naming ``path``, not the temp file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise InputError(f"{path}: cannot write ({err.strerror or _one_line(err)}); check the output folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise InputError(f"{path}: cannot write ({err.strerror or _one_line(err)}); check the output folder") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _channels(pixels: np.ndarray, alpha: np.ndarray | None) -> list[np.ndarray]:
    planes = [pixels] if pixels.ndim == 2 else [pixels[:, :, i] for i in range(3)]
    return planes + ([alpha] if alpha is not None else [])


def _interleave(planes: list[np.ndarray], y0: int, y1: int, dtype: str) -> np.ndarray:
    return np.stack([p[y0:y1] for p in planes], axis=-1).astype(dtype, copy=False)


def _png_chunk(f: BinaryIO, kind: bytes, data: bytes) -> None:
    f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _paeth(rows: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """PNG Paeth filter of raw byte rows (n, L) given the raw row above. The encoder sees only raw bytes, so it vectorises."""
    x = rows.astype(np.int16)
    up = np.concatenate([prev[None].astype(np.int16), x[:-1]], axis=0)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    upleft = np.zeros_like(x)
    upleft[:, bpp:] = up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    return ((x - pred) & 0xFF).astype(np.uint8)


def _write_png16(
    f: BinaryIO, pixels: np.ndarray, alpha: np.ndarray | None, icc: bytes | None, exif: bytes | None,
    xmp: bytes | None = None, dpi: tuple[float, float] | None = None,
) -> None:
    planes = _channels(pixels, alpha)
    h, w = pixels.shape[:2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[len(planes)]
    f.write(b"\x89PNG\r\n\x1a\n")
    _png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
    if icc:
        _png_chunk(f, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if dpi is not None:  # pHYs: pixels per metre, unit 1
        _png_chunk(f, b"pHYs", struct.pack(">IIB", round(dpi[0] / 0.0254), round(dpi[1] / 0.0254), 1))
    if exif:
        _png_chunk(f, b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    if xmp:  # iTXt: keyword, no compression, empty language and translated keyword
        _png_chunk(f, b"iTXt", _XMP_KEY.encode() + b"\x00\x00\x00\x00\x00" + xmp)
    line = w * len(planes) * 2
    comp = zlib.compressobj(6)
    prev = np.zeros(line, np.uint8)
    for y0 in range(0, h, 64):
        raw = _interleave(planes, y0, y0 + 64, ">u2").reshape(-1, w * len(planes)).view(np.uint8)
        filtered = _paeth(raw, prev, len(planes) * 2)
        prev = raw[-1].copy()
        data = comp.compress(np.concatenate([np.full((len(raw), 1), 4, np.uint8), filtered], axis=1).tobytes())
        if data:
            _png_chunk(f, b"IDAT", data)
    _png_chunk(f, b"IDAT", comp.flush())
    _png_chunk(f, b"IEND", b"")


def _write_tiff(
    f: BinaryIO, pixels: np.ndarray, alpha: np.ndarray | None, icc: bytes | None, exif: bytes | None,
    xmp: bytes | None = None, dpi: tuple[float, float] | None = None,
) -> None:
    """Little-endian, deflate, 64-row strips; 8 or 16 bits. Pillow's IFD writer lays out the tags; the strips follow the IFD.

    Pillow's own TIFF writer can't do 16-bit colour. With libtiff compression it also fails on the
    EXIF sub-IFD.
    """
    bits = 16 if pixels.dtype == np.uint16 else 8
    if bits == 16 and pixels.ndim == 2 and alpha is not None:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    planes = _channels(pixels, alpha)
    h, w = pixels.shape[:2]
    rows = 64
    dtype = "<u2" if bits == 16 else "u1"
    strips = [zlib.compress(_interleave(planes, y0, y0 + rows, dtype).tobytes(), 6) for y0 in range(0, h, rows)]
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    if exif:
        e = PILImage.Exif()
        e.load(exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
        for tag, value in e.items():
            if tag not in _LAYOUT_TAGS:
                ifd[tag] = value
        for sub in _SUB_IFDS:
            d = e.get_ifd(sub)
            if d:
                ifd[sub] = dict(d)
    ifd[256], ifd[257] = w, h
    ifd[258] = (bits,) * len(planes)
    ifd.tagtype[258] = TiffTags.SHORT
    ifd[259] = 8  # deflate
    ifd[262] = 1 if pixels.ndim == 2 else 2
    ifd[277] = len(planes)
    ifd[278] = rows
    ifd[284] = 1
    if alpha is not None:
        ifd[338] = 2  # unassociated (straight) alpha
    if icc:
        ifd[34675] = icc
    if dpi is not None:
        ifd[282], ifd[283], ifd[296] = float(dpi[0]), float(dpi[1]), 2  # X/Y resolution per inch
        ifd.tagtype[282] = ifd.tagtype[283] = TiffTags.RATIONAL
    if xmp:
        ifd[700] = xmp
        ifd.tagtype[700] = TiffTags.BYTE
    # Offsets relative to the end of the IFD: Pillow adds that position when it writes tag 273.
    ifd[273] = tuple(int(v) for v in np.cumsum([0] + [len(s) for s in strips[:-1]]))
    ifd.tagtype[273] = TiffTags.LONG
    ifd[279] = tuple(len(s) for s in strips)
    ifd.tagtype[279] = TiffTags.LONG
    f.write(b"II*\x00" + struct.pack("<I", 8) + ifd.tobytes(8))
    for s in strips:
        f.write(s)
