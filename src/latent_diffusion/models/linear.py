"""``Linear`` that runs on oneDNN for fp32 inference on CPU (keys and numerics of ``nn.Linear``), optionally with
GELU fused into the GEMM.

torch's fp32 ``F.linear`` on CPU goes to MKL. On an AMD EPYC (Zen4) oneDNN's matmul
(``torch.ops.mkldnn._linear_pointwise``, the kernel Inductor emits for CPU linears) ran the SD UNet's GEMM shapes —
(8192, 320) → 1280, (2048, 640) → 2560, (512, 11520) → 1280, ... — 1.15–1.8× faster than MKL, at the rate oneDNN's
convolutions reach on that machine (``bench/linear_kernels.py`` prints the table for the machine at hand). The
Linear layers and the GEMM-lowered small convolutions are ~40 % of a 64² UNet call; this took our fp32 call from
0.99 to ≈ 0.80 of diffusers' time (docs/performance.md). Taken by default on x86-64 CPUs with AVX-512 only
(``PREFERRED``): on an AVX2-only AMD EPYC (Zen3-class) MKL was the faster one on every UNet shape (oneDNN at
0.76–0.98× its GFLOP/s, the fused GELU slower still) and 0–6 % faster per UNet call (four A/B medians); on Arm,
oneDNN without ACL can lose to the BLAS torch uses. Only while ``torch.backends.mkldnn.enabled``. oneDNN also
applies GELU as the GEMM writes its output (a "post-op"), which saves a pass over the (tokens, 4·C) GEGLU gate.

The op has no autograd formula, so it is taken only when no gradient is wanted (sampling, evaluation); training,
bf16 autocast (where torch already calls oneDNN) and other devices use ``F.linear``. Forward-mode AD (dual
tensors) is not covered either: nothing here uses it. ``onednn_linear(False)`` / ``(True)`` turns the path off /
on in the calling thread, e.g. to compare against the plain path.
"""

from __future__ import annotations

import contextlib
import platform
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

AVAILABLE = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
             and platform.machine().lower() in ("x86_64", "amd64"))


def prefers_onednn(capability: str | None = None) -> bool:
    """Whether oneDNN's fp32 matmul is the default over MKL's: on AVX-512 CPUs (``torch.backends.cpu``'s
    capability "AVX512", as on the EPYC Zen4 where it won; assumed, not measured, for AVX-512 Xeons), not on
    AVX2-only ones (where MKL won)."""
    cap = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    return cap.upper().startswith("AVX512")


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


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) on oneDNN for fp32 CPU inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
