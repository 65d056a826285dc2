"""Training configuration: plain dataclasses (no YAML), saved inside every training checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Stage = Literal["prior", "code", "fidelity", "plain"]
VRTarget = Literal["feat", "oracle"]
Precondition = Literal["none", "center", "whiten"]
STAGES: tuple[Stage, ...] = ("prior", "code", "fidelity", "plain")
PRECONDITIONS: tuple[Precondition, ...] = ("none", "center", "whiten")
DEFAULT_LR: dict[str, float] = {"prior": 1e-4, "code": 1e-4, "fidelity": 5e-5, "plain": 2e-4}


@dataclass
class PriorOptions:
    """Stage 1 (VQGAN prior on HQ images). Loss = L1 + perceptual + adaptive hinge GAN + codebook."""

    perceptual_weight: float = 1.0
    perceptual_net: str = "alex"  # LPIPS backbone: alex (~1.7 GFLOP at 256 px) or vgg (~50 GFLOP)
    disc_weight: float = 1.0  # multiplies the adaptive weight (taming/CodeFormer convention)
    disc_start: int = 2000  # generator GAN term and D updates start at this step
    disc_width: int = 0  # critic width; 0 = follow the prior (min(64, 2 x base channels))
    # The adaptive GAN weight needs its own backward through the critic; recompute it every N steps
    # and reuse the last value in between (1 = every step, the taming/CodeFormer recipe).
    adaptive_every: int = 1
    codebook_weight: float = 1.0
    restart_every: int = 100  # re-seed dead codes every N steps (0 = never)
    restart_threshold: float = 0.03  # usage EMA under which a code counts as dead
    # Share of steps that decode the pre-quant feature instead of its codes. 0 = plain VQGAN. VR feeds
    # the decoder w @ C, an off-codebook feature; a decoder that never saw one may decode it badly.
    continuous_prob: float = 0.0
    init: str = ""  # a prior .safetensors (train export) to start from: short GPU windows carry only that


@dataclass
class CodeOptions:
    """Stage 2 (code prediction, prior frozen, fidelity 0).

    vq (CodeFormer): ce_weight * CE(logits, HQ indices) + lq_feat_weight * MSE(LQ encoder feature,
    quantized HQ feature). vr / direct: feat_weight * MSE(head feature, pre-quant HQ feature)
    + lq_feat_weight * MSE(LQ encoder feature, pre-quant HQ feature); with ``vr_target='oracle'`` also
    oracle_weight * MSE(w, w*) / mean(w*^2), w* the minimum-norm weights reproducing the HQ feature.
    soft: the vr feature loss plus the vq CE. ``precondition`` (vr only): ``none`` = raw w @ C,
    ``center`` = weights summing to one (the model's ``vr_affine``), ``whiten`` = centred and the
    head trained in a basis where the codebook is orthonormal (folded back into a plain head on export).
    ``vr_init='zero'`` starts the vr head at w = 0: the layer's default init makes w @ C sum N random
    codes, a feature ~sqrt(N) times too large (feature MSE 30x var(f) on face-tiny at step 0).
    """

    init: str = ""  # prior run dir or prior checkpoint
    head: str = "vr"
    recipe: str = ""  # "" = the task's default (face / sr-x4 / sr-x2)
    vr_target: VRTarget = "feat"
    oracle_weight: float = 1.0
    precondition: Precondition = "center"
    vr_init: str = "zero"  # vr head start: "zero" (w = 0; with center w = 1/N, i.e. feature = mean(C)) or "model"
    ce_weight: float = 0.5
    feat_weight: float = 1.0
    lq_feat_weight: float = 1.0
    init_weights: str = ""  # an exported restorer .safetensors whose non-prior weights start this stage


@dataclass
class FidelityOptions:
    """Stage 3 (fusion blocks): image losses with a fidelity weight drawn per sample from ``fidelity``,
    plus the stage-2 code losses (``code_weight``). The head's feature is detached before decoding
    (CodeFormer's choice) unless ``detach_code`` is False."""

    init: str = ""  # code run dir or code checkpoint
    recipe: str = ""
    fidelity: tuple[float, float] = (0.0, 1.0)
    l1_weight: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_net: str = "alex"
    gan_weight: float = 0.1  # times the adaptive weight, which is clamped to <= 1
    fidelity_gain: float = 3.0  # L1 x (1 + gain*w), perceptual and GAN / (1 + gain*w): see losses.fidelity_loss_scales
    texture_fade: bool = False  # perceptual and GAN also x (1 - w): w = 1 trains on L1 alone
    # Learning rate of the fusion blocks and OutputFuse (0 = the stage's). They start as the identity
    # (last layers at zero) and are new in this stage, while the encoder and transformer are only
    # fine-tuned: at 1e-4 for 800 steps OutputFuse's last layer grew to a mean |weight| of 0.004.
    fusion_lr: float = 0.0
    # OutputFuse's input gate ``a`` (out + w * (a * (lq - out) + b)) where the stage finds the block
    # untrained (its last layer all zero): the bias of ``a`` starts here, so at w = 1 the first output
    # is this blend of decoder and input. Learned from 0 the gate barely moved (+0.03 in 250 steps at
    # 5e-4), while a fixed blend of 0.5 already beat both the decoder and the input by ~1 dB on
    # held-out degraded faces; 0 = the identity start.
    gate_init: float = 0.0
    # Learning rate of the prior's decoder in this stage (0 = frozen, CodeFormer's choice). A frozen
    # decoder can only be steered through the fusion blocks, and its output was pushed far from an
    # image at w = 1 (21.5 dB with OutputFuse bypassed), while the no-prior baseline, the same decoder
    # trained end to end, restores 1.6 dB better. Trained, it also moves w = 0 (the prior's output).
    decoder_lr: float = 0.0
    disc_start: int = 2000
    disc_width: int = 0
    adaptive_every: int = 1
    code_weight: float = 1.0
    detach_code: bool = True
    init_weights: str = ""  # an exported restorer .safetensors whose non-prior weights replace the code stage's


@dataclass
class PlainOptions:
    """The no-prior baseline (models/plain.py): the prior's encoder and decoder trained from LQ to HQ
    with L1 only, the loss that favours PSNR, so the baseline is as strong as it can be on that score."""

    recipe: str = ""  # "" = the task's default (face)
    init_weights: str = ""  # an exported plain baseline .safetensors to continue from


@dataclass
class TrainConfig:
    stage: Stage
    data: tuple[str, ...]
    out: str
    preset: str = ""  # prior: required; later stages: taken from the init checkpoint when empty
    steps: int = 1000
    batch_size: int = 4
    lr: float = 0.0  # 0 = the stage's default (DEFAULT_LR)
    seed: int = 0
    max_minutes: float = 0.0  # 0 = no time budget
    ckpt_every: int = 1000
    log_every: int = 10
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"  # auto (measured: bf16 autocast where it is faster) | fp32 | bf16
    size: int = 0  # training image side (HQ); 0 = the preset's prior size
    ema_decay: float = 0.995
    warmup_steps: int = 0
    cosine: bool = False  # cosine decay to 10% of lr over `steps` (else constant after warm-up)
    progress: bool = True
    # A fresh run that continues another machine's run from its exported weights starts counting
    # here (learning-rate schedule, critic start, data position); optimiser moments start fresh.
    start_step: int = 0
    prior: PriorOptions = field(default_factory=PriorOptions)
    code: CodeOptions = field(default_factory=CodeOptions)
    fidelity: FidelityOptions = field(default_factory=FidelityOptions)
    plain: PlainOptions = field(default_factory=PlainOptions)

    @property
    def learning_rate(self) -> float:
        return self.lr or DEFAULT_LR[self.stage]

    def to_dict(self) -> dict[str, Any]:
        """JSON- and weights_only-safe dict (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        d = dict(data)
        d["data"] = tuple(d["data"])
        d["prior"] = PriorOptions(**d.get("prior", {}))
        d["code"] = CodeOptions(**d.get("code", {}))
        fid = dict(d.get("fidelity", {}))
        if "fidelity" in fid:
            fid["fidelity"] = tuple(fid["fidelity"])
        d["fidelity"] = FidelityOptions(**fid)
        d["plain"] = PlainOptions(**d.get("plain", {}))
        return cls(**d)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x
