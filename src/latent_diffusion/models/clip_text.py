"""OpenAI CLIP text transformer (SD 1.x conditioning) in plain torch, with HuggingFace transformers-4 key names.

Stable Diffusion 1.x files store the text encoder as ``cond_stage_model.transformer.text_model.*`` — the
state dict of a transformers-4 ``CLIPTextModel``. :class:`CLIPTextModel` reproduces those names exactly
(``text_model.embeddings.token_embedding.weight``, ``text_model.encoder.layers.N.self_attn.q_proj.weight``,
``text_model.final_layer_norm.weight``, ...), so such files load with ``strict=True`` and no renaming.

Numerics follow the HF / OpenAI model: pre-LayerNorm blocks (eps 1e-5), causal self-attention (SDPA with
``is_causal=True``; no padding mask, as SD never passed one), quick-GELU MLP for ViT-L/14 (``act="gelu"`` for
exact-erf GELU towers), learned absolute position embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, LDMError

ACTIVATIONS = ("quick_gelu", "gelu")
LAYERS = ("last", "penultimate")


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """``quick_gelu`` (OpenAI CLIP: x * sigmoid(1.702 x)) or exact ``gelu`` (OpenCLIP ViT-H)."""
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)
    raise ConfigError(f"unknown activation {name!r}; accepted: {list(ACTIVATIONS)}")


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with separate q/k/v projections (HF layout)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, L, D)

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, D/H)
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, D/H)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {act!r}; accepted: {list(ACTIVATIONS)}")
        self.act = act
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.act, self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN residual block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, width: int, heads: int, hidden: int, act: str, eps: float) -> None:
        super().__init__()
        self.self_attn = CLIPAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = CLIPMLP(width, hidden, act)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, hidden: int, act: str, eps: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(width, heads, hidden, act, eps) for _ in range(layers))


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, max_length: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_length, width)
        # older SD 1.x files carry this buffer; CLIPTextModel.set_position_ids_persistent decides if it is a key
        self.register_buffer("position_ids", torch.arange(max_length, device="cpu").unsqueeze(0), persistent=False)  # (1, 77)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]  # tokens: (B, L) int64
        return self.token_embedding(tokens) + self.position_embedding(self.position_ids[:, :n])  # (B, L, D)


class CLIPTextTransformer(nn.Module):
    """``text_model``: embeddings -> encoder layers -> final_layer_norm."""

    def __init__(self, vocab_size: int, max_length: int, width: int, layers: int, heads: int, hidden: int,
                 act: str, eps: float) -> None:
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(vocab_size, max_length, width)
        self.encoder = CLIPEncoder(layers, width, heads, hidden, act, eps)
        self.final_layer_norm = nn.LayerNorm(width, eps=eps)

    def forward(self, tokens: torch.Tensor, skip_last: int = 0) -> torch.Tensor:
        x = self.embeddings(tokens)  # (B, L, D)
        blocks = self.encoder.layers
        for block in blocks[: len(blocks) - skip_last]:
            x = block(x)
        return self.final_layer_norm(x)  # (B, L, D)


class CLIPTextModel(nn.Module):
    """OpenAI CLIP text encoder whose ``state_dict()`` keys are transformers-4's ``CLIPTextModel`` keys.

    ``forward(tokens, layer)`` returns ``(B, L, width)``:

    * ``layer="last"`` — the last hidden state after ``final_layer_norm`` (SD 1.x: CompVis
      ``FrozenCLIPEmbedder(layer="last")`` / HF ``last_hidden_state``).
    * ``layer="penultimate"`` — the output of all blocks but the last (HF ``hidden_states[-2]``), *then*
      ``final_layer_norm``. This is "CLIP skip 2" as diffusers (``clip_skip=1``) and AUTOMATIC1111 compute it.
      Note CompVis' SD-2 repo ``FrozenCLIPEmbedder(layer="penultimate")`` returned ``hidden_states[-2]``
      *without* the final LayerNorm; we follow the diffusers / A1111 convention that community SD1 models
      trained with CLIP skip expect.
    """

    def __init__(self, *, vocab_size: int = 49408, max_length: int = 77, width: int = 768, layers: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, act: str = "quick_gelu", eps: float = 1e-5) -> None:
        super().__init__()
        if layers < 1:
            raise ConfigError(f"layers must be >= 1, got {layers}")
        self.max_length = max_length
        self.text_model = CLIPTextTransformer(vocab_size, max_length, width, layers, heads,
                                              int(width * mlp_ratio), act, eps)
        self.reset_parameters()

    @property
    def width(self) -> int:
        return self.text_model.final_layer_norm.normalized_shape[0]

    def reset_parameters(self) -> None:
        """OpenAI/HF-style random init (std 0.02 embeddings, 0.01 positions); checkpoints overwrite it."""
        emb = self.text_model.embeddings
        nn.init.normal_(emb.token_embedding.weight, std=0.02)
        nn.init.normal_(emb.position_embedding.weight, std=0.01)

    def set_position_ids_persistent(self, flag: bool) -> None:
        """Make ``text_model.embeddings.position_ids`` a state-dict key (``True``) or not (``False``, default).

        Older SD 1.x checkpoints contain it; the loader flips it on so strict loading accepts such files.
        """
        emb = self.text_model.embeddings
        if flag:
            emb._non_persistent_buffers_set.discard("position_ids")
        else:
            emb._non_persistent_buffers_set.add("position_ids")

    def forward(self, tokens: torch.Tensor, layer: str = "last") -> torch.Tensor:
        if layer not in LAYERS:
            raise ConfigError(f"unknown layer {layer!r}; accepted: {list(LAYERS)}")
        if tokens.shape[1] > self.max_length:
            raise LDMError(f"got {tokens.shape[1]} tokens; this encoder takes at most {self.max_length}")
        return self.text_model(tokens, skip_last=1 if layer == "penultimate" else 0)  # (B, L, D)
