"""Noise schedules: β_t for t = 0..T-1, the quantities derived from them, and the discrete timestep <-> σ map.
Which timesteps or σ a sampler visits is ``discretization``'s business.

Names follow CompVis ``make_beta_schedule``: "linear" there is SD's *scaled-linear* (linear in √β).
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "linear_beta", "cosine", "sqrt_linear", "sqrt")


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2,
                       cosine_s: float = 8e-3) -> torch.Tensor:
    """β_t in float64, shape (n_timestep,).

    ``linear`` / ``scaled_linear``: linspace(√start, √end)² (CompVis "linear", SD); ``linear_beta``: linspace(start,
    end) (DDPM); ``cosine``: Nichol & Dhariwal with offset s, β clipped at 0.999; ``sqrt_linear`` / ``sqrt`` as CompVis.
    """
    if schedule in ("linear", "scaled_linear"):
        return torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64) ** 2
    if schedule in ("linear_beta", "sqrt_linear"):
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64)
    if schedule == "sqrt":
        return torch.linspace(linear_start, linear_end, n_timestep, dtype=torch.float64) ** 0.5
    if schedule == "cosine":
        t = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep + cosine_s
        f = torch.cos(t / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas_cumprod = f / f[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ConfigError(f"unknown beta schedule {schedule!r}; accepted: {', '.join(BETA_SCHEDULES)}")


def ddpm_buffers(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The twelve float32 buffers CompVis ``DDPM.register_schedule`` stores (same names, same formulas, v_posterior=0)."""
    betas = betas.double()
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    out = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
    }
    return {k: v.float() for k, v in out.items()}


# -- derived quantities --------------------------------------------------------------------------------------------
def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = Π_{s≤t} (1 - β_s), float64, shape (T,)."""
    return torch.cumprod(1.0 - betas.double(), dim=0)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1 (as diffusers): shift and scale √ᾱ so that ᾱ_{T-1} = 0 and ᾱ_0 is kept.

    The last σ becomes infinite: use it with v-prediction models and "trailing" spacing; the samplers (all in σ space)
    need a finite σ_max (clamp ᾱ_{T-1} to e.g. 2⁻²⁴ before taking σ, as diffusers' Euler does).
    """
    sqrt_ac = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
    sqrt_ac = (sqrt_ac - last) * (first / (first - last))
    ac = sqrt_ac**2
    alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    return 1.0 - alphas


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """VE noise level σ_t = √((1 - ᾱ_t) / ᾱ_t) of the VP schedule (x_VE = x_VP / √ᾱ = x0 + σ ε)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


# -- discrete timestep <-> continuous sigma (k-diffusion DiscreteSchedule) ------------------------------------------
def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """Fractional timestep of σ by linear interpolation in log σ over the table (nearest timestep if ``quantize``)."""
    log_sigma = sigma.to(log_sigmas.dtype).clamp(min=1e-10).log()
    dists = log_sigma - log_sigmas[:, None]
    if quantize:
        return dists.abs().argmin(dim=0).view(sigma.shape).to(log_sigmas.dtype)
    low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])).clamp(0, 1)
    return ((1 - w) * low + w * (low + 1)).view(sigma.shape)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """σ at (fractional) timestep t, interpolating log σ linearly between neighbouring integer timesteps."""
    t = t.to(log_sigmas.dtype)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
