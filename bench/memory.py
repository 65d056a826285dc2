"""Peak RSS of the `vrrestore image` path (read -> x4 in blended tiles -> write PNG) against output size.

Each row runs in its own subprocess, so ru_maxrss is that run's peak and nothing else. The cheap
stand-in model is a nearest x4 upsample wrapped in a ModelDescriptor. It has sr-x4-s's scale, size
multiple and TilingPolicy, so the tiling, assembly and I/O are exactly the real ones and only the
network is missing. `--real` adds one row with a randomly initialised `sr-x4-s` (speed and memory
only; the pixels mean nothing).

    python bench/memory.py                      # 512, 1024, 2048 with the stand-in
    python bench/memory.py --real 512           # plus sr-x4-s at 512 (minutes on CPU)
    python bench/memory.py --sizes 2048 --alpha # RGBA input instead of RGB

Prints a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from vrrestore.io import read_image, write_image
    from vrrestore.models import build_model, preset
    from vrrestore.models.descriptor import ModelDescriptor, TilingPolicy, describe
    from vrrestore.pipelines.image import ImagePipeline

    class Nearest(nn.Module):
        def __init__(self, scale: int) -> None:
            super().__init__()
            self.scale = scale
            self.anchor = nn.Parameter(torch.zeros(()))  # gives the descriptor a device

        def forward(self, x: torch.Tensor, fidelity: float = 0.5) -> torch.Tensor:
            return F.interpolate(x, scale_factor=self.scale, mode="nearest")

    if args.model == "nearest":
        policy = TilingPolicy(*args.policy)
        desc = ModelDescriptor(Nearest(4), "sr", "Nearest", "none", scale=4, size_multiple=args.multiple,
                               fixed_size=None, tiling=policy)
    else:
        torch.manual_seed(0)
        desc = describe(build_model("SRRestorer", preset(args.model)))
    base = _rss_now_mb()
    t0 = time.perf_counter()
    pipe = ImagePipeline(desc)
    image = read_image(args.input)
    restored = pipe.restore(image)
    write_image(restored, args.output)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mb": peak, "base_mb": base, "seconds": seconds, "tile": pipe.tile, "tiles": pipe.tiles_for(image),
                      "out": list(restored.size), "threads": torch.get_num_threads()}))


def _make_input(path: Path, size: int, alpha: bool) -> None:
    import numpy as np

    from vrrestore.io import Image, write_image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(12 * (xx + yy))], -1)
    rgb += np.random.default_rng(0).normal(0, 0.02, rgb.shape).astype(np.float32)
    px = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    a = None
    if alpha:
        a = np.full((size, size), 255, np.uint8)
        a[: size // 4] = 0
    write_image(Image(px, a), path)


def _policy_of(name: str) -> tuple[tuple[int, int, int], int]:
    from vrrestore.models import build_model, preset
    from vrrestore.models.descriptor import describe

    d = describe(build_model("SRRestorer", preset(name)))
    assert d.tiling is not None
    return (d.tiling.tile, d.tiling.overlap, d.tiling.min_tile), d.size_multiple


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--real", type=int, nargs="*", default=[], help="input sizes to run with a random sr-x4-s too")
    ap.add_argument("--alpha", action="store_true", help="RGBA inputs (a transparent top quarter)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="nearest", help=argparse.SUPPRESS)
    ap.add_argument("--policy", type=int, nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--multiple", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    policy, multiple = _policy_of("sr-x4-s")
    runs = [("nearest", s) for s in args.sizes] + [("sr-x4-s", s) for s in args.real]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, size in runs:
            src = Path(tmp) / f"in_{size}.png"
            if not src.exists():
                _make_input(src, size, args.alpha)
            dst = Path(tmp) / f"out_{model}_{size}.png"
            cmd = [sys.executable, __file__, "--child", "--model", model, "--input", str(src), "--output", str(dst),
                   "--policy", *map(str, policy), "--multiple", str(multiple)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                raise SystemExit(f"{model} {size}: child failed:\n{p.stderr}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            w, h = r["out"]
            out_mb = w * h * (4 if args.alpha else 3) / 2**20
            rows.append((model, size, f"{w}x{h}", out_mb, r, dst.stat().st_size / 2**20))
            dst.unlink()
    kind = "RGBA" if args.alpha else "RGB"
    print(f"| model | input ({kind}, 8-bit) | output | output array MB | peak RSS MB | RSS after imports MB | peak - imports MB | tile / tiles | time s | PNG MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, size, out, out_mb, r, png_mb in rows:
        print(f"| {model} | {size}x{size} | {out} | {out_mb:.0f} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} | "
              f"{r['peak_mb'] - r['base_mb']:.0f} | {r['tile']} / {r['tiles']} | {r['seconds']:.1f} | {png_mb:.1f} |")
    print(f"\nTilingPolicy(tile, overlap, min_tile) of sr-x4-s = {policy}, size multiple {multiple}; "
          f"torch threads {rows[0][4]['threads'] if rows else '?'}; Python {sys.version.split()[0]}.")


if __name__ == "__main__":
    main()
