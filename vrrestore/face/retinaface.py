"""RetinaFace (Deng et al. 2019) in plain torch, no torchvision, loading facexlib's weight files as they are.

facexlib's detector is the field's standard, but importing facexlib needs torchvision, which drags a CUDA
torch into a CPU install. This module re-implements the network (MobileNet-0.25 or ResNet-50 backbone,
FPN, SSH context modules, class/box/landmark heads), the prior boxes, the decoding and the NMS. Module
and parameter names follow facexlib's so that ``detection_mobilenet0.25_Final.pth`` and
``detection_Resnet50_Final.pth`` load with ``torch.load(weights_only=True)`` and a strict key check.

The weights are fetched once from facexlib's GitHub releases into ``<vrrestore cache>/facexlib/`` (``$VRRESTORE_CACHE``
or ``~/.cache/vrrestore``), never into site-packages.
"""

from __future__ import annotations

import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import cache_dir
from .base import DetectorUnavailable, Face, clean_detections, nms

Variant = Literal["resnet50", "mobilenet0.25"]

WEIGHT_URLS: dict[str, str] = {
    "resnet50": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "mobilenet0.25": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
}
BGR_MEAN = (104.0, 117.0, 123.0)  # the network was trained on BGR pixels in [0, 255] minus this mean


@dataclass(frozen=True)
class RetinaConfig:
    """Geometry of one variant (anchor sizes, strides and box-coding variances are shared)."""

    backbone: Variant
    in_channel: int
    out_channel: int
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variances: tuple[float, float] = (0.1, 0.2)


CONFIGS: dict[str, RetinaConfig] = {
    "resnet50": RetinaConfig("resnet50", in_channel=256, out_channel=256),
    "mobilenet0.25": RetinaConfig("mobilenet0.25", in_channel=32, out_channel=64),
}


# ---------------------------------------------------------------------------------------------- network
# Each helper returns an nn.Sequential so the parameter names are `<name>.<index>.<param>` as in facexlib.


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True))


def _conv_bn_plain(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 1, 1, bias=False), nn.BatchNorm2d(oup))


def _conv_bn_1x1(inp: int, oup: int, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True))


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with BN and leaky ReLU (MobileNet-V1 block)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True),
    )


class MobileNetBody(nn.Module):
    """MobileNet-V1 x0.25; returns the stride-8/16/32 features (64/128/256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2), _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2), _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class Bottleneck(nn.Module):
    """ResNet-50 v1.5 bottleneck (stride on the 3x3 conv), torchvision's parameter names."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity, inplace=True)


class ResNet50Body(nn.Module):
    """ResNet-50 up to layer4; returns layer2/3/4 features (512/1024/2048 channels, strides 8/16/32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for idx, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1):
            layers = [Bottleneck(inplanes, planes, stride)] + [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{idx}", nn.Sequential(*layers))
            inplanes = planes * 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x)), inplace=True), 3, 2, 1)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = _conv_bn_1x1(in_channels[0], out_channels, leaky)
        self.output2 = _conv_bn_1x1(in_channels[1], out_channels, leaky)
        self.output3 = _conv_bn_1x1(in_channels[2], out_channels, leaky)
        self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Context module: parallel 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, concatenated."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = _conv_bn_plain(in_channel, out_channel // 2)
        self.conv5X5_1 = _conv_bn(in_channel, out_channel // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn_plain(out_channel // 4, out_channel // 4)
        self.conv7X7_2 = _conv_bn(out_channel // 4, out_channel // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn_plain(out_channel // 4, out_channel // 4)  # lower-case x as in the weight files

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.conv5X5_1(x)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(b5), self.conv7x7_3(self.conv7X7_2(b5))], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    """1x1 conv predicting ``per_anchor`` numbers for each of 2 anchors at each position."""

    def __init__(self, channels: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(channels, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)  # (B, H*W*anchors, per_anchor), anchor fastest


class RetinaFaceNet(nn.Module):
    """Tensors in, raw predictions out: ``(loc (B,N,4), class logits (B,N,2), landmarks (B,N,10))``.

    Input: BGR pixels in [0, 255] minus :data:`BGR_MEAN`, (B, 3, H, W). N = number of prior boxes.
    """

    def __init__(self, variant: Variant = "resnet50") -> None:
        super().__init__()
        if variant not in CONFIGS:
            raise ValueError(f"unknown RetinaFace variant {variant!r}; expected one of {', '.join(CONFIGS)}")
        self.cfg = cfg = CONFIGS[variant]
        self.body = MobileNetBody() if variant == "mobilenet0.25" else ResNet50Body()
        c = cfg.in_channel
        self.fpn = FPN([c * 2, c * 4, c * 8], cfg.out_channel)
        self.ssh1 = SSH(cfg.out_channel, cfg.out_channel)
        self.ssh2 = SSH(cfg.out_channel, cfg.out_channel)
        self.ssh3 = SSH(cfg.out_channel, cfg.out_channel)
        self.ClassHead = nn.ModuleList([_Head(cfg.out_channel, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(cfg.out_channel, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(cfg.out_channel, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        logits = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, logits, landm


# ---------------------------------------------------------------------------------------------- box coding


def prior_boxes(height: int, width: int, cfg: RetinaConfig) -> torch.Tensor:
    """Anchors (N, 4) as (cx, cy, w, h) normalised by the image size, in the heads' output order.

    Per level (stride s): positions row-major over a ceil(H/s) x ceil(W/s) grid, then anchor sizes.
    """
    out = []
    for step, sizes in zip(cfg.steps, cfg.min_sizes, strict=True):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(fh, dtype=torch.float32) + 0.5) * step / height
        cx = (torch.arange(fw, dtype=torch.float32) + 0.5) * step / width
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        for_sizes = []
        for s in sizes:
            wh = torch.tensor([s / width, s / height], dtype=torch.float32).expand(fh, fw, 2)
            for_sizes.append(torch.cat([torch.stack([gx, gy], dim=-1), wh], dim=-1))
        out.append(torch.stack(for_sizes, dim=2).reshape(-1, 4))  # (fh, fw, A, 4) -> anchor fastest
    return torch.cat(out, dim=0)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """(N, 4) offsets -> (N, 4) boxes (x1, y1, x2, y2), normalised like the priors."""
    centre = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """(N, 10) offsets -> (N, 5, 2) points, normalised like the priors."""
    offsets = pre.reshape(-1, 5, 2)
    return priors[:, None, :2] + offsets * variances[0] * priors[:, None, 2:]


# ---------------------------------------------------------------------------------------------- weights


def weights_path(variant: Variant) -> Path:
    """``<vrrestore cache>/facexlib/<facexlib's file name>`` (see :func:`vrrestore.cache.cache_dir`)."""
    return cache_dir("facexlib") / WEIGHT_URLS[variant].rsplit("/", 1)[1]


def weights_cached(variant: Variant) -> bool:
    return weights_path(variant).is_file()


def ensure_weights(variant: Variant, *, download: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """The local weight file, downloaded atomically on first use; DetectorUnavailable if that fails."""
    path = weights_path(variant)
    if path.is_file():
        return path
    url = WEIGHT_URLS[variant]
    if not download:
        raise DetectorUnavailable(f"{path}: RetinaFace weights not in the cache; fetch {url} into that folder or use --detector yuface")
    if log is not None:
        log(f"downloading {url} -> {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - fixed https URL
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise DetectorUnavailable(
            f"{path}: could not download RetinaFace weights from {url} ({reason}); put the file there by hand or use --detector yuface"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_weights(net: RetinaFaceNet, path: Path) -> None:
    """Load a facexlib weight file (optionally ``module.``-prefixed) with ``weights_only=True``, strictly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle/zip errors come in many types; all mean "bad file"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DetectorUnavailable(f"{path}: not a loadable RetinaFace weight file ({first[:120]}); delete it so it is downloaded again") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise DetectorUnavailable(f"{path}: holds a {type(state).__name__}, not a state dict; delete it so it is downloaded again")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]  # absent in old files
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise DetectorUnavailable(
            f"{path}: tensors do not match RetinaFace-{net.cfg.backbone} (missing {len(missing)}, unexpected "
            f"{len(unexpected)}, wrong shape {len(wrong)}); delete the file so it is downloaded again"
        )
    net.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------- detector


class RetinaFaceDetector:
    """:class:`~vrrestore.face.base.Detector` backed by RetinaFace (facexlib weights); box NMS, then the
    clean-up of :func:`~vrrestore.face.base.clean_detections`.

    Images are scaled so the short side is at least ``min_side`` (small faces need it) and the long side
    at most ``max_side`` (bounds CPU time), as facexlib's helper does with its ``resize`` argument.
    """

    def __init__(
        self,
        variant: Variant = "resnet50",
        *,
        device: torch.device | str = "cpu",
        threshold: float = 0.8,
        nms_threshold: float = 0.4,
        min_side: int = 640,
        max_side: int = 1600,
        download: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.name = "retinaface" if variant == "resnet50" else "retinaface-mobile"
        self.variant = variant
        self.threshold, self.nms_threshold = threshold, nms_threshold
        self.min_side, self.max_side = min_side, max_side
        self.net = RetinaFaceNet(variant)
        load_weights(self.net, ensure_weights(variant, download=download, log=log))
        self.net.eval().to(device)
        self.device = torch.device(device)
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    def _scale_for(self, h: int, w: int) -> float:
        scale = max(1.0, self.min_side / min(h, w))
        return min(scale, self.max_side / max(h, w))

    def priors(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._priors:
            self._priors[(h, w)] = prior_boxes(h, w, self.net.cfg).to(self.device)
        return self._priors[(h, w)]

    @torch.inference_mode()
    def raw(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, tuple[int, int]]:
        """Network outputs for one image plus the resize factor and the network input size (h, w)."""
        h, w = rgb.shape[:2]
        scale = self._scale_for(h, w)
        img = rgb
        if abs(scale - 1.0) > 1e-6:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        bgr = img[:, :, ::-1].astype(np.float32) - np.asarray(BGR_MEAN, dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None].to(self.device)
        loc, logits, landm = self.net(x)
        return loc[0].float(), logits[0].float(), landm[0].float(), scale, (img.shape[0], img.shape[1])

    def detect(self, rgb: np.ndarray) -> list[Face]:
        loc, logits, landm, scale, (hn, wn) = self.raw(rgb)
        return self.decode(loc, logits, landm, scale, (hn, wn))

    def decode(
        self, loc: torch.Tensor, logits: torch.Tensor, landm: torch.Tensor, scale: float, net_hw: tuple[int, int]
    ) -> list[Face]:
        """Raw predictions of one image -> faces in the original image's pixel coordinates."""
        hn, wn = net_hw
        priors = self.priors(hn, wn)
        if priors.shape[0] != loc.shape[0]:
            raise RuntimeError(f"RetinaFace produced {loc.shape[0]} predictions for {priors.shape[0]} priors")
        scores = torch.softmax(logits, dim=-1)[:, 1]
        keep = scores > self.threshold
        if not bool(keep.any()):
            return []
        var = self.net.cfg.variances
        size = torch.tensor([wn, hn], dtype=torch.float32, device=loc.device)
        boxes = decode_boxes(loc[keep], priors[keep], var) * size.repeat(2) / scale
        points = decode_landmarks(landm[keep], priors[keep], var) * size / scale
        b, p, s = boxes.cpu().numpy(), points.cpu().numpy(), scores[keep].cpu().numpy()
        idx = nms(b, s, self.nms_threshold)
        return clean_detections([Face(box=b[i].astype(np.float32), landmarks=p[i].astype(np.float32), score=float(s[i])) for i in idx])
