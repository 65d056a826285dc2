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
    Inputs,
    JsonReport,
    Model,
    Output,
    Overwrite,
    Precision,
    PrecisionChoice,
    Quality,
    Recursive,
    Suffix,
)

Tile = Annotated[
    int,
    typer.Option("--tile", min=0, help="Tile side in input pixels; 0 = auto (the model's tile, smaller if GPU memory is short). Halved automatically on out-of-memory."),
]
TileOverlap = Annotated[
    Optional[int],
    typer.Option("--tile-overlap", min=0, help="Overlap between tiles in input pixels, blended with a cosine ramp (default: the model's; capped at half the tile)."),
]


def image(
    inputs: Inputs,
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
) -> None:
    """Restore and upscale photos (x2/x4 SR model). Keeps alpha, 16-bit, gray, ICC and EXIF.

    Exit codes: 0 all ok, 1 some files failed, 2 usage, 3 weights unavailable, 4 device unavailable, 130 interrupted.
    """
    from ..batch import BatchOptions, report_progress, run_batch
    from ..device import select_device

    try:
        dev = select_device(device)
    except VRRestoreError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code) from None
    if dev.type == "cpu" and precision in (PrecisionChoice.fp16, PrecisionChoice.bf16):
        err_console.print(f"[yellow]warning:[/yellow] --precision {precision.value} on CPU is 10-300x slower than fp32", highlight=False)

    opts = BatchOptions(
        output=output, suffix=suffix, ext=ext, quality=quality, overwrite=overwrite, recursive=recursive,
        fail_fast=fail_fast, json=json_report,
    )
    state: dict[str, Any] = {}

    def pipeline() -> Any:
        """Load the model on first use, so a batch with nothing to do (all skipped, usage error) needs no weights."""
        if "pipe" not in state:
            from ..pipelines.image import ImagePipeline
            from ..weights import load_model

            state["pipe"] = ImagePipeline(
                load_model(model, "sr", dev), precision=precision.value, tile=tile, overlap=tile_overlap,
                on_tile=lambda done, total: report_progress(done, total, "tiles"),
            )
        return state["pipe"]

    def process(inp: Path, out: Path) -> dict[str, Any]:
        from ..io import read_image, write_image

        pipe = pipeline()
        img = read_image(inp)
        fallbacks, backoffs = pipe.fp32_fallbacks, len(pipe.backoffs)
        restored = pipe.restore(img, fidelity)
        write_image(restored, out, quality=quality)
        return {
            "size": list(img.size), "output_size": list(restored.size), "scale": pipe.model.scale,
            "bit_depth": img.bit_depth, "gray": img.is_gray, "alpha": img.alpha is not None,
            "tile": pipe.tile, "tiles": pipe.tiles_for(img),
            "tile_backoffs": pipe.backoffs[backoffs:], "fp32_fallbacks": pipe.fp32_fallbacks - fallbacks,
        }

    raise typer.Exit(run_batch(inputs, opts, process, task="image", console=err_console))
