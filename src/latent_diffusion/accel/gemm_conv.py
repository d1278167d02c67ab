"""Small convolutions lowered to one GEMM on CPU, with a cast cache for sampling under autocast.

oneDNN's direct convolution is efficient on large feature maps but not on the UNet's deepest levels. Lowered to a
GEMM — the k×k neighbourhoods of an NHWC map side by side, (B·H·W, k·k·C), times the channels_last weight viewed
as (O, k·k·C), both views free — such a conv runs at several times the rate. The lowering is taken for input maps
of at most ``GEMM_MAX_PIXELS`` pixels (1×1, 3×3 and strided convs alike), on CPU, for NHWC input; everything else
is ``nn.Conv2d``'s own path. The numbers are in docs/performance.md ("Fast paths").
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .linear import linear

GEMM_MAX_PIXELS = 16 * 16  # input pixels per image; measured: GEMM faster at ≤ 16×16, oneDNN at ≥ 32×32

_local = threading.local()  # .casts: id(weight) -> (weight, version, data_ptr, dtype, cast); unset outside the block


@contextlib.contextmanager
def cache_weight_casts() -> Iterator[None]:
    """Within the block (in this thread), a GEMM-lowered conv under autocast casts its weight to the autocast dtype
    once and reuses the copy, as autocast's own cache does for the weights its ops take directly: the lowered conv
    hands the GEMM an (O, k·k·C) view of the weight, which autocast does not cache, so a sampling loop would re-cast
    every conv weight at every step. The copies are dropped when the outermost block ends. A parameter changed in
    place through autograd-visible ops (its version counter moves) or given new storage is cast again; writes
    through ``.data`` are not seen, so do not edit weights that way inside the block. Meant for sampling (no
    gradients): where a weight wants a gradient, is not a leaf, or is an inference tensor, nothing is cached; nor
    under ``torch.compile``."""
    outermost = getattr(_local, "casts", None) is None
    if outermost:
        _local.casts = {}
    try:
        yield
    finally:
        if outermost:
            _local.casts = None


def _gemm_weight(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """weight (O, C, k, k) -> (O, k·k·C) in ``dtype`` (None: as it is; a free view of a channels_last weight)."""
    o = weight.shape[0]
    w2 = weight.permute(0, 2, 3, 1).reshape(o, -1)
    if dtype is None or dtype == weight.dtype:
        return w2
    cache = getattr(_local, "casts", None)
    if (cache is None or torch.compiler.is_compiling() or not weight.is_leaf or weight.is_inference()
            or (torch.is_grad_enabled() and weight.requires_grad)):
        return w2.to(dtype)
    key = (weight, weight._version, weight.data_ptr(), dtype)
    hit = cache.get(id(weight))
    if hit is not None and hit[0] is weight and hit[1:4] == key[1:]:
        return hit[4]
    cast = w2.to(dtype)
    cache[id(weight)] = (*key, cast)
    return cast


def conv2d_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                   padding: int) -> torch.Tensor:
    """x: (B, C, H, W) in channels_last memory; weight: (O, C, k, k) -> (B, O, H', W'), channels_last memory."""
    b, c, h, w = x.shape
    o, _, k, _ = weight.shape
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
    if dtype is not None:  # build the patches in the GEMM's dtype, not in fp32
        x = x.to(dtype)
    nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, C), a view of channels_last memory
    h_out, w_out = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    if k == 1 and padding == 0:
        patches = nhwc[:, ::stride, ::stride]
    else:
        padded = F.pad(nhwc, (0, 0, padding, padding, padding, padding))  # (B, H+2p, W+2p, C)
        patches = torch.cat([padded[:, i:i + stride * (h_out - 1) + 1:stride, j:j + stride * (w_out - 1) + 1:stride]
                             for i in range(k) for j in range(k)], dim=-1)  # (B, H', W', k·k·C), (i, j, c) order
    w2 = _gemm_weight(weight, dtype)  # (O, k·k·C) in the (i, j, c) order of the patches
    out = linear(patches.reshape(-1, k * k * c), w2, bias)  # (B·H'·W', O); oneDNN where linear.PREFERRED
    return out.view(b, h_out, w_out, o).permute(0, 3, 1, 2)  # (B, O, H', W'), channels_last memory


class GemmConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) with the GEMM lowering for small NHWC maps on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._lower_to_gemm(x):
            return conv2d_as_gemm(x, self.weight, self.bias, self.stride[0], self.padding[0])
        return super().forward(x)

    def _lower_to_gemm(self, x: torch.Tensor) -> bool:
        if x.device.type != "cpu" or x.ndim != 4 or not x.is_contiguous(memory_format=torch.channels_last):
            return False
        if self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        k, s, p = self.kernel_size, self.stride, self.padding
        if k[0] != k[1] or s[0] != s[1] or p[0] != p[1]:
            return False
        return x.shape[-2] * x.shape[-1] <= GEMM_MAX_PIXELS
