"""Classifier-free guidance (Ho & Salimans 2022) on the raw model output, cond and uncond in ONE batch.

Guiding ε, v or x0 gives the same x0 (each is affine in the output with the same x term), so it is done on whatever
the model outputs. A negative prompt is simply the uncond embedding. Optional guidance rescale (Lin et al. 2023,
§3.4, as diffusers' ``rescale_noise_cfg``) pulls the per-sample std of the guided output back to the conditional one.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def cat_cond(uncond: Any, cond: Any) -> Any:
    """Stack uncond then cond along the batch: tensors, dicts of tensors (same keys) or None."""
    if isinstance(cond, torch.Tensor):
        if uncond.shape[0] == 1 and cond.shape[0] > 1:  # one negative embedding for the whole batch
            uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
        return torch.cat([uncond, cond])
    if isinstance(cond, dict):
        if set(cond) != set(uncond):
            raise ConfigError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
        return {k: cat_cond(uncond[k], cond[k]) for k in cond}
    if cond is None and uncond is None:
        return None
    raise ConfigError(f"cond and uncond must both be tensors, dicts of tensors or None; got {type(cond).__name__} "
                      f"and {type(uncond).__name__}")


def combine(uncond_out: torch.Tensor, cond_out: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale·(cond - uncond)."""
    return uncond_out + scale * (cond_out - uncond_out)


def rescale(guided: torch.Tensor, cond_out: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023 eq. 15–16: mix ``guided·std(cond)/std(guided)`` (per sample) and ``guided`` with weight φ."""
    dims = list(range(1, guided.ndim))
    ratio = cond_out.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * (guided * ratio) + (1 - phi) * guided


def guided_model_fn(model_fn: ModelFn, *, uncond: Any, scale: float, guidance_rescale: float = 0.0) -> ModelFn:
    """``model_fn`` with classifier-free guidance. ``scale == 1`` returns ``model_fn`` itself: no unconditional pass.

    The guided function runs the model once on a batch of 2B: [uncond; cond].
    """
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ConfigError(f"guidance_rescale must be in [0, 1], got {guidance_rescale!r}")
    if scale == 1.0:
        return model_fn
    if uncond is None:
        raise ConfigError(f"cfg_scale={scale} needs an unconditional embedding (uncond); pass cfg_scale=1 to disable")

    def guided(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), cat_cond(uncond, cond))
        uncond_out, cond_out = out.chunk(2)
        g = combine(uncond_out, cond_out, scale)
        return rescale(g, cond_out, guidance_rescale) if guidance_rescale > 0 else g

    return guided
