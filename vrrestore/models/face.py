"""FaceRestorer: CodeFormer-style blind face restoration with a choice of codebook head.

LQ face -> LQ encoder -> transformer over latent tokens -> head (vq | soft | vr | direct) -> frozen
prior decoder, with controllable fusion of LQ encoder features into the decoder weighted by the
fidelity ``w`` (0 = prior only; larger = closer to the input) and, with ``out_fuse``, an image-level
path after the decoder (OutputFuse) that can copy the input. Images are (B, 3, S, S) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import FuseBlock, OutputFuse
from .heads import HeadKind, HeadOutput, VectorQuantizer
from .predictor import CodePredictor
from .vqgan import Decoder, Encoder, VQAutoEncoder, VQConfig, from_tokens, unshuffled


@dataclass(frozen=True)
class FaceConfig:
    prior: VQConfig = field(default_factory=VQConfig)
    d_model: int = 512
    n_layers: int = 9
    n_heads: int = 8
    mlp_ratio: float = 2.0
    head: HeadKind = "vr"
    soft_tau: float = 1.0
    vr_affine: bool = True  # VR weights shifted to sum to one (see VectorRegression)
    token_merge: int = 1  # transformer on merge x merge token groups (see CodePredictor)
    fuse_resolutions: tuple[int, ...] = (32, 64, 128, 256)
    # OutputFuse: an image-level fidelity path after the decoder. False in checkpoints written before it
    # existed (a missing config field defaults), so they build the model they were trained as.
    out_fuse: bool = False
    # OutputFuse's width and residual blocks; checkpoints written before these fields have 32 and 0
    out_fuse_width: int = 32
    out_fuse_blocks: int = 0


def output_fuse(prior: VQConfig, enabled: bool, width: int = 32, blocks: int = 0) -> OutputFuse | None:
    """The restorer's OutputFuse for this prior's decoder (final feature width, 3 x stem^2 outputs)."""
    return OutputFuse(prior.level_channels()[0], 3 * prior.stem**2, width, blocks) if enabled else None


@dataclass
class RestoreOutput:
    """Everything a training step needs from one forward pass."""

    image: torch.Tensor
    head: HeadOutput
    lq_feat: torch.Tensor


def fidelity_tensor(fidelity: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A float or (B,) tensor of fidelity weights as a (B,) float tensor on ``device``."""
    w = torch.as_tensor(fidelity, dtype=torch.float32, device=device)
    return w.expand(batch) if w.ndim == 0 else w


class FaceRestorer(nn.Module):
    def __init__(self, cfg: FaceConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.prior
        self.lq_encoder = Encoder(p)
        self.predictor = CodePredictor(
            p.emb_dim, p.codebook_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio,
            p.latent_size, cfg.head, cfg.soft_tau, cfg.vr_affine, cfg.token_merge,
        )
        self.quantizer = VectorQuantizer(p.codebook_size, p.emb_dim, p.beta)
        self.decoder = Decoder(p)
        ch_at = dict(zip(p.level_resolutions(), p.level_channels(), strict=True))
        self.fuse = nn.ModuleDict({str(r): FuseBlock(ch_at[r]) for r in cfg.fuse_resolutions})
        self.out_fuse = output_fuse(p, cfg.out_fuse, cfg.out_fuse_width, cfg.out_fuse_blocks)

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantizer.codebook

    def load_prior(self, prior: VQAutoEncoder) -> None:
        """Take codebook and decoder from a trained prior and start the LQ encoder from its encoder."""
        self.quantizer.load_state_dict(prior.quantizer.state_dict())
        self.decoder.load_state_dict(prior.decoder.state_dict())
        self.lq_encoder.load_state_dict(prior.encoder.state_dict())

    def restore(self, x: torch.Tensor, fidelity: float | torch.Tensor = 0.5) -> RestoreOutput:
        lq = x * 2.0 - 1.0
        lq_feat, skips = self.lq_encoder(lq)
        head = self.predictor(lq_feat, self.codebook)
        w = fidelity_tensor(fidelity, x.shape[0], x.device)

        def fuse(res: int, h: torch.Tensor) -> torch.Tensor:
            key = str(res)
            return self.fuse[key](skips[res], h, w) if key in self.fuse else h

        out_fuse, refine = self.out_fuse, None
        if out_fuse is not None:
            lq_out = unshuffled(lq, self.cfg.prior.stem)
            refine = lambda h, o: out_fuse(h, o, lq_out, w)  # noqa: E731
        feat = from_tokens(head.feat, lq_feat.shape[-2:])
        out = self.decoder(feat, fuse, refine)
        return RestoreOutput(image=(out + 1.0) * 0.5, head=head, lq_feat=lq_feat)

    def forward(self, x: torch.Tensor, fidelity: float | torch.Tensor = 0.5) -> torch.Tensor:
        return self.restore(x, fidelity).image


def face_presets() -> dict[str, FaceConfig]:
    """Named geometries. ``face-cpu`` is the release model trained on CPUs; ``face-s``/``face-tiny``
    are GPU-sized and test sizes; ``face-base`` is CodeFormer's."""
    small_prior = VQConfig(
        img_size=256, base_channels=32, channel_mult=(1, 2, 4, 4), res_blocks=1, attn_resolutions=(32,),
        codebook_size=1024, emb_dim=256,
    )
    tiny_prior = VQConfig(
        img_size=64, base_channels=16, channel_mult=(1, 2, 4), res_blocks=1, attn_resolutions=(),
        codebook_size=256, emb_dim=64,
    )
    # CPU preset: a pixel-unshuffle stem puts every conv at 64x64 or 32x32 (dense 3x3 convs, which AMX
    # runs in bf16), a 32x32x256 latent keeps fidelity (f8, like Stable Diffusion's VAE), no latent
    # attention (it cost 25% of a training step for little); a 4-layer transformer over 2x2 token groups.
    # OutputFuse with four 64-wide residual blocks at 64x64 (3.0 of its 17.8 GFLOP): with two plain convs
    # it learned no more than a fixed blend of the input and the decoder's output.
    cpu_prior = VQConfig(
        img_size=256, base_channels=64, channel_mult=(1, 2), res_blocks=2, attn_resolutions=(),
        codebook_size=1024, emb_dim=256, stem=4, mid_attn=False,
    )
    return {
        "face-cpu": FaceConfig(
            prior=cpu_prior, d_model=256, n_layers=4, n_heads=8, token_merge=2, fuse_resolutions=(64,), out_fuse=True,
            out_fuse_width=64, out_fuse_blocks=4,
        ),
        "face-tiny": FaceConfig(prior=tiny_prior, d_model=64, n_layers=2, n_heads=4, fuse_resolutions=(32, 64),
                                out_fuse=True),
        "face-s": FaceConfig(prior=small_prior, d_model=256, n_layers=4, n_heads=8, fuse_resolutions=(64, 128, 256)),
        "face-base": FaceConfig(prior=VQConfig(), d_model=512, n_layers=9, n_heads=8, fuse_resolutions=(32, 64, 128, 256)),
    }
