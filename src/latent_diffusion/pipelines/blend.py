"""Masked latent blending for inpainting with ordinary (4-channel) models.

The model function is wrapped so that, in the kept region (mask = 0), its x0 prediction is replaced by the original
latents: every sampler then moves the kept region along the trajectory of the original image, and the repainted
region sees it as context at every step. A final blend makes the kept latents exactly the original ones.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..diffusion import parameterization as P
from ..diffusion.denoiser import Denoiser


def _rows(v: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a (B, ...) tensor to ``batch`` rows (classifier-free guidance runs [uncond; cond] = 2B)."""
    return v if v.shape[0] == batch else v.repeat(batch // v.shape[0], *([1] * (v.ndim - 1)))


def masked_denoiser(model: Any, original: torch.Tensor, keep: torch.Tensor) -> Denoiser:
    """A ``Denoiser`` around ``model.apply_model`` whose x0 equals ``original`` where ``keep`` is 1.

    original: (B, C, h, w) clean latents; keep: (B or 1, 1, h, w) in {0, 1}.
    """
    base = Denoiser(model)
    param = base.parameterization

    def model_fn(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        out = model.apply_model(x, t, cond)
        sigma_ve = base.t_to_sigma(t.detach().to("cpu", torch.float64))
        alpha, sigma = P.alpha_sigma_from_ve_sigma(sigma_ve)
        a = alpha.to(x.device, x.dtype).view(-1, 1, 1, 1)
        s = sigma.to(x.device, x.dtype).view(-1, 1, 1, 1)
        eps, x0 = P.to_eps_and_x0(out, x, a, s, param)
        k = _rows(keep, x.shape[0]).to(x.dtype)
        x0 = k * _rows(original, x.shape[0]).to(x.dtype) + (1 - k) * x0
        eps = P.x0_to_eps(x0, x, a, s)
        return P.training_target(x0, eps, a, s, param)  # what the model would have output for this x0

    return Denoiser(model_fn, alphas_cumprod=model.alphas_cumprod, parameterization=param)


def final_blend(latents: torch.Tensor, original: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.where(keep.bool(), original.to(latents.dtype), latents)


BlendFn = Callable[[torch.Tensor], torch.Tensor]
