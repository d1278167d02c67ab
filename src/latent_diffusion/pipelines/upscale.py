"""The SD x4 upscaler's conditioning (``LatentUpscaleDiffusion``, conditioning key ``hybrid-adm``).

c_concat: the low-res RGB image at latent resolution, diffused to ``noise_level`` by the model's ``low_scale_model``
(``NoiseAugmentation``); c_adm: the noise level itself (the UNet's class label); c_crossattn: the prompt. The
unconditional branch of guidance keeps the same noised image and noise level and swaps the prompt for the negative
one, as Stability's scripts/gradio/superresolution.py and diffusers' ``StableDiffusionUpscalePipeline`` do.

Noise order per sample i (generator seeded s + i): first the (1, 3, h, w) noise of the low-res image, then the
(1, C, h, w) initial latents — diffusers' order for one image, so image i equals diffusers' single-image run with
``generator=torch.Generator().manual_seed(s + i)``. (For n > 1 images diffusers noises the low-res image once with
the first generator and shares it; here every image gets its own, as in the original LatentUpscaleDiffusion.)
"""

from __future__ import annotations

from typing import Any

import torch

from ..diffusion.samplers import randn
from ..errors import LDMError

def check_noise_level(noise_level: Any, max_noise_level: int) -> int:
    if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level <= max_noise_level:
        raise LDMError(f"noise_level must be an integer in [0, {max_noise_level}] (the upscaler's max_noise_level), "
                       f"got {noise_level!r}")
    return noise_level


def noised_low_res(model: Any, low_res: torch.Tensor, noise_level: int,
                   generators: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """low_res (1, 3, h, w) in [-1, 1] → (c_concat (n, 3, h, w), c_adm (n,) int64); row i noised from generator i."""
    n = len(generators)
    noise = randn((n, *low_res.shape[1:]), generators, device=low_res.device, dtype=low_res.dtype)
    levels = torch.full((n,), noise_level, dtype=torch.long, device=low_res.device)
    with torch.no_grad():
        return model.low_scale_model(low_res.expand(n, -1, -1, -1), levels, noise), levels


def upscale_conditioning(c_concat: torch.Tensor, c_adm: torch.Tensor, cond: torch.Tensor,
                         uncond: torch.Tensor | None) -> tuple[dict, dict | None]:
    """The cond / uncond dicts for ``hybrid-adm``: same image and level on both sides, only the text differs."""
    c = {"c_concat": c_concat, "c_crossattn": cond, "c_adm": c_adm}
    u = None if uncond is None else {"c_concat": c_concat, "c_crossattn": uncond, "c_adm": c_adm}
    return c, u
