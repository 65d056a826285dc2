"""Cost of every preset with the VR and VQ heads: parameters, GFLOPs, CPU fp32 latency, head share.

Run:  python bench/models.py [--runs 3] [--base-runs 1] [--presets face-s,face-base] [--heads vr,vq]

Each model runs at its preset's native size (faces: prior.img_size; SR: an LR of img_size // scale)
with batch 1 in fp32 under inference mode. Latency is the median of ``--runs`` timed forwards after
one warm-up (``--base-runs`` for the big *-base presets). The head's share is measured on the very
token tensor the head receives inside that forward: its own forward is timed alone (median of many
calls) and FLOP-counted, then divided by the whole forward's time and FLOPs. Prints a Markdown table
and the two design targets: VR head < 1 % of a forward; face-s >= 8x cheaper in FLOPs than face-base.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vrrestore.models import build_model, face_presets, sr_presets


def gflops(fn: Any, *args: Any) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def median_seconds(fn: Any, runs: int, block: float = 0.0) -> float:
    """Median seconds per call over ``runs`` timed blocks after one warm-up.

    A block repeats the call until it lasts ``block`` seconds, so sub-millisecond calls (the head)
    are not lost in timer and scheduling noise; with ``block=0`` each block is one call.
    """
    fn()
    reps = 1
    if block > 0:
        t0 = time.perf_counter()
        fn()
        reps = max(1, int(block / max(time.perf_counter() - t0, 1e-7)))
    times: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def measure(name: str, arch: str, cfg: Any, runs: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(arch, cfg).eval().requires_grad_(False)
    size = cfg.prior.img_size if arch == "FaceRestorer" else cfg.prior.img_size // cfg.scale
    x = torch.rand(1, 3, size, size)
    head: nn.Module = model.predictor.head  # type: ignore[assignment]
    captured: dict[str, tuple] = {}
    hook = head.register_forward_pre_hook(lambda _m, args: captured.setdefault("args", tuple(a.detach() for a in args)))
    with torch.inference_mode():
        total_s = median_seconds(lambda: model(x, 0.5), runs)
    hook.remove()
    total_gf = gflops(model, x, 0.5)
    tokens, codebook = captured["args"]
    head_gf = gflops(head, tokens, codebook)
    with torch.inference_mode():
        head_s = median_seconds(lambda: head(tokens, codebook), 15, block=0.02)
    return {
        "preset": name, "head": cfg.head, "params": sum(p.numel() for p in model.parameters()), "input": size,
        "tokens": tokens.shape[1], "gflops": total_gf, "ms": total_s * 1e3, "head_ms": head_s * 1e3,
        "head_time_share": head_s / total_s, "head_flop_share": head_gf / total_gf, "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per small preset (after one warm-up)")
    parser.add_argument("--base-runs", type=int, default=1, help="timed runs for the *-base presets")
    parser.add_argument("--presets", default="", help="comma list (default: all face and SR presets)")
    parser.add_argument("--heads", default="vr,vq", help="comma list of heads to compare")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    table = [(n, "FaceRestorer", c) for n, c in face_presets().items()] + [(n, "SRRestorer", c) for n, c in sr_presets().items()]
    wanted = {p.strip() for p in args.presets.split(",") if p.strip()}
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    rows = []
    for name, arch, cfg in table:
        if wanted and name not in wanted:
            continue
        for head in heads:
            runs = args.base_runs if name.endswith("-base") else args.runs
            rows.append(measure(name, arch, dataclasses.replace(cfg, head=head), runs))
            r = rows[-1]
            print(f"<!-- {name}/{head}: {r['gflops']:.2f} GFLOPs, {r['ms']:.1f} ms -->", flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nCPU fp32, batch 1, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1-min load {load:.1f} at the end\n"
    )
    print("| preset | head | params (M) | input | tokens | GFLOPs | CPU ms/img | head ms | head time share | head FLOP share |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['head']} | {r['params'] / 1e6:.2f} | {r['input']}x{r['input']} | {r['tokens']} | "
            f"{r['gflops']:.2f} | {r['ms']:.1f} | {r['head_ms']:.3f} | {100 * r['head_time_share']:.2f}% | "
            f"{100 * r['head_flop_share']:.2f}% |"
        )
    print()
    vr = [r for r in rows if r["head"] == "vr"]
    if vr:
        worst_t = max(vr, key=lambda r: r["head_time_share"])
        worst_f = max(vr, key=lambda r: r["head_flop_share"])
        ok = worst_t["head_time_share"] < 0.01 and worst_f["head_flop_share"] < 0.01
        print(
            f"- VR head under 1% of a forward: {'PASS' if ok else 'FAIL'} (worst time share {100 * worst_t['head_time_share']:.2f}% "
            f"on {worst_t['preset']}, worst FLOP share {100 * worst_f['head_flop_share']:.2f}% on {worst_f['preset']})"
        )
    by = {(r["preset"], r["head"]): r for r in rows}
    for head in heads:
        if ("face-s", head) in by and ("face-base", head) in by:
            ratio = by[("face-base", head)]["gflops"] / by[("face-s", head)]["gflops"]
            print(f"- face-base / face-s FLOPs ({head}): {ratio:.1f}x ({'PASS' if ratio >= 8 else 'FAIL'}, target >= 8x)")


if __name__ == "__main__":
    main()
