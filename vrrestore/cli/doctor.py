"""`vrrestore doctor`: what this install can do, for bug reports and "why is it slow / offline?" questions.

It only looks and never downloads. Each probe is guarded, so a missing optional piece is reported
as such and never stops the report.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

from rich.table import Table

from ._console import out_console


def _version(module: str) -> str | None:
    """The installed version if ``module`` imports, else None."""
    try:
        importlib.import_module(module)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"


def _cache_dir() -> Path:
    try:
        from ..cache import cache_dir

        return cache_dir()
    except ImportError:
        root = os.environ.get("VRRESTORE_CACHE")
        return Path(root).expanduser() if root else Path.home() / ".cache" / "vrrestore"


def _hf_home() -> tuple[str, str]:
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    try:
        from ..hub import hub_settings

        return os.path.expanduser(hf_home), str(hub_settings().cache_dir)
    except ImportError:
        return os.path.expanduser(hf_home), os.path.join(os.path.expanduser(hf_home), "hub")


def _devices() -> list[str]:
    import torch

    from ..device import select_device

    lines = [f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}), {torch.get_num_threads()} CPU threads"]
    lines.append(f"--device auto -> {select_device('auto')}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            lines.append(
                f"cuda:{i} {props.name}: {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free, "
                f"capability {props.major}.{props.minor}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
            )
    else:
        lines.append("CUDA: not available" + ("" if torch.version.cuda else " (this torch is a CPU build)"))
    mps = getattr(torch.backends, "mps", None)
    lines.append(f"MPS: {'available' if mps is not None and mps.is_available() else 'not available'}")
    from ..precision import cpu_bf16_flags, decide

    flags = ", ".join(cpu_bf16_flags()) or "none"
    lines.append(f"CPU bf16 instructions: {flags}")
    cpu = decide(torch.device("cpu"), "auto")
    lines.append(f"--precision auto on cpu -> {cpu.precision}: {cpu.reason}")
    if torch.cuda.is_available():
        gpu = decide(torch.device("cuda"), "auto")
        lines.append(f"--precision auto on cuda -> {gpu.precision}: {gpu.reason}")
    return lines


def _detectors() -> list[tuple[str, str]]:
    rows = []
    yf = _version("yuface")
    rows.append(("yuface", f"importable ({yf})" if yf else "not importable (needs CPython 3.11 x86-64: pip install yuface==2023.5.1)"))
    try:
        from ..face.retinaface import weights_path

        for name, variant in (("retinaface", "resnet50"), ("retinaface-mobile", "mobilenet0.25")):
            p = weights_path(variant)  # type: ignore[arg-type]
            state = f"weights cached at {p}" if p.is_file() else f"weights not cached (downloaded to {p} on first use)"
            rows.append((name, f"built-in (torch); {state}"))
    except ImportError as err:
        rows.append(("retinaface", f"unavailable ({err})"))
    return rows


def _weights() -> Table | str:
    try:
        from ..weights import list_entries
    except ImportError:
        return "weights registry unavailable"
    try:
        entries = list_entries()
    except Exception as err:  # noqa: BLE001 - a broken registry is exactly what doctor must show
        return f"weights registry unreadable: {' '.join(str(err).split())}"
    table = Table(box=None, pad_edge=False, show_header=True)
    for col in ("name", "task", "status", "default"):
        table.add_column(col)
    for entry, status in entries:
        table.add_row(entry.name, entry.task, status, "yes" if getattr(entry, "default", False) else "")
    return table


def doctor() -> None:
    """Print versions, devices, face-detector backends, available weights and cache paths."""
    from .. import __version__

    out = out_console
    out.print(f"[bold]vrrestore {__version__}[/bold]  Python {platform.python_version()} on {platform.platform()}", highlight=False)
    import cv2
    import numpy
    import PIL
    from PIL import features

    codecs = ", ".join(f"{c} {'yes' if features.check(c) else 'no'}" for c in ("jpg", "webp", "libtiff"))
    out.print(f"numpy {numpy.__version__}, Pillow {PIL.__version__} ({codecs}), OpenCV {cv2.__version__}", highlight=False)
    out.print("\n[bold]Devices[/bold]")
    for line in _devices():
        out.print(f"  {line}", highlight=False)
    out.print("\n[bold]Face detectors[/bold]")
    for name, state in _detectors():
        out.print(f"  {name:<18} {state}", highlight=False, soft_wrap=True)
    out.print("\n[bold]Weights[/bold]")
    w = _weights()
    out.print(f"  {w}" if isinstance(w, str) else w, highlight=False)
    hf_home, hub_cache = _hf_home()
    out.print("\n[bold]Caches[/bold]")
    src = "$VRRESTORE_CACHE" if os.environ.get("VRRESTORE_CACHE") else "default"
    out.print(f"  vrrestore cache    {_cache_dir()}  ({src})", highlight=False, soft_wrap=True)
    out.print(f"  HF_HOME            {hf_home}  ({'$HF_HOME' if os.environ.get('HF_HOME') else 'default'})", highlight=False, soft_wrap=True)
    out.print(f"  Hub cache          {hub_cache}", highlight=False, soft_wrap=True)
    out.print(f"  executable         {sys.executable}", highlight=False, soft_wrap=True)
