"""Our SR model vs Real-ESRGAN (through ncnn) vs bicubic, quality and speed, in one run: the README's peer table.

    pip install "vrrestore[peers]"
    python bench/peers.py                                   # Set5, Set14 (x4) and sr_real_lq; bicubic + both peers
    python bench/peers.py --sets set5 --models bicubic,realesrgan-x4plus,runs/sr/fidelity.safetensors
    python bench/peers.py --threads 1 --out bench/out/peers # per-set JSON and comparison grids there

Set5/Set14 (the shipped HR and LR_bicubic_x4, under ``--data``/sr_hq) go through ``vrrestore.benchmark``:
PSNR/SSIM on Y with a 4 px crop (and on RGB), LPIPS-alex on RGB, seconds per output megapixel over
the set, peak RSS. ``sr_real_lq`` has no ground truth: each model upscales every image once (s/MP, peak
RSS) and a grid of LQ | models is written. Models are anything ``vrrestore benchmark -m`` takes.
Prints a Markdown table on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = {"set5": "sr_hq/Set5", "set14": "sr_hq/Set14", "real": "sr_real_lq"}
DEFAULT_MODELS = "bicubic,realesrgan-x4plus,realesr-animevideov3"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def paired(data: Path, key: str, models: list[str], args: argparse.Namespace) -> list[dict]:
    import torch

    from vrrestore.benchmark import paired_dataset, run_benchmark, write_grid

    folder = data / SETS[key]
    ds = paired_dataset(folder / "LR_bicubic_x4", folder / "HR", args.limit, "sr")
    rep = run_benchmark(
        ds, models, device=torch.device("cpu"), precision="fp32", lpips_nets=["alex"], speed=False,
        progress=lambda m: _say(f"{key}: {m}"),
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{key}.json").write_text(rep.to_json() + "\n", encoding="utf-8")
        write_grid(args.out / f"{key}_grid.png", ds, rep)
    return [
        {"set": key, "images": rep.n_images, "model": r.name, "psnr": r.psnr, "ssim": r.ssim, "psnr_rgb": r.psnr_alt,
         "ssim_rgb": r.ssim_alt, "lpips_alex": r.lpips.get("alex"), "s_per_mp": r.s_per_mp, "peak_mb": r.peak_memory_mb}
        for r in rep.results
    ]


def unpaired(data: Path, models: list[str], args: argparse.Namespace) -> list[dict]:
    """No ground truth: time each model over every image, keep the first few outputs for a grid."""
    import numpy as np
    import torch

    from vrrestore.benchmark import (
        list_images,
        load_peer_runner,
        peak_memory_mb,
        read_rgb,
        reset_peak_memory,
        resolve_model,
        restore,
        to_uint8,
    )

    folder = data / SETS["real"]
    paths = [p for sub in sorted(folder.iterdir()) if sub.is_dir() for p in list_images(sub)] + list_images(folder)
    paths = paths[: args.limit or None]
    images = [(p.stem, read_rgb(p)) for p in paths]
    dev = torch.device("cpu")
    rows, kept = [], {}
    for spec in models:
        cand = resolve_model(spec, "sr", dev, 4)
        reset_peak_memory(dev)
        load_peer_runner(cand)
        restore(cand, np.full((8, 8, 3), 0.5, np.float32), (32, 32), 0.5, "fp32")  # warm-up
        seconds = mp = 0.0
        outs = []
        for i, (name, lq) in enumerate(images):
            _say(f"real: {cand.name}: {name}")
            size = (lq.shape[0] * 4, lq.shape[1] * 4)
            t0 = time.perf_counter()
            out = restore(cand, lq, size, 0.5, "fp32")
            seconds += time.perf_counter() - t0
            mp += size[0] * size[1] / 1e6
            if i < 3:
                outs.append(to_uint8(out))
        kept[cand.name] = outs
        tiled = getattr(cand.runner, "tiled_images", 0)
        rows.append({"set": "real", "images": len(images), "model": cand.name, "s_per_mp": seconds / mp,
                     "peak_mb": peak_memory_mb(dev), "tiled": tiled})
        cand.runner = None  # free the network before the next model's peak is measured
    if args.out:
        _grid(args.out / "real_grid.png", images[:3], kept)
    return rows


def _grid(path: Path, images: list, outputs: dict, cell: int = 256) -> None:
    """Rows: LQ (nearest x4) | each model, for the first images (centre crop of 1/2 the side)."""
    import cv2
    import numpy as np
    from PIL import Image, ImageDraw

    from vrrestore.benchmark import to_uint8

    rows = []
    for i, (name, lq) in enumerate(images):
        lq8 = to_uint8(lq)
        ups = [cv2.resize(lq8, (lq8.shape[1] * 4, lq8.shape[0] * 4), interpolation=cv2.INTER_NEAREST)]
        ups += [o[i] for o in outputs.values()]
        tiles = []
        for img in ups:
            h, w = img.shape[:2]
            s = min(h, w) // 2
            crop = np.ascontiguousarray(img[(h - s) // 2 : (h + s) // 2, (w - s) // 2 : (w + s) // 2])
            tiles.append(Image.fromarray(crop).resize((cell, cell), Image.Resampling.LANCZOS))
        row = Image.new("RGB", (len(tiles) * (cell + 4), cell + 18), "white")
        d = ImageDraw.Draw(row)
        for j, (t, title) in enumerate(zip(tiles, [f"LQ {name}", *outputs], strict=True)):
            row.paste(t, (j * (cell + 4), 18))
            d.text((j * (cell + 4) + 2, 2), title, fill="black")
        rows.append(row)
    grid = Image.new("RGB", (rows[0].width, sum(r.height + 4 for r in rows)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def _f(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = "| set | images | model | PSNR (Y) | SSIM (Y) | PSNR (RGB) | SSIM (RGB) | LPIPS-alex | s/MP | peak RSS (MB) |"
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['images']} | {r['model']} | {_f(r.get('psnr'), 2)} | {_f(r.get('ssim'), 4)} | "
            f"{_f(r.get('psnr_rgb'), 2)} | {_f(r.get('ssim_rgb'), 4)} | {_f(r.get('lpips_alex'), 4)} | "
            f"{_f(r['s_per_mp'], 3 if r['s_per_mp'] < 1 else 1)} | {_f(r['peak_mb'], 0)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder holding sr_hq/ and sr_real_lq/")
    ap.add_argument("--sets", default="set5,set14,real", help="comma list of set5, set14, real")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma list, as `vrrestore benchmark -m` takes them")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ncnn (default 1: steady timings)")
    ap.add_argument("--limit", type=int, default=None, help="at most N images per set")
    ap.add_argument("--out", type=Path, default=None, help="folder for per-set JSON reports and comparison grids")
    args = ap.parse_args(argv)

    import torch

    from vrrestore.errors import VRRestoreError

    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad = [s for s in sets if s not in SETS]
    if bad:
        print(f"error: --sets {','.join(bad)}: choose from {', '.join(SETS)}", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    try:
        for key in sets:
            rows += unpaired(args.data, models, args) if key == "real" else paired(args.data, key, models, args)
    except VRRestoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    md = table(rows)
    stamp = time.strftime("%Y-%m-%d")
    md += (f"\n{stamp}, CPU, {args.threads} thread(s), torch {torch.__version__}; PSNR/SSIM crop 4; LPIPS-alex on RGB, "
           "no crop; s/MP = wall seconds per output megapixel over the set; peak RSS of the whole process.\n")
    if args.out:
        (args.out / "peers.md").write_text(md, encoding="utf-8")
        (args.out / "peers.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
