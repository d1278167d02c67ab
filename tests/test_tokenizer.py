"""CLIP tokenizer parity against an independent oracle: OpenAI's ``simple_tokenizer.py`` BPE, re-implemented here.

The oracle reads the same bundled merges file but shares no code with ``latent_diffusion.tokenizer`` (it
rebuilds the byte map, vocabulary, regex split and greedy BPE in pure Python). Ids must match exactly.
"""

from __future__ import annotations

import gzip
import html
import importlib.util

import pytest
import torch

from latent_diffusion.tokenizer import BPE_PATH, clip_tokenize, get_tokenizer

regex = pytest.importorskip("regex")  # OpenAI's pattern needs \p{L} / \p{N}
HAS_FTFY = importlib.util.find_spec("ftfy") is not None


class OpenAISimpleTokenizer:
    """Faithful copy of the algorithm in openai/CLIP ``clip/simple_tokenizer.py`` + ``clip.tokenize``."""

    def __init__(self, bpe_path=BPE_PATH):
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        bs += list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(2**8):
            if b not in bs:
                bs.append(b)
                cs.append(2**8 + n)
                n += 1
        self.byte_encoder = dict(zip(bs, [chr(c) for c in cs]))
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    @staticmethod
    def clean(text: str) -> str:
        if HAS_FTFY:
            import ftfy

            text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text)).strip()
        return regex.sub(r"\s+", " ", text).strip().lower()

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = {(a, b) for a, b in zip(word, word[1:])}
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = {(a, b) for a, b in zip(word, word[1:])}
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids = []
        for token in regex.findall(self.pat, self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def tokenize(self, texts: list[str], context_length: int = 77, pad: int = 0) -> torch.Tensor:
        result = torch.full((len(texts), context_length), pad, dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = [49406] + self.encode(text) + [49407]
            if len(tokens) > context_length:
                tokens = tokens[:context_length]
                tokens[-1] = 49407
            result[i, : len(tokens)] = torch.tensor(tokens)
        return result


PROMPTS = [
    "a photo of a cat",
    "A Photograph Of An ASTRONAUT riding a horse, trending on ArtStation, 4k, highly detailed!!!",
    "",
    "   ",
    "multiple    spaces\tand\ttabs\nand\nnewlines   ",
    "numbers 1234567890 and 3.14159 and -42 and 1e-5",
    "punctuation: !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "it's a dog's life, we're sure they'll say I'd've",
    "'''quoted''' \"double\" (parens) [brackets] {braces}",
    "café naïve résumé façade Ærøskøbing straße",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Москва — столица России",
    "emoji 🐱🚀🔥 👩‍👩‍👧 ❤️ flags 🇯🇵",
    "math ∑∫√∞ ≈ ≠ ± × ÷ and arrows → ← ↑",
    "html &amp; entities &lt;b&gt; &amp;amp; double",
    "non\u00a0breaking\u3000ideographic space",
    "hyphenated-words_and_underscores/and/slashes\\back",
    "(masterpiece:1.2), [[best quality]], {ultra detailed}, <lora:foo:0.8>",
    "UPPER lower MiXeD CaSe",
    "zero-width\u200bjoiner\u200dand\u00adsoft hyphen",
    "greek αβγδε and arabic مرحبا and hebrew שלום",
    " ".join(f"word{i}" for i in range(100)),  # far beyond 77 tokens
    "a " * 80,  # exactly-repeated single-token words beyond 77
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic",
    "literal specials <|endoftext|> inside <|startoftext|> text",
]

# ftfy repairs these before BPE (curly quotes, full-width, ligatures, mojibake): compared only when ftfy exists
FTFY_PROMPTS = [
    "don’t “curly” quotes",
    "ＦＵＬＬ ＷＩＤＴＨ ｔｅｘｔ １２３",
    "ligatures ﬁne ﬂow",
    "mojibake cafÃ© donâ€™t",
    "control\x0bchars\x1cand İstanbul ǅ ß ﬃ",
]


@pytest.fixture(scope="module")
def oracle() -> OpenAISimpleTokenizer:
    return OpenAISimpleTokenizer()


def test_vocab_size_and_context_length():
    tok = get_tokenizer()
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert get_tokenizer() is tok  # cached


def test_known_ids():
    ids = clip_tokenize(["a photo of a cat"])
    assert ids.dtype == torch.long and ids.shape == (1, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("pad_with_zero", [False, True])
def test_matches_openai_oracle(oracle, pad_with_zero):
    pad = 0 if pad_with_zero else 49407
    ours = clip_tokenize(PROMPTS, pad_with_zero=pad_with_zero)
    ref = oracle.tokenize(PROMPTS, pad=pad)
    for i, p in enumerate(PROMPTS):
        assert ours[i].tolist() == ref[i].tolist(), f"prompt {i}: {p!r}"


@pytest.mark.skipif(not HAS_FTFY, reason="ftfy not installed: text repair differs by design")
def test_matches_openai_oracle_ftfy_repairs(oracle):
    assert clip_tokenize(FTFY_PROMPTS).tolist() == oracle.tokenize(FTFY_PROMPTS, pad=49407).tolist()


def test_truncation_keeps_end_token():
    ids = clip_tokenize([" ".join(["cat"] * 200)])
    assert ids.shape == (1, 77)
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert (ids[0, 1:-1] != 49407).all()


def test_sd2_zero_padding():
    sd1 = clip_tokenize(["a cat", ""])
    sd2 = clip_tokenize(["a cat", ""], pad_with_zero=True)
    assert sd1[0, :4].tolist() == sd2[0, :4].tolist() == [49406, 320, 2368, 49407]
    assert (sd2[0, 4:] == 0).all() and (sd1[0, 4:] == 49407).all()
    assert sd2[1, :2].tolist() == [49406, 49407] and (sd2[1, 2:] == 0).all()


def test_custom_max_length():
    assert clip_tokenize(["a photo of a cat"], max_length=5).tolist() == [[49406, 320, 1125, 539, 49407]]
