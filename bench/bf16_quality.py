"""bf16 does not cost quality: the release prior's first N steps from the same seed, once under bf16
autocast and once in fp32, in one run, then each prior's held-out reconstruction (issue 11).

    python bench/bf16_quality.py                                  # face schedule, 1,000 steps each
    python bench/bf16_quality.py --steps 200 --markdown q.md --json q.json

Both runs use the release schedule's prior recipe exactly (``vrrestore train release``: data,
preset, batch, learning rate, warm-up, cosine decay over the N steps, LPIPS, critic width, seed);
with the release's ``disc_start`` of 2,500 the critic stays off in a 1,000-step run. The held-out
check is the one the release runner writes into ``progress.json`` (decoder of the HQ encoder's
features, and of their nearest codes). It refuses to run where ``--precision auto`` would not pick
bf16: there bf16 runs a slow reference path and the comparison is not the one users get. The
training images/s of both runs are printed too: a bf16/fp32 speed ratio over a real run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE_DB = 0.2  # the bar: bf16 within 0.2 dB of fp32


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedule", default="face", choices=("face", "sr"), help="release schedule whose prior recipe to use")
    ap.add_argument("--steps", type=int, default=1000, help="prior steps per precision (default 1000)")
    ap.add_argument("--data-root", type=Path, default=None, help="folder holding the schedule's data (default ../shared/data)")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps {args.steps}: must be 1 or more")

    import torch

    from vrrestore.errors import UsageError
    from vrrestore.precision import decide
    from vrrestore.train import ckpt
    from vrrestore.train.export import export_prior
    from vrrestore.train.loop import train
    from vrrestore.train.release import SCHEDULES, check_data, default_data_root, evaluate_prior, machine, unit_config

    verdict = decide(torch.device("cpu"), "auto")
    if verdict.precision != "bf16":
        print(f"bf16_quality: --precision auto picks {verdict.precision} here ({verdict.reason}); run this on a CPU where it picks bf16",
              file=sys.stderr)
        return 2
    schedule = SCHEDULES[args.schedule]
    data_root = args.data_root or default_data_root()
    try:  # training and held-out data, before the first of two long runs
        check_data(schedule, data_root)
    except UsageError as err:
        print(f"bf16_quality: {err}", file=sys.stderr)
        return 2
    unit = dataclasses.replace(schedule.unit("prior"), steps=args.steps)
    tmp = Path(tempfile.mkdtemp(prefix="vrrestore-bf16q-"))
    rows: list[dict[str, object]] = []
    try:
        for precision in ("bf16", "fp32"):
            cfg = unit_config(schedule, unit, tmp / precision, data_root)
            cfg.precision = precision
            t0 = time.perf_counter()
            result = train(cfg)
            wall = time.perf_counter() - t0
            file = export_prior(ckpt.load(result.checkpoint, "prior"), tmp / f"{precision}.safetensors", "fp32")
            ev = evaluate_prior(file, schedule, data_root)
            rows.append({"precision": precision, "steps": result.step, "train_s": round(result.seconds, 1),
                         "wall_s": round(wall, 1), "images_per_s": round(result.step * cfg.batch_size / result.seconds, 2), **ev})
            print(f"{precision}: {result.step} steps in {result.seconds:.0f} s, held-out {json.dumps(ev)}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    bf16, fp32 = rows
    delta = float(bf16["psnr_continuous"]) - float(fp32["psnr_continuous"])  # type: ignore[arg-type]
    speed = float(bf16["images_per_s"]) / float(fp32["images_per_s"])  # type: ignore[arg-type]
    m = machine()
    lines = [
        "`" + " ".join(["python bench/bf16_quality.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
        f"({time.strftime('%Y-%m-%d')}, {args.schedule} prior `{schedule.preset}`, {args.steps} steps, batch {schedule.batch_size}, "
        f"seed {schedule.seed}; {m['cpu']}, bf16 flags {'+'.join(m['bf16_flags']) or 'none'}, {m['threads']} threads, "
        f"torch {m['torch']}, {platform.machine()})",
        "",
        "| precision | train s | images/s | held-out PSNR / SSIM (encoder features) | nearest codes | codes used |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {r['precision']} | {r['train_s']} | {r['images_per_s']} | {r['psnr_continuous']} / {r['ssim_continuous']} | "
          f"{r['psnr_quantized']} / {r['ssim_quantized']} | {r['codes_used']} |" for r in rows),
        "",
        f"bf16 - fp32: {delta:+.2f} dB ({'within' if abs(delta) <= TOLERANCE_DB else 'OUTSIDE'} {TOLERANCE_DB} dB); "
        f"bf16 trains {speed:.2f}x as fast.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"schedule": args.schedule, "steps": args.steps, "machine": m, "rows": rows,
                                         "delta_db": round(delta, 3), "speedup": round(speed, 3)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
