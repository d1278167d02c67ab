"""Training / validation image streams for the stage-1 autoencoders.

The training stream is a pure function of the position ``k`` in it: epoch ``e = k // n`` visits the source in the
order ``randperm(n, seed=(seed, e))`` and item ``k``'s crop / flip come from a generator seeded with ``(seed, k)``.
So a run resumed at step ``s`` sees exactly the batches an uninterrupted run would, whatever the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import Dataset

from .images import DataError, ImageFolder, ImageItems, image_shards
from .seeds import seed_of


class ImageSource(Protocol):
    def __len__(self) -> int: ...
    def get(self, i: int, generator: torch.Generator) -> torch.Tensor: ...


@dataclass
class ImageDataConfig:
    """Where stage-1 images come from. ``source``: shapes (procedural ShapesWorld) | photos (bundled) | folder."""

    source: str = "shapes"
    root: str | None = None  # folder / shards: training images
    val_root: str | None = None  # folder / shards: held-out images (default: centre crops of the training ones)
    size: int = 64  # crop / image size
    resize: int | None = None  # folder: shorter side resized to this first (None = native resolution)
    flip: bool = True
    seed: int = 0
    num_val: int = 64  # held-out images for validation metrics and reconstruction grids
    shapes_length: int = 100_000
    photo_downscale: int = 2
    num_workers: int = 0
    strict: bool = False  # folder / shards: an undecodable image is an error (default: skipped with a warning)

    def __post_init__(self) -> None:
        if self.source not in ("shapes", "photos", "folder", "shards"):
            raise ValueError(f"data.source must be 'shapes', 'photos', 'folder' or 'shards', got {self.source!r}")
        if self.source in ("folder", "shards") and not self.root:
            raise ValueError(f"data.source={self.source!r} needs data.root (or --data PATH on the command line)")
        if self.size < 8:
            raise ValueError(f"data.size must be >= 8, got {self.size}")


class ShapesSource:
    """ShapesWorld images (B, 3, size, size) in [-1, 1]; flips are left out (the world is already symmetric)."""

    def __init__(self, size: int, seed: int, length: int) -> None:
        from .shapes import ShapesWorld, ShapesWorldConfig

        self.world = ShapesWorld(ShapesWorldConfig(size=size, seed=seed, length=length))

    def __len__(self) -> int:
        return len(self.world)

    def get(self, i: int, generator: torch.Generator) -> torch.Tensor:
        return self.world[i]["image"]


class StreamDataset(Dataset):
    """Items ``start .. start + length - 1`` of the endless shuffled stream over ``source`` (see module doc)."""

    def __init__(self, source: ImageSource, seed: int, start: int, length: int) -> None:
        if len(source) == 0:
            raise DataError("the image source is empty")
        self.source, self.seed, self.start, self.length = source, seed, start, length
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.length

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            order = getattr(self.source, "order", None)
            perm = order(self.seed, epoch) if order is not None else None
            if perm is None:  # any order will do: a uniform permutation
                perm = torch.randperm(len(self.source), generator=torch.Generator().manual_seed(seed_of(self.seed, epoch)))
            self._perm = (epoch, perm)
        return self._perm[1]

    def __getitem__(self, j: int) -> torch.Tensor:
        k = self.start + j
        n = len(self.source)
        idx = int(self._order(k // n)[k % n])
        return self.source.get(idx, torch.Generator().manual_seed(seed_of(self.seed, 1_000_003, k)))


class FixedDataset(Dataset):
    """The first ``n`` items of ``source`` with per-index seeded crops: the same images every time."""

    def __init__(self, source: ImageSource, n: int, seed: int) -> None:
        self.source, self.n, self.seed = source, n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> torch.Tensor:
        return self.source.get(j % len(self.source), torch.Generator().manual_seed(seed_of(self.seed, 7, j)))


def build_sources(cfg: ImageDataConfig) -> tuple[ImageSource, ImageSource]:
    """(train source, held-out source)."""
    if cfg.source == "shapes":
        return (ShapesSource(cfg.size, cfg.seed, cfg.shapes_length),
                ShapesSource(cfg.size, cfg.seed + 1_000_000, max(cfg.num_val, 1)))
    if cfg.source == "photos":
        from .photos import PhotoPatches

        return (PhotoPatches(cfg.size, "train", cfg.photo_downscale, cfg.flip),
                PhotoPatches(cfg.size, "heldout", cfg.photo_downscale, flip=False))
    make = ImageFolder if cfg.source == "folder" else image_shards
    train = make(cfg.root, cfg.size, resize=cfg.resize, flip=cfg.flip, strict=cfg.strict)  # type: ignore[arg-type]
    if cfg.val_root is None:  # centre crops of the training images, from the index already read
        val = ImageItems(train.source.with_view(crop="center", flip=False))
    else:
        val = make(cfg.val_root, cfg.size, resize=cfg.resize, flip=False, strict=cfg.strict)  # type: ignore[arg-type]
    return train, val
