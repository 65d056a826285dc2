"""Datasets: folders (recursive) and .tar files, seeded crops/flips, corrupt files skipped with one
warning each, and the seeded sampler that makes resume exact."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vrrestore.data.datasets import RestorationDataset, SeededSampler, decode_image, list_images, random_crop_flip


def write_images(folder: Path, n: int, size: int = 48, seed: int = 0, ext: str = ".png") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = (rng.random((size, size + 8, 3)) * 255).astype(np.uint8)
        p = folder / f"img{i:02d}{ext}"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def test_folder_is_read_recursively_and_tar_members_too(tmp_path: Path) -> None:
    write_images(tmp_path / "a", 2)
    write_images(tmp_path / "a" / "deeper", 2, seed=1, ext=".jpg")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    tar_path = tmp_path / "pack.tar"
    with tarfile.open(tar_path, "w") as tf:
        for p in write_images(tmp_path / "src", 3, seed=2):
            tf.add(p, arcname=f"faces/{p.name}")
    refs = list_images([tmp_path / "a", tar_path])
    assert len(refs) == 7
    assert {r.key for r in refs} >= {"a/deeper/img00.jpg", "pack.tar/faces/img02.png"}
    ds = RestorationDataset([tar_path], size=32, mode="crop")
    item = ds[(0, 5)]
    direct = cv2.imread(str(tmp_path / "src" / "img00.png"))[..., ::-1].astype(np.float32) / 255
    assert item["gt"].shape == (3, 32, 32)
    # the tar member decodes to the same pixels as the file it came from
    assert np.allclose(decode_image((tmp_path / "src" / "img00.png").read_bytes()), direct)


def test_compressed_tar_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    p = tmp_path / "x.tar"
    with tarfile.open(p, "w:gz") as tf:
        data = io.BytesIO(b"abc")
        info = tarfile.TarInfo("a.png")
        info.size = 3
        tf.addfile(info, data)
    with pytest.raises(ValueError, match="plain"):
        list_images([p])


def test_samples_are_a_function_of_the_seed(tmp_path: Path) -> None:
    write_images(tmp_path, 3)
    ds = RestorationDataset([tmp_path], size=32, recipe="face", mode="crop")
    a, b, c = ds[(1, 42)], ds[(1, 42)], ds[(1, 43)]
    assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"])
    assert not torch.equal(a["lq"], c["lq"])
    sr = RestorationDataset([tmp_path], size=32, recipe="bicubic-x4", mode="crop")
    assert sr[(0, 1)]["lq"].shape == (3, 8, 8)
    with pytest.raises(ValueError, match="multiple"):
        RestorationDataset([tmp_path], size=30, recipe="sr-x4")


def test_crop_and_flip() -> None:
    img = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    flips = 0
    for s in range(20):
        out = random_crop_flip(img, 32, np.random.default_rng(s), "crop")
        assert out.shape == (32, 32, 3)
        # every crop is a window of the image or of its mirror
        found = any(np.array_equal(out, src[y : y + 32, x : x + 32]) for src in (img, img[:, ::-1]) for y in range(9) for x in range(19))
        assert found
        flips += int(not any(np.array_equal(out, img[y : y + 32, x : x + 32]) for y in range(9) for x in range(19)))
    assert 3 <= flips <= 17
    small = random_crop_flip(img[:20, :20], 32, np.random.default_rng(0), "crop")  # upscaled first
    assert small.shape == (32, 32, 3)
    whole = random_crop_flip(img, 16, np.random.default_rng(0), "resize", flip=False)
    assert np.allclose(whole, cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA), atol=1e-6)


def test_corrupt_files_are_skipped_with_one_warning_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    ds = RestorationDataset([tmp_path], size=32, mode="crop")
    assert len(ds) == 5
    with caplog.at_level(logging.WARNING, logger="vrrestore.data"):
        items = [ds[(i, i)] for i in range(len(ds))] + [ds[(i, i)] for i in range(len(ds))]
    assert all(it["gt"].shape == (3, 32, 32) for it in items)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert any("broken.png" in w for w in warnings) and any("empty.jpg" in w for w in warnings)
    assert "grfmt" not in capfd.readouterr().err  # no extra native OpenCV chatter
    reported = [line for it in items for line in str(it["skipped"]).split("\n") if line]
    # in the batch once each too, as "NAME: why"
    assert sorted(Path(line.split(": ", 1)[0]).name for line in reported) == ["broken.png", "empty.jpg"]


def test_gray_alpha_and_16bit_images_decode_to_rgb_float(tmp_path: Path) -> None:
    gray = np.full((8, 8), 128, np.uint8)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    deep = np.full((8, 8, 3), 65535, np.uint16)
    for name, arr in (("g.png", gray), ("a.png", rgba), ("d.png", deep)):
        cv2.imwrite(str(tmp_path / name), arr)
    g = decode_image((tmp_path / "g.png").read_bytes())
    a = decode_image((tmp_path / "a.png").read_bytes())
    d = decode_image((tmp_path / "d.png").read_bytes())
    assert g.shape == a.shape == d.shape == (8, 8, 3)
    assert np.allclose(g, 128 / 255) and np.allclose(a[..., 0], 1.0) and np.allclose(a[..., 1:], 0)
    assert np.allclose(d, 1.0)


def test_sampler_resumes_mid_epoch_and_shards_across_ranks() -> None:
    s = SeededSampler(10, seed=3)
    s.set_epoch(1)
    full = list(s)
    assert sorted(i for i, _ in full) == list(range(10))
    s.set_position(1, 4)
    assert list(s) == full[4:]
    assert list(s) == full  # the start offset applies to one pass only
    s.set_epoch(2)
    assert [i for i, _ in s] != [i for i, _ in full]  # a new permutation per epoch
    r0, r1 = SeededSampler(10, 3, num_replicas=2, rank=0), SeededSampler(10, 3, num_replicas=2, rank=1)
    r0.set_epoch(1)
    r1.set_epoch(1)
    shards = list(r0) + list(r1)
    assert sorted(shards) == sorted(full)  # same (index, seed) pairs, split between ranks
    assert isinstance(r0, torch.utils.data.distributed.DistributedSampler)
    odd = SeededSampler(5, 0, num_replicas=2, rank=1)
    assert len(list(odd)) == 3  # padded to a multiple of the world size


# ------------------------------------------------------------------------------- decompression bombs


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels with almost no data: what a bomb looks like before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")


def test_decompression_bomb_in_a_training_set_is_skipped_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_images(tmp_path, 2)
    (tmp_path / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    ds = RestorationDataset([tmp_path], size=32, mode="crop")
    with caplog.at_level(logging.WARNING, logger="vrrestore.data"):
        items = [ds[(i, i)] for i in range(len(ds))]
    assert all(it["gt"].shape == (3, 32, 32) for it in items)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "bomb.png" in warnings[0] and "decompression bomb" in warnings[0]
    assert "30000x30000" in warnings[0] and "VRRESTORE_MAX_PIXELS" in warnings[0]


def test_training_reads_obey_the_same_pixel_limit_as_face_and_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vrrestore.errors import InputError

    (path,) = write_images(tmp_path, 1, size=40)  # 40 x 48 = 1920 pixels of noise
    data = path.read_bytes()
    assert decode_image(data) is not None
    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "1000")  # inherited by loader workers, like any env var
    with pytest.raises(InputError, match="decompression bomb"):
        decode_image(data, "img00.png")
    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "0")  # 0 = no limit
    assert decode_image(data) is not None
