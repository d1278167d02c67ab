"""Discrete-timestep samplers in VP space: x_t = √ᾱ_t·x0 + √(1 - ᾱ_t)·ε.

Each takes a denoiser with ``predict(x_t, t, cond) -> (ε, x0)`` and ``alphas_cumprod`` (``Denoiser``), VP x at
``timesteps[0]`` and a descending list of integer timesteps; step i goes from ``timesteps[i]`` to ``timesteps[i+1]``,
the last one to ᾱ = ``final_alpha_cumprod``. Returns VP x; none mutates its inputs. Keyword arguments as
``samplers_k`` (``noise_sampler(t, t_next)``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .parameterization import eps_to_x0
from .samplers_base import Callback, Generator, NoiseSampler, as_floats, default_noise_sampler, finish_step

Timesteps = torch.Tensor | Sequence[int]


def _ints(timesteps: Timesteps) -> list[int]:
    return [int(round(t)) for t in as_floats(timesteps)]


def _where(ts: list[int], i: int) -> str:
    return f"t={ts[i + 1]}" if i + 1 < len(ts) else "the final ᾱ"


def _next_alpha(ac: torch.Tensor, ts: list[int], i: int, final: float) -> float:
    return float(ac[ts[i + 1]]) if i + 1 < len(ts) else final


def ddim_step(x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, a: float, a_next: float, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """Song et al. 2021 eq. 12 from ᾱ = a to ᾱ = a_next; η = 0 deterministic, η = 1 the DDPM posterior std."""
    std = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
    out = math.sqrt(a_next) * x0 + math.sqrt(max(1 - a_next - std**2, 0.0)) * eps
    return out if noise is None or std == 0 else out + std * noise


def sample_ddim(denoiser: Any, x: torch.Tensor, timesteps: Timesteps, *, cond: Any = None, eta: float = 0.0,
                final_alpha_cumprod: float | None = None, generator: Generator = None,
                noise_sampler: NoiseSampler | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DDIM (CompVis ``DDIMSampler`` / diffusers ``DDIMScheduler``); final ᾱ defaults to ᾱ_0 (SD: set_alpha_to_one
    False)."""
    ts, ac = _ints(timesteps), denoiser.alphas_cumprod
    final = float(ac[0]) if final_alpha_cumprod is None else final_alpha_cumprod
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    for i, t in enumerate(ts):
        a, a_next = float(ac[t]), _next_alpha(ac, ts, i, final)
        eps, x0 = denoiser.predict(x, t, cond)
        noise = noise_sampler(t, ts[i + 1] if i + 1 < len(ts) else -1) if eta > 0 else None
        x = ddim_step(x, eps, x0, a, a_next, eta, noise)
        finish_step("ddim", i, len(ts), _where(ts, i), x, x0, callback)
    return x


def sample_plms(denoiser: Any, x: torch.Tensor, timesteps: Timesteps, *, cond: Any = None,
                final_alpha_cumprod: float | None = None, callback: Callback | None = None) -> torch.Tensor:
    """PLMS (Liu et al. 2022, CompVis ``PLMSSampler`` = diffusers ``PNDMScheduler(skip_prk_steps=True)``).

    Linear multistep on ε (Adams–Bashforth up to 4th order); the first step is a pseudo improved-Euler step with an
    extra model call at the next timestep (n + 1 calls for n > 1 steps).
    """
    ts, ac = _ints(timesteps), denoiser.alphas_cumprod
    final = float(ac[0]) if final_alpha_cumprod is None else final_alpha_cumprod
    old_eps: list[torch.Tensor] = []
    for i, t in enumerate(ts):
        a, a_next = float(ac[t]), _next_alpha(ac, ts, i, final)
        eps, _ = denoiser.predict(x, t, cond)
        if not old_eps and i + 1 < len(ts):
            x_tmp = ddim_step(x, eps, eps_to_x0(eps, x, math.sqrt(a), math.sqrt(1 - a)), a, a_next)
            eps_prime = (eps + denoiser.predict(x_tmp, ts[i + 1], cond)[0]) / 2
        elif len(old_eps) <= 1:
            eps_prime = eps if not old_eps else (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x0 = eps_to_x0(eps_prime, x, math.sqrt(a), math.sqrt(1 - a))
        x = ddim_step(x, eps_prime, x0, a, a_next)
        old_eps = (old_eps + [eps])[-3:]
        finish_step("plms", i, len(ts), _where(ts, i), x, x0, callback)
    return x


def sample_ddpm(denoiser: Any, x: torch.Tensor, timesteps: Timesteps, *, cond: Any = None,
                final_alpha_cumprod: float = 1.0, generator: Generator = None,
                noise_sampler: NoiseSampler | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(x_{t'} | x_t, x0) over a (possibly strided) timestep list,
    "fixed_small" variance (Ho et al. 2020; diffusers ``DDPMScheduler``). Noise is added whenever t > 0."""
    ts, ac = _ints(timesteps), denoiser.alphas_cumprod
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    for i, t in enumerate(ts):
        a, a_next = float(ac[t]), _next_alpha(ac, ts, i, final_alpha_cumprod)
        _, x0 = denoiser.predict(x, t, cond)
        beta = 1 - a / a_next
        x = (math.sqrt(a_next) * beta / (1 - a)) * x0 + (math.sqrt(1 - beta) * (1 - a_next) / (1 - a)) * x
        if t > 0:
            std = math.sqrt(max((1 - a_next) / (1 - a) * beta, 1e-20))
            x = x + std * noise_sampler(t, ts[i + 1] if i + 1 < len(ts) else -1)
        finish_step("ddpm", i, len(ts), _where(ts, i), x, x0, callback)
    return x
