"""How a ``Pipeline``'s model runs: the precision and the ``accel`` fast paths, applied with ``accel.accelerate``;
bound as ``Pipeline.set_fast_paths`` and ``Pipeline.enable_vae_tiling``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..accel import AccelOptions, Precision, Tiling, accelerate
from . import precision_state

if TYPE_CHECKING:
    from .pipeline import Pipeline


def set_fast_paths(pipe: Pipeline, precision: str | Precision = "auto", *, deepcache: int | None = None,
                   deepcache_branch: int = 0, attention_slice: int | None = None, compile: bool = False,
                   vae_tiling: bool | Tiling | None = None) -> AccelOptions:
    """How the model runs (``accel``, docs/performance.md), applied with ``accel.accelerate``. ``precision``:
    "auto" (bf16 autocast for the UNet where the CPU / GPU has native bf16 and the weights are fp32, else fp32),
    "fp32", "bf16", or a ``Precision`` already resolved; ``deepcache``: reuse the UNet's deep features on
    ``deepcache - 1`` of every ``deepcache`` calls (None: off); ``attention_slice``: queries per attention call
    (None: all); ``compile``: ``torch.compile`` the UNet; ``vae_tiling``: True or a ``Tiling``: encode / decode
    large images in overlapping tiles (a KL first stage only). The GEMM-lowered convs, oneDNN Linears and
    channels_last are always on (each where it applies).

    ``from_checkpoint`` with a precision that resolves to bf16 stores the UNet's Linear / Conv weights in bf16
    (``accel/gemm_storage.py``): the same numbers as autocast, half the UNet's memory. Such a UNet runs bf16
    ("auto" keeps it so). "fp32" reads its fp32 weights back from the checkpoint file, after checking that the
    stored ones still match the file — weights changed in memory are never replaced: that, or a model not
    loaded by ``from_checkpoint``, is an error. Switching to bf16 later runs autocast over the fp32 weights."""
    pipe.requested_precision = precision if isinstance(precision, str) else precision.name
    device, dtype = pipe._device_dtype()
    unet = pipe.model.model.diffusion_model
    precision = precision_state.resolve_precision(precision, unet, device, dtype)
    options = AccelOptions.with_model_paths(precision, deepcache=deepcache, deepcache_branch=deepcache_branch,
                                            attention_slice=attention_slice, compile=compile, vae_tiling=vae_tiling)
    precision_state.switch_unet(unet, precision, pipe.fast, device, dtype, pipe.checkpoint_path, pipe._load_args)
    accelerate(pipe.model, options)
    pipe.fast = options
    return options

def enable_vae_tiling(pipe: Pipeline, tile: int = 32, overlap: int = 8) -> None:
    """Encode / decode images larger than ``tile`` latent pixels in overlapping, blended tiles (``accel.Tiling``):
    peak memory follows the tile, not the image. A KL first stage only (else an error)."""
    options = dataclasses.replace(pipe.fast, vae_tiling=Tiling(tile, overlap))
    accelerate(pipe.model, options)
    pipe.fast = options
