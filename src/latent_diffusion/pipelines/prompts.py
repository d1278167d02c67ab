"""Prompt length and vocabulary checks: a warning, never an error, when the text encoder will not see all of a
prompt. Bound as ``Pipeline.check_prompt``."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

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
