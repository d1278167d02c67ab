"""Image folders for autoencoder training: every common format PIL reads, random crop + horizontal flip.

Resize policy: with ``resize=None`` (default) images are cropped at their native resolution (no resampling, so
no blur is learned); with ``resize=R`` the shorter side is first resized to ``R`` (bicubic, antialiased),
keeping the aspect ratio. An image whose shorter side (after that) is below the crop size is an error naming
the file — it is never upsampled silently. Unreadable or corrupt files are skipped with one warning giving the
count and the first few names.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import LDMError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


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


def _resized_size(w: int, h: int, resize: int | None) -> tuple[int, int]:
    if resize is None:
        return w, h
    s = resize / min(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


class ImageFolder:
    """Images under ``root`` (recursive). ``get(i, generator)`` → (3, size, size) in [-1, 1]."""

    def __init__(self, root: str | os.PathLike, size: int, *, resize: int | None = None, flip: bool = True,
                 random_crop: bool = True) -> None:
        self.root, self.size, self.resize, self.flip, self.random_crop = Path(root), size, resize, flip, random_crop
        if not self.root.is_dir():
            raise DataError(f"image folder {self.root} does not exist or is not a folder")
        if resize is not None and resize < size:
            raise DataError(f"resize={resize} is smaller than the crop size {size}; need resize >= size")
        candidates = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.files: list[Path] = []
        bad: list[str] = []
        small: list[str] = []
        for p in candidates:
            try:
                with Image.open(p) as im:
                    im.verify()  # header + structure check without decoding everything
                with Image.open(p) as im:
                    w, h = _resized_size(*im.size, resize)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
                bad.append(p.name)
                continue
            if min(w, h) < size:
                small.append(f"{p.name} ({w}x{h})")
                continue
            self.files.append(p)
        self.skipped_corrupt = len(bad)
        if bad:
            warnings.warn(f"{self.root}: skipped {len(bad)} unreadable/corrupt image(s), e.g. {bad[:5]}", stacklevel=2)
        if small:
            raise DataError(
                f"{self.root}: {len(small)} image(s) are smaller than the {size}x{size} crop"
                f"{' after resizing the shorter side to ' + str(resize) if resize else ''}, e.g. {small[:5]}; "
                "use a smaller crop size, remove them, or set resize >= size")
        if not self.files:
            what = f"no readable images ({len(bad)} corrupt)" if bad else "no images"
            raise DataError(f"image folder {self.root} has {what}; accepted suffixes: {list(IMAGE_SUFFIXES)}")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            if self.resize is not None:
                im = im.resize(_resized_size(*im.size, self.resize), Image.Resampling.BICUBIC)
            return to_tensor(im)

    def get(self, i: int, generator: torch.Generator) -> torch.Tensor:
        img = self.load(i)
        if self.random_crop:
            return random_crop_flip(img, self.size, generator, self.flip)
        return center_crop(img, self.size)
