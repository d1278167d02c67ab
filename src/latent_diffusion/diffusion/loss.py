"""The denoising training loss of a discrete-time VP model (sgm ``StandardDiffusionLoss``, k-diffusion
``Denoiser.loss``): noise x0 to timestep t, regress the model output on its ε / x0 / v target, weight per sample.

The caller draws t and ε (with its own seeded generator, offset noise included) so that a training step's random
draws stay its own; this module only turns them into a loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import ConfigError
from .parameterization import alpha_sigma_from_alphas_cumprod, check_parameterization, training_target

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def snr_weight(alpha: torch.Tensor, sigma: torch.Tensor, gamma: float | None, parameterization: str) -> torch.Tensor:
    """Min-SNR-γ loss weight per sample (Hang et al. 2023; 1 when ``gamma`` is None), for a loss on the given output:
    min(SNR, γ) on the x0 error, expressed for an ε, x0 or v error."""
    if gamma is None:
        return torch.ones_like(alpha)
    snr = (alpha / sigma) ** 2
    clipped = snr.clamp(max=gamma)
    if parameterization == "eps":
        return clipped / snr
    if parameterization == "x0":
        return clipped
    if parameterization == "v":
        return clipped / (snr + 1)
    check_parameterization(parameterization)
    raise AssertionError  # unreachable


@dataclass(frozen=True)
class DenoisingLoss:
    """mean_b w_b · mean ‖F(x_t, t) - target‖², x_t = √ᾱ_t·x0 + √(1 - ᾱ_t)·ε, w the min-SNR weight (or 1)."""

    parameterization: str
    min_snr_gamma: float | None = None

    def __post_init__(self) -> None:
        check_parameterization(self.parameterization)
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ConfigError(f"min_snr_gamma must be > 0 or None, got {self.min_snr_gamma!r}")

    def __call__(self, model_fn: ModelFn, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: Any,
                 alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """Scalar loss. x0, noise: (B, C, h, w); t: (B,) integer timesteps; alphas_cumprod: (T,) on t's device."""
        b = x0.shape[0]
        alpha, sigma = alpha_sigma_from_alphas_cumprod(alphas_cumprod[t].view(b, *([1] * (x0.ndim - 1))))
        x_t = alpha * x0 + sigma * noise
        out = model_fn(x_t, t, cond).float()
        target = training_target(x0, noise, alpha, sigma, self.parameterization)
        mse = (out - target).pow(2).mean(dim=tuple(range(1, x0.ndim)))  # (B,)
        return (snr_weight(alpha, sigma, self.min_snr_gamma, self.parameterization).flatten() * mse).mean()
