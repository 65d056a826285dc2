"""Face pipeline speed: ms per face for detection, alignment, restoration and paste-back; faces/s by batch.

    python bench/face_speed.py                       # CPU: stage timings with face-s (random weights)
    python bench/face_speed.py --device cuda         # + faces/s at batch 1/8/64 for face-s and face-base
    python bench/face_speed.py --device cuda --precision bf16 --presets face-s face-base --batches 1 8 64 --json out.json

Random weights time the same as trained ones. Targets on one H100 (bf16): face-s >= 1,000 faces/s,
face-base >= 100 faces/s. Detection uses yuface on the CPU and, with --retinaface, RetinaFace (random
weights, no download) on the chosen device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from vrrestore.face.align import estimate_affine, paste_face, warp_face
from vrrestore.models import build_model, preset
from vrrestore.models.descriptor import describe


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1, cuda: bool = False) -> list[float]:
    """Wall seconds of each of ``repeats`` calls after ``warmup`` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def med_ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 3)


def test_image() -> np.ndarray:
    """skimage's astronaut (public domain) if scikit-image is installed, else a synthetic face-free image."""
    try:
        from skimage import data

        return data.astronaut()
    except ImportError:
        rng = np.random.default_rng(0)
        return (rng.random((512, 512, 3)) * 255).astype(np.uint8)


def bench_detection(rgb: np.ndarray, repeats: int, device: torch.device, retinaface: bool) -> dict:
    from vrrestore.face.detect import YuFaceDetector

    res: dict = {}
    big = cv2.resize(rgb, (1600, 1600), interpolation=cv2.INTER_CUBIC)
    try:
        det = YuFaceDetector()
        n = len(det.detect(rgb))
        res["yuface_512px_ms"] = med_ms(timed(lambda: det.detect(rgb), repeats))
        res["yuface_1600px_ms"] = med_ms(timed(lambda: det.detect(big), repeats))
        res["yuface_faces_found_512px"] = n
    except Exception as err:  # noqa: BLE001 - a bench reports what it could not run
        res["yuface_error"] = str(err)
    if retinaface:
        from vrrestore.face.retinaface import RetinaFaceNet, prior_boxes

        for variant in ("mobilenet0.25", "resnet50"):
            net = RetinaFaceNet(variant).eval().to(device)
            x = torch.randn(1, 3, 640, 640, device=device)

            def run(net: torch.nn.Module = net, x: torch.Tensor = x) -> None:
                with torch.inference_mode():
                    net(x)

            res[f"retinaface_{variant}_640px_net_ms"] = med_ms(timed(run, repeats, cuda=device.type == "cuda"))
            res[f"retinaface_priors_{variant}_640px_ms"] = med_ms(timed(lambda v=net: prior_boxes(640, 640, v.cfg), repeats))
    return res


def bench_align_paste(rgb: np.ndarray, sizes: list[int], repeats: int) -> dict:
    """Per face: fit + warp (alignment) and inverse warp + feathered blend (paste) at each crop size."""
    img = rgb.astype(np.float32) / 255.0
    pts = np.array([[202, 101], [246, 103], [223, 128], [202, 140], [244, 140]], dtype=np.float32)
    res = {}
    for s in sizes:
        m = estimate_affine(pts, s)
        res[f"align_{s}px_ms_per_face"] = med_ms(timed(lambda s=s: warp_face(img, estimate_affine(pts, s), s), repeats))
        face = warp_face(img, m, s)
        for scale in (1, 2):
            canvas = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
            res[f"paste_{s}px_x{scale}_ms_per_face"] = med_ms(
                timed(lambda c=canvas, f=face, m=m, sc=scale: paste_face(c, f, m, float(sc)), repeats)
            )
    return res


def bench_restore(presets: list[str], batches: list[int], device: torch.device, precision: str, repeats: int, compile_: bool) -> dict:
    res: dict = {}
    cuda = device.type == "cuda"
    for name in presets:
        torch.manual_seed(0)
        desc = describe(build_model("FaceRestorer", preset(name)).eval()).to(device)
        if compile_:
            desc.model = torch.compile(desc.model)  # type: ignore[assignment]
        s = desc.fixed_size or 512
        dtype = str(desc.resolve_precision(precision)).replace("torch.", "")  # type: ignore[arg-type]
        for b in batches:
            x = torch.rand(b, 3, s, s, device=device)
            try:
                times = timed(lambda x=x, d=desc: d(x, 0.5, precision), repeats, warmup=2 if cuda else 1, cuda=cuda)  # type: ignore[arg-type]
            except torch.OutOfMemoryError:
                res[f"{name}_b{b}"] = "out of memory"
                torch.cuda.empty_cache()
                continue
            per_face = statistics.median(times) / b
            res[f"{name}_b{b}"] = {"ms_per_face": round(1000 * per_face, 3), "faces_per_s": round(1 / per_face, 1), "dtype": dtype, "size": s}
            if desc.last_fell_back_to_fp32:
                res[f"{name}_b{b}"]["fell_back_to_fp32"] = True
        del desc
        if cuda:
            torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--presets", nargs="+", default=None, help="default: face-s on CPU; face-s face-base on CUDA")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="default: 1 on CPU; 1 8 64 on CUDA")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 3 CPU, 20 CUDA)")
    p.add_argument("--retinaface", action="store_true", help="also time the RetinaFace networks (random weights)")
    p.add_argument("--compile", action="store_true", help="torch.compile the restorer first (CUDA)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)

    from vrrestore.device import select_device

    device = select_device(a.device)
    cuda = device.type == "cuda"
    if a.threads:
        torch.set_num_threads(a.threads)
    presets = a.presets or (["face-s", "face-base"] if cuda else ["face-s"])
    batches = a.batches or ([1, 8, 64] if cuda else [1])
    repeats = a.repeats or (20 if cuda else 3)
    rgb = test_image()
    sizes = sorted({preset(n).prior.img_size for n in presets})  # type: ignore[union-attr]
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "detection": bench_detection(rgb, repeats, device, a.retinaface),
        "alignment_and_paste": bench_align_paste(rgb, sizes, max(repeats, 5)),
        "restoration": bench_restore(presets, batches, device, a.precision, repeats, a.compile),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
