"""Sampling fast paths a ``Pipeline`` applies around its denoising loop: precision (bf16 autocast), DeepCache-style
feature reuse, attention slicing and ``torch.compile``. Measured in ``ldm bench fastpaths`` (docs/performance.md).

Precision: "fp32" runs as loaded; "bf16" runs the UNet under ``torch.autocast(device, torch.bfloat16)`` (the text
encoder and the VAE stay in the weights' dtype); "auto" is bf16 on a CPU with native bf16 GEMMs (AVX-512 BF16 or
AMX) when the weights are fp32, and on CUDA devices that support bf16, else fp32. fp16 is never chosen on a CPU: it
has no fast CPU kernels and overflows where bf16 does not.

Under bf16 autocast every GEMM op (linear, conv, matmul) casts its fp32 weight to bf16 and nothing else reads it, so
the UNet's Linear / Conv weights can as well be *stored* in bf16 (``models.gemm_storage``): the outputs are
bit-identical (the same round-to-nearest cast, done once) and the weights take half the memory, with no cast
copies held during sampling — for SD 1.x 3.2 GiB of fp32 UNet weights plus up to 1.6 GiB of bf16 copies become
1.6 GiB. Norms and embeddings stay fp32 (autocast runs them in fp32). A ``Pipeline`` does this only to weights it
loaded itself (``from_checkpoint``), and can read them back from the file (see ``Pipeline.set_fast_paths``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16 in /proc/cpuinfo (False where unreadable)."""
    from ..bench.common import native_bf16

    return native_bf16("cpu")


def resolve_precision(precision: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """"auto" | "fp32" | "bf16" → the precision to run: "fp32" or "bf16"."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        return precision
    if dtype != torch.float32:  # weights already reduced (--dtype): autocast adds nothing
        return "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def warn_if_emulated(device: torch.device | str) -> None:
    """A warning that bf16 GEMMs (bf16 autocast or bf16 weights) run on a CPU without native bf16, where torch
    emulates them: several times slower than fp32 (~11 against 70–85 GFLOP/s on the UNet's shapes on an AVX2-only
    AMD EPYC). Attributed to the first caller outside this package."""
    if torch.device(device).type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("this CPU has no native bf16 (AVX-512 BF16 / AMX), so bf16 runs emulated and several times "
                      "slower than fp32 (it still halves the UNet's weight memory); for fp32 speed load with "
                      "precision='fp32' and fp32 weights ('auto' does so here)", stacklevel=_outside_stacklevel())


def _outside_stacklevel() -> int:
    """``warnings.warn``'s stacklevel for the first frame outside the latent_diffusion package (as seen from the
    function that calls ``warnings.warn``)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(2), 2  # the caller of the function that warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


@dataclass
class FastPaths:
    """``precision``: resolved "fp32" / "bf16"; ``deepcache``: reuse interval (None or 1 = off) and ``deepcache_branch``;
    ``attention_slice``: queries per attention call (None = all); ``compile``: ``torch.compile`` the UNet."""

    precision: str = "fp32"
    deepcache: int | None = None
    deepcache_branch: int = 0
    attention_slice: int | None = None
    compile: bool = False


@contextlib.contextmanager
def sampling_context(model: Any, fast: FastPaths, device: torch.device) -> Iterator[None]:
    """Around one sampling run: autocast, and the UNet swapped for its DeepCache / compiled form, restored after."""
    from ..models.attention import set_attention_slice
    from ..models.conv import cache_weight_casts
    from ..models.deepcache import DeepCacheUNet

    wrapper = model.model  # DiffusionWrapper: calls self.diffusion_model(x, t, context=..., y=...)
    unet = wrapper.diffusion_model
    runner = unet
    if fast.deepcache and fast.deepcache > 1:
        if fast.compile:
            raise ConfigError("compile and deepcache cannot be combined (DeepCache calls parts of the UNet); pick one")
        runner = DeepCacheUNet(unet, fast.deepcache, fast.deepcache_branch)
    elif fast.compile:
        runner = compiled(model, unet)
    if fast.attention_slice:
        set_attention_slice(unet, fast.attention_slice)
    wrapper.diffusion_model = runner
    try:
        # autocast casts each weight its ops take once per run; cache_weight_casts does so for the GEMM-lowered
        # convs (a no-op without autocast)
        with torch.autocast(device.type, torch.bfloat16, enabled=fast.precision == "bf16"), cache_weight_casts():
            yield
    finally:
        wrapper.diffusion_model = unet
        if fast.attention_slice:
            set_attention_slice(unet, None)


def compiled(owner: Any, module: torch.nn.Module) -> Any:
    """``torch.compile(module, dynamic=False)`` (a graph per input size), kept on ``owner`` (the pipeline's model,
    or the module itself) so that later runs reuse the compiled code."""
    cache = owner.__dict__.setdefault("_ldm_compiled", {})
    if id(module) not in cache:
        cache[id(module)] = torch.compile(module, dynamic=False)
    return cache[id(module)]
