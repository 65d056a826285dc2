"""Run a model over a large image tile by tile, so memory follows the tile and the output size.

The tiles overlap and are blended with cosine ramps: each output pixel is the normalised weighted
mean of the tiles that cover it. A tile's weight falls towards zero at its inner borders, where the
model lacks context, and stays 1 at the image border. The weights sum to the normaliser, so a
constant stays constant and an identity model gives back its input exactly.

Rows are assembled in one float band per row of tiles. A band is rounded to the uint8/uint16 output
as soon as no later tile can touch it. Peak memory is then the output array plus one band, not a
float copy of the whole output.

On an out-of-memory error the tile is halved and the image redone, down to the policy's floor.
The smaller tile is kept for the next image.

A tile smaller than ``min_size`` (an image smaller than the model's smallest tile, down to 1x1) is
padded by edge replication/reflection to that size and the output cropped: the model never sees a
latent grid too small for its normalisation layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DeviceError
from .models.descriptor import TilingPolicy

TileFn = Callable[[torch.Tensor], torch.Tensor]
OnTile = Callable[[int, int], None]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length``, overlapping at least ``overlap``; the last tile ends at the edge."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = 1 + math.ceil((length - tile) / step)
    return sorted({min(i * step, length - tile) for i in range(n)})


def _ramp(n: int) -> np.ndarray:
    """Cosine ramp from near 0 to near 1 over n samples (never exactly 0, so every pixel keeps some weight)."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n, dtype=np.float64) + 0.5) / n)).astype(np.float32)


def _weights_1d(size: int, feather: int, first: bool, last: bool) -> np.ndarray:
    w = np.ones(size, np.float32)
    if feather > 0:
        if not first:
            w[:feather] = _ramp(feather)
        if not last:
            w[size - feather :] = np.minimum(w[size - feather :], _ramp(feather)[::-1])
    return w


def count_tiles(height: int, width: int, *, tile: int, overlap: int, multiple: int = 1) -> int:
    tile, overlap = _normalise(tile, overlap, multiple)
    return len(tile_starts(height, min(tile, height), overlap)) * len(tile_starts(width, min(tile, width), overlap))


def _normalise(tile: int, overlap: int, multiple: int) -> tuple[int, int]:
    tile = max(multiple, tile - tile % multiple)
    return tile, max(0, min(overlap, tile // 2))


def _as_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError(f"tiled_apply takes one image, got a batch of {t.shape[0]}")
            t = t[0]
        return t.permute(1, 2, 0).float().cpu().numpy()
    if image.ndim == 2:
        return image[:, :, None]
    return image


def _padded(n: int, multiple: int, min_size: int) -> int:
    """The side a tile of side ``n`` is padded to: at least ``min_size``, a multiple of ``multiple``."""
    n = max(n, min_size)
    return n + (-n) % multiple


def _tile_tensor(arr: np.ndarray, y0: int, y1: int, x0: int, x1: int, multiple: int, min_size: int = 1) -> torch.Tensor:
    a = arr[y0:y1, x0:x1]
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
    x = x.float() / float(np.iinfo(a.dtype).max) if a.dtype.kind == "u" else x.float()
    ph, pw = _padded(y1 - y0, multiple, min_size) - (y1 - y0), _padded(x1 - x0, multiple, min_size) - (x1 - x0)
    if ph or pw:
        mode = "reflect" if ph < y1 - y0 and pw < x1 - x0 else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


def tiled_apply(
    fn: TileFn,
    image: torch.Tensor | np.ndarray,
    *,
    scale: int,
    tile: int,
    overlap: int,
    multiple: int = 1,
    out_dtype: type | np.dtype = np.uint8,
    on_tile: OnTile | None = None,
    min_size: int = 1,
) -> np.ndarray:
    """Apply ``fn`` ((1, C, h, w) float [0, 1] -> (1, C, h*scale, w*scale)) over ``image`` in blended tiles.

    ``image`` is (H, W, C) numpy (uint8/uint16, or float in [0, 1]) or a (C, H, W)/(1, C, H, W)
    tensor. ``tile`` and ``overlap`` are in input pixels. The tile is rounded down to ``multiple``
    and the overlap capped at half the tile. A tile smaller than ``multiple`` (small images) is
    reflect-padded and the output cropped, as is one smaller than ``min_size`` (tiny images). Returns
    (H*scale, W*scale, C) in ``out_dtype``. Integer dtypes are rounded from [0, 1] band by band; float
    dtypes are returned unrounded.
    """
    arr = _as_hwc(image)
    height, width, channels = arr.shape
    tile, overlap = _normalise(tile, overlap, multiple)
    th, tw = min(tile, height), min(tile, width)
    ys, xs = tile_starts(height, th, overlap), tile_starts(width, tw, overlap)
    feather = overlap * scale
    wxs = [_weights_1d(tw * scale, feather, i == 0, i == len(xs) - 1) for i in range(len(xs))]
    out_dtype = np.dtype(out_dtype)
    out = np.empty((height * scale, width * scale, channels), out_dtype)
    band_rows = th * scale
    acc = np.zeros((band_rows, width * scale, channels), np.float32)
    wsum = np.zeros((band_rows, width * scale), np.float32)
    top = 0  # output row held in acc[0]
    total, done = len(ys) * len(xs), 0

    def flush(upto: int) -> None:
        """Normalise output rows [top, upto), write them out, and shift the rest of the band up."""
        nonlocal top
        n = upto - top
        if n <= 0:
            return
        block = acc[:n]
        np.divide(block, wsum[:n, :, None], out=block)
        if out_dtype.kind == "u":
            maxv = float(np.iinfo(out_dtype).max)
            block *= maxv
            block += 0.5
            np.clip(block, 0.0, maxv, out=block)
        out[top:upto] = block
        keep = band_rows - n
        acc[:keep] = acc[n:].copy()
        wsum[:keep] = wsum[n:].copy()
        acc[keep:] = 0.0
        wsum[keep:] = 0.0
        top = upto

    for iy, y0 in enumerate(ys):
        flush(y0 * scale)
        wy = _weights_1d(th * scale, feather, iy == 0, iy == len(ys) - 1)
        r0 = y0 * scale - top
        for ix, x0 in enumerate(xs):
            x = _tile_tensor(arr, y0, y0 + th, x0, x0 + tw, multiple, min_size)
            y = fn(x)
            if y.shape[-2] < th * scale or y.shape[-1] < tw * scale or y.shape[1] != channels:
                raise ValueError(f"model returned {tuple(y.shape)} for a {tuple(x.shape)} tile at scale {scale}")
            y = y[0, :, : th * scale, : tw * scale].permute(1, 2, 0).float().cpu().numpy()
            w = wy[:, None] * wxs[ix][None, :]
            c0, c1 = x0 * scale, (x0 + tw) * scale
            acc[r0 : r0 + band_rows, c0:c1] += y * w[:, :, None]
            wsum[r0 : r0 + band_rows, c0:c1] += w
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    flush(height * scale)
    return out[:, :, 0] if image.ndim == 2 and isinstance(image, np.ndarray) else out


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM, and the RuntimeErrors that MPS and the CPU allocator raise for the same thing."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def choose_tile(
    policy: TilingPolicy,
    device: torch.device,
    *,
    scale: int,
    multiple: int = 1,
    free_bytes: int | None = None,
    bytes_per_output_px: float | None = None,
    headroom: float = 0.7,
) -> int:
    """The default tile: the policy's tile (its training size) on CPU/MPS. On CUDA, halve it until the estimate fits in free memory.

    The policy tile is an upper bound: the position embeddings are trained on that grid, so
    larger tiles run less well. ``bytes_per_output_px`` comes from :func:`measure_bytes_per_output_px`.
    """
    tile = max(multiple, policy.tile - policy.tile % multiple)
    if device.type != "cuda":
        return tile
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    if bytes_per_output_px is None:
        return tile
    floor = max(multiple, min(policy.min_tile, tile))
    while tile > floor and bytes_per_output_px * (tile * scale) ** 2 > headroom * free_bytes:
        tile = max(floor, (tile // 2) - (tile // 2) % multiple)
    return tile


def measure_bytes_per_output_px(fn: TileFn, device: torch.device, *, size: int, scale: int, channels: int = 3) -> float | None:
    """Peak CUDA memory of one (size x size) probe tile, per output pixel; None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(torch.zeros(1, channels, size, size))
    peak = torch.cuda.max_memory_allocated(device) - base
    return max(peak, 1) / float((size * scale) ** 2)


def tiled_apply_with_backoff(
    fn: TileFn,
    image: np.ndarray | torch.Tensor,
    *,
    scale: int,
    tile: int,
    overlap: int,
    min_tile: int,
    multiple: int = 1,
    out_dtype: type | np.dtype = np.uint8,
    on_tile: OnTile | None = None,
    on_backoff: Callable[[int], None] | None = None,
    name: str = "image",
    min_size: int = 1,
) -> tuple[np.ndarray, int]:
    """:func:`tiled_apply`, redone with half the tile after an out-of-memory error. Returns (output, tile used).

    Below ``min_tile`` it raises DeviceError, which names ``name``. The retry happens outside the
    ``except`` block: the traceback holds the failed tile's tensors, and they must be freed before
    the cache is emptied.
    """
    floor = max(multiple, min(min_tile, tile))
    while True:
        failed = False
        try:
            return tiled_apply(
                fn, image, scale=scale, tile=tile, overlap=overlap, multiple=multiple, out_dtype=out_dtype,
                on_tile=on_tile, min_size=min(min_size, tile),
            ), tile
        except Exception as err:  # noqa: BLE001 - only OOM is handled; anything else is re-raised
            if not is_out_of_memory(err):
                raise
            failed = True
        if failed:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if tile <= floor:
                raise DeviceError(
                    f"{name}: out of memory even with {tile} px tiles; free memory on the device or use --device cpu"
                )
            tile = max(floor, (tile // 2) - (tile // 2) % multiple)
            if on_backoff is not None:
                on_backoff(tile)
