"""The three training stages. Each owns its networks, optimisers, schedulers and EMA and exposes
``train_step(batch, step) -> metrics``; the loop (loop.py) does data, logging, checkpoints and DDP.

1. ``PriorStage``: VQAutoEncoder on HQ images: L1 + LPIPS-VGG + hinge PatchGAN (adaptive weight,
   from ``disc_start``) + codebook/commitment loss; dead-code restarts; EMA.
2. ``CodeStage``: LQ encoder + transformer + head with the prior frozen (codebook, decoder, and a
   frozen copy of the HQ encoder that produces the targets). See CodeOptions for the losses.
3. ``FidelityStage``: adds the fusion blocks and image losses with a per-sample fidelity weight.

``PlainStage`` trains the no-prior baseline (models/plain.py) the release models are compared with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data.degradations import derive_seed
from ..errors import UsageError
from ..models import preset as _preset
from ..models.config import config_from_dict, config_to_dict
from ..models.descriptor import architecture_of, build_model
from ..models.face import FaceConfig
from ..models.heads import HEAD_KINDS, HeadOutput
from ..models.plain import PlainConfig, PlainRestorer
from ..models.sr import SRConfig
from ..models.vqgan import VQAutoEncoder, VQConfig, to_tokens
from . import ckpt
from .config import TrainConfig
from .discriminator import PatchDiscriminator
from .ema import ModelEMA
from .files import (
    check_prior_fits,
    load_plain_weights,
    load_prior_file,
    load_restorer_weights,
    output_fuse_as_preset,
)
from .losses import (
    Perceptual,
    adaptive_weight,
    codebook_target_loss,
    fidelity_loss_scales,
    hinge_d_loss,
    hinge_g_loss,
    hinge_g_per_sample,
    oracle_weight_loss,
)
from .precondition import whiten_heads

# torch >= 2.13 renamed DDP's broadcast_buffers (deprecated) to forward_sync_buffers.
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
    else {"broadcast_buffers": False}
)


@dataclass
class Runtime:
    """Where and how a stage runs."""

    device: torch.device
    rank: int = 0
    world: int = 1
    amp_dtype: torch.dtype | None = None  # bf16 on CUDA; None = fp32
    say: Callable[[str], None] = print

    @property
    def distributed(self) -> bool:
        return self.world > 1


def get_preset(name: str) -> FaceConfig | SRConfig:
    """The preset's config; an unknown name is a usage error (exit 2), not a KeyError traceback."""
    try:
        return _preset(name)
    except KeyError as err:
        raise UsageError(f"--preset {name}: {err.args[0]}") from None


def check_recipe_scale(recipe: str, model_cfg: FaceConfig | SRConfig, preset: str) -> None:
    """A degradation recipe must make inputs at the model's scale (sr-x4 LQ into a face model fails deep
    inside a conv otherwise)."""
    from ..data.degradations import recipe_scale

    want = model_cfg.scale if isinstance(model_cfg, SRConfig) else 1
    try:
        got = recipe_scale(recipe)
    except (KeyError, ValueError) as err:
        raise UsageError(f"--recipe {recipe}: {err}") from None
    if got != want:
        kind = f"x{want} super-resolution" if want > 1 else "face (same-size) restoration"
        raise UsageError(f"--recipe {recipe} makes x{got} inputs but {preset} is a {kind} model; "
                         f"use a {'face' if want == 1 else f'sr-x{want}'} recipe")


def disc_width(prior: VQConfig, override: int = 0) -> int:
    """Critic width: ``override`` when set, else the prior's (64 for CodeFormer's nf = 64; 32 for tiny)."""
    return override or min(64, 2 * prior.base_channels)


class AdaptiveWeight:
    """The adaptive GAN weight, recomputed every ``every`` steps and reused in between.

    Each computation is an extra backward through the critic (a third of the GAN's cost on a CPU);
    the weight drifts slowly, so a few steps' reuse changes little. Saved with the stage for resume.
    """

    def __init__(self, every: int, max_weight: float) -> None:
        self.every, self.max_weight = max(1, every), max_weight
        self.value: float | None = None

    def __call__(self, step: int, rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
        if self.value is None or step % self.every == 0:
            self.value = float(adaptive_weight(rec_loss, g_loss, last_layer, self.max_weight))
        return torch.tensor(self.value, device=g_loss.device)


def task_of(preset_name: str) -> str:
    return "sr" if preset_name.startswith("sr") else "face"


def default_recipe(model_cfg: FaceConfig | SRConfig) -> str:
    return f"sr-x{model_cfg.scale}" if isinstance(model_cfg, SRConfig) else "face"


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then constant or cosine to 10% of the base rate at ``steps``."""
    warm, total, cosine = cfg.warmup_steps, max(1, cfg.steps), cfg.cosine

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def _uniform(seed: int, *labels: object) -> float:
    """A number in [0, 1) from (seed, labels) alone: the same on every rank, nothing to checkpoint."""
    return derive_seed(seed, *labels) / 2.0**63


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily stop gradients into ``module``'s parameters (the critic during a generator step)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)


class StageBase:
    name = ""
    needs_lq = True

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        self.nets: dict[str, nn.Module] = {}  # trained, saved
        self.frozen: dict[str, nn.Module] = {}  # not trained, saved (so resume needs no other file)
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.scheds: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.ema: ModelEMA | None = None
        self.history: list[dict[str, Any]] = []  # summaries of earlier stages

    # -- set-up helpers ------------------------------------------------------------------------
    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP-wrap for multi-process runs (buffers are synced by hand where it matters)."""
        if not self.rt.distributed:
            return module
        ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
        return DDP(module, device_ids=ids, **_NO_BUFFER_SYNC)

    def add_optim(self, name: str, params: list[nn.Parameter] | list[dict[str, Any]], lr: float,
                  betas: tuple[float, float]) -> None:
        self.optims[name] = torch.optim.Adam(params, lr=lr, betas=betas)
        self.scheds[name] = torch.optim.lr_scheduler.LambdaLR(self.optims[name], lr_lambda(self.cfg))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.rt.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.rt.device.type, dtype=self.rt.amp_dtype)

    def step_optim(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optims[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.scheds[name].step()

    # -- what the loop and export need -------------------------------------------------------
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        raise NotImplementedError

    def model_meta(self) -> dict[str, Any]:
        """Architecture and config of the EMA model (enough to rebuild it)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "frozen": {k: v.state_dict() for k, v in self.frozen.items()},
            "optims": {k: v.state_dict() for k, v in self.optims.items()},
            "scheds": {k: v.state_dict() for k, v in self.scheds.items()},
            "ema": self.ema.state_dict() if self.ema else {},
            "extra": self.extra_state(),
            "model": self.model_meta(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for group, target in (("nets", self.nets), ("frozen", self.frozen), ("optims", self.optims), ("scheds", self.scheds)):
            for k, v in target.items():
                v.load_state_dict(state[group][k])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.load_extra_state(state.get("extra", {}))
        self.history = list(state.get("history", []))

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def images_in(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        dev = self.rt.device
        gt = batch["gt"].to(dev, non_blocking=True)
        lq = batch["lq"].to(dev, non_blocking=True) if "lq" in batch else None
        return gt, lq


# ------------------------------------------------------------------------------------------------
# Stage 1


class PriorNet(nn.Module):
    """Forward of the prior that hands the loop everything it needs (DDP hooks forward only)."""

    def __init__(self, vq: VQAutoEncoder) -> None:
        super().__init__()
        self.vq = vq

    def forward(self, x: torch.Tensor, continuous: bool = False) -> dict[str, torch.Tensor]:
        """``continuous`` decodes the pre-quantization feature instead of its codes (the codebook
        and commitment losses still apply), so the decoder also learns off-codebook inputs."""
        z = self.vq.encode(x)
        q = self.vq.quantize(z)
        rec = self.vq.decode(z if continuous else q.feat)
        assert q.loss is not None
        return {"rec": rec, "z": z, "codebook_loss": q.loss}


class PriorStage(StageBase):
    name = "prior"
    needs_lq = False

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        super().__init__(cfg, rt)
        if not cfg.preset:
            raise UsageError("the prior stage needs --preset (e.g. face-s, face-tiny, sr-x4-s, sr-tiny)")
        self.vq_cfg: VQConfig = get_preset(cfg.preset).prior
        self.vq = VQAutoEncoder(self.vq_cfg)
        if cfg.prior.init:
            init_vq, _ = load_prior_file(cfg.prior.init)
            check_prior_fits(init_vq, self.vq_cfg, cfg.prior.init)
            self.vq.load_state_dict(init_vq.state_dict())
        self.vq.to(rt.device)
        self.disc = PatchDiscriminator(width=disc_width(self.vq_cfg, cfg.prior.disc_width)).to(rt.device)
        self.adaptive = AdaptiveWeight(cfg.prior.adaptive_every, 1e4)
        self.nets = {"vq": self.vq, "disc": self.disc}
        self.net = self.wrap(PriorNet(self.vq))
        self.disc_ddp = self.wrap(self.disc)
        o = cfg.prior
        self.add_optim("g", list(self.vq.parameters()), cfg.learning_rate, (0.9, 0.99))
        self.add_optim("d", list(self.disc.parameters()), cfg.learning_rate, (0.9, 0.99))
        self.perceptual = Perceptual(o.perceptual_weight, rt.device, rt.say, o.perceptual_net)
        self.ema = ModelEMA(self.vq, cfg.ema_decay)
        self.restarted = 0

    def model_meta(self) -> dict[str, Any]:
        return {"architecture": "VQAutoEncoder", "config": config_to_dict(self.vq_cfg), "preset": self.cfg.preset}

    def extra_state(self) -> dict[str, Any]:
        return {"usage": self.vq.quantizer.usage.detach().cpu().clone(), "restarted": self.restarted,
                "adaptive": self.adaptive.value}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "usage" in state:
            self.vq.quantizer.usage.copy_(state["usage"])
        self.restarted = int(state.get("restarted", 0))
        self.adaptive.value = state.get("adaptive")

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        o = self.cfg.prior
        gt, _ = self.images_in(batch)
        x = gt * 2.0 - 1.0
        continuous = o.continuous_prob > 0 and _uniform(self.cfg.seed, "continuous", step) < o.continuous_prob
        with self.autocast():
            out = self.net(x, continuous)
        rec = out["rec"].float()
        l1 = (rec - x).abs().mean()
        with self.autocast():
            perc = self.perceptual((rec + 1.0) * 0.5, gt) if self.perceptual.enabled else rec.new_zeros(())
        rec_loss = l1 + o.perceptual_weight * perc
        total = rec_loss + o.codebook_weight * out["codebook_loss"].float()
        m = {"l1": l1.item(), "perceptual": perc.item(), "codebook": out["codebook_loss"].item()}
        if o.continuous_prob > 0:
            m["continuous"] = float(continuous)
        gan = step >= o.disc_start and o.disc_weight > 0
        if gan:
            with frozen(self.disc), self.autocast():
                g = hinge_g_loss(self.disc(out["rec"]).float())
            dw = self.adaptive(step, rec_loss, g, self.vq.decoder.conv_out.weight) * o.disc_weight
            total = total + dw * g
            m.update(g=g.item(), d_weight=dw.item())
        self.step_optim("g", total)
        if gan:
            with self.autocast():
                d = hinge_d_loss(self.disc_ddp(x).float(), self.disc_ddp(out["rec"].detach()).float())
            self.step_optim("d", d)
            m["d"] = d.item()
        if o.restart_every and (step + 1) % o.restart_every == 0:
            m["restarted"] = float(self.restart_codes(out["z"].detach(), o.restart_threshold))
        self.ema.update(self.vq)  # type: ignore[union-attr]
        m["loss"] = total.item()
        return m

    @torch.no_grad()
    def restart_codes(self, z: torch.Tensor, threshold: float) -> int:
        """Average usage over ranks, restart on rank 0, broadcast the codebook so ranks agree."""
        q = self.vq.quantizer
        if self.rt.distributed:
            dist.all_reduce(q.usage)
            q.usage.div_(self.rt.world)
        n = q.restart_dead_codes(z, threshold) if self.rt.rank == 0 else 0
        if self.rt.distributed:
            dist.broadcast(q.embedding.weight.data, 0)
            dist.broadcast(q.usage, 0)
            t = torch.tensor([n], device=z.device)
            dist.broadcast(t, 0)
            n = int(t.item())
        self.restarted += n
        return n


# ------------------------------------------------------------------------------------------------
# Stage 2 and 3 shared machinery


def restorer_config(preset_name: str, head: str, precondition: str, prior_cfg: VQConfig | None = None) -> FaceConfig | SRConfig:
    """The preset's restorer config with the chosen head; ``vr_affine`` is on unless precondition is none."""
    if head not in HEAD_KINDS:
        raise UsageError(f"--head {head}: expected one of {', '.join(HEAD_KINDS)}")
    cfg = get_preset(preset_name)
    if prior_cfg is not None and cfg.prior != prior_cfg:
        raise UsageError(f"preset {preset_name} does not match the prior's geometry; train the prior with the same preset")
    return dataclasses.replace(cfg, head=head, vr_affine=precondition != "none")  # type: ignore[arg-type]


def build_restorer(meta: dict[str, Any], precondition: str) -> nn.Module:
    """A restorer from ``model_meta()`` output, with the training-time head when whitened."""
    model = build_model(meta["architecture"], meta["config"])
    if precondition == "whiten" and meta["config"]["head"] == "vr":
        whiten_heads(model)
    return model


def load_prior(state: dict[str, Any]) -> VQAutoEncoder:
    """The EMA VQAutoEncoder of a prior-stage checkpoint."""
    meta = state["model"]
    vq = VQAutoEncoder(config_from_dict(VQConfig, meta["config"]))
    vq.load_state_dict(state["ema"]["model"])
    return vq


def stage_summary(cfg: TrainConfig, step: int, seconds: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What export writes into the model's metadata for one stage."""
    return {
        "stage": cfg.stage, "preset": cfg.preset, "data": list(cfg.data), "steps": step,
        "seconds": round(seconds, 1), "batch_size": cfg.batch_size, "lr": cfg.learning_rate, **(extra or {}),
    }


class CodeNet(nn.Module):
    """LQ encoder + predictor (stage 2 needs no decoder: its losses live in feature space)."""

    def __init__(self, restorer: nn.Module) -> None:
        super().__init__()
        self.lq_encoder = restorer.lq_encoder
        self.predictor = restorer.predictor

    def forward(self, lq: torch.Tensor) -> dict[str, torch.Tensor]:
        lq_feat, _ = self.lq_encoder(lq * 2.0 - 1.0)
        head = self.predictor(lq_feat, self._codebook)
        return head_dict(head, lq_feat)

    _codebook: torch.Tensor


class RestoreNet(nn.Module):
    """Full restorer forward for stage 3; optionally detaches the head's feature before decoding
    (the code losses still see the undetached head output)."""

    def __init__(self, restorer: nn.Module, detach_code: bool) -> None:
        super().__init__()
        self.restorer = restorer
        self.detach_code = detach_code

    def forward(self, lq: torch.Tensor, fidelity: torch.Tensor) -> dict[str, torch.Tensor]:
        seen: dict[str, HeadOutput] = {}

        def hook(_m: nn.Module, _a: Any, out: HeadOutput) -> HeadOutput | None:
            seen["head"] = out
            return dataclasses.replace(out, feat=out.feat.detach()) if self.detach_code else None

        handle = self.restorer.predictor.register_forward_hook(hook)
        try:
            res = self.restorer.restore(lq, fidelity)
        finally:
            handle.remove()
        d = head_dict(seen["head"], res.lq_feat)
        d["image"] = res.image
        return d


def head_dict(head: HeadOutput, lq_feat: torch.Tensor) -> dict[str, torch.Tensor]:
    d = {"lq_feat": to_tokens(lq_feat), "feat": head.feat}
    if head.logits is not None:
        d["logits"] = head.logits
    if head.weights is not None:
        d["weights"] = head.weights
    return d


class _RestorerStage(StageBase):
    """Shared by stages 2 and 3: frozen prior targets and the code losses."""

    def setup_restorer(self, meta: dict[str, Any], precondition: str) -> None:
        self.model_cfg = config_from_dict(type(get_preset(self.cfg.preset)), meta["config"])
        self.precondition = precondition
        self.restorer = build_restorer(meta, precondition).to(self.rt.device)

    def prepare_targets(self, prior: VQAutoEncoder) -> None:
        self.prior = prior.to(self.rt.device).eval().requires_grad_(False)
        self.frozen = {"prior": self.prior}
        c = self.restorer.codebook.detach().float()
        affine = getattr(self.model_cfg, "vr_affine", True)
        mu = c.mean(0) if affine else torch.zeros_like(c[0])
        self._oracle = (mu, torch.linalg.pinv(c - mu), affine, c.shape[0])

    def oracle(self, f: torch.Tensor) -> torch.Tensor:
        mu, pinv, affine, n = self._oracle
        w = (f.float() - mu) @ pinv
        return w + 1.0 / n if affine else w

    def freeze_prior_parts(self) -> None:
        self.restorer.quantizer.requires_grad_(False)
        self.restorer.decoder.requires_grad_(False)

    @torch.no_grad()
    def targets(self, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-quant HQ tokens f (B, T, d), their nearest-code indices and quantized tokens."""
        with self.autocast():
            z = self.prior.encode(gt * 2.0 - 1.0)
        f = to_tokens(z.float())
        idx = self.prior.quantizer.nearest(f)
        q = F.embedding(idx, self.restorer.codebook.float())
        return f, idx, q

    def code_losses(
        self, out: dict[str, torch.Tensor], f: torch.Tensor, idx: torch.Tensor, q: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.code_opts
        head = self.model_cfg.head
        parts: dict[str, torch.Tensor] = {}
        if head in ("vq", "soft"):
            logits = out["logits"].float()
            parts["ce"] = o.ce_weight * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx.reshape(-1))
            parts["lq_feat"] = o.lq_feat_weight * codebook_target_loss(out["lq_feat"], q)
        else:
            parts["lq_feat"] = o.lq_feat_weight * codebook_target_loss(out["lq_feat"], f)
        if head in ("soft", "vr", "direct"):
            parts["feat"] = o.feat_weight * codebook_target_loss(out["feat"], f)
        if head == "vr" and o.vr_target == "oracle":
            parts["oracle"] = o.oracle_weight * oracle_weight_loss(out["weights"], self.oracle(f))
        total = sum(parts.values(), torch.zeros((), device=f.device))
        m = {k: v.item() for k, v in parts.items()}
        with torch.no_grad():
            m["feat_mse"] = F.mse_loss(out["feat"].float(), f).item()  # comparable across heads
            if "logits" in out:
                m["code_acc"] = (out["logits"].argmax(-1) == idx).float().mean().item()
        return total, m

    def model_meta(self) -> dict[str, Any]:
        arch, cfg = architecture_of(self.restorer)
        return {"architecture": arch, "config": cfg, "preset": self.cfg.preset, "precondition": self.precondition}


def _resolve_preset(cfg: TrainConfig, init_state: dict[str, Any]) -> None:
    init_preset = init_state["model"].get("preset", "")
    if not cfg.preset:
        cfg.preset = init_preset
    elif task_of(cfg.preset) != task_of(init_preset):
        raise UsageError(f"--preset {cfg.preset} is a {task_of(cfg.preset)} preset but {init_preset} was used before")


class CodeStage(_RestorerStage):
    name = "code"

    def __init__(self, cfg: TrainConfig, rt: Runtime, init_state: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, rt)
        o = self.code_opts = cfg.code
        if init_state is None:
            init_state = ckpt.load(o.init, "prior")
        _resolve_preset(cfg, init_state)
        prior = load_prior(init_state)
        mcfg = restorer_config(cfg.preset, o.head, o.precondition, prior.cfg)
        self.recipe = o.recipe or default_recipe(mcfg)
        check_recipe_scale(self.recipe, mcfg, cfg.preset)
        arch = "SRRestorer" if isinstance(mcfg, SRConfig) else "FaceRestorer"
        self.setup_restorer({"architecture": arch, "config": config_to_dict(mcfg)}, "none")
        self.precondition = o.precondition
        self.restorer.load_prior(prior)  # type: ignore[operator]
        if o.head == "vr" and o.vr_init == "zero":
            nn.init.zeros_(self.restorer.predictor.head.proj.weight)
        elif o.vr_init not in ("model", "zero"):
            raise UsageError(f"vr_init {o.vr_init!r}: expected model or zero")
        if o.init_weights:  # before whitening: exported heads are plain (folded)
            load_restorer_weights(self.restorer, o.init_weights)
        if o.precondition == "whiten" and o.head == "vr":
            plain = whiten_heads(self.restorer)
            self.restorer.predictor.head.to(rt.device).init_from(plain, self.restorer.codebook)
        self.freeze_prior_parts()
        self.prepare_targets(prior)
        self.history = list(init_state.get("history", [])) + [init_state.get("summary", {})]
        self.codenet = CodeNet(self.restorer)
        self.codenet._codebook = self.restorer.codebook.detach()
        self.net = self.wrap(self.codenet)
        self.nets = {"restorer": self.restorer}
        params = [p for p in self.codenet.parameters() if p.requires_grad]
        self.add_optim("g", params, cfg.learning_rate, (0.9, 0.99))
        self.ema = ModelEMA(self.restorer, cfg.ema_decay)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        gt, lq = self.images_in(batch)
        f, idx, q = self.targets(gt)
        with self.autocast():
            out = self.net(lq)
        total, m = self.code_losses(out, f, idx, q)
        self.step_optim("g", total)
        self.ema.update(self.restorer)  # type: ignore[union-attr]
        m["loss"] = total.item()
        return m


# ------------------------------------------------------------------------------------------------
# Stage 3


class FidelityStage(_RestorerStage):
    name = "fidelity"

    def __init__(self, cfg: TrainConfig, rt: Runtime, init_state: dict[str, Any] | None = None) -> None:
        super().__init__(cfg, rt)
        fo = cfg.fidelity
        if init_state is None:
            init_state = ckpt.load(fo.init, "code")
        _resolve_preset(cfg, init_state)
        code_cfg = TrainConfig.from_dict(init_state["config"])
        self.code_opts = code_cfg.code
        # The code stage never trains OutputFuse, so this stage builds the block its preset has now: a
        # code stage written before the preset's OutputFuse changed would otherwise fix the old one
        # (fidelity revision 7 trained the two-conv block so, where the preset had residual blocks).
        config, weights, refit = output_fuse_as_preset(init_state["model"]["config"], init_state["ema"]["model"],
                                                       get_preset(cfg.preset))
        meta = {**init_state["model"], "config": config}
        model_cfg = config_from_dict(type(get_preset(cfg.preset)), meta["config"])
        self.recipe = fo.recipe or code_cfg.code.recipe or default_recipe(model_cfg)
        check_recipe_scale(self.recipe, model_cfg, cfg.preset)
        self.setup_restorer(meta, meta.get("precondition", "none"))
        missing, unexpected = self.restorer.load_state_dict(weights, strict=False)
        if unexpected or any(not (refit and k.startswith("out_fuse.")) for k in missing):
            raise UsageError(f"{fo.init or 'the code stage'}: its weights do not fit {cfg.preset}'s restorer")
        if fo.init_weights:
            if self.precondition == "whiten" and self.model_cfg.head == "vr":
                raise UsageError("fidelity --init: not supported after a whitened code stage; pass --init to `train code`")
            load_restorer_weights(self.restorer, fo.init_weights, with_decoder=fo.decoder_lr > 0)
        if fo.gate_init:
            self._start_gate(fo.gate_init)
        self.freeze_prior_parts()
        if fo.decoder_lr > 0:
            self.restorer.decoder.requires_grad_(True)
        prior = VQAutoEncoder(self.model_cfg.prior)
        prior.load_state_dict(init_state["frozen"]["prior"])
        self.prepare_targets(prior)
        self.history = list(init_state.get("history", [])) + [init_state.get("summary", {})]
        self.disc = PatchDiscriminator(width=disc_width(self.model_cfg.prior, fo.disc_width)).to(rt.device)
        self.adaptive = AdaptiveWeight(fo.adaptive_every, 1.0)
        self.net = self.wrap(RestoreNet(self.restorer, fo.detach_code))
        self.disc_ddp = self.wrap(self.disc)
        self.nets = {"restorer": self.restorer, "disc": self.disc}
        self.add_optim("g", self._param_groups(fo.fusion_lr, fo.decoder_lr), cfg.learning_rate, (0.9, 0.99))
        self.add_optim("d", list(self.disc.parameters()), cfg.learning_rate, (0.9, 0.99))
        self.perceptual = Perceptual(fo.perceptual_weight, rt.device, rt.say, fo.perceptual_net)
        self.ema = ModelEMA(self.restorer, cfg.ema_decay)
        self.last_layer = self._last_fuse_weight()

    def extra_state(self) -> dict[str, Any]:
        return {"adaptive": self.adaptive.value}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.adaptive.value = state.get("adaptive")

    def _start_gate(self, value: float) -> None:
        """Set OutputFuse's gate bias to ``value`` if the block is untrained (last layer all zero, as
        the code stage leaves it); a block that has trained (``--init`` weights) keeps what it learned."""
        out_fuse = self.restorer.out_fuse
        if out_fuse is None:
            raise UsageError("fidelity --gate-init: this preset has no OutputFuse (out_fuse is off)")
        last = out_fuse.body[-1]
        if bool(last.weight.any()) or bool(last.bias.any()):
            return
        with torch.no_grad():
            last.bias[: last.bias.numel() // 2] = value  # the first half of the channels is a, the second b

    def _param_groups(self, fusion_lr: float, decoder_lr: float = 0.0) -> list[dict[str, Any]]:
        """The fusion blocks and OutputFuse (new in this stage) at ``fusion_lr``, the decoder (if it
        trains) at ``decoder_lr``; everything else that trains (the fine-tuned encoder, transformer and
        head) at the stage's rate. One group when the rates are the same, so runs saved before the
        options existed resume."""
        r = self.restorer
        trained = [p for p in r.parameters() if p.requires_grad]
        own = {"fusion": (fusion_lr, [r.fuse, r.out_fuse]), "decoder": (decoder_lr, [r.decoder])}
        ids = {k: {id(p) for m in mods if m is not None for p in m.parameters()}
               for k, (lr, mods) in own.items() if lr and lr != self.cfg.learning_rate}
        taken = set().union(*ids.values())
        groups = [{"params": [p for p in trained if id(p) not in taken]}]
        groups += [{"params": [p for p in trained if id(p) in ids[k]], "lr": own[k][0]} for k in ids]
        return [g for g in groups if g["params"]]

    def _last_fuse_weight(self) -> nn.Parameter | None:
        """The trained layer nearest the output, where the adaptive GAN weight compares gradients."""
        if self.restorer.out_fuse is not None:
            return self.restorer.out_fuse.body[-1].weight
        fuse = self.restorer.fuse
        if not len(fuse):
            return None
        block = fuse[max(fuse.keys(), key=int)]
        block = block[-1] if isinstance(block, nn.ModuleList) else block
        return block.shift[-1].weight

    def fidelity_weights(self, batch: int, step: int) -> torch.Tensor:
        """Per-sample fidelity in [lo, hi], from (seed, step, rank) only: nothing to restore on resume."""
        lo, hi = self.cfg.fidelity.fidelity
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "fidelity", step, self.rt.rank) & (2**63 - 1))
        return (lo + (hi - lo) * torch.rand(batch, generator=g)).to(self.rt.device)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        fo = self.cfg.fidelity
        gt, lq = self.images_in(batch)
        f, idx, q = self.targets(gt)
        w = self.fidelity_weights(gt.shape[0], step)
        with self.autocast():
            out = self.net(lq, w)
        img = out["image"].float()
        pix, tex = fidelity_loss_scales(w, fo.fidelity_gain, fo.texture_fade)
        l1_i = (img - gt).abs().mean(dim=(1, 2, 3))
        with self.autocast():
            perc_i = self.perceptual.per_sample(img, gt)
        rec_loss = (fo.l1_weight * pix * l1_i + fo.perceptual_weight * tex * perc_i).mean()
        code, m = self.code_losses(out, f, idx, q)
        total = rec_loss + fo.code_weight * code
        m.update(l1=l1_i.mean().item(), perceptual=perc_i.mean().item())
        gan = step >= fo.disc_start and fo.gan_weight > 0 and self.last_layer is not None
        if gan:
            with frozen(self.disc), self.autocast():
                logits = self.disc(out["image"] * 2.0 - 1.0).float()
            g = (tex * hinge_g_per_sample(logits)).mean()
            dw = self.adaptive(step, rec_loss, g, self.last_layer) * fo.gan_weight
            total = total + dw * g
            m.update(g=g.item(), d_weight=dw.item())
        self.step_optim("g", total)
        if gan:
            with self.autocast():
                d = hinge_d_loss(self.disc_ddp(gt * 2.0 - 1.0).float(), self.disc_ddp(out["image"].detach() * 2.0 - 1.0).float())
            self.step_optim("d", d)
            m["d"] = d.item()
        self.ema.update(self.restorer)  # type: ignore[union-attr]
        m["loss"] = total.item()
        return m


# ------------------------------------------------------------------------------------------------
# The no-prior baseline


class PlainStage(StageBase):
    """PlainRestorer from scratch on (LQ, HQ) pairs with L1 (see PlainOptions); EMA like the others."""

    name = "plain"

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        super().__init__(cfg, rt)
        if not cfg.preset:
            raise UsageError("the plain stage needs --preset (a face preset, e.g. face-cpu)")
        model_cfg = get_preset(cfg.preset)
        if not isinstance(model_cfg, FaceConfig):
            raise UsageError(f"--preset {cfg.preset}: the plain baseline is a face model; use a face preset")
        self.recipe = cfg.plain.recipe or default_recipe(model_cfg)
        check_recipe_scale(self.recipe, model_cfg, cfg.preset)
        self.vq_cfg: VQConfig = model_cfg.prior
        self.model = PlainRestorer(PlainConfig(prior=self.vq_cfg))
        if cfg.plain.init_weights:
            load_plain_weights(self.model, cfg.plain.init_weights)
        self.model.to(rt.device)
        self.net = self.wrap(self.model)
        self.nets = {"model": self.model}
        self.add_optim("g", list(self.model.parameters()), cfg.learning_rate, (0.9, 0.99))
        self.ema = ModelEMA(self.model, cfg.ema_decay)

    def model_meta(self) -> dict[str, Any]:
        arch, cfg = architecture_of(self.model)
        return {"architecture": arch, "config": cfg, "preset": self.cfg.preset}

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        gt, lq = self.images_in(batch)
        with self.autocast():
            out = self.net(lq)
        l1 = (out.float() - gt).abs().mean()
        self.step_optim("g", l1)
        self.ema.update(self.model)  # type: ignore[union-attr]
        return {"l1": l1.item(), "loss": l1.item()}


def build_stage(cfg: TrainConfig, rt: Runtime, init_state: dict[str, Any] | None = None) -> StageBase:
    """The stage named by ``cfg.stage``; ``init_state`` replaces reading the previous stage's checkpoint
    from ``cfg.code.init`` / ``cfg.fidelity.init`` (the release runner builds it from exported files)."""
    if cfg.stage == "prior":
        return PriorStage(cfg, rt)
    if cfg.stage == "code":
        return CodeStage(cfg, rt, init_state)
    if cfg.stage == "fidelity":
        return FidelityStage(cfg, rt, init_state)
    if cfg.stage == "plain":
        return PlainStage(cfg, rt)
    raise UsageError(f"unknown stage {cfg.stage!r}")
