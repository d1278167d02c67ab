"""Real photographs bundled with scikit-image and scikit-learn (no download), cut into patches.

Train split: astronaut, rocket, coffee, immunohistochemistry, hubble_deep_field, retina (scikit-image) and
china (scikit-learn). Held-out split: chelsea (scikit-image) and flower (scikit-learn). ``downscale`` (default 2)
area-averages each photo first so a 64×64 patch holds more than a texture fragment.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..extras import require_extras
from .images import DataError, random_crop_flip

TRAIN_PHOTOS = ("astronaut", "rocket", "coffee", "immunohistochemistry", "hubble_deep_field", "retina", "china.jpg")
HELDOUT_PHOTOS = ("chelsea", "flower.jpg")


def _load(name: str) -> torch.Tensor:
    """(3, H, W) uint8 → float32 in [-1, 1]."""
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name)
    else:
        import skimage.data

        arr = getattr(skimage.data, name)()
    t = torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


class PhotoPatches:
    """``get(i, generator)`` → a random (3, size, size) patch of photo ``i % n_photos``; ``len`` = n_photos."""

    def __init__(self, size: int, split: str = "train", downscale: int = 2, flip: bool = True) -> None:
        if split not in ("train", "heldout"):
            raise DataError(f"photo split must be 'train' or 'heldout', got {split!r}")
        require_extras("the bundled photographs (data.source: photos)", "data", ["sklearn", "skimage"])
        names = TRAIN_PHOTOS if split == "train" else HELDOUT_PHOTOS
        self.size, self.flip = size, flip
        self.images = []
        for n in names:
            img = _load(n)
            if downscale > 1:
                img = F.avg_pool2d(img[None], downscale)[0]
            if min(img.shape[1:]) < size:
                raise DataError(f"photo {n} is {tuple(img.shape[1:])} after downscale {downscale}, smaller than "
                                f"the {size}x{size} crop; use a smaller size or downscale")
            self.images.append(img)

    def __len__(self) -> int:
        return len(self.images)

    def get(self, i: int, generator: torch.Generator) -> torch.Tensor:
        return random_crop_flip(self.images[i % len(self.images)], self.size, generator, self.flip)


def export_photos(out: str | os.PathLike, downscale: int = 2, overwrite: bool = False) -> dict[str, int]:
    """Write the bundled photos, area-downscaled, as PNGs into ``out/train`` and ``out/heldout`` (the same split as
    ``PhotoPatches``), to train an autoencoder on them through the image-folder path."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty; choose a new folder or pass --force")
    counts = {}
    for split, names in (("train", TRAIN_PHOTOS), ("heldout", HELDOUT_PHOTOS)):
        (out / split).mkdir(parents=True, exist_ok=True)
        for n in names:
            img = _load(n)
            if downscale > 1:
                img = F.avg_pool2d(img[None], downscale)[0]
            arr = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(np.ascontiguousarray(arr)).save(out / split / f"{n.removesuffix('.jpg')}.png")
        counts[split] = len(names)
    return counts
