"""Whole-photo restoration: an SR descriptor run over the image in blended tiles.

The pipeline owns the policy: tile size (auto from the descriptor and device, or the user's),
halving it on out-of-memory, precision, tiny inputs, the final ``outscale`` resize, and turning an
``io.Image`` (gray, alpha, 16-bit) into model input and back. The model stays tensors in, tensors out.

Tile policy, from measurements (CPU, 1 thread, ``--tile T`` = T x T input pixels):

| preset | T=16 | T=32 | T=64 | T=128 | peak memory per output pixel |
|---|---:|---:|---:|---:|---:|
| sr-tiny (us per output px) | 6.5 | 5.1 | 3.1 | 4.7 | 0.7-1.1 KB (T >= 64); 1.6 KB at T=400 |
| sr-x4-s | | 10.5 | 11.0 | 19.8 | 1.6-1.7 KB |

Overlap is recomputed by every tile, so a tile must be large against its overlap: 16 px tiles with
the 8 px overlap of sr-tiny's descriptor do 4x the work (26 us per useful pixel against 4.1 at 64
px). The auto tile is therefore at least 8x the overlap (at most 31% recomputed), and never smaller
than the descriptor's (trained) tile. Attention makes big tiles slower per pixel again, and memory
grows with the output tile: a user tile is refused below the descriptor's ``min_tile`` and above
what ``BYTES_PER_OUTPUT_PX`` says fits in half of the machine's memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import cv2
import numpy as np
import torch

from ..errors import UsageError
from ..io import Image
from ..models.descriptor import ModelDescriptor, Precision, TilingPolicy
from ..tiling import (
    choose_tile,
    count_tiles,
    measure_bytes_per_output_px,
    tiled_apply_with_backoff,
)

BYTES_PER_OUTPUT_PX = 2048  # peak memory per output pixel of a tile, rounded up from the table above
OVERLAP_RATIO = 8  # auto tile >= this x overlap


def machine_memory() -> int:
    """Physical memory in bytes (0 if unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def auto_policy(policy: TilingPolicy, multiple: int) -> TilingPolicy:
    """The descriptor's policy with a tile large enough against its overlap (see the module docstring)."""
    tile = max(policy.tile, OVERLAP_RATIO * policy.overlap)
    tile += (-tile) % multiple
    return TilingPolicy(tile=tile, overlap=policy.overlap, min_tile=policy.min_tile)


def max_tile(scale: int, multiple: int, memory: int | None = None) -> int | None:
    """The largest tile whose estimated peak memory fits in half of ``memory``; None if memory is unknown."""
    memory = machine_memory() if memory is None else memory
    if memory <= 0:
        return None
    side = int((memory / 2 / BYTES_PER_OUTPUT_PX) ** 0.5) // scale
    return max(multiple, side - side % multiple)


def output_size(width: int, height: int, outscale: float) -> tuple[int, int]:
    """(w, h) of an ``--outscale`` output: each side rounded, at least 1 px."""
    return max(1, round(width * outscale)), max(1, round(height * outscale))


class ImagePipeline:
    """Restore photos with an ``sr`` ModelDescriptor.

    ``tile`` = 0 picks the tile from the descriptor's TilingPolicy (made large against its overlap,
    see :func:`auto_policy`) and the device's free memory. ``overlap`` = None uses the policy's
    overlap. Both are in input pixels. After an OOM back-off the smaller tile is kept for the rest of
    the batch. ``outscale`` (None = the model's scale) resizes the model's output to that many times
    the input, as Real-ESRGAN's ``--outscale`` does: area when shrinking, Lanczos when enlarging.
    """

    def __init__(
        self,
        model: ModelDescriptor,
        *,
        precision: Precision = "auto",
        tile: int = 0,
        overlap: int | None = None,
        on_tile: Callable[[int, int], None] | None = None,
        outscale: float | None = None,
    ) -> None:
        if model.task != "sr":
            raise UsageError(f"{model.metadata.get('path', 'the model')}: is a {model.task} model; `vrrestore image` needs an sr model")
        if tile < 0 or (overlap is not None and overlap < 0):
            raise UsageError(f"--tile {tile} / --tile-overlap {overlap}: must be 0 or more")
        if outscale is not None and not outscale > 0:
            raise UsageError(f"--outscale {outscale}: must be more than 0")
        self.model = model
        self.precision: Precision = precision
        self.policy = model.tiling or TilingPolicy(tile=1 << 30, overlap=0, min_tile=model.size_multiple)
        self.overlap = self.policy.overlap if overlap is None else overlap
        self.outscale = outscale
        self.on_tile = on_tile
        if tile:
            check_tile(tile, model)
        self._tile = tile  # 0 until chosen; shrinks after an OOM back-off
        self.fp32_fallbacks = 0
        self.backoffs: list[int] = []

    @property
    def tile(self) -> int:
        """The tile the next image will start with (0 = not chosen yet)."""
        return self._tile

    def _run(self, fidelity: float) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(x: torch.Tensor) -> torch.Tensor:
            y = self.model(x, fidelity, self.precision)
            if self.model.last_fell_back_to_fp32:
                self.fp32_fallbacks += 1
            return y

        return fn

    def _choose_tile(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> int:
        device = self.model.device
        per_px = None
        if device.type == "cuda":
            m = self.model.size_multiple
            probe = max(m, self.policy.min_tile - self.policy.min_tile % m)
            per_px = measure_bytes_per_output_px(fn, device, size=probe, scale=self.model.scale)
        policy = auto_policy(self.policy, self.model.size_multiple)
        tile = choose_tile(policy, device, scale=self.model.scale, multiple=self.model.size_multiple, bytes_per_output_px=per_px)
        cap = max_tile(self.model.scale, self.model.size_multiple) if device.type == "cpu" else None
        return tile if cap is None else max(self.policy.min_tile, min(tile, cap))

    def restore_array(
        self, rgb: np.ndarray, fidelity: float = 0.5, *, out_dtype: type | np.dtype = np.uint8, name: str = "image"
    ) -> np.ndarray:
        """(H, W, 3) RGB (float [0, 1] or uint) -> (H*s, W*s, 3) in ``out_dtype``."""
        fn = self._run(fidelity)
        if self._tile == 0:
            self._tile = self._choose_tile(fn)
        floor = min(self.policy.min_tile, self._tile)
        out, used = tiled_apply_with_backoff(
            fn, rgb, scale=self.model.scale, tile=self._tile, overlap=self.overlap, min_tile=floor,
            multiple=self.model.size_multiple, out_dtype=out_dtype, on_tile=self.on_tile,
            on_backoff=self.backoffs.append, name=name, min_size=self.policy.min_tile,
        )
        self._tile = used
        return out

    def restore(self, img: Image, fidelity: float = 0.5) -> Image:
        """Restore ``img`` at ``outscale`` (default: the model's scale), keeping bit depth, grayness,
        alpha (resized) and metadata (dpi scaled with the pixels)."""
        out_dtype = np.uint16 if img.bit_depth == 16 else np.uint8
        name = str(img.source) if img.source is not None else "image"
        out = self.restore_array(img.rgb_float(), fidelity, out_dtype=out_dtype, name=name)
        if self.outscale is None or self.outscale == self.model.scale:
            return img.replace(out, scale=self.model.scale)
        size = output_size(*img.size, self.outscale)
        shrink = size[0] * size[1] < out.shape[0] * out.shape[1]
        out = cv2.resize(out, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
        return img.with_pixels(out)

    def tiles_for(self, img: Image) -> int:
        """How many tiles the next restore of ``img`` runs (for progress totals and reports)."""
        w, h = img.size
        tile = self._tile or auto_policy(self.policy, self.model.size_multiple).tile
        return count_tiles(h, w, tile=tile, overlap=self.overlap, multiple=self.model.size_multiple)


def check_tile(tile: int, model: ModelDescriptor, memory: int | None = None) -> None:
    """UsageError for a --tile the model cannot use well: below its ``min_tile`` (the overlap would be
    most of the work) or, on a CPU, above what fits in half of the machine's memory."""
    policy = model.tiling or TilingPolicy(tile=1 << 30, overlap=0, min_tile=model.size_multiple)
    if tile < policy.min_tile:
        raise UsageError(
            f"--tile {tile}: below this model's smallest tile, {policy.min_tile} px (tiny tiles redo their overlap "
            f"many times over); use 0 (auto, {auto_policy(policy, model.size_multiple).tile} px) or {policy.min_tile} or more"
        )
    if model.device.type != "cpu":
        return  # GPUs: free memory is measured per batch and the tile halved on out-of-memory
    cap = max_tile(model.scale, model.size_multiple, memory)
    if cap is not None and tile > cap:
        need = BYTES_PER_OUTPUT_PX * (tile * model.scale) ** 2
        raise UsageError(
            f"--tile {tile}: needs about {need / 2**30:.1f} GiB ({BYTES_PER_OUTPUT_PX} bytes per output pixel), over "
            f"half of this machine's memory; use --tile {cap} or less (0 = auto)"
        )
