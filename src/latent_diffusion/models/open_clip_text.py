"""OpenCLIP text tower (SD 2.x conditioning: ViT-H-14 text, width 1024, 24 layers, 16 heads, GELU) in plain torch.

Attribute names reproduce OpenCLIP's ``CLIP`` text half, so SD 2.x files' ``cond_stage_model.model.*`` keys
load with ``strict=True``: ``token_embedding.weight``, ``positional_embedding``,
``transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}``, ``ln_final``, ``text_projection`` and ``logit_scale``. The causal mask is not a buffer (SDPA's
``is_causal=True`` builds it), so it never appears in the state dict — as in OpenCLIP, where it is
non-persistent.

SD 2.x's ``FrozenOpenCLIPEmbedder(layer="penultimate")`` runs every resblock but the last, then ``ln_final``
(``forward(tokens, "penultimate")``), giving ``(B, 77, 1024)``; ``text_projection`` is unused there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, LDMError
from .clip_text import ACTIVATIONS, LAYERS, activation


class OpenCLIPAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameter layout (packed q/k/v ``in_proj``), causal, batch-first, via SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, L, D)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3D)
        qkv = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, L, D/H)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)  # (B, H, L, D/H)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class OpenCLIPMLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {act!r}; accepted: {list(ACTIVATIONS)}")
        self.act = act
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(activation(self.act, self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x)) (OpenCLIP's ``ls_1``/``ls_2`` are identities here)."""

    def __init__(self, width: int, heads: int, hidden: int, act: str) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = OpenCLIPAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = OpenCLIPMLP(width, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class OpenCLIPTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, hidden: int, act: str) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, hidden, act) for _ in range(layers))


class OpenCLIPTextModel(nn.Module):
    """OpenCLIP text tower. ``forward(tokens, layer)`` -> ``(B, L, width)`` after ``ln_final``.

    ``layer="last"`` runs all resblocks; ``layer="penultimate"`` (SD 2.x) all but the last. Tokens are
    OpenCLIP's: start 49406, end 49407, padded with 0 (``clip_tokenize(..., pad_with_zero=True)``).
    """

    def __init__(self, *, vocab_size: int = 49408, max_length: int = 77, width: int = 1024, layers: int = 24,
                 heads: int = 16, mlp_ratio: float = 4.0, output_dim: int = 1024, act: str = "gelu") -> None:
        super().__init__()
        if layers < 1:
            raise ConfigError(f"layers must be >= 1, got {layers}")
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(max_length, width))  # (L, D)
        self.transformer = OpenCLIPTransformer(width, layers, heads, int(width * mlp_ratio), act)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))  # (D, E)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # () scalar; unused for conditioning
        self.reset_parameters()

    @property
    def width(self) -> int:
        return self.ln_final.normalized_shape[0]

    def reset_parameters(self) -> None:
        """OpenCLIP's random init (std 0.02 tokens, 0.01 positions, width^-0.5 projection)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.width**-0.5)

    def forward(self, tokens: torch.Tensor, layer: str = "last") -> torch.Tensor:
        if layer not in LAYERS:
            raise ConfigError(f"unknown layer {layer!r}; accepted: {list(LAYERS)}")
        n = tokens.shape[1]  # tokens: (B, L) int64
        if n > self.max_length:
            raise LDMError(f"got {n} tokens; this encoder takes at most {self.max_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]  # (B, L, D)
        blocks = self.transformer.resblocks
        for block in blocks[: len(blocks) - (1 if layer == "penultimate" else 0)]:
            x = block(x)
        return self.ln_final(x)  # (B, L, D)

    def encode_pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP's text embedding ``(B, output_dim)``: last layer at the end token (the highest id), projected."""
        x = self.forward(tokens, "last")  # (B, L, D)
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # (B, D)
        return eot @ self.text_projection  # (B, E)
