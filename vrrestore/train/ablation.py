"""Code-stage ablation: train each head / VR variant for the same steps on the same data stream from
one frozen prior, then report feature MSE to the HQ pre-quant features and decoded PSNR.

    python -m vrrestore.train.ablation --prior RUN_DIR --data HQ_DIR [--eval-data HQ_DIR2] \
        --steps 300 --batch-size 8 [--variants vq,vr:none:feat,vr:center:feat@3e-4,...]

A variant is ``head[:precondition[:vr_target[:vr_init]]][@lr]`` (precondition none|center|whiten,
vr_target feat|oracle, vr_init zero|model; defaults center, feat, zero). The references printed
first are the two ceilings: decoding the HQ encoder's own features (what VR regresses to) and
their nearest codes (what VQ can at best pick).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..data.datasets import RestorationDataset, SeededSampler
from ..models.vqgan import to_tokens
from . import ckpt
from .config import CodeOptions, TrainConfig
from .stages import CodeStage, Runtime, default_recipe, load_prior, restorer_config

DEFAULT_VARIANTS = (
    "vq", "soft", "direct", "vr:none:feat:model", "vr:none:feat", "vr:center:feat", "vr:whiten:feat",
    "vr:none:oracle", "vr:center:oracle",
)


@dataclass(frozen=True)
class Variant:
    spec: str
    head: str
    precondition: str = "center"
    vr_target: str = "feat"
    vr_init: str = "zero"
    lr: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Variant:
        body, _, lr = spec.partition("@")
        parts = body.split(":")
        head = parts[0]
        pre = parts[1] if len(parts) > 1 else ("center" if head == "vr" else "none")
        target = parts[2] if len(parts) > 2 else "feat"
        init = parts[3] if len(parts) > 3 else "zero"
        return cls(spec, head, pre, target, init, float(lr) if lr else 0.0)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of [0, 1] images."""
    mse = (x.clamp(0, 1) - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


@torch.no_grad()
def _evaluate(stage: CodeStage, gt: torch.Tensor, lq: torch.Tensor) -> dict[str, float]:
    model = stage.restorer.eval()
    f = to_tokens(stage.prior.encode(gt * 2 - 1))
    out = model.restore(lq, 0.0)
    model.train()
    return {"feat_mse": F.mse_loss(out.head.feat.float(), f).item(), "psnr": psnr(out.image, gt)}


@torch.no_grad()
def _references(stage: CodeStage, gt: torch.Tensor, lq: torch.Tensor) -> dict[str, float]:
    prior = stage.prior
    z = prior.encode(gt * 2 - 1)
    q = prior.quantize(z).feat
    dec = lambda t: (prior.decode(t) + 1) * 0.5  # noqa: E731
    up = F.interpolate(lq, size=gt.shape[-2:], mode="bicubic", align_corners=False)
    return {
        "decode(E_H(gt))": psnr(dec(z), gt),
        "decode(Q(E_H(gt)))": psnr(dec(q), gt),
        "input (resized LQ)": psnr(up, gt),
        "feat_mse(Q(E_H(gt)))": F.mse_loss(to_tokens(q), to_tokens(z)).item(),
    }


def codebook_report(codebook: torch.Tensor) -> dict[str, float]:
    """Why plain VR is hard to train: the spectrum of C and of the centred C."""
    c = codebook.detach().double()
    s = torch.linalg.svdvals(c)
    sc = torch.linalg.svdvals(c - c.mean(0))
    return {
        "cond(C)": float(s[0] / s[-1]), "cond(C - mean)": float(sc[0] / sc[-1]),
        "|mean|/rms(C - mean)": float(c.mean(0).norm() / (c - c.mean(0)).pow(2).sum(1).mean().sqrt()),
    }


def run_code_ablation(
    prior: str,
    data: Sequence[str],
    variants: Sequence[str] = DEFAULT_VARIANTS,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 1e-4,
    size: int = 0,
    recipe: str = "",
    eval_data: Sequence[str] | None = None,
    eval_images: int = 16,
    seed: int = 0,
    say: Any = print,
) -> dict[str, Any]:
    """Train the code stage once per variant (same init seed, same batches) and evaluate each on the
    same fixed LQ/GT set. Returns ``{"codebook": ..., "references": ..., "rows": [...]}``."""
    state = ckpt.load(prior, "prior")
    preset = state["model"]["preset"]
    rt = Runtime(torch.device("cpu"), say=lambda _s: None)
    size = size or load_prior(state).cfg.img_size
    rows: list[dict[str, Any]] = []
    refs: dict[str, float] = {}
    cb: dict[str, float] = {}
    eval_batch: tuple[torch.Tensor, torch.Tensor] | None = None
    for spec in variants:
        v = Variant.parse(spec)
        rec = recipe or default_recipe(restorer_config(preset, v.head, v.precondition))
        cfg = TrainConfig(stage="code", data=tuple(data), out="", preset=preset, steps=steps, batch_size=batch_size,
                          lr=v.lr or lr, seed=seed, size=size, workers=0, progress=False,
                          code=CodeOptions(init=prior, head=v.head, precondition=v.precondition, vr_target=v.vr_target,
                                           vr_init=v.vr_init, recipe=rec))  # type: ignore[arg-type]
        torch.manual_seed(seed)
        stage = CodeStage(cfg, rt, init_state=state)
        mode = "crop" if preset.startswith("sr") else "resize"
        if eval_batch is None:
            ev = RestorationDataset(eval_data or data, size, rec, mode=mode, warn=False)
            items = [ev[(i, 10_000 + i)] for i in range(min(eval_images, len(ev)))]
            eval_batch = (torch.stack([it["gt"] for it in items]), torch.stack([it["lq"] for it in items]))
            refs = _references(stage, *eval_batch)
            cb = codebook_report(stage.restorer.codebook)
            say("codebook: " + ", ".join(f"{k} {v:.3g}" for k, v in cb.items()))
            say("references: " + ", ".join(f"{k} {v:.4g}" for k, v in refs.items()))
        ds = RestorationDataset(data, size, rec, mode=mode, warn=False)
        sampler = SeededSampler(len(ds), seed)
        loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=True)
        before = _evaluate(stage, *eval_batch)
        t0, step, epoch, last = time.monotonic(), 0, 0, {}
        diverged = False
        while step < steps and not diverged:
            sampler.set_epoch(epoch)
            for batch in loader:
                last = stage.train_step(batch, step)
                step += 1
                if not math.isfinite(last["loss"]):
                    diverged = True
                    break
                if step >= steps:
                    break
            epoch += 1
        after = _evaluate(stage, *eval_batch) if not diverged else {"feat_mse": float("nan"), "psnr": float("nan")}
        row = {"variant": spec, "lr": cfg.learning_rate, "steps": step, "train_loss": last.get("loss", float("nan")),
               "feat_mse_0": before["feat_mse"], "feat_mse": after["feat_mse"], "psnr": after["psnr"],
               "seconds": round(time.monotonic() - t0, 1), "diverged": diverged}
        rows.append(row)
        say(f"{spec:<24} lr {row['lr']:.0e}  feat_mse {row['feat_mse_0']:.4f} -> {row['feat_mse']:.4f}  "
            f"PSNR {row['psnr']:.2f} dB  ({row['seconds']} s){'  DIVERGED' if diverged else ''}")
    return {"codebook": cb, "references": refs, "rows": rows}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vrrestore.train.ablation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", required=True, help="prior run folder or prior.pt")
    ap.add_argument("--data", required=True, action="append", help="HQ training images (folder or .tar); repeatable")
    ap.add_argument("--eval-data", action="append", help="HQ images to evaluate on (default: the first of --data)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated variant specs")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--recipe", default="")
    ap.add_argument("--eval-images", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    run_code_ablation(a.prior, a.data, a.variants.split(","), a.steps, a.batch_size, a.lr, a.size, a.recipe,
                      a.eval_data, a.eval_images, a.seed)


if __name__ == "__main__":
    main()
