"""What every sampler shares: the call types, per-sample noise, the noise-sampler hook, the per-step finite check
and callback."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Union

import torch

from ..errors import ConfigError, NonFiniteError

DenoiserFn = Callable[[torch.Tensor, float, Any], torch.Tensor]  # D(x, σ, cond) -> x0, x (B, ...) VE
Sigmas = Union[torch.Tensor, Sequence[float]]  # descending σ levels, (n + 1,)
Generator = Union[torch.Generator, Sequence[torch.Generator], None]
NoiseSampler = Callable[[float, float], torch.Tensor]  # (level, next_level) -> noise shaped like x
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, x after the step, x0 prediction)


def randn(shape: Sequence[int], generator: Generator = None, *, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise, drawn on the generator's device then moved (same draws as diffusers' ``randn_tensor``).

    A list of generators draws row i of the batch from generator i alone, so sample i's noise never depends on the
    batch it is in. ``None`` uses torch's global RNG.
    """
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ConfigError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per sample")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(rows).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def default_noise_sampler(x: torch.Tensor, generator: Generator) -> NoiseSampler:
    """Fresh noise like ``x`` at every call, from ``generator``."""
    return lambda *_: randn(x.shape, generator, device=x.device, dtype=x.dtype)


def as_floats(levels: torch.Tensor | Sequence[float]) -> list[float]:
    """A σ or timestep list as Python floats (one host transfer, no per-step syncs)."""
    if isinstance(levels, torch.Tensor):
        levels = levels.detach().cpu().double().tolist()
    levels = [float(v) for v in levels]
    if not levels:
        raise ConfigError("the sampling schedule is empty")
    return levels


def finish_step(sampler: str, step: int, total: int, where: str, x: torch.Tensor, x0: torch.Tensor,
                callback: Callback | None) -> None:
    """Raise ``NonFiniteError`` on NaN/Inf in ``x``, then call ``callback(step, x, x0)``. ``where``: e.g. "σ=0.52"."""
    if not bool(torch.isfinite(x).all()):
        hint = ("fp16 overflow is the usual cause: sample in fp32 or bf16" if x.dtype == torch.float16 else
                "the UNet's output was not finite: its weights may be damaged (check the checkpoint), or the "
                "conditioning holds NaN/Inf")
        raise NonFiniteError(
            f"{sampler}: NaN/Inf in the latents after step {step + 1}/{total} (to {where}, dtype {x.dtype}); {hint}")
    if callback is not None:
        callback(step, x, x0)


def log_snr_time(sigma: float) -> float:
    """k-diffusion's t = -log σ (λ of DPM-Solver in VE form); +inf at σ = 0."""
    return math.inf if sigma == 0 else -math.log(sigma)
