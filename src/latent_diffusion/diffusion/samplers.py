"""Sampler registry and the one front door, ``sample(name, model, noise, steps, ...)``.

The sampler functions themselves are in ``samplers_k`` (σ space) and ``samplers_ddim`` (discrete VP timesteps).
Defaults reproduce diffusers' schedulers built from SD's ``scheduler_config`` (scaled-linear β, steps_offset 1, each
scheduler's own default ``timestep_spacing``), so the same seed gives the same latents.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, NamedTuple

import torch

from ..errors import ConfigError
from .denoiser import Denoiser
from .guidance import guided_model_fn
from .samplers_base import Callback, Generator, NoiseSampler, randn
from .samplers_ddim import sample_ddim, sample_ddpm, sample_plms
from .samplers_k import (sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_euler, sample_euler_ancestral, sample_heun,
                         sample_unipc)
from .schedules import TIMESTEP_SPACINGS, check_steps, karras_sigmas, spaced_timesteps


class SamplerSpec(NamedTuple):
    """``fn``: the sampler; ``spacing``: default timestep spacing ("karras" = Karras σ, ρ = 7); ``grid``: whose
    discretisation it follows — "ddim" (integer timesteps, VP x), "euler" (fractional linspace timesteps, σ space) or
    "dpm" (steps + 1 points minus the last, then σ = 0; σ space)."""
    fn: Callable[..., torch.Tensor]
    spacing: str
    grid: str


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(sample_ddpm, "leading", "ddim"),
    "ddim": SamplerSpec(sample_ddim, "leading", "ddim"),
    "plms": SamplerSpec(sample_plms, "leading", "ddim"),
    "euler": SamplerSpec(sample_euler, "linspace", "euler"),
    "euler_a": SamplerSpec(sample_euler_ancestral, "linspace", "euler"),
    "heun": SamplerSpec(sample_heun, "linspace", "euler"),
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m, "linspace", "dpm"),
    "dpmpp_2m_karras": SamplerSpec(sample_dpmpp_2m, "karras", "dpm"),
    "dpmpp_sde": SamplerSpec(sample_dpmpp_2m_sde, "linspace", "dpm"),
    "unipc": SamplerSpec(sample_unipc, "linspace", "dpm"),
}


def get_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; accepted: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_schedule(name: str, denoiser: Denoiser, steps: int, *, spacing: str | None = None,
                     steps_offset: int = 1) -> torch.Tensor:
    """The full schedule ``name`` runs for ``steps`` steps, float64: timesteps (B,) for "ddim"-grid samplers, else
    σ levels (steps + 1,) ending at 0."""
    spec = get_sampler(name)
    spacing = spacing or spec.spacing
    check_steps(steps, denoiser.num_timesteps)
    if spacing == "karras":
        if spec.grid == "ddim":
            raise ConfigError(f"sampler {name!r} runs on integer timesteps; 'karras' spacing needs a σ sampler")
        return karras_sigmas(steps, denoiser.sigma_min, denoiser.sigma_max)
    if spacing not in TIMESTEP_SPACINGS:
        raise ConfigError(f"unknown spacing {spacing!r}; accepted: {', '.join(TIMESTEP_SPACINGS)}, karras")
    t = spaced_timesteps(steps, spacing, num_train_timesteps=denoiser.num_timesteps, steps_offset=steps_offset,
                         integer=spec.grid != "euler", drop_last=spec.grid == "dpm")
    return t if spec.grid == "ddim" else torch.cat([denoiser.t_to_sigma(t), t.new_zeros(1)])


def start_step_for_strength(steps: int, strength: float) -> int:
    """img2img / SDEdit: index of the first step to run so that ``int(steps·strength)`` steps remain (diffusers)."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength must be in (0, 1], got {strength!r}")
    start = steps - min(int(steps * strength), steps)
    if start >= steps:
        raise ConfigError(f"strength={strength} with {steps} steps leaves no step to run; raise one or the other")
    return start


def initial_latents(name: str, denoiser: Denoiser, schedule: torch.Tensor, noise: torch.Tensor,
                    init_latents: torch.Tensor | None = None, *, spacing: str | None = None) -> torch.Tensor:
    """x at the first level of ``schedule`` (as returned by ``sampler_schedule``, possibly truncated).

    With ``init_latents`` (img2img): the forward process applied to them. Without: ``noise`` scaled as diffusers
    does — VP x_T = noise, except the Euler family with linspace/trailing spacing, which starts at noise·σ_max.
    """
    spec = get_sampler(name)
    level = float(schedule[0])
    if spec.grid == "ddim":
        a = float(denoiser.alphas_cumprod[int(round(level))])
        return noise if init_latents is None else math.sqrt(a) * init_latents + math.sqrt(1 - a) * noise
    if init_latents is not None:
        return init_latents + level * noise
    if spec.grid == "euler" and (spacing or spec.spacing) != "leading":
        return noise * level
    return noise * math.sqrt(level**2 + 1)


@torch.no_grad()
def sample(name: str, model: Any, noise: torch.Tensor, steps: int, *, cond: Any = None, uncond: Any = None,
           cfg_scale: float = 1.0, guidance_rescale: float = 0.0, generator: Generator = None,
           callback: Callback | None = None, spacing: str | None = None, steps_offset: int = 1, start_step: int = 0,
           init_latents: torch.Tensor | None = None, eta: float | None = None,
           noise_sampler: NoiseSampler | None = None, progress: bool | str = False) -> torch.Tensor:
    """Run sampler ``name`` for ``steps`` steps and return the final latents (model scale, before ``decode``).

    model: a ``LatentDiffusion`` (or anything ``Denoiser`` accepts), or a ``Denoiser``.
    noise: (B, C, h, w) standard normal (draw it with ``randn(shape, generators)`` for per-sample seeds).
    cond / uncond: conditioning for ``apply_model``; uncond (negative prompt) is used iff cfg_scale != 1.
    start_step, init_latents: img2img / SDEdit — skip the first ``start_step`` steps (see
        ``start_step_for_strength``) and start from ``init_latents`` noised to that level.
    eta: stochasticity for samplers that take it (ddim: 0, euler_a and dpmpp_sde: 1 by default).
    callback(step, x, x0_pred) after each step run (step counts from 0 at ``start_step``).
    progress: a tqdm bar on stderr, one tick per step; a string labels it.
    """
    spec = get_sampler(name)
    if isinstance(generator, (list, tuple)) and len(generator) != noise.shape[0]:
        raise ConfigError(f"got {len(generator)} generators for a batch of {noise.shape[0]}; pass one per sample")
    denoiser = model if isinstance(model, Denoiser) else Denoiser(model)
    guided = guided_model_fn(denoiser.model_fn, uncond=uncond, scale=cfg_scale, guidance_rescale=guidance_rescale)
    # diffusers' DPM-Solver / UniPC call the model at round(t(σ)) on a Karras grid
    quantize = denoiser.quantize or (spec.grid == "dpm" and (spacing or spec.spacing) == "karras")
    denoiser = denoiser.replace(model_fn=guided, quantize=quantize)
    schedule = sampler_schedule(name, denoiser, steps, spacing=spacing, steps_offset=steps_offset)
    if not 0 <= start_step < steps:
        raise ConfigError(f"start_step must be in [0, {steps - 1}] for {steps} steps, got {start_step!r}")
    schedule = schedule[start_step:]
    x = initial_latents(name, denoiser, schedule, noise, init_latents, spacing=spacing)
    steps_run = len(schedule) - (spec.grid != "ddim")  # a σ list carries its final level
    kwargs: dict[str, Any] = {"cond": cond, "callback": _with_progress(callback, steps_run, progress)}
    if eta is not None:
        if not _takes(spec.fn, "eta"):
            with_eta = [n for n, s in SAMPLERS.items() if _takes(s.fn, "eta")]
            raise ConfigError(f"sampler {name!r} takes no eta; samplers with eta: {', '.join(with_eta)}")
        kwargs["eta"] = eta
    if _takes(spec.fn, "generator"):
        kwargs.update(generator=generator, noise_sampler=noise_sampler)
    return spec.fn(denoiser, x, schedule, **kwargs)


def _takes(fn: Callable[..., Any], arg: str) -> bool:
    return arg in inspect.signature(fn).parameters


def _with_progress(callback: Callback | None, total: int, progress: bool | str) -> Callback | None:
    """Wrap ``callback`` to advance a tqdm bar (on stderr) per step; a string ``progress`` is the bar's label."""
    if not progress:
        return callback
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=progress if isinstance(progress, str) else "sampling", leave=False)

    def report(step: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        bar.update(1)
        if step == total - 1:
            bar.close()
        if callback is not None:
            callback(step, x, x0)

    return report


__all__ = ["SAMPLERS", "SamplerSpec", "get_sampler", "sampler_schedule", "start_step_for_strength", "initial_latents",
           "sample", "randn"]
