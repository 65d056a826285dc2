"""Does a restorer's fidelity path beat fixed blends of its own prior output and the input? (issue 12)

    python bench/fidelity_probe.py -m vr-face-s --hq ../shared/data/faces_hq/test/london_canada_256 --recipe face-eval
    python bench/fidelity_probe.py -m release/sr/fidelity-vr.safetensors --task sr \\
        --lq ../shared/data/sr_hq/Set5/LR_bicubic_x4 --gt ../shared/data/sr_hq/Set5/HR

Per image: the model at each ``-w``; the fixed blends ``a * base + (1 - a) * model(w = 0)`` for each
``--blends`` a, where base is the input (faces) or its bicubic upscale (SR), i.e. what OutputFuse's gate
blends with; and, for models with OutputFuse, its mean gate at w = 1 and the decoder's own output at
w = 1 (OutputFuse bypassed). Mean PSNR/SSIM in the benchmark's convention (faces RGB, SR Y with a
scale-wide crop) on the same images `vrrestore benchmark` makes from the same flags. A trained w = 1
below the best fixed blend means the fusion path has learned less than a constant would give: session
6's `vr-face-s` did (25.88 vs 26.29 dB), which is why the fidelity stage got ``--texture-fade``.
Prints a Markdown table; ``--json FILE`` writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vrrestore.benchmark import (
    Dataset,
    baseline_output,
    convention,
    paired_dataset,
    resolve_model,
    run_model,
    synthetic_dataset,
    to_uint8,
)
from vrrestore.metrics.fidelity import psnr, ssim
from vrrestore.models.blocks import OutputFuse
from vrrestore.models.descriptor import ModelDescriptor


@contextlib.contextmanager
def watch_gate(fuse: OutputFuse, means: list[float]) -> Iterator[None]:
    """Append the mean of OutputFuse's gate a for every forward pass inside the block."""

    def hook(mod: OutputFuse, args: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        feat, out, lq, _w = args
        with torch.no_grad():
            means.append(float(mod.gate(feat, out, lq)[0].float().mean()))

    handle = fuse.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def bypass(model: torch.nn.Module) -> Iterator[None]:
    """The restorer without its OutputFuse inside the block (as a preset with out_fuse off runs it):
    the decoder's own output, the fusion blocks still acting."""
    fuse = model.out_fuse
    model.out_fuse = None
    try:
        yield
    finally:
        model.out_fuse = fuse


def probe(desc: ModelDescriptor, dataset: Dataset, fidelities: Sequence[float], blends: Sequence[float],
          precision: str = "auto") -> dict[str, Any]:
    """Mean PSNR/SSIM per row (base, each w, each blend, the bypassed decoder) and the mean gate."""
    task, scale = dataset.task, dataset.scale
    crop, y = (scale, True) if task == "sr" else (0, False)
    base_name = "bicubic" if task == "sr" else "input"
    fuse = getattr(desc.model, "out_fuse", None)
    scores: dict[str, list[tuple[float, float]]] = {}
    gates: list[float] = []

    def score(name: str, img: np.ndarray, gt8: np.ndarray) -> None:
        out8 = to_uint8(img)
        scores.setdefault(name, []).append((psnr(out8, gt8, crop, y), ssim(out8, gt8, crop, y)))

    for s in dataset.samples:
        size, gt8 = s.gt.shape[:2], to_uint8(s.gt)
        base = baseline_output("bicubic", s.lq, size)
        score(base_name, base, gt8)
        with torch.no_grad():
            outs = {w: run_model(desc, s.lq, size, w, precision) for w in dict.fromkeys([0.0, *fidelities])}
            for w in fidelities:
                score(f"w = {w:g}", outs[w], gt8)
            for a in blends:
                score(f"{a:g} x {base_name} + {1 - a:g} x (w = 0)", a * base + (1.0 - a) * outs[0.0], gt8)
            if fuse is not None:
                with watch_gate(fuse, gates):
                    run_model(desc, s.lq, size, 1.0, precision)
                with bypass(desc.model):
                    score("w = 1, decoder only (OutputFuse bypassed)", run_model(desc, s.lq, size, 1.0, precision), gt8)
    rows = {k: {"psnr": float(np.mean([p for p, _ in v])), "ssim": float(np.mean([q for _, q in v]))} for k, v in scores.items()}
    return {"images": len(dataset.samples), "convention": convention(task, scale), "data": dataset.description,
            "rows": rows, "gate_mean_w1": float(np.mean(gates)) if gates else None}


def markdown(name: str, result: dict[str, Any]) -> str:
    lines = [f"{name}: {result['data']}, {result['images']} images; {result['convention']}", "",
             "| output | PSNR | SSIM |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['psnr']:.3f} | {v['ssim']:.4f} |" for k, v in result["rows"].items()]
    if result["gate_mean_w1"] is not None:
        lines += ["", f"OutputFuse gate a at w = 1, mean over pixels and images: {result['gate_mean_w1']:.3f}"]
    return "\n".join(lines)


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="registry name or .safetensors file")
    ap.add_argument("--hq", type=Path, help="HQ folder, degraded with --recipe (as `vrrestore benchmark --hq`)")
    ap.add_argument("--recipe", default="face-eval")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lq", type=Path, help="LQ folder, paired with --gt by file stem")
    ap.add_argument("--gt", type=Path)
    ap.add_argument("--task", choices=("face", "sr"), default=None, help="default: from the data's scale")
    ap.add_argument("--limit", type=int, default=None, help="at most N images")
    ap.add_argument("-w", "--fidelities", type=floats, default=[0.0, 0.5, 1.0], help="comma list (default 0,0.5,1)")
    ap.add_argument("--blends", type=floats, default=[0.3, 0.5, 0.7], help="comma list of a (default 0.3,0.5,0.7)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    if (args.hq is None) == (args.lq is None or args.gt is None):
        ap.error("give either --hq (with --recipe) or both --lq and --gt")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.hq is not None:
        dataset = synthetic_dataset(args.hq, args.recipe, seed=args.seed, limit=args.limit, task=args.task)
    else:
        dataset = paired_dataset(args.lq, args.gt, limit=args.limit, task=args.task)
    cand = resolve_model(args.model, dataset.task, torch.device("cpu"), dataset.scale)
    if cand.descriptor is None:
        ap.error(f"--model {args.model}: a trained model is needed (a baseline has no fidelity path)")
    result = probe(cand.descriptor, dataset, args.fidelities, args.blends, args.precision)
    print(markdown(cand.name, result))
    if args.json:
        args.json.write_text(json.dumps({"model": cand.source, **result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
