"""`vrrestore image`: restore and upscale whole photos with an SR model, in blended tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import VRRestoreError
from ._console import err_console
from ._options import (
    Device,
    Ext,
    FailFast,
    Fidelity,
    FilesFrom,
    Inputs,
    JsonReport,
    Manifest,
    MaxPixels,
    Model,
    Output,
    Overwrite,
    Precision,
    PrecisionChoice,
    Quality,
    Recursive,
    Shard,
    Suffix,
    Threads,
    threads_applied,
)

Tile = Annotated[
    int,
    typer.Option("--tile", min=0, help=(
        "Tile side in input pixels; 0 = auto: the model's tile, at least 8x the overlap (smaller if GPU memory is "
        "short). Refused below the model's smallest tile and, on CPU, above what fits in half the memory. "
        "Halved automatically on out-of-memory."
    )),
]
Outscale = Annotated[
    Optional[float],
    typer.Option("--outscale", "-s", min=0.01, max=16.0, help=(
        "Output size as a multiple of the input (e.g. 2 or 3.5 from an x4 model), as in Real-ESRGAN: the model's "
        "output is resized to it (area when shrinking, Lanczos when enlarging). Default: the model's scale."
    )),
]
TileOverlap = Annotated[
    Optional[int],
    typer.Option("--tile-overlap", min=0, help="Overlap between tiles in input pixels, blended with a cosine ramp (default: the model's; capped at half the tile)."),
]


def image(
    inputs: Inputs = None,
    output: Output = None,
    suffix: Suffix = "",
    ext: Ext = None,
    quality: Quality = 95,
    overwrite: Overwrite = False,
    recursive: Recursive = False,
    fail_fast: FailFast = False,
    json_report: JsonReport = False,
    device: Device = "auto",
    precision: Precision = PrecisionChoice.auto,
    model: Model = None,
    fidelity: Fidelity = 0.5,
    tile: Tile = 0,
    tile_overlap: TileOverlap = None,
    outscale: Outscale = None,
    threads: Threads = None,
    max_pixels: MaxPixels = None,
    files_from: FilesFrom = None,
    shard: Shard = None,
    manifest: Manifest = None,
) -> None:
    """Restore and upscale photos (x2/x4 SR model, tiled), optionally resized to --outscale. Keeps
    alpha, 16-bit, gray, ICC, EXIF, XMP and dpi (scaled with the pixels, so the print size stays).

    Images smaller than the model's smallest tile (even 1x1) are padded by edge replication to that
    tile and the output cropped back, so a 1x1 input gives a 4x4 output with an x4 model.
    """
    from ..api import Restorer, RestorerConfig
    from ..batch import BatchOptions, fail, report_progress, run_batch
    from .face import _say

    opts = BatchOptions(
        output=output, suffix=suffix, ext=ext, quality=quality, overwrite=overwrite, recursive=recursive,
        fail_fast=fail_fast, json=json_report, files_from=files_from, shard=shard, manifest=manifest,
    )
    try:
        config = RestorerConfig(
            mode="image", model=model, device=device, precision=precision.value, fidelity=fidelity, tile=tile,
            tile_overlap=tile_overlap, outscale=outscale,
        ).check()
    except VRRestoreError as err:
        raise typer.Exit(fail("image", err, opts, err_console)) from None
    state: dict[str, Restorer] = {}

    def prepare() -> None:
        """Device and model, loaded once and only if some file needs work (all skipped: no weights needed)."""
        state["restorer"] = Restorer(config, log=_say, on_tile=lambda done, total: report_progress(done, total, "tiles")).load()

    def process(inp: Path, out: Path) -> dict[str, Any]:
        return state["restorer"].restore_file(inp, out, quality=quality, max_pixels=max_pixels).details

    with threads_applied(threads):
        code = run_batch(inputs or [], opts, process, task="image", console=err_console, prepare=prepare)
    raise typer.Exit(code)
