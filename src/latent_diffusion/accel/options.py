"""``accelerate(model, options)``: the CPU / GPU fast paths applied to a built model, in place.

The models (models/) are plain torch layers with the CompVis keys. ``accelerate`` swaps the classes of the layers
it speeds up for subclasses that override ``forward`` only — the way ``torch.nn.utils.parametrize`` swaps a
module's class — so every Parameter, buffer, hook and state-dict key stays where it was, and strict loading of
CompVis / SD files is unaffected. Each swap is undone by ``accelerate`` with that option off. What a swapped layer
does differs from the plain one only in inference on CPU (no gradient wanted, NHWC input); training runs the plain
path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..models.attention import GEGLU, SpatialTransformer
from ..models.unet import UNetModel
from .gemm_conv import GemmConv2d
from .gemm_storage import store_gemm_weights
from .linear import OneDNNGEGLU, OneDNNLinear
from .memory_format import WRAPPERS
from .precision import Precision
from .tiling import Tiling, set_vae_tiling


def _positive_or_none(name: str, value: object, meaning: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be {meaning} or None, got {value!r}")


@dataclass(frozen=True)
class AccelOptions:
    """Model fast paths (``accelerate``): ``gemm_convs``: the UNet's convs on small NHWC maps as one GEMM
    (gemm_conv.py); ``onednn_linear``: the UNet's transformer Linears (the token GEMMs) on oneDNN where this CPU
    prefers it (linear.py); ``channels_last``: UNet, encoder and decoder in NHWC for CPU inference
    (memory_format.py); ``vae_tiling``: tile the KL autoencoder (tiling.py; None: off); ``precision.stored_bf16``:
    the UNet's GEMM weights in bf16 (gemm_storage.py).

    Sampling fast paths (``sampling.sampling_context``): ``precision``: bf16 autocast; ``deepcache``: reuse the
    UNet's deep features on ``deepcache - 1`` of every ``deepcache`` calls (None or 1: off) at ``deepcache_branch``
    (deepcache.py); ``attention_slice``: queries per attention call (None: all); ``compile``: ``torch.compile``."""

    precision: Precision = field(default_factory=Precision)
    gemm_convs: bool = True
    onednn_linear: bool = True
    channels_last: bool = True
    vae_tiling: Tiling | None = None
    deepcache: int | None = None
    deepcache_branch: int = 0
    attention_slice: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.precision, Precision):
            raise ConfigError(f"precision must be a resolved Precision (Precision.resolve), got {self.precision!r}")
        _positive_or_none("deepcache", self.deepcache, "an integer >= 1 (the reuse interval; 1 = off)")
        _positive_or_none("attention_slice", self.attention_slice, "a positive integer")
        if self.vae_tiling is not None and not isinstance(self.vae_tiling, Tiling):
            raise ConfigError(f"vae_tiling must be a Tiling(tile, overlap) or None, got {self.vae_tiling!r}")
        if self.compile and self.deepcache and self.deepcache > 1:
            raise ConfigError("compile and deepcache cannot be combined (DeepCache calls parts of the UNet); pick one")

    @classmethod
    def with_model_paths(cls, precision: Precision, *, vae_tiling: bool | Tiling | None = None,
                         **sampling: object) -> AccelOptions:
        """Every model fast path on, with ``precision``, ``vae_tiling`` (True: the default ``Tiling()``) and the
        sampling options (``deepcache``, ``deepcache_branch``, ``attention_slice``, ``compile``)."""
        tiling = Tiling() if vae_tiling is True else (vae_tiling or None)
        return cls(precision, vae_tiling=tiling, **sampling)

    @classmethod
    def plain(cls) -> AccelOptions:
        """Every model fast path off: ``accelerate(model, AccelOptions.plain())`` gives the plain layers back."""
        return cls(gemm_convs=False, onednn_linear=False, channels_last=False)


def _swap(root: nn.Module, plain: type[nn.Module], fast: type[nn.Module], on: bool) -> None:
    """Every module of exactly class ``plain`` under ``root`` becomes a ``fast`` (a subclass), or back when not
    ``on``. Subclasses of ``plain`` that are not ``fast`` (a LoRA layer, say) are left alone."""
    for m in root.modules():
        if on and type(m) is plain:
            m.__class__ = fast
        elif not on and type(m) is fast:
            m.__class__ = plain


def accelerate(model: nn.Module, options: AccelOptions | None = None) -> nn.Module:
    """Apply ``options``' model fast paths (default: all on) to ``model`` — a LatentDiffusion, a UNet, an
    autoencoder, or anything holding them — in place, and return it. The layers covered are those whose fast path
    measured faster: every conv of the UNet, the Linears inside its SpatialTransformers (not the timestep-embedding
    ones, whose GEMMs have a row per sample), the UNet, encoder and decoder for the memory format."""
    options = AccelOptions() if options is None else options
    for unet in [m for m in model.modules() if isinstance(m, UNetModel)]:
        _swap(unet, nn.Conv2d, GemmConv2d, options.gemm_convs)
        for block in [m for m in unet.modules() if isinstance(m, SpatialTransformer)]:
            _swap(block, nn.Linear, OneDNNLinear, options.onednn_linear)
            _swap(block, GEGLU, OneDNNGEGLU, options.onednn_linear)
        if options.precision.stored_bf16:
            store_gemm_weights(unet, torch.bfloat16)
    for plain, fast in WRAPPERS.items():
        _swap(model, plain, fast, options.channels_last)
    if not set_vae_tiling(model, options.vae_tiling) and options.vae_tiling is not None:
        first_stage = getattr(model, "first_stage_model", None)
        raise ConfigError("VAE tiling needs a KL-autoencoder first stage; this model has "
                          f"{type(first_stage).__name__ if first_stage is not None else 'none'}")
    return model
