"""``vrrestore face``: restore the faces in photos (detect, align, restore in one batch, paste back)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

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


class DetectorChoice(str, Enum):
    auto = "auto"
    yuface = "yuface"
    retinaface = "retinaface"
    retinaface_mobile = "retinaface-mobile"


class BgChoice(str, Enum):
    none = "none"
    sr = "sr"


class FacesChoice(str, Enum):
    all = "all"
    largest = "largest"
    center = "center"


EXTRA_DIRS = {"faces": "restored_faces", "crops": "cropped_faces", "comparison": "comparison", "boxes": "detections"}


def _write_png(path: Path, rgb: Any) -> None:
    """Write a float [0, 1] (or uint8) RGB array as an 8-bit PNG, atomically."""
    import numpy as np

    from ..io import Image, write_image
    from ..pipelines.face import to_uint8

    pixels = rgb if rgb.dtype == np.uint8 else to_uint8(rgb)
    write_image(Image(np.ascontiguousarray(pixels)), path)


def face(
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
    detector: Annotated[
        DetectorChoice,
        typer.Option("--detector", help="Face detector. auto = RetinaFace if its weights are already cached, else yuface (offline); says which on stderr. retinaface/retinaface-mobile download facexlib's weights once."),
    ] = DetectorChoice.auto,
    upscale: Annotated[int, typer.Option("--upscale", "-s", min=1, max=8, help="Scale of the output image relative to the input (faces and background).")] = 2,
    bg_upsampler: Annotated[
        BgChoice,
        typer.Option("--bg-upsampler", help="Background: none = Lanczos resize by --upscale; sr = the SR model of --bg-model (default: the default SR model of `vrrestore weights list`; -w applies to it too), then resized to --upscale."),
    ] = BgChoice.none,
    bg_model: Annotated[
        Optional[str],
        typer.Option("--bg-model", metavar="NAME|PATH", help="SR model for the background: a name from `vrrestore weights list` or a path to an SR .safetensors checkpoint (e.g. from `vrrestore train`). Implies --bg-upsampler sr."),
    ] = None,
    faces: Annotated[FacesChoice, typer.Option("--faces", help="Which detected faces to restore: all, the largest, or the one nearest the image centre.")] = FacesChoice.all,
    min_face_size: Annotated[float, typer.Option("--min-face-size", min=0, metavar="PX", help="Leave faces whose box is smaller than this (shorter side, input pixels) untouched.")] = 0.0,
    det_threshold: Annotated[
        Optional[float],
        typer.Option("--det-threshold", min=0.0, max=1.0, help="Detection confidence threshold. Default: 0.5 for yuface, 0.8 for RetinaFace."),
    ] = None,
    max_faces: Annotated[int, typer.Option("--max-faces", min=0, help="Restore at most this many faces per image, largest first (0 = no limit).")] = 0,
    aligned: Annotated[bool, typer.Option("--aligned", help="Inputs are already aligned face crops: no detection; resize to the model size, restore, resize back (x --upscale).")] = False,
    save_faces: Annotated[bool, typer.Option("--save-faces", help="Also write each restored face to <outdir>/restored_faces/<name>_NN.png.")] = False,
    save_crops: Annotated[bool, typer.Option("--save-crops", help="Also write each aligned input face to <outdir>/cropped_faces/<name>_NN.png.")] = False,
    save_comparison: Annotated[bool, typer.Option("--save-comparison", help="Also write input crop | restored face side by side to <outdir>/comparison/<name>_NN.png.")] = False,
    draw_boxes: Annotated[bool, typer.Option("--draw-boxes", help="Also write a copy of the input with detection boxes and landmarks to <outdir>/detections/<name>.png (not with --aligned).")] = False,
    threads: Threads = None,
    max_pixels: MaxPixels = None,
    files_from: FilesFrom = None,
    shard: Shard = None,
    manifest: Manifest = None,
) -> None:
    """Restore the faces in photos: detect them (5 landmarks), align each to the FFHQ template at the
    model's face size, restore all faces of an image in one batch, and paste them back with a
    feathered mask over a background upscaled by --upscale.

    A photo in which no face is found is still upscaled (--upscale, --bg-upsampler) and written, with
    a warning; it counts as a success (exit code 0). With --aligned there is no detection, so the
    detection options (--detector, --det-threshold, --faces, --min-face-size, --max-faces,
    --draw-boxes), --bg-upsampler and --bg-model are refused rather than ignored.
    """
    from ..api import Restorer, RestorerConfig, refuse_with_aligned
    from ..batch import BatchOptions, fail, run_batch
    from ..errors import VRRestoreError
    from ..face.detect import draw_faces
    from ..pipelines.face import comparison, to_uint8

    opts = BatchOptions(
        output=output, suffix=suffix, ext=ext, quality=quality, overwrite=overwrite, recursive=recursive,
        fail_fast=fail_fast, json=json_report, files_from=files_from, shard=shard, manifest=manifest,
    )
    try:
        config = RestorerConfig(
            mode="face", model=model, device=device, precision=precision.value, fidelity=fidelity, upscale=upscale,
            aligned=aligned, detector=detector.value, det_threshold=det_threshold, faces=faces.value,
            min_face_size=min_face_size, max_faces=max_faces, bg_upsampler=bg_upsampler.value, bg_model=bg_model,
        )
        if aligned:
            refuse_with_aligned(config.ignored_by_aligned() + (["--draw-boxes"] if draw_boxes else []))
        config.check()
    except VRRestoreError as err:
        raise typer.Exit(fail("face", err, opts, err_console)) from None
    state: dict[str, Restorer] = {}

    def prepare() -> None:
        """Device, model, detector and background: loaded once, and only if some file needs work."""
        state["restorer"] = Restorer(config, log=_say).load()

    def process(src: Path, dst: Path) -> dict[str, Any]:
        res = state["restorer"].restore_file(src, dst, quality=quality, max_pixels=max_pixels)
        assert res.face is not None
        stem, parent = dst.stem, dst.parent
        for i, (crop, rest) in enumerate(zip(res.face.crops, res.face.restored, strict=True)):
            if save_faces:
                _write_png(parent / EXTRA_DIRS["faces"] / f"{stem}_{i:02d}.png", rest)
            if save_crops:
                _write_png(parent / EXTRA_DIRS["crops"] / f"{stem}_{i:02d}.png", crop)
            if save_comparison:
                _write_png(parent / EXTRA_DIRS["comparison"] / f"{stem}_{i:02d}.png", comparison(crop, rest))
        if draw_boxes:
            _write_png(parent / EXTRA_DIRS["boxes"] / f"{stem}.png", draw_faces(to_uint8(res.source.rgb_float()), res.face.faces))
        if "warning" in res.details:
            err_console.print(
                f"[yellow]warning:[/yellow] {src}: {res.details['warning']}; written without face restoration",
                highlight=False, soft_wrap=True,
            )
        return res.details

    with threads_applied(threads):
        code = run_batch(inputs or [], opts, process, task="face", console=err_console, prepare=prepare)
    raise typer.Exit(code)


def _say(message: str) -> None:
    """The API's one-line messages on stderr; its warnings in the CLI's colour."""
    if message.startswith("warning: "):
        err_console.print(f"[yellow]warning:[/yellow] {message[len('warning: '):]}", highlight=False, soft_wrap=True)
    else:
        err_console.print(message, highlight=False, soft_wrap=True)
