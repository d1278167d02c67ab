"""The paper's "BERT-like" conditioner trained from scratch (CompVis ``BERTEmbedder`` / ``TransformerEmbedder``).

Keys follow the x-transformers ``TransformerWrapper`` CompVis used, under ``cond_stage_model.transformer.``:
``token_emb.weight``, ``pos_emb.emb.weight``, ``attn_layers.layers.{2i}.{0: norm, 1: attention}``,
``attn_layers.layers.{2i+1}.{0: norm, 1: feed-forward net.0.0 / net.2}``, ``norm``, ``to_logits`` (kept for the key
layout; unused for embeddings). Attention: ``to_q`` / ``to_k`` / ``to_v`` without bias, ``to_out`` with bias.

Tokenizers (no downloads, no BPE table: the vocabulary is part of the config):

* ``WordTokenizer``: lower-cased words of a fixed list (default: every word ShapesWorld captions use);
  ids ``0 [PAD]``, ``1 [UNK]``, ``2 [CLS]``, ``3 [SEP]``, then the words in order.
* ``LayoutTokenizer``: a layout ``(class, x0, y0, x1, y1)`` per object → ``class`` token then the four box corners
  quantised to ``bins`` levels (CompVis' layout-to-image conditioning: a token sequence through a transformer).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD, UNK, CLS, SEP = range(4)


# The ShapesWorld word vocabulary: the default of a jointly trained word encoder (conditioner.words: ()) and the
# planner, for the embedded models whose configs predate recorded vocabularies. data/shapes.py builds its captions
# from the same words (a test keeps the two equal; models/ does not import data/).
SHAPES_WORDS: tuple[str, ...] = (
    "a", "an", "and", "red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "circle", "square",
    "triangle", "star", "cross", "above", "below", "left", "right", "of")


class WordTokenizer:
    def __init__(self, words: tuple[str, ...], max_length: int) -> None:
        if len(set(words)) != len(words):
            raise ConfigError("conditioner.words has duplicates")
        self.words = tuple(words)
        self.max_length = max_length
        self.ids = {w: i + len(SPECIALS) for i, w in enumerate(words)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.words)

    def split(self, text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in self.split(text) if w not in self.ids]

    def dropped_words(self, text: str) -> int:
        """How many words of ``text`` do not fit into ``max_length`` (with [CLS] and [SEP]) and are cut."""
        return max(0, len(self.split(text)) - (self.max_length - 2))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """``texts`` → (B, max_length) int64: [CLS] words... [SEP] [PAD]...; longer texts are cut."""
        out = torch.full((len(texts), self.max_length), PAD, dtype=torch.int64)
        for i, t in enumerate(texts):
            ids = [CLS] + [self.ids.get(w, UNK) for w in self.split(t)][: self.max_length - 2] + [SEP]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def quantise_boxes(boxes: torch.Tensor, bins: int) -> torch.Tensor:
    """Box coordinates in [0, 1] (clamped) → integer levels 0 .. bins - 1 (the layout token scheme)."""
    return (boxes.clamp(0, 1) * (bins - 1)).round().long()


class LayoutTokenizer:
    """(B, N, 5) rows ``(class, x0, y0, x1, y1)`` (class -1 = padding) → (B, max_length) int64 tokens."""

    def __init__(self, n_classes: int, bins: int, max_length: int) -> None:
        self.n_classes, self.bins, self.max_length = n_classes, bins, max_length

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + self.n_classes + self.bins

    def __call__(self, layout: torch.Tensor) -> torch.Tensor:
        b, n, _ = layout.shape
        cls = layout[..., 0].long()  # (B, N)
        coords = quantise_boxes(layout[..., 1:], self.bins)  # (B, N, 4)
        tok = torch.cat([(cls + len(SPECIALS))[..., None], coords + len(SPECIALS) + self.n_classes], dim=-1)
        tok = torch.where((cls >= 0)[..., None], tok, torch.full_like(tok, PAD))  # (B, N, 5)
        body = tok.reshape(b, n * 5)
        seq = torch.cat([torch.full((b, 1), CLS), body, torch.full((b, 1), SEP)], dim=1)
        out = torch.full((b, self.max_length), PAD, dtype=torch.int64)
        k = min(self.max_length, seq.shape[1])
        out[:, :k] = seq[:, :k]
        return out


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, N, D)
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d / heads)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float = 4.0) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, inner), nn.GELU()), nn.Dropout(0.0),
                                 nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Pre-norm transformer: ``layers`` alternate [norm, attention, (residual)] and [norm, feed-forward]."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim, heads)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim, mlp_ratio)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in self.layers:
            x = x + block(norm(x))
        return x


class AbsolutePositionalEmbedding(nn.Module):
    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(max_len, dim)

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        return self.emb(torch.arange(n, device=device))  # (N, D)


class TransformerWrapper(nn.Module):
    def __init__(self, num_tokens: int, max_seq_len: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"conditioner.width={dim} must be divisible by conditioner.heads={heads}")
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len)
        self.attn_layers = Encoder(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.emb.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, N) → (B, N, D); ``extra`` (B, N, D) is added to the token embeddings (layout boxes)."""
        x = self.token_emb(tokens) + self.pos_emb(tokens.shape[1], tokens.device)  # (B, N, D)
        if extra is not None:
            x = x + extra
        return self.norm(self.attn_layers(x))  # embeddings (return_embeddings=True in CompVis)


def box_fourier_features(boxes: torch.Tensor, n_freq: int) -> torch.Tensor:
    """(..., 4) boxes in [0, 1] → (..., 8·n_freq): [sin, cos](π·2^k·coordinate), k < n_freq, per coordinate."""
    omega = torch.pi * 2.0 ** torch.arange(n_freq, device=boxes.device, dtype=boxes.dtype)  # (F,)
    a = boxes[..., None] * omega  # (..., 4, F)
    return torch.cat([a.sin(), a.cos()], dim=-1).flatten(-2)


class FourierLayoutEmbedder(nn.Module):
    """Layout encoder with one token per object (GLIGEN's grounding tokens): the class token's embedding plus
    ``box_proj`` of the box's Fourier features, then the same transformer as ``TransformerEmbedder``.

    (B, N, 5) rows ``(class, x0, y0, x1, y1)`` (class -1 = no object) → (B, max_length, width); the sequence is
    ``[CLS] obj_1 .. obj_N [PAD].. [SEP]`` (``max_length - 2`` object slots, so the code does not depend on how many
    padding rows the caller sends), an absent object a [PAD] with no box term (the empty layout of condition dropout
    is all [PAD]).
    """

    N_FREQ = 6

    def __init__(self, n_classes: int, max_length: int, width: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if max_length < 3:
            raise ConfigError(f"a Fourier layout encoder needs max_length >= 3 ([CLS], one object, [SEP]), got "
                              f"{max_length}")
        self.n_classes, self.max_length, self.slots = n_classes, max_length, max_length - 2
        self.transformer = TransformerWrapper(len(SPECIALS) + n_classes, max_length, width, layers, heads, mlp_ratio)
        self.box_proj = nn.Linear(8 * self.N_FREQ, width)

    def encode(self, layout: torch.Tensor) -> torch.Tensor:
        device, dtype = self.box_proj.weight.device, self.box_proj.weight.dtype
        layout = layout.to(device, torch.float32)  # Fourier phases in float32 (bf16 would be ~0.2 rad off at 32π)
        b = layout.shape[0]
        valid = layout[..., 0] >= 0  # (B, N)
        order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # objects first, in their order
        layout = layout.gather(1, order[..., None].expand_as(layout))
        valid = valid.gather(1, order)
        k = int(valid.sum(1).max()) if valid.numel() else 0
        if k > self.slots:
            raise ConfigError(f"a layout of {k} objects needs max_length >= {k + 2}; this encoder has "
                              f"{self.max_length}")
        n = min(layout.shape[1], self.slots)  # padding rows beyond the slots carry nothing
        layout, valid = layout[:, :n], valid[:, :n]
        cls = layout[..., 0].long()  # (B, n)
        tok = torch.full((b, self.max_length), PAD, dtype=torch.int64, device=device)
        tok[:, 0], tok[:, -1] = CLS, SEP
        tok[:, 1:n + 1] = torch.where(valid, cls + len(SPECIALS), torch.full_like(cls, PAD))
        boxes = torch.where(valid[..., None], layout[..., 1:], 0.0).clamp(0, 1)  # padding rows: no NaN gets in
        feats = self.box_proj(box_fourier_features(boxes, self.N_FREQ).to(dtype))  # (B, n, D)
        extra = torch.zeros(b, self.max_length, feats.shape[-1], device=device, dtype=feats.dtype)
        extra[:, 1:n + 1] = torch.where(valid[..., None], feats, 0.0)
        return self.transformer(tok, extra)

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        return self.encode(layout)


class TransformerEmbedder(nn.Module):
    """Trainable text (or layout) encoder: tokens → (B, max_length, width) context for cross-attention."""

    def __init__(self, tokenizer: WordTokenizer | LayoutTokenizer, width: int, layers: int, heads: int,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.tknz_fn = tokenizer
        self.max_length = tokenizer.max_length
        self.transformer = TransformerWrapper(tokenizer.vocab_size, tokenizer.max_length, width, layers, heads,
                                              mlp_ratio)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens)

    def encode(self, c) -> torch.Tensor:  # noqa: ANN001 - list of captions, or a (B, N, 5) layout tensor
        """Captions (list[str]) or layouts (B, N, 5) → (B, max_length, width)."""
        tokens = self.tknz_fn(c)
        return self(tokens.to(self.transformer.token_emb.weight.device))

    def check_prompt(self, prompt: str) -> list[str]:
        """Words of ``prompt`` this encoder has never seen (they become [UNK])."""
        return self.tknz_fn.unknown_words(prompt) if isinstance(self.tknz_fn, WordTokenizer) else []

    def dropped_words(self, prompt: str) -> int:
        """Words at the end of ``prompt`` that do not fit into ``max_length`` tokens (they are cut)."""
        return self.tknz_fn.dropped_words(prompt) if isinstance(self.tknz_fn, WordTokenizer) else 0
