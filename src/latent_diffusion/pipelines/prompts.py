"""Prompts: the length and vocabulary check (a warning, never an error, when the text encoder will not see all of a
prompt; bound as ``Pipeline.check_prompt``) and the encoding of prompt and negative prompt (``Pipeline._text``)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..errors import LDMError, NonFiniteError

if TYPE_CHECKING:
    from .pipeline import Pipeline

MAX_PROMPT_TOKENS = 75  # CLIP's 77 minus the start and end tokens


def check_prompt(pipe: Pipeline, prompt: str) -> int:
    """Warn when ``prompt`` exceeds CLIP's 75 tokens (or has words a word-level encoder never saw); returns the
    number of tokens dropped."""
    encoder = pipe.model.cond_stage_model
    own = getattr(encoder, "check_prompt", None)
    if own is not None:  # our word-level text encoder: unknown words become [UNK]
        unknown = own(prompt)
        if unknown:
            warnings.warn(f"the text encoder does not know the word(s) {unknown}; they are ignored ([UNK])",
                          stacklevel=3)
        dropped = getattr(encoder, "dropped_words", lambda _: 0)(prompt)
        if dropped:
            limit = encoder.max_length - 2
            warnings.warn(f"the prompt has {limit + dropped} words; the text encoder takes {limit}, so the last "
                          f"{dropped} words were dropped", stacklevel=3)
        return dropped
    from ..tokenizer import clean_text, get_tokenizer

    count = len(get_tokenizer()(clean_text(prompt))["input_ids"]) - 2
    dropped = max(0, count - MAX_PROMPT_TOKENS)
    if dropped:
        warnings.warn(f"prompt is {count} tokens; the text encoder takes {MAX_PROMPT_TOKENS}, so the last "
                      f"{dropped} tokens were dropped", stacklevel=3)
    return dropped


def encode_prompts(pipe: Pipeline, prompt: str, negative_prompt: str, n: int, cfg_scale: float) -> tuple[Any, Any]:
    """(cond with n rows, uncond with one row or None without guidance) from one text-encoder batch."""
    for p in (prompt, negative_prompt):
        if not isinstance(p, str):
            raise LDMError(f"prompts must be strings, got {type(p).__name__}")
        pipe.check_prompt(p)
    guided = cfg_scale != 1.0
    texts = [prompt, negative_prompt] if guided else [prompt]
    with torch.no_grad():  # one text-encoder batch for prompt and negative prompt, once per call
        emb = pipe._reuse(lambda: ("text", *texts), lambda: pipe.model.get_learned_conditioning(texts))
    if not bool(torch.isfinite(emb).all()):
        raise NonFiniteError(f"the text encoder produced NaN/Inf for the prompt (dtype {emb.dtype}); nothing was "
                             f"sampled. Its weights may be damaged: check the checkpoint (`ldm inspect`)"
                             + (", or run it in fp32" if emb.dtype == torch.float16 else ""))
    c, u = emb[:1], (emb[1:] if guided else None)
    return c.expand(n, *c.shape[1:]), u  # uncond stays (1, ...): guidance broadcasts it
