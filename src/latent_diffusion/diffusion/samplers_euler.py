"""Euler-family samplers in σ space (k-diffusion style): euler, euler_a, heun, and DDIM, DDPM and PLMS.

x = x0 + σ·ε (VE), a denoiser ``D(x, σ, cond) -> x0`` and a descending σ list; d = (x - D(x, σ)) / σ is the ODE
derivative dx/dσ, which is also the ε of the VP model. Each sampler takes x at ``sigmas[0]`` and returns x at
``sigmas[-1]``; none mutates its inputs. On the DDIM timestep grid (``discretization.DDIM``):

- deterministic DDIM (Song et al. 2021, η = 0) is the Euler step: √ᾱ'·x0 + √(1 - ᾱ')·ε in VP is x0 + σ'·d in VE;
- DDIM with η, and DDPM (the posterior q(x_t' | x_t, x0), = DDIM with η = 1), are the ancestral step: Euler to
  σ_down, then noise of std σ_up, σ_down² + σ_up² = σ'²;
- PLMS is the linear multistep method on d (which is ε).

Keyword arguments: ``cond`` (passed to the denoiser); for the stochastic ones ``eta``, ``s_noise`` (noise scale),
``generator`` (one, a list of one per sample, or None) and ``noise_sampler(σ, σ_next) -> noise`` (overrides the
generator); ``callback(step, x, x0)`` after every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .samplers_base import (Callback, DenoiserFn, Generator, NoiseSampler, Sigmas, as_floats,
                            default_noise_sampler, finish_step)


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(σ_down, σ_up): deterministic step to σ_down, then noise of std σ_up brings the level to σ_next.

    σ_up = η·σ'·√(σ² - σ'²)/σ is the DDIM/DDPM posterior std in VE units (η = 1: DDPM), capped at σ_next.
    """
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def _ancestral(label: str, denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, cond: Any, eta: float,
               s_noise: float, noise_sampler: NoiseSampler | None, callback: Callback | None) -> torch.Tensor:
    """Euler to σ_down, then fresh noise of std σ_up (none when η = 0: plain Euler, no ``noise_sampler`` needed).
    ``label`` names the sampler in errors."""
    s = as_floats(sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i], cond)
        down, up = ancestral_step(s[i], s[i + 1], eta)
        x = x + (x - denoised) / s[i] * (down - s[i])
        if up > 0:
            assert noise_sampler is not None
            x = x + noise_sampler(s[i], s[i + 1]) * (s_noise * up)
        finish_step(label, i, len(s) - 1, f"σ={s[i + 1]:.4g}", x, denoised, callback)
    return x


def sample_euler(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None,
                 callback: Callback | None = None) -> torch.Tensor:
    """Euler on the probability-flow ODE dx/dσ = (x - D(x, σ)) / σ (Karras et al. 2022, Alg. 1 without churn)."""
    return _ancestral("euler", denoiser, x, sigmas, cond, 0.0, 1.0, None, callback)


def sample_euler_ancestral(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None,
                           eta: float = 1.0, s_noise: float = 1.0, generator: Generator = None,
                           noise_sampler: NoiseSampler | None = None, callback: Callback | None = None
                           ) -> torch.Tensor:
    """Euler to σ_down then fresh noise of std σ_up (k-diffusion ``sample_euler_ancestral``)."""
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    return _ancestral("euler_a", denoiser, x, sigmas, cond, eta, s_noise, noise_sampler, callback)


def sample_ddim(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None, eta: float = 0.0,
                s_noise: float = 1.0, generator: Generator = None, noise_sampler: NoiseSampler | None = None,
                callback: Callback | None = None) -> torch.Tensor:
    """DDIM (CompVis ``DDIMSampler`` / diffusers ``DDIMScheduler``): Euler (η = 0) or ancestral (η > 0) steps."""
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    return _ancestral("ddim", denoiser, x, sigmas, cond, eta, s_noise, noise_sampler, callback)


def sample_ddpm(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None, s_noise: float = 1.0,
                generator: Generator = None, noise_sampler: NoiseSampler | None = None,
                callback: Callback | None = None) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior, "fixed_small" variance (Ho et al. 2020; diffusers
    ``DDPMScheduler``) over a possibly strided σ list: the ancestral step with η = 1."""
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    return _ancestral("ddpm", denoiser, x, sigmas, cond, 1.0, s_noise, noise_sampler, callback)


def sample_heun(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None,
                callback: Callback | None = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1); the last step to σ = 0 is Euler. 2n - 1 calls."""
    s = as_floats(sigmas)
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i], cond)
        d = (x - denoised) / s[i]
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - denoiser(x_2, s[i + 1], cond)) / s[i + 1]
            x = x + (d + d_2) / 2 * dt
        finish_step("heun", i, len(s) - 1, f"σ={s[i + 1]:.4g}", x, denoised, callback)
    return x


def _adams_bashforth(d: torch.Tensor, old: list[torch.Tensor]) -> torch.Tensor:
    """Adams–Bashforth combination of d and up to three earlier derivatives (newest last), orders 1 to 4."""
    if not old:
        return d
    if len(old) == 1:
        return (3 * d - old[-1]) / 2
    if len(old) == 2:
        return (23 * d - 16 * old[-1] + 5 * old[-2]) / 12
    return (55 * d - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24


def sample_plms(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None,
                callback: Callback | None = None) -> torch.Tensor:
    """PLMS (Liu et al. 2022, CompVis ``PLMSSampler`` = diffusers ``PNDMScheduler(skip_prk_steps=True)``).

    Linear multistep on d (Adams–Bashforth up to 4th order, constant coefficients); the first step (of n > 1) is a
    Heun step (the pseudo improved Euler step), with an extra model call at the next level: n + 1 calls.
    """
    s = as_floats(sigmas)
    n, old = len(s) - 1, []
    for i in range(n):
        d = (x - denoiser(x, s[i], cond)) / s[i]
        dt = s[i + 1] - s[i]
        if not old and i + 1 < n:
            x_2 = x + d * dt
            d_step = (d + (x_2 - denoiser(x_2, s[i + 1], cond)) / s[i + 1]) / 2
        else:
            d_step = _adams_bashforth(d, old)
        x0 = x - s[i] * d_step
        x = x + d_step * dt
        old = (old + [d])[-3:]
        finish_step("plms", i, n, f"σ={s[i + 1]:.4g}", x, x0, callback)
    return x
