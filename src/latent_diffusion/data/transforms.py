"""Resize the shorter side, crop (random or centre), flip — planned once, applied to every aligned input.

``plan(cfg, w, h, generator)`` draws the geometry of one item (``Geometry``: resized size, crop window, flip);
``apply_image`` (bicubic, antialiased), ``apply_labels`` (nearest: label maps keep their values) and
``apply_boxes`` (COCO-style pixel boxes → ``[0, 1]`` boxes of the crop) then cut the same window, so an image, its
label map and its boxes stay aligned. A crop of ``size × size`` is the default; with a ``bucket`` the crop is that
bucket's ``(width, height)`` (aspect-ratio bucketing, ``data/buckets.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import LDMError


class TransformError(LDMError, ValueError):
    """A transform setting is not one of the accepted values."""


CROPS = ("random", "center")
SMALL_POLICIES = ("error", "upscale", "skip")


@dataclass(frozen=True)
class TransformConfig:
    """``size``: the crop side. ``resize``: the shorter side is resized to this first (bicubic, antialiased);
    None keeps the native resolution. ``small``: an image whose shorter side is below the crop *before* resizing
    is an ``error`` naming it, ``upscale``d like any other, or ``skip``ped with a warning."""

    size: int = 64
    resize: int | None = None
    crop: str = "random"
    flip: bool = True
    small: str = "error"

    def __post_init__(self) -> None:
        if self.size < 8:
            raise TransformError(f"data.size must be >= 8, got {self.size}")
        if self.resize is not None and self.resize < self.size:
            raise TransformError(f"data.resize={self.resize} is smaller than the crop size {self.size}; "
                                 "need resize >= size (or null: native resolution)")
        if self.crop not in CROPS:
            raise TransformError(f"data.crop must be one of {list(CROPS)}, got {self.crop!r}")
        if self.small not in SMALL_POLICIES:
            raise TransformError(f"data.small must be one of {list(SMALL_POLICIES)}, got {self.small!r}")


@dataclass(frozen=True)
class Geometry:
    resized: tuple[int, int]  # (w, h) after resizing
    left: int
    top: int
    crop: tuple[int, int]  # (w, h) of the crop window
    flip: bool


def resized_size(w: int, h: int, shorter: int | None) -> tuple[int, int]:
    """(w, h) with the shorter side scaled to ``shorter`` (aspect kept); unchanged when None."""
    if shorter is None:
        return w, h
    s = shorter / min(w, h)
    return max(shorter, round(w * s)), max(shorter, round(h * s))


def cover_size(w: int, h: int, crop: tuple[int, int]) -> tuple[int, int]:
    """(w, h) scaled (aspect kept) to the smallest size that covers a ``crop`` window."""
    s = max(crop[0] / w, crop[1] / h)
    return max(crop[0], round(w * s)), max(crop[1], round(h * s))


def is_small(cfg: TransformConfig, w: int, h: int, crop: tuple[int, int] | None = None) -> bool:
    """Whether the native image is smaller than the crop (the ``small`` policy applies)."""
    cw, ch = crop or (cfg.size, cfg.size)
    return w < cw or h < ch


def plan(cfg: TransformConfig, w: int, h: int, generator: torch.Generator | None,
         bucket: tuple[int, int] | None = None) -> Geometry:
    """The geometry of one item of native size ``w × h``; random draws (crop offset, flip) from ``generator``
    (None: centre crop, no flip — the deterministic view used for pre-encoding and validation)."""
    crop = bucket or (cfg.size, cfg.size)
    if bucket is not None:
        rw, rh = cover_size(w, h, crop)
    else:
        rw, rh = resized_size(w, h, cfg.resize)
        if rw < crop[0] or rh < crop[1]:  # only reached with small="upscale" (or native and small images)
            rw, rh = cover_size(rw, rh, crop)
    random = generator is not None and cfg.crop == "random"
    if random:
        top = int(torch.randint(0, rh - crop[1] + 1, (1,), generator=generator))
        left = int(torch.randint(0, rw - crop[0] + 1, (1,), generator=generator))
    else:
        top, left = (rh - crop[1]) // 2, (rw - crop[0]) // 2
    flip = bool(cfg.flip and generator is not None and torch.rand((), generator=generator) < 0.5)
    return Geometry((rw, rh), left, top, crop, flip)


def _cut(im: Image.Image, geo: Geometry, resample: Image.Resampling) -> Image.Image:
    if im.size != geo.resized:
        im = im.resize(geo.resized, resample)
    im = im.crop((geo.left, geo.top, geo.left + geo.crop[0], geo.top + geo.crop[1]))
    return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if geo.flip else im


def pil_to_unit(im: Image.Image) -> torch.Tensor:
    """RGB PIL → float32 (3, H, W) in [-1, 1]."""
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def apply_image(im: Image.Image, geo: Geometry) -> torch.Tensor:
    """RGB PIL → (3, crop_h, crop_w) float32 in [-1, 1] (PIL's bicubic is antialiased when shrinking)."""
    return pil_to_unit(_cut(im, geo, Image.Resampling.BICUBIC))


def apply_labels(labels: Image.Image, geo: Geometry) -> torch.Tensor:
    """A label map (PIL ``L`` / ``I`` / ``P``, values = label ids) → (crop_h, crop_w) int64, nearest resampling."""
    return torch.from_numpy(np.asarray(_cut(labels, geo, Image.Resampling.NEAREST)).astype(np.int64))


def apply_boxes(boxes: np.ndarray, w: int, h: int, geo: Geometry, min_side: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) ``x0, y0, x1, y1`` pixel boxes of the native ``w × h`` image → ((M, 4) boxes in [0, 1] of the crop,
    (M,) indices of the boxes kept). Boxes are clipped to the crop; those with a side under ``min_side`` crop
    pixels after clipping are dropped."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    sx, sy = geo.resized[0] / w, geo.resized[1] / h
    b = boxes.astype(np.float64) * np.array([sx, sy, sx, sy])
    b -= np.array([geo.left, geo.top, geo.left, geo.top])
    cw, ch = geo.crop
    b = np.clip(b, 0, [cw, ch, cw, ch])
    if geo.flip:
        b = np.stack([cw - b[:, 2], b[:, 1], cw - b[:, 0], b[:, 3]], axis=1)
    keep = np.flatnonzero((b[:, 2] - b[:, 0] >= min_side) & (b[:, 3] - b[:, 1] >= min_side))
    return (b[keep] / np.array([cw, ch, cw, ch])).astype(np.float32), keep
