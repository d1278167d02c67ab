"""``Denoiser``: a discrete-time VP model (ε, x0 or v output) seen as ``D(x, σ, cond) -> x0`` with x = x0 + σ·ε
(k-diffusion ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``), the one view every sampler uses.

The model sees x/√(σ² + 1) (VP input) at the timestep whose σ it is: fractional, by linear interpolation in log σ
over the training schedule, or the nearest integer one if ``quantize`` (discrete-time samplers; ``discretization``
says which).

``model_fn(x, t, cond)`` returns the raw model output; ``x`` (B, ...), ``t`` (B,) float32 on x's device.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import parameterization as P
from .schedules import sigma_to_t, sigmas_from_alphas_cumprod, t_to_sigma

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) float64 → (B, 1, ..., 1) in x's dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))


class Denoiser:
    """Wrap ``model`` (an object with ``apply_model``, ``alphas_cumprod``, ``parameterization`` — e.g.
    ``LatentDiffusion`` — or a plain ``model_fn(x, t, cond)`` given with ``alphas_cumprod`` and ``parameterization``).
    """

    def __init__(self, model: Any, *, alphas_cumprod: torch.Tensor | None = None, parameterization: str | None = None,
                 quantize: bool = False) -> None:
        self.model_fn: ModelFn = model.apply_model if hasattr(model, "apply_model") else model
        if alphas_cumprod is None:
            alphas_cumprod = model.alphas_cumprod
        self.parameterization = parameterization or model.parameterization
        P.check_parameterization(self.parameterization)
        # Schedule tables live on the CPU in float64: scalars are looked up per step, never per element.
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.log_sigmas = self.sigmas.log()
        self.quantize = quantize

    def replace(self, *, model_fn: ModelFn | None = None, quantize: bool | None = None) -> Denoiser:
        """The same schedule around another model function (e.g. a guided one) and/or another ``quantize``."""
        return Denoiser(model_fn or self.model_fn, alphas_cumprod=self.alphas_cumprod,
                        parameterization=self.parameterization,
                        quantize=self.quantize if quantize is None else quantize)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor, quantize: bool | None = None) -> torch.Tensor:
        return sigma_to_t(sigma, self.log_sigmas, self.quantize if quantize is None else quantize)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t_to_sigma(t, self.log_sigmas)

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x0 estimate from VE ``x`` at noise level ``sigma`` (a float, or a (B,) tensor)."""
        s = torch.as_tensor(sigma).detach().to("cpu", torch.float64).flatten()  # (1,) or (B,)
        t = self.sigma_to_t(s).expand(x.shape[0])
        s = s.expand(x.shape[0])
        alpha, sigma_vp = P.alpha_sigma_from_ve_sigma(s)
        x_in = x * _per_sample(alpha, x)
        out = self.model_fn(x_in, t.to(x.device, torch.float32), cond)
        return P.to_x0(out, x_in, _per_sample(alpha, x), _per_sample(sigma_vp, x), self.parameterization)
