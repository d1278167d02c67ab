"""DeepCache-style feature reuse (Ma, Fang & Wang, CVPR 2024), training-free.

Adjacent denoising steps change the UNet's deep features little. Every ``interval``-th call runs the whole UNet and
keeps the feature map that enters the last ``branch + 1`` output blocks (the up path at the shallow skip ``branch``);
the calls in between run only ``input_blocks[:branch + 1]`` (the shallow encoder, whose skips the last output blocks
need), take the cached deep feature in place of everything below, and finish with those last output blocks and
``out``. With ``branch = 0`` a cached call costs the first conv and the last output block only. The cache is keyed
on the input's shape and is thrown away by ``reset()`` (the pipeline resets it before each sampling run); it is a
sampling accelerator: the outputs of cached calls differ from the plain UNet's (``ldm bench fastpaths`` measures
by how much).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models.resnet import timestep_embedding
from ..models.unet import UNetModel
from .memory_format import input_format


class DeepCacheUNet(nn.Module):
    """Wraps a ``UNetModel`` with the same call signature; see the module docstring."""

    def __init__(self, unet: UNetModel, interval: int = 3, branch: int = 0) -> None:
        super().__init__()
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"DeepCache interval must be an integer >= 1 (1 = no reuse), got {interval!r}")
        n = len(unet.input_blocks)
        if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < n - 1:
            raise ConfigError(f"DeepCache branch must be an integer in [0, {n - 2}], got {branch!r}")
        self.unet, self.interval, self.branch = unet, interval, branch
        self.calls = 0
        self.full_calls = 0
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple[int, ...] | None = None  # (batch, H, W) of the input the cache was made for
        self._skip_channels = 0

    @property
    def cfg(self):  # noqa: ANN201 - UNetConfig
        return self.unet.cfg

    def reset(self) -> None:
        self.calls, self.full_calls, self._cache, self._cache_key = 0, 0, None, None

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        unet, b = self.unet, self.branch
        reuse = (self.calls % self.interval != 0 and self._cache is not None
                 and self._cache_key == (x.shape[0], *x.shape[-2:]))
        self.calls += 1
        if not reuse:
            self.full_calls += 1
            return self._full(x, timesteps, context, y)
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = unet.time_embed(timestep_embedding(t, unet.cfg.model_channels).to(unet.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + unet.label_emb(y)
        h, skips = x.contiguous(memory_format=input_format(unet, x)), []
        for block in unet.input_blocks[:b + 1]:
            h = block(h, emb, context)
            skips.append(h)
        h = self._cache.to(h.dtype)
        for block in unet.output_blocks[len(unet.output_blocks) - b - 1:]:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return unet.out(h).contiguous()

    def _full(self, x: torch.Tensor, timesteps, context, y) -> torch.Tensor:  # noqa: ANN001
        """The plain UNet forward, keeping the input of output block ``-(branch + 1)`` minus its skip."""
        unet = self.unet
        keep_at = len(unet.output_blocks) - self.branch - 1
        hooks = [unet.input_blocks[self.branch].register_forward_hook(self._skip_width),
                 unet.output_blocks[keep_at].register_forward_pre_hook(self._keep)]
        try:
            out = unet(x, timesteps, context=context, y=y)
        finally:
            for hook in hooks:
                hook.remove()
        self._cache_key = (x.shape[0], *x.shape[-2:])
        return out

    def _skip_width(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._skip_channels = output.shape[1]

    def _keep(self, module: nn.Module, args: tuple) -> None:
        h_and_skip = args[0]  # cat([h, skip], dim=1): the deep feature is h
        self._cache = h_and_skip[:, :h_and_skip.shape[1] - self._skip_channels].detach().clone()
