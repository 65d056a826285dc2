"""Whole-photo restoration: an SR descriptor run over the image in blended tiles.

The pipeline owns the policy: tile size (auto from the descriptor and device, or the user's),
halving it on out-of-memory, precision, and turning an ``io.Image`` (gray, alpha, 16-bit) into model
input and back. The model stays tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Callable

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


class ImagePipeline:
    """Restore photos with an ``sr`` ModelDescriptor.

    ``tile`` = 0 picks the tile from the descriptor's TilingPolicy and the device's free memory.
    ``overlap`` = None uses the policy's overlap. Both are in input pixels. After an OOM back-off
    the smaller tile is kept for the rest of the batch.
    """

    def __init__(
        self,
        model: ModelDescriptor,
        *,
        precision: Precision = "auto",
        tile: int = 0,
        overlap: int | None = None,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> None:
        if model.task != "sr":
            raise UsageError(f"{model.metadata.get('path', 'the model')}: is a {model.task} model; `vrrestore image` needs an sr model")
        if tile < 0 or (overlap is not None and overlap < 0):
            raise UsageError(f"--tile {tile} / --tile-overlap {overlap}: must be 0 or more")
        self.model = model
        self.precision: Precision = precision
        self.policy = model.tiling or TilingPolicy(tile=1 << 30, overlap=0, min_tile=model.size_multiple)
        self.overlap = self.policy.overlap if overlap is None else overlap
        self.on_tile = on_tile
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
        return choose_tile(
            self.policy, device, scale=self.model.scale, multiple=self.model.size_multiple, bytes_per_output_px=per_px
        )

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
            on_backoff=self.backoffs.append, name=name,
        )
        self._tile = used
        return out

    def restore(self, img: Image, fidelity: float = 0.5) -> Image:
        """Restore ``img`` at the model's scale, keeping bit depth, grayness, alpha (resized) and metadata."""
        out_dtype = np.uint16 if img.bit_depth == 16 else np.uint8
        name = str(img.source) if img.source is not None else "image"
        out = self.restore_array(img.rgb_float(), fidelity, out_dtype=out_dtype, name=name)
        return img.replace(out, scale=self.model.scale)

    def tiles_for(self, img: Image) -> int:
        """How many tiles the next restore of ``img`` runs (for progress totals and reports)."""
        w, h = img.size
        return count_tiles(h, w, tile=self._tile or self.policy.tile, overlap=self.overlap, multiple=self.model.size_multiple)
