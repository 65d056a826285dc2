"""Training datasets: HQ images from folders (recursive) or plain .tar files, with seeded crops/flips
and on-the-fly degradation.

Randomness never comes from worker state: the sampler hands out ``(index, sample_seed)`` pairs and
the dataset derives crop, flip and degradation from ``sample_seed`` alone. So a sample is the same
whatever the worker count, and a resumed run replays the exact stream by restarting the sampler at
its (epoch, position).

Unreadable files, and decompression bombs (the same rule as ``vrrestore face``/``image``:
:func:`vrrestore.io.check_pixels`, checked on the header before any pixel is decoded), are replaced by
the next readable image, so a bad file never stops a run, and are reported once with the reason: one
warning line each through the ``vrrestore.data`` logger, or (``warn=False``) in the sample's
``skipped`` field for the trainer to report once across all loader workers.
"""

from __future__ import annotations

import logging
import math
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from ..errors import InputError
from ..io import check_pixels, header_size
from .degradations import Recipe, degrade, derive_seed, recipe_scale

log = logging.getLogger("vrrestore.data")

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives: a file, or a byte range inside a plain .tar. ``key`` names it for seeding."""

    path: str
    key: str
    offset: int = -1
    size: int = -1


def _scan_tar(path: Path) -> list[ImageRef]:
    try:
        with tarfile.open(path, "r:") as tf:
            members = [m for m in tf.getmembers() if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTS]
    except tarfile.ReadError as err:
        raise ValueError(f"{path}: not a plain (uncompressed) tar file ({err})") from None
    return [ImageRef(str(path), f"{path.name}/{m.name}", m.offset_data, m.size) for m in members]


def list_images(paths: Sequence[str | os.PathLike[str]]) -> list[ImageRef]:
    """All images under ``paths`` (folders recursively, .tar members, single files), sorted by key."""
    refs: list[ImageRef] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                    refs.append(ImageRef(str(f), f"{p.name}/{f.relative_to(p).as_posix()}"))
        elif p.is_file() and p.suffix.lower() == ".tar":
            refs.extend(_scan_tar(p))
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            refs.append(ImageRef(str(p), p.name))
        else:
            raise ValueError(f"{p}: not a folder, a .tar or an image file")
    return sorted(refs, key=lambda r: r.key)


def decode_image(data: bytes, name: str = "image") -> np.ndarray | None:
    """Bytes -> (H, W, 3) float32 RGB in [0, 1] (gray expanded, alpha dropped, 16-bit scaled), or None.

    Raises InputError for a decompression bomb, before decoding it (``name`` goes in the message).
    """
    size = header_size(data)
    if size is not None:
        check_pixels(name, *size, len(data))
    old = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # we report bad files ourselves
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(old)
    if arr is None or arr.size == 0:
        return None
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr[..., ::-1], dtype=np.float32) / np.float32(scale)


def ref_name(ref: ImageRef) -> str:
    """How messages name an image: its path, or ``archive.tar:member``."""
    return ref.path if ref.offset < 0 else f"{ref.path}:{ref.key.split('/', 1)[1]}"


def load_image(ref: ImageRef) -> np.ndarray:
    """Decode one image, or raise InputError with one line naming it and saying why (unreadable, bomb)."""
    name = ref_name(ref)
    try:
        with open(ref.path, "rb") as f:
            if ref.offset >= 0:
                f.seek(ref.offset)
                data = f.read(ref.size)
            else:
                data = f.read()
    except OSError as err:
        raise InputError(f"{name}: cannot read ({err.strerror or err})") from None
    if not data:
        raise InputError(f"{name}: empty file (0 bytes)")
    img = decode_image(data, name)
    if img is None:
        raise InputError(f"{name}: unreadable or damaged image")
    return img


def read_image(ref: ImageRef) -> np.ndarray | None:
    """Decode one image; None when it cannot be read or decoded, or is a decompression bomb."""
    try:
        return load_image(ref)
    except InputError:
        return None


def random_crop_flip(img: np.ndarray, size: int, rng: np.random.Generator, mode: str, flip: bool = True) -> np.ndarray:
    """A ``size`` x ``size`` training view.

    ``mode='resize'`` (aligned faces): the whole image resized to ``size``. ``mode='crop'`` (SR
    patches): a random crop, the image first upscaled if a side is smaller than ``size``.
    """
    h, w = img.shape[:2]
    if mode == "resize":
        if (h, w) != (size, size):
            interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_CUBIC
            img = cv2.resize(img, (size, size), interpolation=interp)
    else:
        if min(h, w) < size:
            f = size / min(h, w)
            img = cv2.resize(img, (max(size, math.ceil(w * f)), max(size, math.ceil(h * f))), interpolation=cv2.INTER_CUBIC)
            h, w = img.shape[:2]
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        img = img[y : y + size, x : x + size]
    if flip and rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class RestorationDataset(Dataset):
    """HQ views (``gt``) and, when a recipe is given, their degraded versions (``lq``).

    Index with ``(i, sample_seed)`` pairs from :class:`SeededSampler` (a plain ``i`` uses seed ``i``).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        size: int,
        recipe: str | Recipe | None = None,
        mode: str = "resize",
        flip: bool = True,
        warn: bool = True,
    ) -> None:
        if mode not in ("resize", "crop"):
            raise ValueError(f"mode must be 'resize' or 'crop', not {mode!r}")
        self.refs = list_images(paths)
        if not self.refs:
            raise ValueError(f"no images found in {', '.join(map(str, paths))}")
        self.size, self.recipe, self.mode, self.flip, self.warn = size, recipe, mode, flip, warn
        if recipe is not None and size % recipe_scale(recipe):
            raise ValueError(f"training size {size} is not a multiple of the recipe's scale {recipe_scale(recipe)}")
        self._bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.refs)

    def _load(self, index: int, skipped: list[str]) -> np.ndarray:
        """The image at ``index``, or the next readable one; newly found bad files go to ``skipped``."""
        n = len(self.refs)
        for k in range(n):
            ref = self.refs[(index + k) % n]
            if ref.key in self._bad:
                continue
            try:
                return load_image(ref)
            except InputError as err:
                reason = str(err)
            self._bad.add(ref.key)
            skipped.append(reason)
            if self.warn:
                log.warning("skipping %s", reason)
        raise RuntimeError("none of the training images could be read")

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        """``{'gt', 'lq' (with a recipe), 'skipped'}``: ``skipped`` lists bad files newly met here,
        newline-separated, so a trainer with several workers can report each exactly once."""
        index, seed = item if isinstance(item, tuple) else (item, item)
        rng = np.random.default_rng(derive_seed(seed, "view"))
        skipped: list[str] = []
        gt = random_crop_flip(self._load(int(index), skipped), self.size, rng, self.mode, self.flip)
        out: dict[str, torch.Tensor | str] = {"gt": to_tensor(gt), "skipped": "\n".join(skipped)}
        if self.recipe is not None:
            out["lq"] = to_tensor(degrade(gt, self.recipe, derive_seed(seed, "degrade")))
        return out


class SeededSampler(DistributedSampler):
    """DistributedSampler that yields ``(index, sample_seed)`` and can start mid-epoch (exact resume).

    Each epoch is a seeded permutation shared by all ranks, padded to a multiple of the world size
    and split round-robin; ``sample_seed`` depends on (seed, epoch, position) only.
    """

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True) -> None:
        self.size = size
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)  # type: ignore[arg-type]
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Resume at ``start`` samples into this rank's share of ``epoch``."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", self.epoch) & 0x7FFF_FFFF_FFFF_FFFF)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        while len(order) < self.total_size:  # pad by wrapping around, like DistributedSampler
            order += order[: self.total_size - len(order)]
        order = order[: self.total_size]
        mine = order[self.rank : self.total_size : self.num_replicas]
        for pos in range(self.start, len(mine)):
            global_pos = pos * self.num_replicas + self.rank
            yield mine[pos], derive_seed(self.seed, "sample", self.epoch, global_pos)
        self.start = 0

    def __len__(self) -> int:
        return self.num_samples - self.start
