"""Diffusion: schedules, parameterisations, the σ-space denoiser wrapper, guidance and samplers."""

from .denoiser import Denoiser
from .guidance import guided_model_fn
from .samplers import (SAMPLERS, SamplerSpec, get_sampler, initial_latents, sample, sampler_schedule,
                       start_step_for_strength)
from .samplers_base import randn

__all__ = ["Denoiser", "guided_model_fn", "SAMPLERS", "SamplerSpec", "get_sampler", "initial_latents", "sample",
           "sampler_schedule", "start_step_for_strength", "randn"]
