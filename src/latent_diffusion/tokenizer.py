"""The CLIP BPE tokenizer, built offline from the bundled ``bpe_simple_vocab_16e6.txt.gz``.

Stable Diffusion 1.x (OpenAI CLIP ViT-L/14) and 2.x (OpenCLIP ViT-H/14) share one vocabulary of 49408 tokens and
a context of 77. They differ only in padding: SD1 used HuggingFace's ``CLIPTokenizer`` with
``padding="max_length"`` and pad token ``<|endoftext|>`` (49407); SD2 used ``open_clip.tokenize``, which pads
with 0 (``pad_with_zero=True`` here).

The vocabulary is derived exactly as OpenAI's ``simple_tokenizer.py`` does: the 256 byte-unicode characters,
the same with ``</w>``, one token per merge of ``merges[1 : 49152 - 256 - 2 + 1]``, then ``<|startoftext|>``
(49406) and ``<|endoftext|>`` (49407). The BPE itself runs in HuggingFace ``tokenizers`` (fast, Rust) through
``transformers.CLIPTokenizer(vocab=..., merges=...)``; transformers 5.x ignores ``vocab_file=``/``merges_file=``
keyword arguments, so the in-memory dict and merge list are passed instead.

Text cleaning follows OpenAI CLIP: ``ftfy.fix_text`` (when ``ftfy`` is installed), HTML un-escaping twice,
whitespace runs collapsed to one space, strip, lower-case. Without ``ftfy`` the text is only NFC-normalised
(by the tokenizer's normaliser), so mojibake, curly quotes, full-width letters and ligatures are not repaired
and can tokenize differently from the original models; install ``ftfy`` for exact parity.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from pathlib import Path

import torch

from .errors import LDMError

BPE_PATH = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
START_ID = 49406
END_ID = 49407
_N_MERGES = 49152 - 256 - 2  # 48894 merges: 256 bytes + 256 bytes</w> + merges + 2 specials = 49408

try:  # optional: repairs mojibake / curly quotes / full-width text exactly as OpenAI CLIP did
    import ftfy as _ftfy
except ImportError:  # pragma: no cover - depends on the environment
    _ftfy = None


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable unicode characters (OpenAI's order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def read_merges(path: str | Path = BPE_PATH) -> list[tuple[str, str]]:
    """The 48894 merge rules CLIP uses (line 0 is a version header; the file holds more than CLIP uses)."""
    path = Path(path)
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except OSError as e:
        raise LDMError(f"cannot read the CLIP BPE file {path}: {e}") from e
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
        raise LDMError(f"{path} is not a CLIP BPE merges file (expected {_N_MERGES} 'a b' lines after the header)")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """OpenAI's vocabulary order: bytes, bytes + ``</w>``, merged pairs, start token, end token."""
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
    return {t: i for i, t in enumerate(tokens)}


@lru_cache(maxsize=1)
def get_tokenizer():  # -> transformers.CLIPTokenizer
    """The cached ``transformers.CLIPTokenizer`` (fast backend) built from the bundled file; no network."""
    from transformers import CLIPTokenizer

    merges = read_merges()
    vocab = build_vocab(merges)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CONTEXT_LENGTH)
    checks = {
        "len(tokenizer)": (len(tok), VOCAB_SIZE),
        "model_max_length": (tok.model_max_length, CONTEXT_LENGTH),
        "bos_token_id": (tok.bos_token_id, START_ID),
        "eos_token_id": (tok.eos_token_id, END_ID),
    }
    bad = {k: v for k, v in checks.items() if v[0] != v[1]}
    if bad:  # a transformers change that silently dropped our vocab would show up here
        raise LDMError(f"CLIP tokenizer built from {BPE_PATH} is wrong: (got, expected) = {bad}")
    return tok


def clean_text(text: str) -> str:
    """OpenAI CLIP's ``basic_clean`` + ``whitespace_clean`` + lower-case."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()  # str.split() splits on all unicode whitespace, like re's \s+


def clip_tokenize(texts: list[str], *, max_length: int = CONTEXT_LENGTH, pad_with_zero: bool = False) -> torch.Tensor:
    """Token ids ``(B, max_length)`` int64: ``[49406, ..., 49407, pad, ...]``.

    Longer texts are truncated to ``max_length`` keeping the end token last. Padding is 49407 (SD1 / OpenAI
    CLIP through HuggingFace) or 0 (``pad_with_zero=True``: SD2 / ``open_clip.tokenize``).
    """
    if isinstance(texts, str):
        raise LDMError(f"clip_tokenize expects a list of strings, got the single string {texts!r}; wrap it in [...]")
    if max_length < 2:
        raise LDMError(f"max_length must be >= 2 (start + end token), got {max_length}")
    tok = get_tokenizer()
    ids = tok([clean_text(t) for t in texts], truncation=True, max_length=max_length)["input_ids"]
    out = torch.full((len(ids), max_length), 0 if pad_with_zero else END_ID, dtype=torch.long)  # (B, L)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
