"""The UNet's precision, resolved once when a model is loaded: fp32, or bf16 autocast — with its Linear / Conv
weights stored in bf16 when the loader can (gemm_storage.py) — and "auto", which picks between them.

"auto" is bf16 on a CPU with native bf16 GEMMs (AVX-512 BF16 or AMX) when the weights are fp32, and on CUDA devices
that support bf16, else fp32. fp16 is never chosen on a CPU: it has no fast CPU kernels and overflows where bf16
does not. The text encoder and the VAE stay in the weights' dtype either way.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .cpu import native_bf16

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX-BF16 in /proc/cpuinfo (False where unreadable)."""
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


@dataclass(frozen=True)
class Precision:
    """``name``: "fp32" (the UNet runs in its weights' dtype) or "bf16" (under bf16 autocast); ``stored_bf16``: its
    Linear / Conv weights are held in bf16 — the same numbers as autocast over fp32 weights, half the memory."""

    name: str = "fp32"
    stored_bf16: bool = False

    def __post_init__(self) -> None:
        if self.name not in ("fp32", "bf16"):
            raise ConfigError(f"a resolved precision is 'fp32' or 'bf16', got {self.name!r}")
        if self.stored_bf16 and self.name != "bf16":
            raise ConfigError("bf16 weight storage runs under bf16 autocast only: it needs precision 'bf16'")

    @classmethod
    def resolve(cls, requested: str, device: torch.device | str, dtype: torch.dtype, *,
                store: bool = False) -> Precision:
        """``requested`` ("auto" / "fp32" / "bf16") for weights of ``dtype`` on ``device``; ``store``: the caller
        loads the weights and can store the UNet's GEMM weights in bf16 (only for fp32 weights)."""
        name = resolve_precision(requested, device, dtype)
        return cls(name, store and name == "bf16" and dtype == torch.float32)

    @property
    def autocast(self) -> bool:
        return self.name == "bf16"


def warn_if_emulated(device: torch.device | str) -> None:
    """A warning that bf16 GEMMs (bf16 autocast or bf16 weights) run on a CPU without native bf16, where torch
    emulates them several times slower than fp32. Attributed to the first caller outside this package."""
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
