"""Attention layers of the LDM UNet, with CompVis key names.

``SpatialTransformer`` (proj_in → BasicTransformerBlock × depth → proj_out) carries self-attention, cross-attention
to the conditioning sequence and a GEGLU feed-forward; ``AttentionBlock`` is the older openaimodel self-attention
used by unconditional / class-conditional LDMs without ``use_spatial_transformer``. All attention goes through
``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import checkpointed, normalization


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _inference(x: torch.Tensor) -> bool:
    """True when ``x`` takes no part in autograd, so it may be overwritten in place."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def _add_residual(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``x + residual``, in place into ``x`` (a fresh block output) when nothing needs it for backward."""
    return x.add_(residual) if _inference(x) else x + residual


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)  # (B, heads, N, d)


def spatial_position_embedding(h: int, w: int, dim: int, *, device: torch.device | None = None,
                               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding of pixel centres, (H*W, dim), row-major like the tokens of a (H, W) map.

    Positions are in [0, 1] of the image, so every UNet level (16², 8², 4² ...) codes the same place the same way,
    and so do layout boxes given as fractions of the image. ``dim // 4`` angular frequencies per axis, geometric from
    π to 8π (half a cycle to four cycles across the image); channels ``[sin x, cos x, sin y, cos y]``.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    n = dim // 4
    omega = torch.pi * 2.0 ** (torch.arange(n, dtype=torch.float64) * (3.0 / max(n - 1, 1)))  # (n,)
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    ax = xs[:, None] * omega  # (W, n)
    ay = ys[:, None] * omega  # (H, n)
    ex = torch.cat([ax.sin(), ax.cos()], dim=1)[None].expand(h, w, 2 * n)  # (H, W, 2n)
    ey = torch.cat([ay.sin(), ay.cos()], dim=1)[:, None].expand(h, w, 2 * n)  # (H, W, 2n)
    return torch.cat([ex, ey], dim=-1).reshape(h * w, dim).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _cached_position_embedding(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One table per (size, width, device, dtype): built once, not on every attention call of every step."""
    return spatial_position_embedding(h, w, dim, device=device, dtype=dtype)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` (B, N, query_dim) over ``context`` (B, M, context_dim), or over itself."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.slice_size: int | None = None  # attention slicing: queries per SDPA call (set_attention_slice)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q = _heads_first(self.to_q(x), self.heads)
        k = _heads_first(self.to_k(context), self.heads)
        v = _heads_first(self.to_v(context), self.heads)
        if self.slice_size and q.shape[2] > self.slice_size:  # low memory: (N, M) scores one query chunk at a time
            out = torch.cat([F.scaled_dot_product_attention(qc, k, v) for qc in q.split(self.slice_size, dim=2)], 2)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def set_attention_slice(model: nn.Module, slice_size: int | None) -> int:
    """Attention slicing: every ``CrossAttention`` in ``model`` computes its scores ``slice_size`` queries at a time
    (None: all at once). Same result up to float rounding; bounds the (N, M) score memory of math-kernel SDPA.
    Returns the number of layers set."""
    if slice_size is not None and (isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1):
        raise ValueError(f"attention slice size must be a positive integer or None, got {slice_size!r}")
    layers = [m for m in model.modules() if isinstance(m, CrossAttention)]
    for m in layers:
        m.slice_size = slice_size
    return len(layers)


class GEGLU(nn.Module):
    """``x · GELU(gate)`` with x and gate from one projection (``proj``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two half-width GEMMs on row slices of ``proj`` (contiguous views) instead of one GEMM and a chunk:
        # the same FLOPs, but ``gate`` and ``value`` come out contiguous, so GELU and the product run on dense
        # memory (a chunk of the last dim is strided, which made GELU and mul twice as slow on CPU).
        w_value, w_gate = self.proj.weight.chunk(2, dim=0)
        b_value, b_gate = self.proj.bias.chunk(2, dim=0)
        gate = self._gemm(x, w_gate, b_gate, gelu=True)  # (..., dim_out)
        value = self._gemm(x, w_value, b_value)
        return gate.mul_(value) if _inference(gate) else value * gate

    @staticmethod
    def _gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
        """``F.linear``, then exact GELU if ``gelu`` (accel's oneDNN GEGLU fuses the two)."""
        out = F.linear(x, weight, bias)
        return F.gelu(out) if gelu else out


class FeedForward(nn.Module):
    """``net.0`` (GEGLU, or Linear+GELU) → dropout → ``net.2`` Linear."""

    def __init__(self, dim: int, mult: int = 4, glu: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        project_in = GEGLU(dim, inner) if glu else nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: self-attention (``attn1``), cross-attention (``attn2``), GEGLU feed-forward (``ff``)."""

    def __init__(self, dim: int, n_heads: int, d_head: int, dropout: float = 0.0, context_dim: int | None = None,
                 disable_self_attn: bool = False, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.use_checkpoint = use_checkpoint  # a plain attribute: no state-dict entry
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, n_heads, d_head, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return checkpointed(self, self._forward, x, context)

    def _forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        # x: (B, N, C), contiguous
        x = _add_residual(self.attn1(self.norm1(x), context if self.disable_self_attn else None), x)
        x = _add_residual(self.attn2(self.norm2(x), context), x)
        return _add_residual(self.ff(self.norm3(x)), x)


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map: (B, C, H, W) → (B, C, H, W), residual."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1, dropout: float = 0.0,
                 context_dim: int | None = None, disable_self_attn: bool = False, use_linear: bool = False,
                 pos_embed: bool = False, use_checkpoint: bool = False) -> None:
        super().__init__()
        inner = n_heads * d_head
        if pos_embed and inner % 4:
            raise ValueError(f"spatial_pos_embed needs a transformer width divisible by 4, got {inner}")
        self.use_linear, self.pos_embed = use_linear, pos_embed
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6)
        proj = nn.Linear if use_linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.proj_in = proj(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, dropout, context_dim, disable_self_attn, use_checkpoint)
            for _ in range(depth)
        )
        self.proj_out = proj(inner, in_channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        # (B, HW, C), made contiguous: a transposed view would make every LayerNorm output and Linear in the
        # blocks strided (LayerNorm keeps its input's strides), costing a copy per GEMM.
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            x = self.proj_in(x)
        if self.pos_embed:  # (HW, C), the same for every sample
            x = x + _cached_position_embedding(h, w, x.shape[-1], x.device, x.dtype)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        # The transposed view is channels_last; hand back the input's layout, else every later conv with
        # contiguous weights re-lays out its weights and activations on each call.
        x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous(memory_format=_memory_format(x_in))
        if not self.use_linear:
            x = self.proj_out(x)
        return _add_residual(x, x_in)


class AttentionBlock(nn.Module):
    """openaimodel self-attention over pixels: ``norm`` → 1×1 ``qkv`` → heads → ``proj_out``, residual.

    ``use_new_attention_order=False`` (the default in every released LDM) splits qkv per head first
    (QKVAttentionLegacy); True splits into q, k, v first (QKVAttention).
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint  # a plain attribute: no state-dict entry
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} not divisible by {self.num_heads} heads")
        self.new_order = use_new_attention_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return checkpointed(self, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # (B, 3C, L)
        heads, length = self.num_heads, qkv.shape[-1]
        if self.new_order:
            q, k, v = (t.reshape(b * heads, c // heads, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * heads, 3 * c // heads, length).chunk(3, dim=1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B·h, L, d)
        h = h.transpose(1, 2).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)
