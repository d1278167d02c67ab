"""Conversions between PIL images / files and model tensors, with the input checks the pipelines need."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image

from ..errors import LDMError
from .limits import Limits


def open_image(path: str | os.PathLike, what: str, limits: Limits | None = None) -> Image.Image:
    """Read the image file ``path`` fully into memory; a clear error naming ``what`` it was for otherwise. Its size
    (from the header) is checked against ``limits.max_pixels`` before the pixels are decoded; Pillow's own
    decompression-bomb ceiling is lifted meanwhile, so ``--max-pixels`` is the one limit."""
    limits = limits or Limits()
    ceiling = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # checked here instead, from the same header
    try:
        with Image.open(path) as im:
            Image.MAX_IMAGE_PIXELS = ceiling
            limits.check_pixels(*im.size, f"{what} {os.fspath(path)}")
            im.load()
            return im.copy()
    except (OSError, ValueError) as e:
        raise LDMError(f"cannot read {what} {os.fspath(path)}: {e}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = ceiling


def load_image(image: Image.Image | str | os.PathLike, limits: Limits | None = None) -> Image.Image:
    """Open ``image`` (a path or a PIL image) and convert it to 8-bit RGB; its size must be within ``limits``.

    RGBA is composited on white, grayscale / palette / 16-bit / float images are converted; each conversion
    is announced once with a warning so nobody is surprised by it.
    """
    if not isinstance(image, Image.Image):
        image = open_image(image, "image", limits)
    else:
        (limits or Limits()).check_pixels(*image.size, "the image")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(arr, mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    warnings.warn(f"converted a {mode} image to RGB", stacklevel=2)
    return image.convert("RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL → (1, 3, H, W) float32 in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (H, W, 3)
    return (arr.permute(2, 0, 1)[None] / 127.5) - 1.0


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in about [-1, 1] → B RGB PIL images (rounded, clipped)."""
    arr = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def load_mask(mask: Image.Image | str | os.PathLike, size: tuple[int, int],
              limits: Limits | None = None) -> torch.Tensor:
    """Mask file / image → (1, 1, H, W) float in {0, 1}; 1 = repaint. Must have the image's size (W, H)."""
    if not isinstance(mask, Image.Image):
        mask = open_image(mask, "mask", limits)
    if mask.size != size:
        raise LDMError(f"mask size {mask.size[0]}x{mask.size[1]} differs from the image size {size[0]}x{size[1]}; "
                       "give a mask of the same size (white = repaint, black = keep)")
    if mask.mode in ("RGBA", "LA"):
        mask = mask.getchannel("A") if mask.mode == "LA" else mask.convert("L")
    arr = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((arr >= 0.5).astype(np.float32))[None, None]


def check_size(height: int, width: int, multiple: int, limits: Limits | None = None) -> None:
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise LDMError(f"height and width must be positive multiples of {multiple} for this model "
                       f"(the autoencoder's f times the UNet's downsampling), got {height}x{width}")
    (limits or Limits()).check_pixels(width, height, "the requested image size")
