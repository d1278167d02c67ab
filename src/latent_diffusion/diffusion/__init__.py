"""Diffusion: schedules, discretisation, parameterisations, the σ-space denoiser, guidance, samplers, training loss."""

from .denoiser import Denoiser
from .guidance import guided_model_fn
from .loss import DenoisingLoss
from .options import SampleOptions
from .samplers import SAMPLERS, SamplerSpec, get_sampler, sample, start_step_for_strength
from .samplers_base import randn

__all__ = ["Denoiser", "DenoisingLoss", "guided_model_fn", "SAMPLERS", "SamplerSpec", "SampleOptions", "get_sampler",
           "sample", "start_step_for_strength", "randn"]
