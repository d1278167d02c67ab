"""Decoding a user's image files into 8-bit RGB, and checking that they decode at all.

``load_rgb`` applies the EXIF orientation and converts every mode PIL reads: ``L`` / ``P`` / ``CMYK`` / ``YCbCr``
by PIL's conversion, images with transparency (``RGBA``, ``LA``, ``P`` with a transparent index) composited on
white (transparent pixels often hold black or garbage colour), 16-bit and 32-bit integer images (``I;16*``,
``I``) and float images (``F``) scaled to 8 bits from their type's range. ``check_image`` decodes the *whole*
image: ``Image.verify()`` only checks a PNG's chunk checksums and misses a broken compressed stream, which then
fails at training step N.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# what a failed decode raises (PIL: OSError for truncated data, SyntaxError / ValueError for broken headers,
# zlib.error for a broken PNG stream, DecompressionBombError (a subclass of Exception) for absurd sizes)
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, zlib.error, EOFError,
                 Image.DecompressionBombError)


def is_image_file(p: Path) -> bool:
    """An image by suffix, not hidden (``.DS_Store``, ``._name`` resource forks, editors' temp files)."""
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _to_8bit(im: Image.Image) -> Image.Image:
    """Integer / float single-channel modes → ``L`` by their value range (PIL's own convert clips them)."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255):
        scale = 65535.0 if arr.max(initial=0) <= 65535 else float(np.iinfo(np.int32).max)
        arr = arr.astype(np.float64) / scale * 255.0
    elif im.mode == "F":
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0 if hi > 1.0 or lo < 0.0 else arr * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → RGB (see the module docstring); the result is fully decoded."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image, EXIF orientation applied."""
    with Image.open(path) as im:
        return to_rgb(im)


def check_image(path: str | os.PathLike) -> tuple[int, int] | str:
    """Decode the whole image; its (width, height) after orientation, or the reason it cannot be read."""
    try:
        im = load_rgb(path)
        return im.size
    except DECODE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
