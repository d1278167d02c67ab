"""What a task call hands back: each image carries its generation parameters (A1111's ``parameters`` text, the one
the CLI writes into its PNGs) in ``image.info["parameters"]``; ``Pipeline.__call__`` returns a ``PipelineOutput``
with the images, their seeds and, on request, their latents."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from .metadata import format_parameters

RANDOM_SEEDS = 2**31  # a seed left None is drawn from [0, 2**31), as A1111's -1


def resolve_seed(seed: int | None) -> int:
    """``seed``, or a fresh random one when None (reported back in each image's parameters and ``.seeds``)."""
    return secrets.randbelow(RANDOM_SEEDS) if seed is None else seed


@dataclass
class PipelineOutput:
    """``images``: PIL images, each with its ``parameters`` in ``.info``; ``seeds``: image i's seed (re-running with
    ``seed=seeds[i], n=1`` gives it again); ``latents``: the (n, C, h, w) latents decoded, when asked for."""

    images: list[Image.Image]
    seeds: list[int]
    latents: torch.Tensor | None = None


@dataclass(frozen=True)
class Record:
    """What one task call records for image i of its n: ``settings`` (Steps, Sampler, CFG scale and the task's own
    keys) then Seed (``seed`` + i), Size, Model hash, and Batch size / Batch pos when the image was sampled together
    with others (re-creating it bit-exactly needs the same batch). ``batch_size`` None: all n at once."""

    prompt: str
    negative_prompt: str
    seed: int
    batch_size: int | None
    settings: dict[str, Any] = field(default_factory=dict)
    model_hash: str | None = None

    def parameters(self, i: int, n: int, size: tuple[int, int]) -> str:
        s = dict(self.settings)
        s.update({"Seed": self.seed + i, "Size": f"{size[0]}x{size[1]}"})
        if self.model_hash:
            s["Model hash"] = self.model_hash
        batch = n if self.batch_size is None else self.batch_size
        count = min(batch, n - i // batch * batch)
        if count > 1:
            s.update({"Batch size": count, "Batch pos": i % batch})
        return format_parameters(self.prompt, self.negative_prompt, s)

    def stamp(self, images: list[Image.Image]) -> list[Image.Image]:
        for i, image in enumerate(images):
            image.info["parameters"] = self.parameters(i, len(images), image.size)
        return images

    def output(self, images: list[Image.Image], latents: torch.Tensor) -> PipelineOutput:
        return PipelineOutput(self.stamp(images), [self.seed + i for i in range(len(images))], latents)
