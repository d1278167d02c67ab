"""``LatentDiffusion``: the UNet, the first stage, the conditioner and the schedule buffers in one module,
laid out so its ``state_dict()`` keys are exactly those of CompVis / Stable Diffusion checkpoints:
``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``, ``betas``, ``alphas_cumprod``, ...,
``model_ema.*`` when an EMA copy is held, and ``low_scale_model.*`` for the x4 upscaler (``cfg.low_scale``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import DiffusionConfig, VQConfig
from ..diffusion.samplers_base import Generator, randn
from ..diffusion.schedules import ddpm_buffers, make_beta_schedule
from .autoencoder import AutoencoderKL
from .conditioners import build_conditioner
from .ema import LitEma
from .low_scale import NoiseAugmentation
from .unet import UNetModel
from .vq import VQModel

SCHEDULE_BUFFERS = tuple(ddpm_buffers(torch.tensor([1e-4, 2e-2])).keys())


class DiffusionWrapper(nn.Module):
    """Routes the conditioning to the UNet the way CompVis does for each ``conditioning_key``."""

    def __init__(self, unet: UNetModel, conditioning_key: str | None) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.conditioning_key = conditioning_key

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_concat: torch.Tensor | None = None,
                c_crossattn: torch.Tensor | None = None, c_adm: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, C, h, w); c_concat: (B, C', h, w); c_crossattn: (B, M, D); c_adm: (B,) labels
        key = self.conditioning_key
        if key in ("concat", "hybrid", "hybrid-adm"):
            if c_concat is None:
                raise ValueError(f"conditioning_key={key!r} needs c_concat (B, C', h, w)")
            x = torch.cat([x, c_concat.to(x.dtype)], dim=1)
        cross = key in ("crossattn", "hybrid", "hybrid-adm")
        if cross and c_crossattn is None:
            raise ValueError(f"conditioning_key={key!r} needs c_crossattn (B, M, context_dim)")
        adm = key in ("adm", "hybrid-adm")
        if key == "hybrid-adm" and c_adm is None:
            raise ValueError(f"conditioning_key={key!r} needs c_adm (B,) class labels / noise levels")
        return self.diffusion_model(x, t, context=c_crossattn if cross else None, y=c_adm if adm else None)


def build_first_stage(cfg: DiffusionConfig) -> nn.Module | None:
    if cfg.first_stage == "none":
        return None
    if cfg.first_stage == "vq":
        assert isinstance(cfg.autoencoder, VQConfig)
        return VQModel(cfg.autoencoder)
    return AutoencoderKL(cfg.autoencoder)


class LatentDiffusion(nn.Module):
    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = DiffusionWrapper(UNetModel(cfg.unet), cfg.conditioning_key)
        self.first_stage_model = build_first_stage(cfg)
        self.cond_stage_model = build_conditioner(cfg.conditioner)
        if cfg.low_scale is not None:  # registered only when configured: other families keep their exact keys
            self.low_scale_model = NoiseAugmentation(cfg.low_scale)
        self.model_ema: LitEma | None = None
        self.scale_factor: float | torch.Tensor = cfg.scale_factor
        with torch.device("cpu"):  # real values even when the model is built on "meta" for fast loading
            betas = make_beta_schedule(cfg.beta_schedule, cfg.timesteps, cfg.linear_start, cfg.linear_end, cfg.cosine_s)
            for name, value in ddpm_buffers(betas).items():
                self.register_buffer(name, value)

    @property
    def parameterization(self) -> str:
        return self.cfg.parameterization

    @property
    def num_timesteps(self) -> int:
        return self.cfg.timesteps

    # -- optional parts real checkpoints may or may not carry ------------------------------------------
    def set_schedule_persistent(self, persistent: bool) -> None:
        """Schedule buffers go into ``state_dict()`` only when the checkpoint being matched has them."""
        for name in SCHEDULE_BUFFERS:
            if persistent:
                self._non_persistent_buffers_set.discard(name)
            else:
                self._non_persistent_buffers_set.add(name)

    def use_scale_factor_buffer(self) -> None:
        """``scale_by_std`` models store ``scale_factor`` as a buffer in the checkpoint."""
        if not isinstance(self.scale_factor, torch.Tensor):
            value = float(self.scale_factor)
            del self.scale_factor
            self.register_buffer("scale_factor", torch.tensor(value))

    def enable_ema(self, decay: float = 0.9999) -> LitEma:
        """Start holding an EMA copy of the UNet under ``model_ema.*`` (CompVis LitEma names)."""
        self.model_ema = LitEma(self.model, decay)
        return self.model_ema

    # -- stages ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor, *, sample: bool = False, generator: Generator = None) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] → scaled latents (B, C, H/f, W/f) for the diffusion model."""
        return self.first_stage_latents(x, sample=sample, generator=generator) * self.scale_factor

    def first_stage_latents(self, x: torch.Tensor, *, sample: bool = False,
                            generator: Generator = None) -> torch.Tensor:
        """Image (B, 3, H, W) → unscaled latents: a KL posterior's mean, or a sample of it with ``sample`` (noise drawn
        in float32 from ``generator``, then cast to the latents' dtype; a list of B generators draws row i from
        generator i alone, as the samplers' noise); a VQ model's pre-quantisation latents (its decoder quantises); the
        image itself without a first stage."""
        fs = self.first_stage_model
        if fs is None:
            return x
        if isinstance(fs, VQModel):
            return fs.encode(x)
        posterior = fs.encode(x)
        if not sample:
            return posterior.mode()
        noise = randn(posterior.mean.shape, generator, device=posterior.mean.device)
        return posterior.mean + posterior.std * noise.to(posterior.mean)

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents → image in (about) [-1, 1]."""
        z = z / self.scale_factor
        return z if self.first_stage_model is None else self.first_stage_model.decode(z)

    def get_learned_conditioning(self, c):  # noqa: ANN001 - text list, label tensor or token tensor
        """Run the conditioner: prompts (list[str]) → (B, 77, D); labels (B,) → (B, 1, D)."""
        if self.cond_stage_model is None:
            return c
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], str):
            return self.cond_stage_model.encode(list(c))
        return self.cond_stage_model(c)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor] | torch.Tensor | None = None
                    ) -> torch.Tensor:
        """UNet output (ε, x0 or v per ``parameterization``); ``cond`` a tensor (routed by conditioning_key) or a
        dict with ``c_concat`` / ``c_crossattn`` / ``c_adm``."""
        if cond is None or isinstance(cond, dict):
            return self.model(x, t, **(cond or {}))
        key = self.cfg.conditioning_key
        slot = {"concat": "c_concat", "crossattn": "c_crossattn", "adm": "c_adm"}.get(key or "")
        if slot is None:
            raise ValueError(f"conditioning_key={key!r} needs cond as a dict with c_concat and c_crossattn")
        return self.model(x, t, **{slot: cond})
