"""``NoiseAugmentation``: Stability's ``ImageConcatWithNoiseAugmentation`` (the x4 upscaler's ``low_scale_model``).

The low-res RGB image (in [-1, 1]) is diffused to ``noise_level`` with this module's own DDPM schedule,
x_t = √ᾱ_t·x + √(1 - ᾱ_t)·ε, before it is concatenated to the latents; the level itself is the UNet's class
label (c_adm). Its eight schedule buffers keep the original names (``low_scale_model.betas``, ``.alphas_cumprod``),
so a checkpoint that carries them loads strictly; they are persistent only when the file has them
(``set_persistent``). Unlike the original, which draws ε from the global RNG, ε is always given by the caller.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LowScaleConfig
from ..diffusion.schedules import ddpm_buffers, make_beta_schedule

# AbstractLowScaleModel.register_schedule's buffers (the first eight of DDPM's, same formulas)
LOW_SCALE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                     "sqrt_recipm1_alphas_cumprod")


class NoiseAugmentation(nn.Module):
    def __init__(self, cfg: LowScaleConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_noise_level = cfg.max_noise_level
        with torch.device("cpu"):  # real values even when built on "meta" for loading
            betas = make_beta_schedule(cfg.beta_schedule, cfg.timesteps, cfg.linear_start, cfg.linear_end, cfg.cosine_s)
            buffers = ddpm_buffers(betas)
            for name in LOW_SCALE_BUFFERS:
                self.register_buffer(name, buffers[name])

    def set_persistent(self, persistent: bool) -> None:
        """The buffers go into ``state_dict()`` only when the checkpoint being matched has them."""
        for name in LOW_SCALE_BUFFERS:
            if persistent:
                self._non_persistent_buffers_set.discard(name)
            else:
                self._non_persistent_buffers_set.add(name)

    def train(self, mode: bool = True) -> NoiseAugmentation:
        return super().train(False)  # frozen, as the original's disabled_train

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x, noise: (B, 3, h, w); noise_level: (B,) int64 in [0, max_noise_level) → the noised image (B, 3, h, w)."""
        t = noise_level.long().to(self.sqrt_alphas_cumprod.device)
        a = self.sqrt_alphas_cumprod[t].to(x.device, x.dtype).view(-1, 1, 1, 1)
        s = self.sqrt_one_minus_alphas_cumprod[t].to(x.device, x.dtype).view(-1, 1, 1, 1)
        return a * x + s * noise.to(x.dtype)
