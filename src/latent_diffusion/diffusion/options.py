"""``SampleOptions``: the plain settings of one sampling run, checked once when built.

What is data rather than a setting — the conditioning, the generators, a noise sampler, a callback, img2img's initial
latents — is passed to ``sample`` next to it. Checks that need the model (steps ≤ its training timesteps) or the
sampler (does it take ``eta``, which spacings its grid has) are made by ``sample``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from ..errors import ConfigError
from .discretization import SPACINGS


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


@dataclass(frozen=True, kw_only=True)
class SampleOptions:
    """steps: sampler steps (the grid's step count: CompVis' ``uniform`` spacing may run a few more).
    cfg_scale: classifier-free guidance scale, 1 = no unconditional pass; guidance_rescale: Lin et al. φ in [0, 1].
    eta: stochasticity for the samplers that take it (None: the sampler's default — ddim 0, euler_a and
        dpmpp_sde 1); s_noise: scale of the fresh noise of the stochastic samplers.
    spacing: the grid's spacing (None: the sampler's default, see ``discretization``); steps_offset: added to
        leading / uniform timesteps (SD: 1).
    start_step: img2img / SDEdit — skip the first ``start_step`` steps (see ``start_step_for_strength``).
    progress: a tqdm bar on stderr, one tick per step; a string labels it.
    """

    steps: int
    cfg_scale: float = 1.0
    guidance_rescale: float = 0.0
    eta: float | None = None
    s_noise: float = 1.0
    spacing: str | None = None
    steps_offset: int = 1
    start_step: int = 0
    progress: bool | str = False

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not _is_real(self.cfg_scale):
            raise ConfigError(f"cfg_scale must be a finite number (1 = no guidance), got {self.cfg_scale!r}")
        if not _is_real(self.guidance_rescale) or not 0.0 <= self.guidance_rescale <= 1.0:
            raise ConfigError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale!r}")
        if self.eta is not None and (not _is_real(self.eta) or self.eta < 0):
            raise ConfigError(f"eta must be a finite number >= 0 or None (the sampler's default), got {self.eta!r}")
        if not _is_real(self.s_noise) or self.s_noise < 0:
            raise ConfigError(f"s_noise must be a finite number >= 0, got {self.s_noise!r}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ConfigError(f"unknown spacing {self.spacing!r}; accepted: {', '.join(SPACINGS)} or None")
        if not _is_int(self.steps_offset) or self.steps_offset < 0:
            raise ConfigError(f"steps_offset must be an integer >= 0, got {self.steps_offset!r}")
        if not _is_int(self.start_step) or not 0 <= self.start_step < self.steps:
            raise ConfigError(f"start_step must be in [0, {self.steps - 1}] for {self.steps} steps, "
                              f"got {self.start_step!r}")
        if not isinstance(self.progress, (bool, str)):
            raise ConfigError(f"progress must be a bool or a label string, got {self.progress!r}")
