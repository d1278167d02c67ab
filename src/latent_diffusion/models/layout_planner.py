"""A learned caption → layout planner: the first half of a grounded text-to-image pipeline (caption → boxes →
layout-to-image model; LMD, Lian et al. 2023; LayoutGPT, Feng et al. 2023, where a large language model plans).

A small decoder-only transformer reads the caption (word tokens, ``WordTokenizer``) as a prefix and writes the layout
as tokens, as the CompVis / taming layout builders order them: per object ``class, x0, y0, x1, y1`` (coordinates
quantised to ``bins`` levels), then ``[EOS]``. Sampling is autoregressive with the grammar enforced by masking
(a class or [EOS] where an object may start, a coordinate elsewhere, x1 > x0 and y1 > y0), so every sample is a
valid layout; different generators give different layouts for one caption.

Token ids: the caption vocabulary (specials + words), then ``n_classes`` class tokens, ``bins`` coordinate tokens and
``[EOS]``. Sequence: ``max_words`` caption ids (``[CLS] words [SEP] [PAD]...``) then ``5 · max_objects + 1`` layout
positions; attention is causal (the caption prefix sees itself causally, which costs nothing here), padding keys
masked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .text_encoder import PAD, WordTokenizer, quantise_boxes

PLANNER_METADATA_KEY = "layout_planner_config"


@dataclass
class PlannerConfig:
    words: tuple[str, ...] = ()  # caption vocabulary; () = the ShapesWorld words
    n_classes: int = 40  # ShapesWorld's shape x colour classes (data.shapes.NUM_CLASSES)
    max_objects: int = 3
    bins: int = 32
    max_words: int = 16
    width: int = 64
    layers: int = 3
    heads: int = 4

    def __post_init__(self) -> None:
        if not self.words:
            from .text_encoder import SHAPES_WORDS

            self.words = SHAPES_WORDS
        self.words = tuple(self.words)
        if self.width % self.heads:
            raise ConfigError(f"planner width {self.width} must be divisible by heads {self.heads}")
        if self.bins < 2 or self.max_objects < 1:
            raise ConfigError(f"planner needs bins >= 2 and max_objects >= 1, got {self.bins}, {self.max_objects}")


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, N, D); mask (B, 1, N, N) True = may attend
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, N, D / heads)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class LayoutPlanner(nn.Module):
    def __init__(self, cfg: PlannerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = WordTokenizer(cfg.words, cfg.max_words)
        self.class0 = self.tokenizer.vocab_size  # first class token id
        self.bin0 = self.class0 + cfg.n_classes  # first coordinate token id
        self.eos = self.bin0 + cfg.bins
        self.n_layout = 5 * cfg.max_objects + 1
        self.seq_len = cfg.max_words + self.n_layout
        self.tok = nn.Embedding(self.eos + 1, cfg.width)
        self.pos = nn.Embedding(self.seq_len, cfg.width)
        self.blocks = nn.ModuleList(_Block(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, self.eos + 1)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    # -- tokens ---------------------------------------------------------------------------------------------------
    def layout_tokens(self, layouts: torch.Tensor) -> torch.Tensor:
        """(B, K, 5) rows (class, x0, y0, x1, y1), class -1 = none → (B, n_layout) ids, [EOS] after the last object,
        then [PAD] (objects first: a padding row between objects is an error)."""
        cfg, b = self.cfg, layouts.shape[0]
        real = layouts[..., 0] >= 0  # (B, K)
        if layouts.shape[1] > cfg.max_objects and real[:, cfg.max_objects:].any():
            raise ConfigError(f"the planner writes at most {cfg.max_objects} objects")
        if (real[:, 1:] & ~real[:, :-1]).any():
            raise ConfigError("layout rows must list the objects first, padding rows (class -1) after them")
        out = torch.full((b, self.n_layout), PAD, dtype=torch.int64)
        coords = quantise_boxes(layouts[..., 1:], cfg.bins) + self.bin0  # (B, K, 4)
        cls = layouts[..., 0].long() + self.class0
        for i in range(b):
            k = int(real[i].sum())
            rows = torch.cat([cls[i, :k, None], coords[i, :k]], dim=1).flatten()  # (5k,)
            out[i, : 5 * k] = rows
            out[i, 5 * k] = self.eos
        return out

    def tokens_to_layout(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n_layout) ids → (B, max_objects, 5) float rows, class -1 after [EOS]."""
        cfg, b = self.cfg, tokens.shape[0]
        out = torch.zeros(b, cfg.max_objects, 5)
        out[..., 0] = -1
        for i in range(b):
            for j in range(cfg.max_objects):
                row = tokens[i, 5 * j: 5 * j + 5]
                if int(row[0]) == self.eos or int(row[0]) == PAD:
                    break
                out[i, j, 0] = float(row[0] - self.class0)
                out[i, j, 1:] = (row[1:] - self.bin0).float() / (cfg.bins - 1)
        return out

    # -- network --------------------------------------------------------------------------------------------------
    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, N) ids (N <= seq_len) → (B, N, vocab) next-token logits."""
        b, n = seq.shape
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
        keys = seq != PAD
        keys[:, 0] = True  # [CLS] always: no query row is left without a key
        mask = (causal[None] & keys[:, None, :])[:, None]  # (B, 1, N, N)
        x = self.tok(seq) + self.pos(torch.arange(n, device=seq.device))
        for blk in self.blocks:
            x = blk(x, mask)
        return self.head(self.norm(x))

    def loss(self, captions: list[str], layouts: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the layout tokens given the caption (teacher forcing); [PAD] after [EOS] is not scored."""
        device = self.head.weight.device
        prefix = self.tokenizer(captions).to(device)  # (B, W)
        target = self.layout_tokens(layouts.cpu()).to(device)  # (B, L)
        logits = self(torch.cat([prefix, target[:, :-1]], dim=1))[:, self.cfg.max_words - 1:]  # (B, L, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.flatten(), ignore_index=PAD)

    def _allowed(self, k: int, prev: torch.Tensor) -> torch.Tensor:
        """(B, V) bool: tokens the grammar allows at layout position ``k`` given the tokens ``prev`` (B, k)."""
        cfg, b = self.cfg, prev.shape[0]
        allowed = torch.zeros(b, self.eos + 1, dtype=torch.bool)
        slot = k % 5
        if slot == 0:
            if k < 5 * cfg.max_objects:
                allowed[:, self.class0: self.bin0] = True
            if k >= 5:
                allowed[:, self.eos] = True
            return allowed
        bins = torch.arange(cfg.bins)
        if slot <= 2:  # x0, y0: not the last level, so that x1 > x0 stays possible
            allowed[:, self.bin0: self.eos] = bins[None] < cfg.bins - 1
        else:  # x1 > x0, y1 > y0
            lo = prev[:, k - 2] - self.bin0  # (B,)
            allowed[:, self.bin0: self.eos] = bins[None] > lo[:, None]
        return allowed

    @torch.no_grad()
    def sample(self, captions: list[str], *, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Captions → (B, max_objects, 5) layouts, one per caption, drawn with ``generator`` (CPU)."""
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        device = self.head.weight.device
        seq = self.tokenizer(captions).to(device)  # (B, W)
        b = seq.shape[0]
        out = torch.full((b, self.n_layout), PAD, dtype=torch.int64)
        done = torch.zeros(b, dtype=torch.bool)
        for k in range(self.n_layout):
            logits = self(seq)[:, -1].float().cpu() / temperature  # (B, V)
            logits = logits.masked_fill(~self._allowed(k, out[:, :k]), float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
            out[:, k] = nxt
            done |= nxt == self.eos
            if bool(done.all()):
                break
            seq = torch.cat([seq, nxt[:, None].to(device)], dim=1)
        return self.tokens_to_layout(out)

    # -- files ----------------------------------------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> None:  # noqa: ANN001
        from ..safe_load import save_safetensors_atomic

        meta = {PLANNER_METADATA_KEY: json.dumps(asdict(self.cfg))}
        save_safetensors_atomic({k: v.contiguous() for k, v in self.state_dict().items()}, path, metadata=meta,
                                overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "LayoutPlanner":  # noqa: ANN001
        from ..safe_load import read_state_dict

        sd, meta = read_state_dict(path)
        if PLANNER_METADATA_KEY not in meta:
            raise ConfigError(f"{path} is not a layout planner written by LayoutPlanner.save (no "
                              f"{PLANNER_METADATA_KEY} metadata)")
        model = cls(PlannerConfig(**json.loads(meta[PLANNER_METADATA_KEY])))
        model.load_state_dict(sd, strict=True)
        return model.eval()
