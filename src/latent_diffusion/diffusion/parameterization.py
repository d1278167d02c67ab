"""ε / x0 / v conversions, in one place.

Convention: x_t = α·x0 + σ·ε. In VP form α = √ᾱ_t and σ = √(1 - ᾱ_t) (α² + σ² = 1); the ε ↔ x0 formulas hold for any
(α, σ) — VE form is α = 1, σ = σ_VE — while v = α·ε - σ·x0 (Salimans & Ho) is defined with the VP pair only.
``alpha`` / ``sigma`` are floats or tensors broadcastable against ``x_t`` (e.g. (B, 1, 1, 1)).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

PARAMETERIZATIONS = ("eps", "x0", "v")


def alpha_sigma_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VP (α, σ) = (√ᾱ, √(1 - ᾱ))."""
    return alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()


def alpha_sigma_from_ve_sigma(sigma_ve: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VP (α, σ) of VE noise level σ_VE: α = 1/√(1 + σ_VE²), σ = σ_VE·α (so x_VP = α·x_VE)."""
    alpha = (sigma_ve * sigma_ve + 1).rsqrt()
    return alpha, sigma_ve * alpha


def eps_to_x0(eps: torch.Tensor, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x_t - sigma * eps) / alpha


def x0_to_eps(x0: torch.Tensor, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    return (x_t - alpha * x0) / sigma


def v_to_x0(v: torch.Tensor, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """VP only."""
    return alpha * x_t - sigma * v


def v_to_eps(v: torch.Tensor, x_t: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """VP only."""
    return sigma * x_t + alpha * v


def v_target(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The v a v-model is trained to output: α·ε - σ·x0 (VP)."""
    return alpha * eps - sigma * x0


def training_target(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, parameterization: str) -> torch.Tensor:
    """What a model in ``parameterization`` should output at x_t = α·x0 + σ·ε: ε, x0 or v (VP)."""
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    if parameterization == "v":
        return v_target(x0, eps, alpha, sigma)
    check_parameterization(parameterization)
    raise AssertionError  # unreachable


def check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ConfigError(f"unknown parameterization {parameterization!r}; accepted: {', '.join(PARAMETERIZATIONS)}")


def to_eps_and_x0(output: torch.Tensor, x_t: torch.Tensor, alpha, sigma, parameterization: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε, x0) from a model ``output`` in ``parameterization`` at VP x_t."""
    if parameterization == "eps":
        return output, eps_to_x0(output, x_t, alpha, sigma)
    if parameterization == "v":
        return v_to_eps(output, x_t, alpha, sigma), v_to_x0(output, x_t, alpha, sigma)
    if parameterization == "x0":
        return x0_to_eps(output, x_t, alpha, sigma), output
    check_parameterization(parameterization)
    raise AssertionError  # unreachable


def to_x0(output: torch.Tensor, x_t: torch.Tensor, alpha, sigma, parameterization: str) -> torch.Tensor:
    """x0 from a model ``output`` in ``parameterization`` at VP x_t (no division by σ: safe at σ → 0)."""
    if parameterization == "eps":
        return eps_to_x0(output, x_t, alpha, sigma)
    if parameterization == "v":
        return v_to_x0(output, x_t, alpha, sigma)
    if parameterization == "x0":
        return output
    check_parameterization(parameterization)
    raise AssertionError  # unreachable
