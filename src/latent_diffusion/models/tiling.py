"""Tiled application of a first-stage encoder or decoder, for images larger than memory allows in one piece.

The map is cut into overlapping square tiles on a grid laid out in latent pixels (so encoder tiles start on
multiples of the downsampling factor and land exactly on latent pixels). Every tile is run on its own; outputs are
blended with weights that ramp linearly across the overlaps shared with a neighbour (1 elsewhere, also at the image
border) and normalised by the summed weights, so each output pixel is a convex mix of the tiles that cover it and
no seam is a hard edge. The result differs from the untiled one because GroupNorm statistics and the mid-block
attention see one tile, not the whole image: the difference is largest at the seams and small away from them
(measured in tests/test_tiling.py and ``ldm bench vae``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Tiling:
    """``tile``: tile side in latent pixels; ``overlap``: latent pixels shared by neighbouring tiles."""

    tile: int = 32
    overlap: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.tile, int) or self.tile < 2:
            raise ConfigError(f"tile must be an integer >= 2 latent pixels, got {self.tile!r}")
        if not isinstance(self.overlap, int) or not 0 <= self.overlap < self.tile:
            raise ConfigError(f"overlap must be an integer in [0, tile) = [0, {self.tile}), got {self.overlap!r}")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` covering [0, size) with at least ``overlap`` shared; the last ends at ``size``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, ramp_lo: int, ramp_hi: int) -> torch.Tensor:
    """(length,) weights: rising over the first ``ramp_lo`` entries, falling over the last ``ramp_hi``, else 1."""
    w = torch.ones(length)
    pos = torch.arange(length, dtype=torch.float32)
    if ramp_lo:
        w = torch.minimum(w, (pos + 0.5) / ramp_lo)
    if ramp_hi:
        w = torch.minimum(w, (length - pos - 0.5) / ramp_hi)
    return w


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grid: Tiling, step: int,
                scale: float) -> torch.Tensor:
    """``fn`` over overlapping tiles of ``x`` (B, C, H, W), blended.

    ``step``: input pixels per grid (latent) pixel — 1 for a decoder's latents, f for an encoder's image;
    ``scale``: output pixels per input pixel — f for a decoder, 1/f for an encoder.
    """
    b, _, h, w = x.shape
    if h % step or w % step:
        raise ConfigError(f"tiled input {h}×{w} must be a multiple of {step} pixels")
    gh, gw = h // step, w // step
    ys, xs = tile_starts(gh, grid.tile, grid.overlap), tile_starts(gw, grid.tile, grid.overlap)
    out_per_grid = int(round(step * scale))  # output pixels per grid pixel
    out = weight = None
    for iy, y in enumerate(ys):
        for ix, x0 in enumerate(xs):
            th, tw = min(grid.tile, gh), min(grid.tile, gw)
            piece = fn(x[:, :, y * step:(y + th) * step, x0 * step:(x0 + tw) * step])  # (B, C', th·o, tw·o)
            if out is None:
                out = piece.new_zeros(b, piece.shape[1], gh * out_per_grid, gw * out_per_grid)
                weight = piece.new_zeros(1, 1, gh * out_per_grid, gw * out_per_grid)
            # ramps only towards neighbours: the overlap actually shared with the previous / next tile
            lo_y = (ys[iy - 1] + th - y) if iy else 0
            hi_y = (y + th - ys[iy + 1]) if iy + 1 < len(ys) else 0
            lo_x = (xs[ix - 1] + tw - x0) if ix else 0
            hi_x = (x0 + tw - xs[ix + 1]) if ix + 1 < len(xs) else 0
            o = out_per_grid
            wy = _ramp(th * o, lo_y * o, hi_y * o)
            wx = _ramp(tw * o, lo_x * o, hi_x * o)
            wt = (wy[:, None] * wx[None, :]).to(piece)[None, None]  # (1, 1, th·o, tw·o)
            rows, cols = slice(y * o, (y + th) * o), slice(x0 * o, (x0 + tw) * o)
            out[:, :, rows, cols] += piece * wt
            weight[:, :, rows, cols] += wt
    return out / weight
