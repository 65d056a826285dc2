"""Which precision to compute in, decided by measurement.

On CUDA bf16 (or fp16) autocast is always a win. On a CPU it depends on the chip: with AMX or
AVX512-BF16, oneDNN runs bf16 convs and matmuls several times faster than fp32; without them bf16
is a slow reference path (50-300x slower seen on AVX2-only hosts). So ``auto`` on a CPU asks two
questions: does the CPU claim the instructions, and does a tiny timed probe (a conv layer's
forward and backward, fp32 vs bf16 autocast) confirm it? The verdict is cached per machine (CPU
model, flags, torch version, threads) in ``~/.cache/vrrestore/precision.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from .cache import cache_dir

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16", "fp16")
MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much in the probe to be chosen
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Verdict:
    """The chosen compute dtype for a device, and why (shown by `vrrestore doctor`)."""

    precision: Literal["fp32", "bf16", "fp16"]
    reason: str
    speedup: float | None = None  # probe: fp32 time / bf16 time, when a probe ran

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """What to pass to torch.autocast, or None for plain fp32."""
        return None if self.precision == "fp32" else self.dtype


def cpu_bf16_flags() -> list[str]:
    """The bf16 instruction sets this CPU reports to torch (AMX tiles, AVX512-BF16)."""
    found = []
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        found.append("amx")
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        found.append("avx512_bf16")
    return found


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key() -> str:
    """What the verdict depends on: the CPU, its flags, torch and the thread count."""
    raw = f"{cpu_model()}|{','.join(cpu_bf16_flags())}|{torch.__version__}|{torch.get_num_threads()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def probe_cpu_bf16(repeats: int = 3) -> float:
    """fp32 seconds / bf16 seconds for one conv layer's forward + backward (about 0.5 s in all on AMX).

    The layer is the kind the models are made of (3x3, 64 channels, 64x64), so the ratio says what
    training and inference will see.
    """
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(2, 64, 64, 64, generator=gen)

    def run(bf16: bool, give_up_after: float = float("inf")) -> float:
        best = float("inf")
        for _ in range(repeats + 1):  # the first call warms oneDNN up
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = conv(x)
            y.float().square().mean().backward()
            best = min(best, time.perf_counter() - t0)
            if best > give_up_after:  # a bf16 path 20x slower than fp32 needs no more evidence
                break
        return best

    fp32_time = run(False)
    return fp32_time / run(True, give_up_after=20 * fp32_time)


def _read_cache(path: Path, key: str) -> Verdict | None:
    try:
        data = json.loads(path.read_text())
        entry = data[key]
        return Verdict(entry["precision"], entry["reason"], entry.get("speedup"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: Path, key: str, verdict: Verdict) -> None:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = asdict(verdict)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a probe per process


def cpu_verdict(use_cache: bool = True) -> Verdict:
    """bf16 when the CPU has AMX or AVX512-BF16 and the probe confirms >= MIN_SPEEDUP; else fp32."""
    flags = cpu_bf16_flags()
    if not flags:
        return Verdict("fp32", "no AMX or AVX512-BF16 on this CPU: bf16 would run a slow reference path")
    path, key = cache_dir("precision.json"), machine_key()
    if use_cache and (cached := _read_cache(path, key)) is not None:
        return cached
    speedup = probe_cpu_bf16()
    have = "+".join(flags)
    if speedup >= MIN_SPEEDUP:
        verdict = Verdict("bf16", f"{have} present and a timed probe ran bf16 {speedup:.1f}x faster than fp32", round(speedup, 2))
    else:
        verdict = Verdict("fp32", f"{have} present but a timed probe ran bf16 only {speedup:.2f}x as fast as fp32", round(speedup, 2))
    if use_cache:
        _write_cache(path, key, verdict)
    return verdict


def decide(device: torch.device, precision: Precision = "auto", fp16_ok: bool = True, bf16_ok: bool = True) -> Verdict:
    """The compute precision for ``device``. Explicit choices are kept; ``auto`` measures on CPUs."""
    if precision != "auto":
        if precision not in _DTYPES:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        return Verdict(precision, f"--precision {precision}")
    if device.type == "cuda":
        if bf16_ok and torch.cuda.is_bf16_supported():
            return Verdict("bf16", "CUDA device with bf16 support")
        if fp16_ok:
            return Verdict("fp16", "CUDA device without bf16: fp16 autocast")
        return Verdict("fp32", "CUDA device; this model supports neither bf16 nor fp16")
    if device.type == "cpu":
        if not bf16_ok:
            return Verdict("fp32", "this model does not support bf16")
        return cpu_verdict()
    return Verdict("fp32", f"{device.type}: fp32 (half precision is not measured there)")
