"""Data for stage-2 training: a step-addressed stream, so that data order is a pure function of the step.

Sample ``j`` of micro-batch ``b`` on rank ``r`` of ``W`` is stream position ``p = (b·W + r)·B + j``; pass
``e = p // N`` over the ``N`` items uses the permutation ``randperm(N, seed_of(seed, e))``. Resuming at micro-batch
``b`` therefore replays exactly what an uninterrupted run would have seen, on any number of processes.

``TaskSource`` turns ShapesWorld items into what the task needs (the image, or a cached latent, plus the condition
fields); cached latents are the posterior means of ``length`` items, encoded once.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data.shapes import ShapesWorld, ShapesWorldConfig
from .ldm_config import LDMTrainConfig

# condition fields each task reads from an item
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "unconditional": (),
    "class": ("class_label",),
    "txt2img": ("caption",),
    "layout": ("layout",),
    "semantic": ("segmentation",),
    "superres": ("lowres",),
    "inpaint": ("caption", "mask"),
}


def seed_of(*xs: int) -> int:
    """A 63-bit seed from a tuple of ints (splitmix-style mixing; stable across runs and Python versions)."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def build_world(cfg: LDMTrainConfig) -> ShapesWorld:
    d = cfg.data
    kw = {} if d.backgrounds is None else {"backgrounds": tuple(d.backgrounds)}
    if d.object_weights is not None:
        kw["object_weights"] = tuple(d.object_weights)
    return ShapesWorld(ShapesWorldConfig(size=d.size, seed=d.seed, length=d.length, **kw))


class TaskSource:
    """``get(i)`` → dict with ``image`` (3, H, W) or ``latent`` (C, h, w), and the task's condition fields."""

    def __init__(self, world: ShapesWorld, task: str, mask: str = "both") -> None:
        self.world, self.task, self.mask = world, task, mask
        self.latents: torch.Tensor | None = None  # (N, C, h, w) unscaled posterior means when cached

    def __len__(self) -> int:
        return len(self.world)

    def get(self, i: int) -> dict:
        item = self.world[i]
        out: dict = {}
        if self.latents is not None:
            out["latent"] = self.latents[i]
        else:
            out["image"] = item["image"]
        for k in TASK_FIELDS[self.task]:
            if k == "mask":
                use_box = self.mask == "box" or (self.mask == "both" and i % 2 == 0)
                out["mask"] = item["mask_box" if use_box else "mask_stroke"]
            else:
                out[k] = item[k]
        return out

    @torch.no_grad()
    def cache(self, encode, batch_size: int = 64) -> None:  # noqa: ANN001 - images (B,3,H,W) -> latents
        chunks = []
        for start in range(0, len(self), batch_size):
            imgs = torch.stack([self.world[i]["image"] for i in range(start, min(start + batch_size, len(self)))])
            chunks.append(encode(imgs).float())
        self.latents = torch.cat(chunks)


class StepWindow(Dataset):
    """Micro-batches ``start .. start + count - 1`` of rank ``rank`` (see module docstring), flattened to items."""

    def __init__(self, source: TaskSource, seed: int, start: int, count: int, batch_size: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.source, self.seed = source, seed
        self.start, self.count, self.b = start, count, batch_size
        self.rank, self.world_size = rank, world_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.count * self.b

    def position(self, k: int) -> int:
        micro, j = divmod(k, self.b)
        return ((self.start + micro) * self.world_size + self.rank) * self.b + j

    def index(self, p: int) -> int:
        n = len(self.source)
        epoch = p // n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(n, generator=torch.Generator().manual_seed(seed_of(self.seed, epoch))))
        return int(self._perm[1][p % n])

    def __getitem__(self, k: int) -> dict:
        return self.source.get(self.index(self.position(k)))
