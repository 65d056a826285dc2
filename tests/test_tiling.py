"""vrrestore.tiling and the image pipeline: exact identity, no seams, bounded memory, OOM back-off, fp32 retry."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vrrestore.errors import DeviceError, UsageError
from vrrestore.io import Image
from vrrestore.models.descriptor import ModelDescriptor, TilingPolicy
from vrrestore.pipelines.image import ImagePipeline
from vrrestore.tiling import (
    choose_tile,
    count_tiles,
    is_out_of_memory,
    tile_starts,
    tiled_apply,
    tiled_apply_with_backoff,
)

torch.set_num_threads(1)
RNG = np.random.default_rng(0)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


def nearest(scale: int):  # noqa: ANN201
    return lambda x: F.interpolate(x, scale_factor=scale, mode="nearest")


def zero_padded_blur(x: torch.Tensor) -> torch.Tensor:
    """A model with border artefacts: every tile's edge pixels are darkened (like a real net's missing context)."""
    k = torch.full((x.shape[1], 1, 3, 3), 1 / 9)
    return F.conv2d(x, k, padding=1, groups=x.shape[1])


def reflect_blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.full((x.shape[1], 1, 3, 3), 1 / 9)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=x.shape[1])


# ------------------------------------------------------------------------------------ tile layout


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 8), (64, 16, 8), (33, 32, 4), (10, 32, 4), (257, 64, 16)])
def test_tile_starts_cover_with_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    covered = np.zeros(length, int)
    for s in starts:
        covered[s : s + t] += 1
    assert covered.min() >= 1
    assert all(b - a <= t - overlap for a, b in zip(starts, starts[1:], strict=False))


# --------------------------------------------------------------------------- exactness and seams


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(("h", "w", "tile", "overlap", "multiple"), [(37, 53, 16, 4, 1), (40, 40, 12, 6, 4), (9, 70, 32, 8, 8), (64, 64, 64, 8, 2)])
def test_identity_through_tiles_is_exact(dtype: type, h: int, w: int, tile: int, overlap: int, multiple: int) -> None:
    img = RNG.integers(0, np.iinfo(dtype).max + 1, (h, w, 3), dtype=dtype)
    out = tiled_apply(identity, img, scale=1, tile=tile, overlap=overlap, multiple=multiple, out_dtype=dtype)
    np.testing.assert_array_equal(out, img)
    # float input in [0, 1] takes the same path
    out_f = tiled_apply(identity, img.astype(np.float32) / np.iinfo(dtype).max, scale=1, tile=tile, overlap=overlap, out_dtype=dtype)
    np.testing.assert_array_equal(out_f, img)


def test_nearest_x4_through_tiles_equals_whole_image() -> None:
    img = RNG.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    out = tiled_apply(nearest(4), img, scale=4, tile=16, overlap=4, multiple=2)
    np.testing.assert_array_equal(out, img.repeat(4, 0).repeat(4, 1))


def test_constant_image_stays_constant() -> None:
    img = np.full((50, 61, 3), 173, np.uint8)
    for fn, scale in ((reflect_blur, 1), (nearest(2), 2)):
        out = tiled_apply(fn, img, scale=scale, tile=16, overlap=6)
        assert out.min() == out.max() == 173


def test_no_seams_with_a_model_that_has_border_artefacts() -> None:
    """Each tile's border is wrong (zero padding), but the feathered blend keeps the tiled result within
    one level of the whole-image result, while unblended tiling shows seams of ~40 levels."""
    yy, xx = np.mgrid[0:96, 0:96]
    img = (np.stack([xx, yy, xx + yy], -1) * 1.3 % 256).astype(np.uint8)
    whole = tiled_apply(zero_padded_blur, img, scale=1, tile=512, overlap=0)
    tiled = tiled_apply(zero_padded_blur, img, scale=1, tile=32, overlap=8)
    naive = tiled_apply(zero_padded_blur, img, scale=1, tile=32, overlap=0)
    assert np.abs(tiled.astype(int) - whole).max() <= 1
    assert np.abs(naive.astype(int) - whole).max() > 30


def test_gray_and_tensor_inputs_and_float_output() -> None:
    g = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
    assert tiled_apply(identity, g[:, :, None], scale=1, tile=8, overlap=2).shape == (20, 24, 1)
    t = torch.rand(1, 3, 20, 24)
    out = tiled_apply(identity, t, scale=1, tile=8, overlap=2, out_dtype=np.float32)
    np.testing.assert_allclose(out, t[0].permute(1, 2, 0).numpy(), atol=1e-6)


def test_on_tile_counts_every_tile() -> None:
    calls: list[tuple[int, int]] = []
    tiled_apply(identity, np.zeros((40, 40, 3), np.uint8), scale=1, tile=16, overlap=4, on_tile=lambda d, t: calls.append((d, t)))
    n = count_tiles(40, 40, tile=16, overlap=4)
    assert calls == [(i, n) for i in range(1, n + 1)] and n == 9


def test_peak_memory_follows_output_not_float_output() -> None:
    """2x the uint8 output at most: the float accumulator is one band, not the whole (H*s, W*s, 3) float image."""
    img = RNG.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out_bytes = 1024 * 1024 * 3
    tracemalloc.start()
    try:
        tiled_apply(nearest(4), img, scale=4, tile=16, overlap=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * out_bytes  # a float32 output alone would be 4x out_bytes


# ------------------------------------------------------------------------------------- OOM back-off


class OOMAbove:
    """Fake model: raises CUDA OOM for tiles whose side exceeds ``limit`` input px (whatever the device)."""

    def __init__(self, limit: int, error: type[BaseException] = torch.cuda.OutOfMemoryError) -> None:
        self.limit, self.error, self.sizes = limit, error, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return F.interpolate(x, scale_factor=2, mode="nearest")


def test_oom_halves_tile_until_it_fits() -> None:
    img = RNG.integers(0, 256, (100, 90, 3), dtype=np.uint8)
    fn, backoffs = OOMAbove(20), []
    out, used = tiled_apply_with_backoff(fn, img, scale=2, tile=64, overlap=4, min_tile=8, multiple=4, on_backoff=backoffs.append)
    assert used == 16 and backoffs == [32, 16]
    np.testing.assert_array_equal(out, img.repeat(2, 0).repeat(2, 1))


def test_oom_at_the_floor_is_a_device_error_not_a_crash() -> None:
    with pytest.raises(DeviceError, match="out of memory even with 8 px tiles") as ei:
        tiled_apply_with_backoff(OOMAbove(4), np.zeros((40, 40, 3), np.uint8), scale=2, tile=32, overlap=2, min_tile=8, name="a.png")
    assert str(ei.value).startswith("a.png:") and ei.value.exit_code == 4


def test_other_errors_are_not_mistaken_for_oom() -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        tiled_apply_with_backoff(broken, np.zeros((8, 8, 3), np.uint8), scale=1, tile=8, overlap=0, min_tile=2)
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))


def test_choose_tile_from_free_memory() -> None:
    policy = TilingPolicy(tile=128, overlap=16, min_tile=32)
    assert choose_tile(policy, torch.device("cpu"), scale=4, multiple=8) == 128
    assert choose_tile(TilingPolicy(tile=100, overlap=8, min_tile=16), torch.device("cpu"), scale=4, multiple=8) == 96
    cuda = torch.device("cuda", 0)
    per_px = 1000.0  # bytes per output pixel
    assert choose_tile(policy, cuda, scale=4, free_bytes=10**12, bytes_per_output_px=per_px) == 128
    # 128 px tile at x4 = 262144 output px = 262 MB > 0.7 * 100 MB; 64 -> 65 MB fits
    assert choose_tile(policy, cuda, scale=4, free_bytes=100 * 10**6, bytes_per_output_px=per_px) == 64
    assert choose_tile(policy, cuda, scale=4, free_bytes=1, bytes_per_output_px=per_px) == 32


# ------------------------------------------------------------------------------------ the pipeline


class Upscale(nn.Module):
    """Stand-in SR net (bilinear) with a parameter, so ModelDescriptor.device works."""

    def __init__(self, scale: int = 4, oom_above: int = 0, nan_in_half: bool = False) -> None:
        super().__init__()
        self.scale, self.oom_above, self.nan_in_half = scale, oom_above, nan_in_half
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, fidelity: float = 0.5) -> torch.Tensor:
        if self.oom_above and max(x.shape[-2:]) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        y = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False) * self.w
        if self.nan_in_half and torch.is_autocast_enabled("cpu"):
            y = y * float("nan")
        return y


def descriptor(module: nn.Module, scale: int = 4, tile: int = 32) -> ModelDescriptor:
    return ModelDescriptor(module, "sr", "Fake", "none", scale=scale, size_multiple=2, fixed_size=None,
                           tiling=TilingPolicy(tile=tile, overlap=4, min_tile=8))


def test_pipeline_keeps_gray_16bit_and_scales() -> None:
    img = Image(RNG.integers(0, 65536, (20, 18), dtype=np.uint16))
    out = ImagePipeline(descriptor(Upscale())).restore(img)
    assert out.is_gray and out.pixels.dtype == np.uint16 and out.size == (72, 80)


def test_pipeline_transparent_colour_does_not_bleed_into_edges() -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (255, 0, 0)
    rgb[:, 8:] = (0, 255, 0)  # colour under transparent pixels
    alpha = np.zeros((16, 16), np.uint8)
    alpha[:, :8] = 255
    out = ImagePipeline(descriptor(Upscale())).restore(Image(rgb, alpha))
    assert out.alpha is not None and out.alpha.shape == (64, 64)
    seen = out.alpha > 0
    assert seen[:, 31:34].any()  # the edge is partly transparent after resizing
    assert out.pixels[seen][:, 1].max() <= 1  # and no green anywhere alpha > 0


def test_pipeline_oom_backoff_persists_for_next_image() -> None:
    pipe = ImagePipeline(descriptor(Upscale(scale=2, oom_above=12), scale=2, tile=32))
    img = Image(RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    out = pipe.restore(img)
    assert pipe.tile == 8 and pipe.backoffs == [16, 8] and out.size == (80, 80)
    pipe.restore(img)
    assert pipe.backoffs == [16, 8]  # the second image starts at 8 px: no new OOM


def test_pipeline_half_precision_nan_is_redone_in_fp32() -> None:
    img = Image(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    ref = ImagePipeline(descriptor(Upscale())).restore(img)
    pipe = ImagePipeline(descriptor(Upscale(nan_in_half=True)), precision="bf16")
    out = pipe.restore(img)
    assert pipe.fp32_fallbacks == 1
    np.testing.assert_array_equal(out.pixels, ref.pixels)


def test_pipeline_user_tile_and_overlap() -> None:
    module = Upscale(scale=2)
    calls: list[int] = []
    pipe = ImagePipeline(descriptor(module, scale=2), tile=12, overlap=2, on_tile=lambda d, t: calls.append(t))
    img = Image(RNG.integers(0, 256, (30, 30, 3), dtype=np.uint8))
    pipe.restore(img)
    assert pipe.tile == 12 and calls[-1] == count_tiles(30, 30, tile=12, overlap=2) == pipe.tiles_for(img) == 9


def test_pipeline_refuses_face_models() -> None:
    d = descriptor(Upscale())
    d.task = "face"
    with pytest.raises(UsageError, match="needs an sr model"):
        ImagePipeline(d)
