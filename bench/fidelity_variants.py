"""The release fidelity stage under other options, from the same committed files and seed, in one run:
the A/B a schedule change needs before it costs a session's training.

    python bench/fidelity_variants.py --steps 400 --variant base --variant decoder_lr=1e-4
    python bench/fidelity_variants.py --schedule sr --head vq --steps 200 --variant fusion_lr=1e-3,gate_init=0.7 --json v.json

Each variant trains the schedule's ``fidelity-<head>`` unit exactly as ``vrrestore train release`` does
(data, preset, batch, rates, warm-up, recipe, seed and stage options), with the variant's
``FidelityOptions`` fields replaced and ``--steps`` steps on a cosine schedule over them, from the files
the runner starts that unit from (``release/<schedule>/code-<head>.safetensors`` and ``prior.safetensors``);
then the runner's held-out check at w = 0, 0.5 and 1. ``base`` is the unit unchanged. Nothing is
written under ``release/``; a Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> dict[str, Any]:
    """``key=value,key=value`` over FidelityOptions fields, typed as the field is; ``base`` = no change."""
    from vrrestore.train.config import FidelityOptions

    if text.strip() in ("", "base"):
        return {}
    fields = {f.name: f for f in dataclasses.fields(FidelityOptions)}
    defaults = FidelityOptions()
    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ValueError(f"{part!r}: want FIELD=VALUE with FIELD one of {', '.join(sorted(fields))}")
        kind = type(getattr(defaults, key))
        if kind is bool:
            if raw.strip().lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{part!r}: {key} is true or false")
            out[key] = raw.strip().lower() in ("true", "1")
        elif kind in (int, float, str):
            try:
                out[key] = kind(raw.strip())
            except ValueError:
                raise ValueError(f"{part!r}: {key} is a {kind.__name__}") from None
        else:
            raise ValueError(f"{part!r}: {key} cannot be set here")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedule", default="face", choices=("face", "sr"), help="release schedule whose fidelity unit to train")
    ap.add_argument("--head", default="vr", choices=("vr", "vq"), help="which chain's fidelity unit (default vr)")
    ap.add_argument("--steps", type=int, default=400, help="fidelity steps per variant (default 400)")
    ap.add_argument("--variant", action="append", default=[], metavar="K=V[,K=V]",
                    help="FidelityOptions fields to replace, or 'base'; repeat for each variant (default: base only)")
    ap.add_argument("--release", type=Path, default=ROOT / "release", help="committed release folder (default release/)")
    ap.add_argument("--data-root", type=Path, default=None, help="folder holding the schedule's data (default ../shared/data)")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps {args.steps}: must be 1 or more")
    try:
        variants = [(text, parse_variant(text)) for text in (args.variant or ["base"])]
    except ValueError as err:
        ap.error(f"--variant {err}")

    from vrrestore.errors import UsageError
    from vrrestore.train.export import export
    from vrrestore.train.loop import train
    from vrrestore.train.release import (
        SCHEDULES, check_data, code_state_from_files, default_data_root, evaluate_restorer, machine, unit_config,
    )

    schedule = SCHEDULES[args.schedule]
    unit, code_unit = schedule.unit(f"fidelity-{args.head}"), schedule.unit(f"code-{args.head}")
    folder = args.release / schedule.name
    code_file, prior_file = folder / f"{code_unit.name}.safetensors", folder / "prior.safetensors"
    data_root = args.data_root or default_data_root()
    try:
        for f in (code_file, prior_file):
            if not f.is_file():
                raise UsageError(f"{f}: not found; the {schedule.name} schedule's {code_unit.name} must have trained first")
        check_data(schedule, data_root)
    except UsageError as err:
        print(f"fidelity_variants: {err}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="vrrestore-fidvar-"))
    rows: list[dict[str, Any]] = []
    try:
        for i, (name, opts) in enumerate(variants):
            u = dataclasses.replace(unit, steps=args.steps, options={**unit.options, **opts})
            cfg = unit_config(schedule, u, tmp / f"v{i}", data_root)
            cfg.fidelity.init = str(code_file)
            init = code_state_from_files(code_file, prior_file, unit_config(schedule, code_unit, tmp / "code", data_root))
            print(f"{name}: {args.steps} steps of {unit.name} ({json.dumps(opts)})", file=sys.stderr)
            t0 = time.perf_counter()
            result = train(cfg, init_state=init)
            wall = time.perf_counter() - t0
            file = tmp / f"v{i}.safetensors"
            export(result.checkpoint, file, "fp32")
            ev = evaluate_restorer(file, schedule, data_root, (0.0, 0.5, 1.0))
            rows.append({"variant": name, "options": opts, "steps": result.step, "train_s": round(result.seconds, 1),
                         "wall_s": round(wall, 1), "images_per_s": round(result.step * cfg.batch_size / max(result.seconds, 1e-9), 2),
                         "eval": ev})
            print(f"{name}: held-out {json.dumps(ev)}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0]["eval"]
    ref = "input" if "input" in base else "bicubic"
    m = machine()
    lines = [
        "`" + " ".join(["python bench/fidelity_variants.py", *(argv if argv is not None else sys.argv[1:])]) + "`",
        f"({time.strftime('%Y-%m-%d')}, {schedule.name} {unit.name} from {code_file.name}, {args.steps} steps, batch "
        f"{schedule.batch_size}, seed {schedule.seed}; held-out {base['images']} images, recipe {base['recipe']}; "
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']})",
        "",
        "| variant | images/s | PSNR w = 0 / 0.5 / 1 | SSIM w = 0 / 0.5 / 1 | LPIPS-alex w = 0 / 0.5 / 1 |",
        "|---|---:|---:|---:|---:|",
        f"| {ref} | | {base[ref]['psnr']:.2f} | {base[ref]['ssim']:.4f} | {base[ref]['lpips_alex']:.3f} |",
    ]
    for r in rows:
        ev = r["eval"]
        cells = [" / ".join(f"{ev[w][k]:{fmt}}" for w in ("w0", "w0.5", "w1"))
                 for k, fmt in (("psnr", ".2f"), ("ssim", ".4f"), ("lpips_alex", ".3f"))]
        lines.append(f"| {r['variant']} | {r['images_per_s']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        args.json.write_text(json.dumps({"schedule": schedule.name, "unit": unit.name, "steps": args.steps, "machine": m,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
