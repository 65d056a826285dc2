"""The scale path: images/s of 1 vs 2 local CLI shards and of Ray Data with 1 vs 2 actors, on the
same images in one run.

    python bench/scale.py                                      # face-cpu, 32 and 128 aligned 256 px crops, 1 and 2 workers
    python bench/scale.py --task image --preset sr-tiny --size 128 --images 32 --markdown scale.md --json scale.json

Each worker gets one CPU thread. "CLI shards" starts N ``vrrestore`` processes with ``--shard i/N``
at the same moment and times until the last one ends. That includes interpreter start and model
load, which an array job pays too. "Ray" times ``restore_with_ray`` with an actor pool of N
actors, each with 1 CPU, on a local Ray instance started once beforehand (a cluster is already
running when a job is sent to it); the time includes starting the actors and loading their models.
The models have random weights, which cost the same time as trained ones. On a small machine the
point is the overhead, not the speed: Ray should be within 15% of the CLI's images/s at the same
parallelism.

Each path runs at every ``--images`` count (the first N of the same files). With two or more counts
the wall times are split into what a run pays once (start-up: processes or actors, imports, model
load, planning) and the steady rate (images/s once running), by a least-squares line through
(images, wall s): an archive of millions of files sees the steady rate, a small job the start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` smooth random RGB images (noise at a quarter size, upscaled): cheap, and not flat."""
    import cv2

    from vrrestore.io import Image, write_image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (max(1, size // 4), max(1, size // 4), 3), dtype=np.uint8)
        write_image(Image(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)), folder / f"im{i:04d}.png")


def make_model(path: Path, preset_name: str) -> Path:
    import torch

    from vrrestore.checkpoint import save_checkpoint
    from vrrestore.models import build_model, preset

    torch.manual_seed(0)
    arch = "FaceRestorer" if preset_name.startswith("face") else "SRRestorer"
    return save_checkpoint(build_model(arch, preset(preset_name)), path)


def cli_args(task: str, precision: str) -> list[str]:
    if task == "face":
        return ["face", "--aligned", "-s", "1", "--precision", precision, "--ext", "bmp"]
    return ["image", "--precision", precision, "--ext", "bmp"]


def counts_arg(text: str) -> list[int]:
    """A comma-separated list of positive integers (argparse type: bad input is a one-line error)."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers, e.g. 32,128") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every count must be 1 or more")
    return sorted(set(values))


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(start-up s, steady images/s) from (images, wall s) by least squares; one point gives (0, n / wall)."""
    if len({n for n, _ in points}) < 2:
        n, w = points[0]
        return 0.0, n / w
    slope, intercept = np.polyfit([n for n, _ in points], [w for _, w in points], 1)
    return float(intercept), float(1.0 / slope) if slope > 0 else float("inf")


def run_shards(workers: int, inputs: Path, out: Path, model: Path, task: str, precision: str) -> dict[str, float]:
    """N CLI processes, one shard each, started together; wall seconds until the last one ends."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "RANK"):
        env.pop(var, None)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vrrestore", *cli_args(task, precision), str(inputs), "-o", str(out), "-m", str(model),
             "--threads", "1", "--shard", f"{i}/{workers}", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        for i in range(workers)
    ]
    reports = [json.loads(p.communicate()[0]) for p in procs]
    wall = time.perf_counter() - t0
    bad = [r for r in reports if r["exit_code"] != 0]
    if bad:
        raise SystemExit(f"a CLI shard failed: {bad[0]['error'] or bad[0]['summary']}")
    done = sum(r["summary"]["ok"] for r in reports)
    return {"wall_s": wall, "images": done, "batch_s": max(r["seconds"] for r in reports)}


def run_ray(workers: int, inputs: Path, out: Path, model: Path, task: str, precision: str, batch_size: int) -> dict[str, float]:
    from vrrestore.api import Restorer
    from vrrestore.integrations.ray import restore_with_ray

    options = {"aligned": True, "upscale": 1} if task == "face" else {}
    restorer = Restorer.from_file(model, lazy=True, precision=precision, **options)
    t0 = time.perf_counter()
    run = restore_with_ray(inputs, out, restorer, actors=workers, cpus_per_actor=1, batch_size=batch_size, ext="bmp")
    wall = time.perf_counter() - t0
    if run.exit_code != 0:
        raise SystemExit(f"Ray failed on some files: {run.summary}")
    return {"wall_s": wall, "images": run.summary["ok"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("face", "image"), default="face", help="face: aligned crops (no detection); image: tiled SR")
    ap.add_argument("--preset", default=None, help="model preset (default: face-cpu for face, sr-x4-cpu for image)")
    ap.add_argument("--images", type=counts_arg, default="32,128", help="comma-separated image counts (two or more split start-up from the steady rate)")
    ap.add_argument("--size", type=int, default=None, help="input side in px (default: the face model's size; 128 for image)")
    ap.add_argument("--workers", type=counts_arg, default="1,2", help="comma-separated worker counts (shards and actors)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--batch-size", type=int, default=4, help="rows per Ray batch")
    ap.add_argument("--no-ray", action="store_true", help="only the CLI shards")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()

    from vrrestore.models import preset

    name = args.preset or ("face-cpu" if args.task == "face" else "sr-x4-cpu")
    cfg = preset(name)
    size = args.size or (cfg.prior.img_size if args.task == "face" else 128)  # type: ignore[union-attr]
    workers, counts = args.workers, args.images
    tmp = Path(tempfile.mkdtemp(prefix="vrrestore-scale-"))
    rows: list[dict[str, object]] = []

    def inputs(n: int) -> Path:
        """The first ``n`` images, as their own folder (links, no copies)."""
        folder = tmp / f"in{n}"
        if not folder.is_dir():
            folder.mkdir()
            for f in sorted((tmp / "in").iterdir())[:n]:
                os.link(f, folder / f.name)
        return folder

    try:
        make_inputs(tmp / "in", max(counts), size)
        model = make_model(tmp / "model.safetensors", name)
        for w in workers:
            for n in counts:
                r = run_shards(w, inputs(n), tmp / f"cli{w}_{n}", model, args.task, args.precision)
                rows.append({"path": "CLI shards", "workers": w, **r})
                print(f"CLI shards x{w}: {r['images']} images in {r['wall_s']:.1f} s", file=sys.stderr)
        if not args.no_ray:
            import ray

            ray.init(num_cpus=max(workers), include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
            ray.data.DataContext.get_current().enable_progress_bars = False
            try:
                for w in workers:
                    for n in counts:
                        r = run_ray(w, inputs(n), tmp / f"ray{w}_{n}", model, args.task, args.precision, args.batch_size)
                        rows.append({"path": "Ray Data", "workers": w, **r})
                        print(f"Ray x{w}: {r['images']} images in {r['wall_s']:.1f} s", file=sys.stderr)
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # per (path, workers): end-to-end rate at each count, and the start-up / steady split over the counts
    groups: dict[tuple[str, int], list[dict[str, object]]] = {}
    for r in rows:
        r["images_per_s"] = round(r["images"] / r["wall_s"], 3)  # type: ignore[operator]
        groups.setdefault((str(r["path"]), int(r["workers"])), []).append(r)  # type: ignore[call-overload]
    split = {k: fit([(int(r["images"]), float(r["wall_s"])) for r in g]) for k, g in groups.items()}  # type: ignore[call-overload]
    lines = [
        "`" + " ".join(["python bench/scale.py", *sys.argv[1:]]) + "`",
        f"({time.strftime('%Y-%m-%d')}, {args.task} {name}, {'/'.join(map(str, counts))} images of {size} px, "
        f"precision {args.precision}, {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()})",
        "",
        "| path | workers | " + " | ".join(f"images/s at {n}" for n in counts) + " | start-up s | steady images/s | steady vs CLI |",
        "|---|---:|" + "---:|" * len(counts) + "---:|---:|---:|",
    ]
    for (path, w), g in groups.items():
        start, steady = split[(path, w)]
        cli = split.get(("CLI shards", w), (0.0, float("nan")))[1]
        rates = " | ".join(f"{r['images_per_s']:.2f}" for r in sorted(g, key=lambda r: int(r["images"])))  # type: ignore[call-overload]
        shown = f"{start:.1f}" if len(counts) > 1 else "-"  # one count cannot split start-up from the rate
        lines.append(f"| {path} | {w} | {rates} | {shown} | {steady:.2f} | {steady / cli:.0%} |")
        for r in g:
            r.update(startup_s=round(start, 2), steady_images_per_s=round(steady, 3))
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "preset": name, "images": counts, "size": size,
                                         "precision": args.precision, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
