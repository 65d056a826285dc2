"""vrrestore.io: the read/write matrix (mode, bit depth, size, orientation, ICC, EXIF, alpha), errors, atomic writes."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from vrrestore.errors import InputError, UsageError
from vrrestore.io import (
    SUPPORTED_EXTS,
    Image,
    atomic_write,
    fill_transparent,
    pixel_limit,
    quantize,
    read_image,
    resize_alpha,
    write_image,
)

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
RNG = np.random.default_rng(0)
H, W = 9, 13


def exif_bytes(orientation: int = 1) -> bytes:
    e = PILImage.Exif()
    e[0x0112] = orientation
    e[0x010F] = "TestCam"
    e.get_ifd(0x8769)[0x9003] = "2020:01:01 00:00:00"
    return e.tobytes()


def parse_exif(b: bytes | None) -> PILImage.Exif:
    e = PILImage.Exif()
    if b:
        e.load(b[6:] if b.startswith(b"Exif\x00\x00") else b)
    return e


def rand(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


CASES = {
    "gray8": (rand((H, W), np.uint8), None),
    "gray16": (rand((H, W), np.uint16), None),
    "rgb8": (rand((H, W, 3), np.uint8), None),
    "rgb16": (rand((H, W, 3), np.uint16), None),
    "rgba8": (rand((H, W, 3), np.uint8), rand((H, W), np.uint8)),
    "rgba16": (rand((H, W, 3), np.uint16), rand((H, W), np.uint16)),
    "la8": (rand((H, W), np.uint8), rand((H, W), np.uint8)),
    "la16": (rand((H, W), np.uint16), rand((H, W), np.uint16)),
}
LOSSLESS = [(case, ext) for case in CASES for ext in ("png", "tiff", "webp")
            if not (ext == "webp" and (case.endswith("16") or case.startswith(("gray", "la"))))]


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(("case", "ext"), LOSSLESS)
def test_lossless_round_trip_keeps_everything(tmp_path: Path, case: str, ext: str) -> None:
    pixels, alpha = CASES[case]
    path = tmp_path / f"x.{ext}"
    write_image(Image(pixels, alpha, icc_profile=ICC, exif=exif_bytes()), path, quality=100)
    back = read_image(path)
    expect = pixels
    if case == "la16" and ext == "tiff":  # 2-channel 16-bit TIFF is unreadable by Pillow/OpenCV: written as RGBA
        expect = np.repeat(pixels[:, :, None], 3, axis=2)
    assert back.pixels.dtype == pixels.dtype and back.bit_depth == (16 if case.endswith("16") else 8)
    np.testing.assert_array_equal(back.pixels, expect)
    if alpha is None:
        assert back.alpha is None
    else:
        np.testing.assert_array_equal(back.alpha, alpha)
    assert back.size == (W, H)
    assert back.icc_profile == ICC
    e = parse_exif(back.exif)
    assert e[0x010F] == "TestCam" and e[0x0112] == 1
    assert e.get_ifd(0x8769)[0x9003] == "2020:01:01 00:00:00"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ext", ["jpg", "bmp", "webp"])
def test_lossy_and_8bit_formats(tmp_path: Path, case: str, ext: str) -> None:
    pixels, alpha = CASES[case]
    path = tmp_path / f"x.{ext}"
    write_image(Image(pixels, alpha, icc_profile=ICC, exif=exif_bytes()), path, quality=100)
    back = read_image(path)
    assert back.bit_depth == 8 and back.size == (W, H)
    gray_kept = ext != "webp"  # WebP has no gray mode
    assert back.is_gray == (pixels.ndim == 2 and gray_kept)
    if ext in ("jpg", "bmp"):
        assert back.alpha is None  # composited over white
    else:
        assert (back.alpha is not None) == (alpha is not None)
    if ext != "bmp":  # BMP has no metadata
        assert back.icc_profile == ICC and parse_exif(back.exif)[0x010F] == "TestCam"
    if ext == "bmp" and alpha is None:
        ref8 = pixels if pixels.dtype == np.uint8 else ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
        np.testing.assert_array_equal(back.pixels, ref8)


def test_alpha_to_jpeg_composites_over_white(tmp_path: Path) -> None:
    px = np.zeros((8, 8, 3), np.uint8)
    a = np.zeros((8, 8), np.uint8)
    a[:, 4:] = 255
    write_image(Image(px, a), tmp_path / "x.bmp")
    back = read_image(tmp_path / "x.bmp").pixels
    assert (back[:, :4] == 255).all() and (back[:, 4:] == 0).all()


def test_quality_controls_jpeg_and_webp_size(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    px = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 7) % 256], -1).astype(np.uint8)
    px = np.clip(px.astype(int) + RNG.integers(-20, 20, px.shape), 0, 255).astype(np.uint8)
    for ext in ("jpg", "webp"):
        write_image(Image(px), tmp_path / f"lo.{ext}", quality=10)
        write_image(Image(px), tmp_path / f"hi.{ext}", quality=95)
        assert (tmp_path / f"lo.{ext}").stat().st_size < 0.6 * (tmp_path / f"hi.{ext}").stat().st_size
    write_image(Image(px), tmp_path / "exact.webp", quality=100)
    np.testing.assert_array_equal(read_image(tmp_path / "exact.webp").pixels, px)


def test_16bit_is_not_truncated_to_8bit(tmp_path: Path) -> None:
    px = np.arange(H * W * 3, dtype=np.uint16).reshape(H, W, 3) * 151 + 1  # low bytes differ
    for ext in ("png", "tiff"):
        write_image(Image(px), tmp_path / f"x.{ext}")
        back = read_image(tmp_path / f"x.{ext}").pixels
        assert back.dtype == np.uint16 and np.array_equal(back, px)
    # and files written by another encoder (OpenCV, BGR order) read the same
    cv2.imwrite(str(tmp_path / "cv.png"), px[:, :, ::-1].copy())
    cv2.imwrite(str(tmp_path / "cv.tif"), px[:, :, ::-1].copy())
    np.testing.assert_array_equal(read_image(tmp_path / "cv.png").pixels, px)
    np.testing.assert_array_equal(read_image(tmp_path / "cv.tif").pixels, px)


# ----------------------------------------------------------------------------------- orientation


def _asym(h: int = 5, w: int = 7) -> np.ndarray:
    return (np.arange(h * w * 3).reshape(h, w, 3) * 3 % 256).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_pillow_and_reset(tmp_path: Path, orientation: int) -> None:
    src = tmp_path / "o.png"
    PILImage.fromarray(_asym()).save(src, exif=exif_bytes(orientation))
    img = read_image(src)
    expect = np.asarray(ImageOps.exif_transpose(PILImage.open(src)))
    np.testing.assert_array_equal(img.pixels, expect)
    assert parse_exif(img.exif)[0x0112] == 1
    write_image(img, tmp_path / "out.jpg", quality=95)
    out = PILImage.open(tmp_path / "out.jpg")
    assert out.getexif()[0x0112] == 1 and out.size == img.size  # viewers won't rotate it twice


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied_to_16bit_and_alpha(tmp_path: Path, orientation: int) -> None:
    px8 = _asym()
    a8 = px8[:, :, 0].copy()
    px16 = px8.astype(np.uint16) * 257
    rgba16 = np.dstack([px16[:, :, ::-1], a8.astype(np.uint16) * 257])  # BGRA for OpenCV
    ok, buf = cv2.imencodeWithMetadata(".png", rgba16, [cv2.IMAGE_METADATA_EXIF], [np.frombuffer(exif_bytes(orientation)[6:], np.uint8)])
    assert ok
    (tmp_path / "o16.png").write_bytes(buf.tobytes())
    img = read_image(tmp_path / "o16.png")
    PILImage.fromarray(np.dstack([px8, a8]), "RGBA").save(tmp_path / "o8.png", exif=exif_bytes(orientation))
    ref = np.asarray(ImageOps.exif_transpose(PILImage.open(tmp_path / "o8.png")))
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.pixels, ref[:, :, :3].astype(np.uint16) * 257)
    np.testing.assert_array_equal(img.alpha, ref[:, :, 3].astype(np.uint16) * 257)


# ------------------------------------------------------------------------------------ source modes


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    idx = np.zeros((6, 6), np.uint8)
    idx[2:4, 2:4] = 1
    im = PILImage.fromarray(idx, "P")
    im.putpalette([0, 255, 0, 200, 10, 20] + [0] * 762)
    im.save(tmp_path / "p.png", transparency=0)
    img = read_image(tmp_path / "p.png")
    assert img.alpha is not None and not img.is_gray
    assert (img.alpha[2:4, 2:4] == 255).all() and img.alpha.sum() == 4 * 255
    assert tuple(img.pixels[2, 2]) == (200, 10, 20)
    im.save(tmp_path / "p_opaque.png")  # no tRNS: plain RGB
    assert read_image(tmp_path / "p_opaque.png").alpha is None


def test_gray_with_trns_and_1bit(tmp_path: Path) -> None:
    g = np.full((4, 4), 7, np.uint8)
    g[0, 0] = 99
    PILImage.fromarray(g, "L").save(tmp_path / "g.png", transparency=7)
    img = read_image(tmp_path / "g.png")
    assert img.is_gray and img.alpha is not None and img.alpha[0, 0] == 255 and img.alpha.sum() == 255
    PILImage.fromarray(g > 50).save(tmp_path / "b.png")
    b = read_image(tmp_path / "b.png")
    assert b.is_gray and b.pixels.dtype == np.uint8 and b.pixels[0, 0] == 255 and b.pixels[1, 1] == 0


def test_cmyk_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    im = PILImage.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
    im.paste((0, 0, 0, 255), (0, 0, 4, 8))  # black left half
    im.save(tmp_path / "c.jpg", quality=100)
    img = read_image(tmp_path / "c.jpg")
    assert img.pixels.shape == (8, 8, 3) and img.format == "JPEG"
    assert np.abs(img.pixels[4, 6].astype(int) - (0, 255, 255)).max() <= 3
    assert img.pixels[4, 1].max() <= 3


def test_16bit_gray_from_pillow(tmp_path: Path) -> None:
    g = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 401)
    PILImage.fromarray(g).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.is_gray and img.pixels.dtype == np.uint16
    np.testing.assert_array_equal(img.pixels, g)


# -------------------------------------------------------------------------------------- errors


def _bad(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _good_png() -> bytes:
    from io import BytesIO

    b = BytesIO()
    PILImage.fromarray(rand((64, 64, 3), np.uint8)).save(b, "PNG")
    return b.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("empty.png", b"", "empty file"),
        ("notes.png", b"hello, this is text\n" * 10, "not an image"),
        ("truncated.png", _good_png()[:300], "damaged or truncated"),
    ],
)
def test_unreadable_files_give_one_line_naming_the_file(tmp_path: Path, name: str, data: bytes, words: str) -> None:
    p = _bad(tmp_path, name, data)
    with pytest.raises(InputError) as ei:
        read_image(p)
    msg = str(ei.value)
    assert str(p) in msg and words in msg and "\n" not in msg


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)


def test_decompression_bomb_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A PNG header claiming 60000 x 60000 pixels, with almost no data behind it
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100000)
    p = _bad(tmp_path, "bomb.png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    with pytest.raises(InputError, match="decompression bomb") as ei:
        read_image(p)
    msg = str(ei.value)
    assert str(p) in msg and "\n" not in msg and "60000x60000" in msg
    assert "--max-pixels 3600000000" in msg and "VRRESTORE_MAX_PIXELS=3600000000" in msg  # the way out
    # an explicit limit (flag or env var) replaces the default rule, lower or higher
    write_image(Image(rand((40, 40, 3), np.uint8)), tmp_path / "ok.png")
    with pytest.raises(InputError, match="decompression"):
        read_image(tmp_path / "ok.png", max_pixels=1000)
    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="decompression"):
        read_image(tmp_path / "ok.png")
    assert read_image(tmp_path / "ok.png", max_pixels=1600).size == (40, 40)  # the flag beats the env var
    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "0")  # 0 = no limit
    assert read_image(tmp_path / "ok.png").size == (40, 40)
    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "lots")
    with pytest.raises(UsageError, match="VRRESTORE_MAX_PIXELS=lots"):
        read_image(tmp_path / "ok.png")


def test_big_real_photos_pass_and_bombs_do_not_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VRRESTORE_MAX_PIXELS", raising=False)
    # A 90 MP camera JPEG is ~30 MB; our x4 output of it (1.44 GP) as a q95 JPEG ~200 MB.
    assert pixel_limit(30_000_000) >= 90_000_000 and pixel_limit(200_000_000) >= 1_440_000_000
    assert pixel_limit(10) >= 96_000_000  # whatever the file size, up to 256 MP is never refused
    # The 30000 x 30000 PNG of the report: 2.6 MB of deflated zeros claiming 900 MP.
    assert pixel_limit(2_600_000) < 900_000_000
    assert pixel_limit(10, max_pixels=0) is None and pixel_limit(10**9, max_pixels=5) == 5


def test_our_own_outputs_read_back_above_the_default_pixel_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scaled down: with the default at 1,000 pixels, a 64 x 64 restored-looking photo (noise) still reads,
    because its file holds far more than one byte per 16 pixels; a flat image of that size does not."""
    import vrrestore.io as vio

    monkeypatch.delenv("VRRESTORE_MAX_PIXELS", raising=False)
    monkeypatch.setattr(vio, "DEFAULT_MAX_PIXELS", 1000)
    for ext in ("png", "jpg", "webp", "tiff"):
        write_image(Image(rand((64, 64, 3), np.uint8)), tmp_path / f"out.{ext}", quality=95)
        assert read_image(tmp_path / f"out.{ext}").size == (64, 64)
    write_image(Image(np.zeros((64, 64, 3), np.uint8)), tmp_path / "flat.png")
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(tmp_path / "flat.png")


def test_write_refuses_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write .gif"):
        write_image(Image(rand((4, 4, 3), np.uint8)), tmp_path / "x.gif")
    assert set(SUPPORTED_EXTS) >= {"png", "jpg", "webp", "tiff", "bmp"}


# ------------------------------------------------------------------------------------ atomic write


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.png"

    def half(f):  # noqa: ANN001, ANN202
        f.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half)
    assert list(tmp_path.iterdir()) == []
    # an existing output survives a failed overwrite untouched
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_written_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_image(Image(rand((4, 4, 3), np.uint8)), tmp_path / "x.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o644


def test_stale_temp_of_a_killed_writer_is_removed_and_a_live_one_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".out.png.{dead}-0123abcd.tmp"  # left by a writer killed with SIGKILL
    live = tmp_path / f".out.png.{os.getppid()}-0123abcd.tmp"  # a writer that is still running
    other = tmp_path / f".other.png.{dead}-0123abcd.tmp"  # another file's: not ours to judge here
    for t in (stale, live, other):
        t.write_bytes(b"partial")
    write_image(Image(rand((4, 4, 3), np.uint8)), tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.png", live.name, other.name])


def test_write_error_names_the_output_not_the_temp_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file where a folder should be")
    with pytest.raises(InputError) as ei:
        write_image(Image(rand((4, 4, 3), np.uint8)), tmp_path / "file" / "x.png")
    msg = str(ei.value)
    assert msg.startswith(str(tmp_path / "file" / "x.png")) and ".tmp" not in msg and "cannot write" in msg


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "tiff", "bmp"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_xmp_and_dpi_survive_and_dpi_follows_the_upscale(tmp_path: Path, ext: str, dtype: type) -> None:
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="me"/></rdf:RDF></x:xmpmeta>')
    src = Image(rand((H, W, 3), dtype), xmp=xmp, dpi=(300.0, 150.0))
    up = src.replace(np.zeros((2 * H, 2 * W, 3), np.float32), scale=2)
    assert up.dpi == (600.0, 300.0) and up.xmp == xmp  # same print size, twice the pixels
    write_image(up, tmp_path / f"o.{ext}")
    back = read_image(tmp_path / f"o.{ext}")
    assert back.xmp == (None if ext == "bmp" else xmp)  # BMP has no place for XMP
    if ext == "webp":
        assert back.dpi is None  # WebP has no resolution field
    else:
        assert back.dpi == pytest.approx((600.0, 300.0), abs=0.02)  # PNG stores pixels per metre


def test_xmp_orientation_is_reset_with_the_pixels(tmp_path: Path) -> None:
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    PILImage.fromarray(rand((H, W, 3), np.uint8)).save(tmp_path / "r.jpg", xmp=xmp, exif=exif_bytes(6), dpi=(300, 100))
    img = read_image(tmp_path / "r.jpg")
    assert img.size == (H, W) and b'tiff:Orientation="1"' in (img.xmp or b"")
    assert img.dpi == (100.0, 300.0)  # the axes turn with the pixels
    write_image(img, tmp_path / "again.jpg")
    assert read_image(tmp_path / "again.jpg").size == (H, W)  # upright once, never turned twice


# ---------------------------------------------------------------------------- Image helpers


def test_rgb_float_and_replace_round_trip_exactly() -> None:
    for dtype in (np.uint8, np.uint16):
        px = rand((H, W, 3), dtype)
        img = Image(px, icc_profile=ICC)
        back = img.replace(img.rgb_float())
        np.testing.assert_array_equal(back.pixels, px)
        assert back.icc_profile == ICC
        gray = Image(rand((H, W), dtype))
        f = gray.rgb_float()
        assert f.shape == (H, W, 3) and f.dtype == np.float32
        np.testing.assert_array_equal(gray.replace(f).pixels, gray.pixels)  # luma of R=G=B is exact


def test_replace_scales_alpha_and_keeps_depth() -> None:
    px = rand((6, 5, 3), np.uint16)
    a = np.full((6, 5), 65535, np.uint16)
    a[:, :2] = 0
    up = Image(px, a).replace(np.zeros((24, 20, 3), np.float32), scale=4)
    assert up.pixels.shape == (24, 20, 3) and up.pixels.dtype == np.uint16
    assert up.alpha is not None and up.alpha.shape == (24, 20) and up.alpha.dtype == np.uint16
    assert up.alpha[:, :6].max() == 0 and up.alpha[:, 10:].min() == 65535  # cubic overshoot clipped
    with pytest.raises(ValueError, match="expected"):
        Image(px).replace(np.zeros((6, 5, 3), np.float32), scale=2)


def test_quantize_rounds_and_clips() -> None:
    x = np.array([[-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 3.0]], np.float32)
    np.testing.assert_array_equal(quantize(x, np.uint8), [[0, 0, 0, 1, 255, 255]])
    assert resize_alpha(np.full((2, 2), 200, np.uint8), (8, 8)).min() == 200


def test_fill_transparent_pushes_visible_colour_under_holes() -> None:
    rgb = np.zeros((16, 16, 3), np.float32)
    rgb[:, :8] = (1.0, 0.0, 0.0)  # visible red
    rgb[:, 8:] = (0.0, 1.0, 0.0)  # hidden green
    visible = np.zeros((16, 16), bool)
    visible[:, :8] = True
    out = fill_transparent(rgb, visible)
    np.testing.assert_array_equal(out[:, :8], rgb[:, :8])
    assert np.allclose(out[:, 8:], (1.0, 0.0, 0.0), atol=1e-5)
    img = Image((rgb * 255).astype(np.uint8), (visible * 255).astype(np.uint8))
    assert img.rgb_float()[:, 8:, 1].max() < 1e-5
