"""Exponential-integrator samplers in σ space: DPM-Solver++(2M), its SDE variant, and UniPC (k-diffusion style).

x = x0 + σ·ε (VE), a denoiser ``D(x, σ, cond) -> x0`` and a descending σ list ending at 0; the solvers step in
λ = -log σ on the data prediction D. Each takes x at ``sigmas[0]`` and returns x at ``sigmas[-1]``; none mutates its
inputs. Keyword arguments as ``samplers_euler``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .samplers_base import (Callback, DenoiserFn, Generator, NoiseSampler, Sigmas, as_floats,
                            default_noise_sampler, finish_step, log_snr_time)


def sample_dpmpp_2m(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): multistep, data prediction; first and last (to σ = 0) steps first order."""
    s = as_floats(sigmas)
    old_denoised, h_last = None, 0.0
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i], cond)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = log_snr_time(s[i + 1]) - log_snr_time(s[i])
            d = denoised
            if old_denoised is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * d
            h_last = h
        old_denoised = denoised
        finish_step("dpmpp_2m", i, len(s) - 1, f"σ={s[i + 1]:.4g}", x, denoised, callback)
    return x


def sample_dpmpp_2m_sde(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None,
                        eta: float = 1.0, s_noise: float = 1.0, generator: Generator = None,
                        noise_sampler: NoiseSampler | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint form (k-diffusion ``sample_dpmpp_2m_sde``; diffusers "sde-dpmsolver++")."""
    s = as_floats(sigmas)
    noise_sampler = noise_sampler or default_noise_sampler(x, generator)
    old_denoised, h_last = None, 0.0
    for i in range(len(s) - 1):
        denoised = denoiser(x, s[i], cond)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = log_snr_time(s[i + 1]) - log_snr_time(s[i])
            eta_h = eta * h
            x = (s[i + 1] / s[i] * math.exp(-eta_h)) * x + (-math.expm1(-h - eta_h)) * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + (0.5 * -math.expm1(-h - eta_h) / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(s[i], s[i + 1]) * (s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
            h_last = h
        old_denoised = denoised
        finish_step("dpmpp_2m_sde", i, len(s) - 1, f"σ={s[i + 1]:.4g}", x, denoised, callback)
    return x


def _unipc_b(h: float, order: int) -> list[float]:
    """Right-hand side b_1..b_order of UniPC's order conditions, bh2 (B(h) = e^{-h} - 1), as the reference code."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / h_phi_1)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return b


def _unipc_update(x: torch.Tensor, m0: torch.Tensor, m1: torch.Tensor | None, m_new: torch.Tensor | None,
                  lam: Sequence[float], s: float, s_next: float) -> torch.Tensor:
    """One UniP (``m_new`` None) or UniC (``m_new`` = D at the predicted point) bh2 update from σ=s to σ=s_next.

    ``lam`` = [λ of m1's level (if m1), λ of m0's level, λ at s_next]; m0 is D at s (x's level).
    """
    h = lam[-1] - lam[-2]
    h_phi_1 = math.expm1(-h)
    x_new = (s_next / s) * x - h_phi_1 * m0
    d1 = None if m1 is None else (m1 - m0) / ((lam[0] - lam[-2]) / h)
    if m_new is None:  # predictor: order 2 uses ρ = 1/2
        return x_new if d1 is None else x_new - h_phi_1 * 0.5 * d1
    if d1 is None:  # corrector of order 1: ρ = 1/2
        return x_new - h_phi_1 * 0.5 * (m_new - m0)
    r = (lam[0] - lam[-2]) / h
    b1, b2 = _unipc_b(h, 2)
    rho0, rho1 = (b1 - b2) / (1 - r), (b2 - r * b1) / (1 - r)  # solve [[1, 1], [r, 1]] ρ = b
    return x_new - h_phi_1 * (rho0 * d1 + rho1 * (m_new - m0))


def sample_unipc(denoiser: DenoiserFn, x: torch.Tensor, sigmas: Sigmas, *, cond: Any = None,
                 callback: Callback | None = None) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), bh2, order 2, data prediction, as diffusers' ``UniPCMultistepScheduler`` defaults.

    Each step: D at the predicted point corrects it (UniC, no extra call), then UniP predicts the next one; warm-up
    and the final step are lower order.
    """
    s = as_floats(sigmas)
    n = len(s) - 1
    lam = [log_snr_time(v) for v in s]
    hist: list[torch.Tensor] = []  # last two data predictions
    last_x, last_order = x, 0
    for i in range(n):
        denoised = denoiser(x, s[i], cond)
        if i > 0:  # corrector of the previous step's prediction, with the previous order
            m1 = hist[-2] if last_order == 2 else None
            lams = lam[i - 2:i + 1] if m1 is not None else lam[i - 1:i + 1]
            x = _unipc_update(last_x, hist[-1], m1, denoised, lams, s[i - 1], s[i])
        hist = (hist + [denoised])[-2:]
        order = min(2, n - i, i + 1)
        last_x, last_order = x, order
        if s[i + 1] == 0:
            x_next = denoised
        else:
            m1 = hist[-2] if order == 2 else None
            lams = lam[i - 1:i + 2] if m1 is not None else lam[i:i + 2]
            x_next = _unipc_update(x, denoised, m1, None, lams, s[i], s[i + 1])
        x = x_next
        finish_step("unipc", i, n, f"σ={s[i + 1]:.4g}", x, denoised, callback)
    return x
