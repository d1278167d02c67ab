"""Sampler registry and the one front door, ``sample(name, model, noise, SampleOptions(...), cond=..., ...)``.

Every sampler is a loop over a σ list with one denoiser ``D(x, σ, cond)`` (``samplers_euler``, ``samplers_dpm``);
``discretization`` lays the list out. Defaults reproduce diffusers' schedulers built from SD's ``scheduler_config``
(scaled-linear β, steps_offset 1, each scheduler's own default ``timestep_spacing``), so the same seed gives the same
latents.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from ..errors import ConfigError
from .denoiser import Denoiser
from .discretization import DDIM, DDPM, DPM, DPM_KARRAS, EULER, Grid, levels
from .guidance import guided_model_fn
from .options import SampleOptions
from .sampler_names import a1111_infotext, a1111_samplers, resolve_sampler
from .progress import with_progress
from .samplers_base import Callback, Generator, NoiseSampler, randn
from .samplers_dpm import sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_unipc
from .samplers_euler import (sample_ddim, sample_ddpm, sample_euler, sample_euler_ancestral, sample_heun,
                             sample_plms)


class SamplerSpec(NamedTuple):
    """``fn(denoiser, x, sigmas, *, cond, callback, ...)``: the sampler; ``grid``: the discretisation it follows.
    ``eta``: its default η if it takes one (None: it takes none); ``noisy``: it draws fresh noise, so takes
    ``generator``, ``noise_sampler`` and ``s_noise``."""
    fn: Callable[..., torch.Tensor]
    grid: Grid
    eta: float | None = None
    noisy: bool = False


SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(sample_ddpm, DDPM, noisy=True),
    "ddim": SamplerSpec(sample_ddim, DDIM, eta=0.0, noisy=True),
    "plms": SamplerSpec(sample_plms, DDIM),
    "euler": SamplerSpec(sample_euler, EULER),
    "euler_a": SamplerSpec(sample_euler_ancestral, EULER, eta=1.0, noisy=True),
    "heun": SamplerSpec(sample_heun, EULER),
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m, DPM),
    "dpmpp_2m_karras": SamplerSpec(sample_dpmpp_2m, DPM_KARRAS),
    "dpmpp_sde": SamplerSpec(sample_dpmpp_2m_sde, DPM, eta=1.0, noisy=True),
    "unipc": SamplerSpec(sample_unipc, DPM),
}


def get_sampler(name: str) -> SamplerSpec:
    """The spec of sampler ``name``: a ``SAMPLERS`` key, or an A1111 name / alias of one (``canonical_sampler``)."""
    return SAMPLERS[canonical_sampler(name)]


def canonical_sampler(name: str, schedule_type: str | None = None) -> str:
    """Our name (a ``SAMPLERS`` key) for ``name``: ours, or AUTOMATIC1111's ("Euler a", "k_euler_a", "DPM++ 2M Karras";
    case-insensitive where unambiguous). ``schedule_type``: the "Schedule type" A1111 1.9+ writes next to "Sampler"
    ("Automatic" is Karras for "DPM++ 2M"); see ``sampler_names``. Unknown, or an A1111 sampler we do not run:
    ``ConfigError`` naming the accepted names, with "did you mean" for a typo."""
    return resolve_sampler(name, SAMPLERS, schedule_type)


def start_step_for_strength(steps: int, strength: float) -> int:
    """img2img / SDEdit: index of the first step to run so that ``int(steps·strength)`` steps remain (diffusers)."""
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength must be in (0, 1], got {strength!r}")
    start = steps - min(int(steps * strength), steps)
    if start >= steps:
        raise ConfigError(f"strength={strength} with {steps} steps leaves no step to run; raise one or the other")
    return start


@torch.no_grad()
def sample(name: str, model: Any, noise: torch.Tensor, options: SampleOptions, *, cond: Any = None,
           uncond: Any = None, init_latents: torch.Tensor | None = None, generator: Generator = None,
           noise_sampler: NoiseSampler | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Run sampler ``name`` as ``options`` say and return the final latents (model scale, before ``decode``).

    model: a ``LatentDiffusion`` (or anything ``Denoiser`` accepts), or a ``Denoiser``.
    noise: (B, C, h, w) standard normal (draw it with ``randn(shape, generators)`` for per-sample seeds).
    cond / uncond: conditioning for ``apply_model``; uncond (negative prompt) is used iff cfg_scale != 1.
    init_latents: (B, C, h, w) img2img / SDEdit start, noised to the level of ``options.start_step``.
    generator / noise_sampler(σ, σ_next): the fresh noise of stochastic samplers (one generator per sample, or one).
    callback(step, x, x0_pred) after each step run, x in VE form (step counts from 0 at ``start_step``).
    """
    spec = get_sampler(name)
    if isinstance(generator, (list, tuple)) and len(generator) != noise.shape[0]:
        raise ConfigError(f"got {len(generator)} generators for a batch of {noise.shape[0]}; pass one per sample")
    _check_noise_options(name, spec, options)
    denoiser = model if isinstance(model, Denoiser) else Denoiser(model)
    lv = levels(spec.grid, options.steps, denoiser.sigmas, spacing=options.spacing,
                steps_offset=options.steps_offset, who=f"sampler {name!r}")
    if options.start_step >= lv.steps:
        raise ConfigError(f"start_step must be in [0, {lv.steps - 1}] for {lv.steps} steps, got {options.start_step}")
    lv = lv.from_step(options.start_step)
    guided = guided_model_fn(denoiser.model_fn, uncond=uncond, scale=options.cfg_scale,
                             guidance_rescale=options.guidance_rescale)
    denoiser = denoiser.replace(model_fn=guided, quantize=denoiser.quantize or lv.integer_timesteps)
    x = lv.initial_latents(noise, init_latents)
    kwargs: dict[str, Any] = {"cond": cond, "callback": with_progress(callback, lv.steps, options.progress)}
    if spec.eta is not None:
        kwargs["eta"] = spec.eta if options.eta is None else options.eta
    if spec.noisy:
        kwargs.update(s_noise=options.s_noise, generator=generator, noise_sampler=noise_sampler)
    return lv.final_latents(spec.fn(denoiser, x, lv.sigmas, **kwargs))


def _check_noise_options(name: str, spec: SamplerSpec, options: SampleOptions) -> None:
    """Refuse ``eta`` / ``s_noise`` for a sampler that has no use for them, naming those that do."""
    if options.eta is not None and spec.eta is None:
        with_eta = [n for n, s in SAMPLERS.items() if s.eta is not None]
        raise ConfigError(f"sampler {name!r} takes no eta; samplers with eta: {', '.join(with_eta)}")
    if options.s_noise != 1.0 and not spec.noisy:
        noisy = [n for n, s in SAMPLERS.items() if s.noisy]
        raise ConfigError(f"sampler {name!r} draws no noise, so takes no s_noise; samplers with s_noise: "
                          f"{', '.join(noisy)}")




__all__ = ["SAMPLERS", "SamplerSpec", "SampleOptions", "get_sampler", "canonical_sampler", "a1111_samplers",
           "a1111_infotext", "start_step_for_strength", "sample", "randn"]
