"""Discretisation: the σ levels a sampler steps through — the one module that knows timestep grids.

A discrete VP model trained on ᾱ_t (t = 0..T-1) has the VE noise levels σ_t = √((1 - ᾱ_t) / ᾱ_t). Every sampler
steps down a σ list; this module lays the list out the way diffusers' scheduler families do, so that the same seed
gives the same latents, and says how the model and the start are treated on it (``Levels``):

- ``DDIM`` (DDIM / PNDM schedulers, CompVis DDIMSampler / PLMSSampler): n integer timesteps; the step after the last
  goes to ᾱ_0 (``set_alpha_to_one=False``), so the list ends at σ_0 > 0. ``DDPM``: the same, ending at σ = 0.
- ``EULER`` (Euler / Heun / Euler-ancestral discrete schedulers): n fractional timesteps, then σ = 0.
- ``DPM`` (DPM-Solver multistep, UniPC): n + 1 integer timesteps minus the smallest, then σ = 0.

Spacings: ``leading`` / ``trailing`` / ``linspace`` (diffusers' ``timestep_spacing``), ``uniform`` (CompVis
``make_ddim_timesteps``: every ⌊T/n⌋-th timestep, which is ⌈T / ⌊T/n⌋⌉ ≥ n of them), ``karras`` / ``exponential``
(k-diffusion's σ grids between the table's σ_min and σ_max; EULER and DPM only).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from .schedules import t_to_sigma

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")  # diffusers' timestep_spacing
SIGMA_SPACINGS = ("karras", "exponential")
SPACINGS = (*TIMESTEP_SPACINGS, "uniform", *SIGMA_SPACINGS)


def check_steps(steps: int, num_train_timesteps: int = 1000) -> None:
    """Raise ``ConfigError`` unless 1 ≤ steps ≤ num_train_timesteps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ConfigError(f"steps must be an integer in [1, {num_train_timesteps}] (the model's training timesteps), "
                          f"got {steps!r}")


def spaced_timesteps(steps: int, spacing: str = "leading", *, num_train_timesteps: int = 1000, steps_offset: int = 1,
                     integer: bool = True, drop_last: bool = False) -> torch.Tensor:
    """Descending timesteps in [0, T-1], float64, exactly as diffusers' ``set_timesteps`` (or CompVis) lays them out.

    - ``leading``: 0, T//n, 2T//n, ... plus ``steps_offset`` (SD: 1) — DDIM / PNDM / DDPM default;
    - ``trailing``: round(T - i·T/n) - 1, always starts at T-1;
    - ``linspace``: linspace(0, T-1, n); ``integer=False`` keeps the fractional values (Euler / Heun grid);
    - ``uniform``: 0, c, 2c, ... < T with c = T//n, plus ``steps_offset`` (CompVis: + 1); may give more than n.
    ``drop_last``: lay out ``steps + 1`` points and drop the smallest — the final σ = 0 takes its place (diffusers'
    DPM-Solver / UniPC grid; no effect on ``trailing``). Shape (steps,), or longer for ``uniform``.
    """
    check_steps(steps, num_train_timesteps)
    T, n = num_train_timesteps, steps + int(drop_last)
    if spacing == "leading":
        t = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        t, n = np.round(T - np.arange(steps) * (T / steps)) - 1, steps
    elif spacing == "linspace":
        t = np.linspace(0, T - 1, n, dtype=np.float64 if integer else np.float32)[::-1]
        t = t.round() if integer else t
    elif spacing == "uniform":
        t = np.arange(0, T, T // steps)[::-1] + steps_offset
        steps = len(t)
    else:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; accepted: {', '.join(TIMESTEP_SPACINGS)}, uniform")
    t = torch.from_numpy(np.ascontiguousarray(t[:steps], dtype=np.float64))
    if t.max() > T - 1 or t.min() < 0:
        raise ConfigError(f"{spacing!r} spacing with {steps} steps and steps_offset={steps_offset} gives timestep "
                          f"{int(t.max())} outside [0, {T - 1}]; use fewer steps or spacing 'trailing'")
    if len(t.unique()) != steps:
        raise ConfigError(f"{spacing!r} spacing with {steps} steps repeats a timestep; use fewer steps")
    return t


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 σ grid, ``steps`` values from σ_max down to σ_min then a final 0; float64, (steps + 1,)."""
    ramp = torch.from_numpy(np.linspace(0, 1, steps))
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, ramp.new_zeros(1)])


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """σ uniform in log σ from σ_max to σ_min, then a final 0 (k-diffusion ``get_sigmas_exponential``); (steps + 1,)."""
    s = torch.from_numpy(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps)))
    return torch.cat([s, s.new_zeros(1)])


@dataclass(frozen=True)
class Levels:
    """What a sampler runs on: the σ list, and how the model and the start are treated on it."""

    sigmas: torch.Tensor  # (n + 1,) float64, descending: n steps; the last level is 0 or σ_0 (ᾱ_0)
    integer_timesteps: bool  # the model is evaluated at the nearest integer timestep of each σ
    vp_noise: bool  # a pure-noise start is VP x = noise (VE: noise·√(σ² + 1)); False: noise·σ

    @property
    def steps(self) -> int:
        return self.sigmas.shape[0] - 1

    def from_step(self, start: int) -> Levels:
        """The levels from step ``start`` on (img2img / SDEdit)."""
        return dataclasses.replace(self, sigmas=self.sigmas[start:])

    def initial_latents(self, noise: torch.Tensor, init_latents: torch.Tensor | None = None) -> torch.Tensor:
        """VE x at the first level: ``init_latents`` noised to it (the forward process), or ``noise`` scaled to it.

        noise, init_latents: (B, C, h, w), noise standard normal.
        """
        level = float(self.sigmas[0])
        if init_latents is not None:
            return init_latents + level * noise
        return noise * math.sqrt(level**2 + 1) if self.vp_noise else noise * level

    def final_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The model-scale latents of VE ``x`` at the last level: VP x = x/√(σ² + 1), x itself at σ = 0."""
        level = float(self.sigmas[-1])
        return x if level == 0 else x / math.sqrt(level**2 + 1)


@dataclass(frozen=True)
class Grid:
    """A family of discretisations (see the module docstring); ``spacing`` is its default."""

    name: str
    spacing: str
    spacings: tuple[str, ...]  # the spacings it accepts
    integer: bool  # integer timesteps: the model sees round(t(σ)), on σ grids too
    drop_last: bool = False  # n + 1 timesteps minus the smallest (the final σ = 0 takes its place)
    ends_at_alpha0: bool = False  # the step after the last timestep goes to ᾱ_0 (σ_0), not to σ = 0
    ve_noise: bool = False  # a pure-noise start is noise·σ_max, except with leading spacing (diffusers' Euler)


DDIM = Grid("ddim", "leading", (*TIMESTEP_SPACINGS, "uniform"), integer=True, ends_at_alpha0=True)
DDPM = dataclasses.replace(DDIM, name="ddpm", ends_at_alpha0=False)
EULER = Grid("euler", "linspace", (*TIMESTEP_SPACINGS, *SIGMA_SPACINGS), integer=False, ve_noise=True)
DPM = Grid("dpm", "linspace", (*TIMESTEP_SPACINGS, *SIGMA_SPACINGS), integer=True, drop_last=True)
DPM_KARRAS = dataclasses.replace(DPM, spacing="karras")


def levels(grid: Grid, steps: int, sigma_table: torch.Tensor, *, spacing: str | None = None, steps_offset: int = 1,
           who: str = "this sampler") -> Levels:
    """The ``Levels`` of ``grid`` for ``steps`` steps over a model's σ table (T,) float64 (σ_t, ascending in t).

    ``spacing`` None: the grid's default. ``who`` names the caller in errors (e.g. "sampler 'ddim'").
    """
    spacing = grid.spacing if spacing is None else spacing
    if spacing not in grid.spacings:
        hint = "" if spacing in SPACINGS else f" (unknown spacing; all: {', '.join(SPACINGS)})"
        raise ConfigError(f"{who} runs on the {grid.name} grid, whose spacings are {', '.join(grid.spacings)}; "
                          f"got {spacing!r}{hint}")
    check_steps(steps, sigma_table.shape[0])
    log_sigmas = sigma_table.log()
    if spacing in SIGMA_SPACINGS:
        make = karras_sigmas if spacing == "karras" else exponential_sigmas
        sigmas = make(steps, float(sigma_table[0]), float(sigma_table[-1]))
    else:
        t = spaced_timesteps(steps, spacing, num_train_timesteps=sigma_table.shape[0], steps_offset=steps_offset,
                             integer=grid.integer, drop_last=grid.drop_last)
        last = sigma_table[:1] if grid.ends_at_alpha0 else t.new_zeros(1)
        sigmas = torch.cat([t_to_sigma(t, log_sigmas), last])
    return Levels(sigmas, integer_timesteps=grid.integer, vp_noise=not grid.ve_noise or spacing == "leading")


__all__ = ["TIMESTEP_SPACINGS", "SIGMA_SPACINGS", "SPACINGS", "check_steps", "spaced_timesteps", "karras_sigmas",
           "exponential_sigmas", "Levels", "Grid", "DDIM", "DDPM", "EULER", "DPM", "DPM_KARRAS", "levels"]
