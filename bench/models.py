"""Cost of every preset with the VR and VQ heads: parameters, GFLOPs, CPU fp32 latency, head share.

Run:  python bench/models.py [--runs 3] [--base-runs 1] [--presets face-s,face-base] [--heads vr,vq]
      python bench/models.py --cpu-vs-base   # face-cpu at auto and fp32 vs face-base, ms per face

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


def cpu_vs_base(runs: int, base_runs: int) -> None:
    """face-cpu (the release model) in ms per aligned face at --precision auto and fp32, against
    face-base (CodeFormer's geometry) at both, in one run; target: <= 1/50 of face-base's latency."""
    from vrrestore.models.descriptor import describe
    from vrrestore.precision import decide

    verdict = decide(torch.device("cpu"), "auto")
    print(f"auto on this CPU = {verdict.precision} ({verdict.reason})")
    ms: dict[tuple[str, str], float] = {}
    for name in ("face-cpu", "face-base"):
        torch.manual_seed(0)
        cfg = face_presets()[name]
        desc = describe(build_model("FaceRestorer", cfg).eval())
        desc.cpu_auto = verdict.precision if verdict.precision in ("fp32", "bf16") else "fp32"  # type: ignore[assignment]
        x = torch.rand(1, 3, cfg.prior.img_size, cfg.prior.img_size)
        for prec in ("auto", "fp32"):
            n = base_runs if name == "face-base" else runs
            ms[(name, prec)] = median_seconds(lambda d=desc, p=prec: d(x, 0.5, p), n) * 1e3  # type: ignore[misc]
            print(f"<!-- {name} {prec}: {ms[(name, prec)]:.1f} ms -->", flush=True)
    print("\n| model | input | auto ms/face | fp32 ms/face |\n|---|---:|---:|---:|")
    for name in ("face-cpu", "face-base"):
        side = face_presets()[name].prior.img_size
        print(f"| {name} | {side}x{side} | {ms[(name, 'auto')]:.1f} | {ms[(name, 'fp32')]:.1f} |")
    best_base = min(ms[("face-base", "auto")], ms[("face-base", "fp32")])
    ratio = ms[("face-cpu", "auto")] / best_base
    print(f"\n- face-cpu (auto) / face-base (its faster precision): 1/{1 / ratio:.0f} "
          f"({'PASS' if ratio <= 1 / 50 else 'FAIL'}, target <= 1/50); face-cpu auto vs fp32: "
          f"{ms[('face-cpu', 'fp32')] / ms[('face-cpu', 'auto')]:.2f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per small preset (after one warm-up)")
    parser.add_argument("--base-runs", type=int, default=1, help="timed runs for the *-base presets")
    parser.add_argument("--presets", default="", help="comma list (default: all face and SR presets)")
    parser.add_argument("--heads", default="vr,vq", help="comma list of heads to compare")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cpu-vs-base", action="store_true", help="only the face-cpu vs face-base latency comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_vs_base:
        cpu_vs_base(args.runs, args.base_runs)
        return
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
