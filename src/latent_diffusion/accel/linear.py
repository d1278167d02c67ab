"""fp32 Linear layers on oneDNN for CPU inference, with GELU optionally fused into the GEMM.

torch's fp32 ``F.linear`` on CPU calls MKL; oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``) is faster on
the UNet's token GEMMs on AVX-512 CPUs and slower on AVX2-only ones, so it is the default only where
``cpu.prefers_onednn`` says so (``PREFERRED``), and only while ``torch.backends.mkldnn.enabled``. It can also apply
GELU as the GEMM writes its output (a "post-op"), saving a pass over the GEGLU gate.

The op has no autograd formula, so it is taken only when no gradient is wanted (sampling, evaluation); training,
bf16 autocast (where torch calls oneDNN itself) and other devices use ``F.linear``, as do dual tensors
(forward-mode AD, which nothing here uses). ``onednn_linear(False)`` / ``(True)`` turns the path off / on in the
calling thread, e.g. to compare against the plain path.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..models.attention import GEGLU
from .cpu import ONEDNN_LINEAR_AVAILABLE, prefers_onednn

AVAILABLE = ONEDNN_LINEAR_AVAILABLE
PREFERRED = AVAILABLE and prefers_onednn()
_local = threading.local()  # .enabled: this thread's onednn_linear setting (PREFERRED when unset)


@contextlib.contextmanager
def onednn_linear(enabled: bool) -> Iterator[None]:
    """Within the block, the oneDNN path is taken (where it applies) or not, in this thread; restores the previous
    setting."""
    previous = getattr(_local, "enabled", None)
    _local.enabled = bool(enabled)
    try:
        yield
    finally:
        if previous is None:
            del _local.enabled
        else:
            _local.enabled = previous


def _takes_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if not (AVAILABLE and getattr(_local, "enabled", PREFERRED) and torch.backends.mkldnn.enabled):
        return False
    if x.device.type != "cpu" or x.dim() < 2:
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    wants_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    return not (torch.is_grad_enabled() and wants_grad)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then exact (erf) GELU if ``gelu``. x: (..., in) -> (..., out)."""
    if _takes_onednn(x, weight, bias):
        attr, algorithm = ("gelu", "none") if gelu else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) on oneDNN for fp32 CPU inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class OneDNNGEGLU(GEGLU):
    """``GEGLU`` whose two half-width GEMMs go through ``linear``: the gate's with GELU fused on oneDNN."""

    @staticmethod
    def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
        return linear(x, weight, bias, gelu=gelu)
