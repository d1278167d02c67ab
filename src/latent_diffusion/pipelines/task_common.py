"""What the task modules share besides ``Pipeline``'s steps: the callback type, per-image generators, the strength
check and the c_concat + c_crossattn pairing."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..diffusion.samplers import get_sampler
from ..errors import LDMError
from .limits import Limits, check_seed

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def generators(seed: int, n: int) -> list[torch.Generator]:
    """Generator i seeded ``seed + i`` (each a 64-bit seed: checked)."""
    check_seed(seed, n)
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def check_run(steps: Any, sampler: str, cfg_scale: float, n: Any, limits: Limits, *,
              names: tuple[str, str, str] = ("steps", "cfg_scale", "n")) -> None:
    """What every task checks before any work: steps a positive integer, guidance >= 0, n within ``limits``, a known
    sampler. ``names``: how the message calls the three values (the CLI passes its flags)."""
    if not isinstance(steps, int) or steps <= 0:
        raise LDMError(f"{names[0]} must be a positive integer, got {steps!r}")
    if cfg_scale < 0:
        raise LDMError(f"{names[1]} must be >= 0 (1 = no guidance), got {cfg_scale!r}")
    limits.check_images(n, names[2])
    get_sampler(sampler)


def check_strength(strength: Any, task: str, meaning: str = "") -> None:
    """A denoising strength in (0, 1] (the tasks that must run at least one step), else a clear error."""
    if not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise LDMError(f"{task} strength must be in (0, 1]{meaning}, got {strength!r}")


def with_concat(cond: torch.Tensor, uncond: torch.Tensor | None, cat: torch.Tensor, n: int) -> tuple[Any, Any]:
    """Text conditioning plus an image concatenated to the latents (inpainting models): the n-row cond dict and the
    one-row uncond dict (guidance broadcasts it)."""
    cat = cat.expand(n, -1, -1, -1)
    c = {"c_concat": cat, "c_crossattn": cond}
    u = None if uncond is None else {"c_concat": cat[:1], "c_crossattn": uncond}
    return c, u
