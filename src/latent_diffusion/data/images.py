"""Image folders for autoencoder training: every format PIL reads, random crop + horizontal flip; tensor helpers.

Resize policy: with ``resize=None`` (default) images are cropped at their native resolution (no resampling, so
no blur is learned); with ``resize=R`` the shorter side is first resized to ``R`` (bicubic, antialiased),
keeping the aspect ratio. Without ``resize``, an image smaller than the crop is an error naming the file — it is
never upsampled silently. Unreadable or corrupt files (fully decoded when the folder is read) are skipped with one
warning giving the count and the first few names, or an error with ``strict``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import LDMError


class DataError(LDMError, ValueError):
    """A dataset folder or file cannot be used (empty, too small, unreadable)."""


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB → float32 (3, H, W) in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def random_crop_flip(img: torch.Tensor, size: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """(3, H, W) → (3, size, size): a uniformly placed crop, mirrored left-right with probability ½ if ``flip``."""
    _, h, w = img.shape
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    out = img[:, top:top + size, left:left + size]
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        out = out.flip(-1)
    return out.contiguous()


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = img.shape
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top:top + size, left:left + size].contiguous()


class ImageItems:
    """An item source's images only: ``get(i, generator)`` → (3, H, W) (stage 1 trains on images alone)."""

    def __init__(self, source) -> None:  # noqa: ANN001 - data.sources.FolderSource
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def order(self, seed: int, epoch: int) -> torch.Tensor | None:
        return self.source.order(seed, epoch)

    def get(self, i: int, generator: torch.Generator) -> torch.Tensor:
        return self.source.get(i, generator)["image"]


def stage1_transform(size: int, resize: int | None, flip: bool, random_crop: bool):  # noqa: ANN201 - TransformConfig
    """How stage 1 cuts its images: native resolution, or the shorter side resized first (then smaller images are
    upscaled with the rest; without ``resize`` they are an error naming them)."""
    from .transforms import TransformConfig, TransformError

    try:
        return TransformConfig(size=size, resize=resize, crop="random" if random_crop else "center", flip=flip,
                               small="error" if resize is None else "upscale")
    except TransformError as e:
        raise DataError(str(e).replace("data.resize", "resize")) from e


class ImageFolder(ImageItems):
    """Images under ``root`` (recursive; ``data/folder.py`` reads and fully decodes them, ``data/transforms.py`` cuts
    them, ``stage1_transform``). ``get(i, generator)`` → (3, size, size) in [-1, 1]."""

    def __init__(self, root: str | os.PathLike, size: int, *, resize: int | None = None, flip: bool = True,
                 random_crop: bool = True, strict: bool = False) -> None:
        from .folder import scan_folder
        from .sources import FolderSource

        transform = stage1_transform(size, resize, flip, random_crop)
        index = scan_folder(root, captions="none", labels="none", strict=strict)
        super().__init__(FolderSource(index, transform))
        self.root, self.size = Path(root), size
        self.files = [index.records[k].path for k in self.source.keep]
        self.skipped_corrupt = len(index.skipped)


def image_shards(root: str | os.PathLike, size: int, *, resize: int | None = None, flip: bool = True,
                 random_crop: bool = True, strict: bool = False) -> ImageItems:
    """The images of webdataset shards (``data/shards.py``), cut like ``ImageFolder``'s."""
    from .shards import index_shards
    from .sources import FolderSource

    transform = stage1_transform(size, resize, flip, random_crop)
    return ImageItems(FolderSource(index_shards(root, strict=strict), transform))
