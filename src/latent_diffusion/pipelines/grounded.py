"""Grounded text-to-image: caption → layout (a learned planner, models/layout_planner.py) → image (a layout-to-image
``Pipeline``). The planner decides where the objects go, which the end-to-end text-to-image models leave to the seed
(docs/findings.md §4); LMD (Lian et al. 2023) and LayoutGPT (Feng et al. 2023) split the work the same way with a
large language model as the planner."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import LDMError
from ..models.layout_planner import LayoutPlanner


def plan_layouts(planner: LayoutPlanner, prompts: list[str], *, seed: int = 0,
                 temperature: float = 1.0) -> torch.Tensor:
    """(len(prompts), max_objects, 5) layouts, drawn with a generator seeded by ``seed``; warns about words the
    planner does not know (they read as [UNK])."""
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise LDMError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    for p in prompts:
        unknown = planner.tokenizer.unknown_words(p)
        if unknown:
            warnings.warn(f"the layout planner does not know the word(s) {unknown}; they are ignored ([UNK])",
                          stacklevel=2)
    return planner.sample(list(prompts), generator=torch.Generator().manual_seed(seed), temperature=temperature)


def grounded_txt2img(planner: LayoutPlanner, layout_pipe: Any, prompt: str, *, n: int = 1, seed: int = 0,
                     steps: int = 20, sampler: str = "ddim", cfg_scale: float = 3.0, output: str = "pil",
                     temperature: float = 1.0) -> tuple[list[Any], torch.Tensor]:
    """``n`` images for ``prompt`` and the (n, max_objects, 5) layouts they were drawn from; image ``i`` uses the
    layout model's seed ``seed + i``."""
    layouts = plan_layouts(planner, [prompt] * n, seed=seed, temperature=temperature)
    images = []
    for i, lay in enumerate(layouts):
        out = layout_pipe.layout2img(lay, steps=steps, sampler=sampler, seed=seed + i, cfg_scale=cfg_scale,
                                     output=output)
        images.extend(out if isinstance(out, list) else [out])
    return images, layouts
