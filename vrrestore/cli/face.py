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
    detector: Annotated[
        DetectorChoice,
        typer.Option("--detector", help="Face detector. auto = RetinaFace if its weights are already cached, else yuface (offline); says which on stderr. retinaface/retinaface-mobile download facexlib's weights once."),
    ] = DetectorChoice.auto,
    upscale: Annotated[int, typer.Option("--upscale", "-s", min=1, max=8, help="Scale of the output image relative to the input (faces and background).")] = 2,
    bg_upsampler: Annotated[
        BgChoice,
        typer.Option("--bg-upsampler", help="Background: none = Lanczos resize by --upscale; sr = the default SR model (`vrrestore weights list`; -w applies to it too), then resized to --upscale."),
    ] = BgChoice.none,
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
    draw_boxes: Annotated[bool, typer.Option("--draw-boxes", help="Also write a copy of the input with detection boxes and landmarks to <outdir>/detections/<name>.png.")] = False,
) -> None:
    """Restore the faces in photos: detect them (5 landmarks), align each to the FFHQ template at the
    model's face size, restore all faces of an image in one batch, and paste them back with a
    feathered mask over a background upscaled by --upscale.

    A photo in which no face is found is written with only the background treatment (--upscale,
    --bg-upsampler), a warning is printed, and it counts as a success (exit code 0).
    Exit codes: 0 all files done, 1 some file failed, 2 usage, 3 weights or detector unavailable, 4 device.
    """
    from ..batch import BatchOptions, run_batch
    from ..errors import VRRestoreError
    from ..face.detect import draw_faces
    from ..io import read_image, write_image
    from ..pipelines.face import comparison, to_uint8

    try:
        pipeline = _build_pipeline(
            device=device, precision=precision.value, model=model, fidelity=fidelity, detector=detector,
            upscale=upscale, bg_upsampler=bg_upsampler, faces=faces.value, min_face_size=min_face_size,
            det_threshold=det_threshold, max_faces=max_faces, aligned=aligned,
        )
    except VRRestoreError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code) from None
    det = pipeline.detector

    def process(src: Path, dst: Path) -> dict[str, Any]:
        img = read_image(src)
        rgb = img.rgb_float()
        res = pipeline.run(rgb)
        write_image(img.replace(res.image, scale=upscale), dst, quality=quality)
        stem, parent = dst.stem, dst.parent
        for i, (crop, rest) in enumerate(zip(res.crops, res.restored, strict=True)):
            if save_faces:
                _write_png(parent / EXTRA_DIRS["faces"] / f"{stem}_{i:02d}.png", rest)
            if save_crops:
                _write_png(parent / EXTRA_DIRS["crops"] / f"{stem}_{i:02d}.png", crop)
            if save_comparison:
                _write_png(parent / EXTRA_DIRS["comparison"] / f"{stem}_{i:02d}.png", comparison(crop, rest))
        if draw_boxes and not aligned:
            _write_png(parent / EXTRA_DIRS["boxes"] / f"{stem}.png", draw_faces(to_uint8(rgb), res.faces))
        report: dict[str, Any] = {"faces": len(res.restored)}
        if det is not None:
            report.update(detector=det.name, detected=res.detected)
            if not res.faces:
                what = "no face found" if res.detected == 0 else f"{res.detected} face(s) found, none kept by --faces/--min-face-size/--max-faces"
                err_console.print(f"[yellow]warning:[/yellow] {src}: {what}; written without face restoration", highlight=False, soft_wrap=True)
                report["warning"] = what
        return report

    opts = BatchOptions(
        output=output, suffix=suffix, ext=ext, quality=quality, overwrite=overwrite, recursive=recursive,
        fail_fast=fail_fast, json=json_report,
    )
    raise typer.Exit(run_batch(inputs, opts, process, task="face", console=err_console))


def _say(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


def _build_pipeline(
    *, device: str, precision: str, model: str | None, fidelity: float, detector: DetectorChoice, upscale: int,
    bg_upsampler: BgChoice, faces: str, min_face_size: float, det_threshold: float | None, max_faces: int, aligned: bool,
) -> Any:
    """Device, face model, detector and background, loaded once before the batch (errors are one line)."""
    from ..device import select_device
    from ..errors import UsageError
    from ..face.detect import make_detector, resolve_detector
    from ..pipelines.face import FaceOptions, FacePipeline, sr_background
    from ..weights import load_model

    dev = select_device(device)
    if dev.type == "cpu" and precision in ("fp16", "bf16"):
        _say(f"[yellow]warning:[/yellow] --precision {precision} on CPU is 10-300x slower than fp32")
    descriptor = load_model(model, "face", dev)
    background = None
    if bg_upsampler is BgChoice.sr:
        sr_model = load_model(None, "sr", dev)
        try:
            background = sr_background(sr_model, fidelity=fidelity, precision=precision)  # type: ignore[arg-type]
        except ImportError as err:
            raise UsageError(f"--bg-upsampler sr: the image pipeline cannot be imported ({err}); use --bg-upsampler none") from None
    det = None
    if not aligned:  # last: it may download
        backend, why = resolve_detector(detector.value)
        if detector is DetectorChoice.auto:
            _say(f"detector: {backend} ({why})")
        det = make_detector(backend, device=dev, threshold=det_threshold, log=_say)
    options = FaceOptions(
        fidelity=fidelity, upscale=upscale, precision=precision, faces=faces, min_face_size=min_face_size,  # type: ignore[arg-type]
        max_faces=max_faces, aligned=aligned,
    )
    return FacePipeline(descriptor, det, options, background)
