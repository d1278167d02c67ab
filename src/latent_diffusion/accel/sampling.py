"""What a sampling run is wrapped in: bf16 autocast, the UNet swapped for its DeepCache or compiled form,
attention slicing, and the GEMM-lowered convs' cast cache — all undone when the run ends."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from ..models.attention import set_attention_slice
from .deepcache import DeepCacheUNet
from .gemm_conv import cache_weight_casts
from .options import AccelOptions


@contextlib.contextmanager
def sampling_context(model: Any, options: AccelOptions, device: torch.device) -> Iterator[None]:
    """Around one sampling run of ``model`` (a LatentDiffusion: ``model.model.diffusion_model`` is its UNet)."""
    wrapper = model.model  # DiffusionWrapper: calls self.diffusion_model(x, t, context=..., y=...)
    unet = wrapper.diffusion_model
    runner = unet
    if options.deepcache and options.deepcache > 1:
        runner = DeepCacheUNet(unet, options.deepcache, options.deepcache_branch)
    elif options.compile:
        runner = compiled(model, unet)
    if options.attention_slice:
        set_attention_slice(unet, options.attention_slice)
    wrapper.diffusion_model = runner
    try:
        # autocast casts each weight its ops take once per run; cache_weight_casts does so for the GEMM-lowered
        # convs (a no-op without autocast)
        with torch.autocast(device.type, torch.bfloat16, enabled=options.precision.autocast), cache_weight_casts():
            yield
    finally:
        wrapper.diffusion_model = unet
        if options.attention_slice:
            set_attention_slice(unet, None)


def compiled(owner: Any, module: torch.nn.Module) -> Any:
    """``torch.compile(module, dynamic=False)`` (a graph per input size), kept on ``owner`` (the pipeline's model,
    or the module itself) so that later runs reuse the compiled code."""
    cache = owner.__dict__.setdefault("_ldm_compiled", {})
    if id(module) not in cache:
        cache[id(module)] = torch.compile(module, dynamic=False)
    return cache[id(module)]
