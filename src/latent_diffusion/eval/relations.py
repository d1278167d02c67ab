"""Does a text-to-image model follow the relation word, or does the noise decide the layout?

Two probes on held-out ShapesWorld captions that name a relation (two or three objects), scored by the judge:

* **flip**: each caption and the same caption with its relation reversed ("above" ↔ "below", "left of" ↔ "right of")
  are sampled from the same seed. A model that follows the word gets both right; one that ignores it draws the same
  picture twice and can get at most one of the pair right. Reported: relation right for the captions, for the flipped
  captions, for both, and the mean pixel change between the two pictures (0-255 levels).
* **leak**: img2img at strength 1 from scene i's own image (x_t = √ᾱ z_i + √(1-ᾱ) ε at the first sampler step, which is
  what training shows the model at that t) and from another scene's image, both with caption i. The judge's distance
  (in image widths) of object 0 from its place in scene i. If the schedule leaves the layout readable at the first
  step, the own-image distance is much the smaller: the model learned to take the layout from x_t, not from the words.
* **encoder**: can the UNet see the word at all? The text encoder's context for each caption against its flip, and
  against the caption with its first one-token colour word changed: the lowest cosine over the token positions
  (1.0 = the word changed nothing the cross-attention could read). The swapped words are one token in every tokenizer
  of the package, so the two sequences have the same length and their positions align.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import LDMError
from .adherence import parse_caption
from .tasks import adherence

OPPOSITE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


def flip_relation(caption: str) -> str:
    """The caption with the relation of object 0 to object 1 reversed; an error for one-object captions."""
    rel = parse_caption(caption).relation
    if rel is None:
        raise LDMError(f"{caption!r} names one object: it has no relation to flip")
    return re.sub(rf"\b{rel}\b", OPPOSITE[rel], caption, count=1)


def _to_tensor(images: Sequence[Any]) -> torch.Tensor:
    from ..pipelines.images import pil_to_tensor

    return torch.cat([pil_to_tensor(im) for im in images])  # (n, 3, H, W) in [-1, 1]


def flip_probe(pipe: Any, judge: Any, captions: Sequence[str], *, cfg_scale: float = 5.0, steps: int = 20,
               sampler: str = "ddim", seed: int = 0) -> dict[str, float]:
    """Relation right for the captions, their flips and both (same seed per pair); mean pixel change per pair."""
    flipped = [flip_relation(c) for c in captions]
    kw = dict(steps=steps, sampler=sampler, cfg_scale=cfg_scale, n=1, height=64, width=64)
    a = _to_tensor([pipe.txt2img(c, seed=seed + i, **kw)[0] for i, c in enumerate(captions)])
    b = _to_tensor([pipe.txt2img(c, seed=seed + i, **kw)[0] for i, c in enumerate(flipped)])
    right_a = np.array([adherence(judge, a[i:i + 1], [c])["relation"] for i, c in enumerate(captions)])
    right_b = np.array([adherence(judge, b[i:i + 1], [c])["relation"] for i, c in enumerate(flipped)])
    return {"relation_right": float(right_a.mean()), "relation_right_flipped": float(right_b.mean()),
            "relation_right_both": float((right_a * right_b).mean()),
            "pair_change_levels": float((a - b).abs().mean() * 127.5)}


# colour words that are one token in every tokenizer the package has (word list, CLIP / OpenCLIP BPE, MiniLM
# WordPiece); "cyan" is two BPE / WordPiece tokens, and a swap to or from it would shift every later position
ONE_TOKEN_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "pink")


def swap_first_colour(caption: str) -> str:
    """The caption with its first one-token colour word replaced by the next one ("red" -> "green", ...) and its
    article kept right ("a" / "an"): the token sequence keeps its length, so positions stay aligned."""
    words = caption.split(" ")
    for i, w in enumerate(words):
        if w in ONE_TOKEN_COLOURS:
            words[i] = ONE_TOKEN_COLOURS[(ONE_TOKEN_COLOURS.index(w) + 1) % len(ONE_TOKEN_COLOURS)]
            if i > 0 and words[i - 1] in ("a", "an"):
                words[i - 1] = "an" if words[i][0] in "aeiou" else "a"
            return " ".join(words)
    raise LDMError(f"no colour word to swap in {caption!r}")


@torch.no_grad()
def encoder_probe(model: Any, captions: Sequence[str]) -> dict[str, float]:
    """Mean over captions of the lowest per-token cosine between the conditioner's context for a caption and for its
    relation flip (``encoder_cos_relation``) or its colour swap (``encoder_cos_colour``)."""
    a = model.get_learned_conditioning(list(captions)).float()  # (n, tokens, context_dim)

    def lowest_cos(others: list[str]) -> float:
        b = model.get_learned_conditioning(others).float()
        return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min(dim=1).values.mean())

    return {"encoder_cos_relation": lowest_cos([flip_relation(c) for c in captions]),
            "encoder_cos_colour": lowest_cos([swap_first_colour(c) for c in captions])}


def leak_probe(pipe: Any, judge: Any, images: torch.Tensor, captions: Sequence[str], layouts: torch.Tensor, *,
               cfg_scale: float = 5.0, steps: int = 20, sampler: str = "ddim", seed: int = 0) -> dict[str, float]:
    """Mean distance of object 0 from its place in scene i, sampling from scene i's own noised image and from the
    next scene's (caption i both times); objects the judge does not find are left out (counts reported)."""
    from ..pipelines.images import tensor_to_pil

    pils, n = tensor_to_pil(images), len(captions)
    if n < 2:
        raise LDMError(f"the leak probe compares each scene with another one: it needs n >= 2, got {n}")

    def distances(source: list[int]) -> list[float]:
        out = []
        for i, k in enumerate(source):
            img = _to_tensor(pipe.img2img(pils[k], captions[i], strength=1.0, steps=steps, sampler=sampler,
                                          cfg_scale=cfg_scale, seed=seed + i))
            cls, x0, y0, x1, y1 = layouts[i, 0].tolist()
            found = [o for o in judge.detect(img)[0] if o.cls == int(cls)]
            if found:
                cx, cy = max(found, key=lambda o: o.area).centre
                out.append(float(np.hypot(cx - (x0 + x1) / 2, cy - (y0 + y1) / 2)))
        return out

    own, other = distances(list(range(n))), distances([(i + 1) % n for i in range(n)])
    nan = float("nan")
    return {"leak_distance_own": float(np.mean(own)) if own else nan, "leak_found_own": len(own),
            "leak_distance_other": float(np.mean(other)) if other else nan, "leak_found_other": len(other)}


def relation_scenes(n: int) -> dict[str, Any]:
    """The first ``n`` held-out scenes whose caption names a relation (two or three objects)."""
    from .tasks import heldout

    data = heldout(4 * n + 16)
    keep = [i for i, c in enumerate(data["captions"]) if parse_caption(c).relation is not None][:n]
    if len(keep) < n:
        raise LDMError(f"only {len(keep)} held-out scenes with a relation among {4 * n + 16}; ask for fewer")
    return {"captions": [data["captions"][i] for i in keep], "images": data["images"][keep],
            "layouts": data["layouts"][keep]}


def relation_sweep(models: dict[str, str], *, n: int = 64, cfg_scale: float = 5.0, steps: int = 20,
                   log: Any = print) -> list[dict[str, Any]]:
    """One row per model (``NAME -> .safetensors``). Unlike ``ldm eval --ema`` (opt-in), a file that carries
    ``model_ema.*`` (a training run's) is sampled with its EMA weights: the probes compare training runs."""
    from safetensors import safe_open

    from ..pipelines.pipeline import Pipeline
    from .judge import Judge

    judge, data = Judge.load(None), relation_scenes(n)
    rows = []
    for name, path in models.items():
        with safe_open(path, "pt") as f:
            ema = any(k.startswith("model_ema.") for k in f.keys())
        pipe = Pipeline.from_checkpoint(path, use_ema=ema, precision="fp32")
        if pipe.kind != "text":
            raise LDMError(f"{name} ({path}) is a {pipe.kind} model; the relation probes need a text-to-image model")
        row: dict[str, Any] = {"model": name, "ema": ema, "n": n, "cfg_scale": cfg_scale}
        row |= encoder_probe(pipe.model, data["captions"])
        row |= flip_probe(pipe, judge, data["captions"], cfg_scale=cfg_scale, steps=steps)
        row |= leak_probe(pipe, judge, data["images"], data["captions"], data["layouts"], cfg_scale=cfg_scale,
                          steps=steps)
        rows.append(row)
        log(f"  {name}: {row}")
    return rows
