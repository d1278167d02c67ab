"""Tiled encoding and decoding of a KL autoencoder, for images larger than memory allows in one piece.

The map is cut into overlapping tiles (at most ``tile`` on a side, the last of a row or column cut short) on a grid
laid out in latent pixels (so encoder tiles start on multiples of the downsampling factor and land exactly on latent
pixels). Every tile is run on its own; outputs are blended with weights that ramp linearly across the overlaps shared
with a neighbour (1 elsewhere, also at the image border) and normalised by the summed weights, so each output pixel
is a convex mix of the tiles that cover it and no seam is a hard edge. The result differs from the untiled one
because GroupNorm statistics and the mid-block attention see one tile, not the whole image: the difference is largest
at the seams and small away from them (measured in tests/accel/test_fastpaths.py and ``ldm bench vae``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..models.autoencoder import AutoencoderKL


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


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]``: tiles of at most ``tile`` covering [0, size), neighbours sharing at least ``overlap``.

    Tiles step by ``tile - overlap`` from 0; the last one is cut short at the edge (as diffusers' tiles are) rather
    than moved back to end there at full size, which would overlap its neighbour by more than asked: a 64-pixel map
    with tile 32, overlap 8 gets [0, 32), [24, 56), [48, 64) — 80 pixels of work per row, not 96. An edge tile
    narrower than half a tile (possible only when the overlap is under half a tile) is widened back to half a tile,
    so that no sliver is decoded on its own: (33, 32, 0) gives [0, 32), [17, 33).
    """
    if size <= tile:
        return [(0, size)]
    stride = tile - overlap
    spans = [(s, min(s + tile, size)) for s in range(0, size - overlap, stride)]
    if spans[-1][1] - spans[-1][0] < tile // 2:  # a sliver (small overlaps only): widen it back to half a tile
        spans[-1] = (size - tile // 2, size)
    return spans


def _ramp(length: int, ramp_lo: int, ramp_hi: int) -> torch.Tensor:
    """(length,) weights: rising over the first ``ramp_lo`` entries, falling over the last ``ramp_hi``, else 1."""
    w = torch.ones(length)
    pos = torch.arange(length, dtype=torch.float32)
    if ramp_lo:
        w = torch.minimum(w, (pos + 0.5) / ramp_lo)
    if ramp_hi:
        w = torch.minimum(w, (length - pos - 0.5) / ramp_hi)
    return w


def _axis_ramps(spans: list[tuple[int, int]], o: int) -> list[torch.Tensor]:
    """Per span, its blend weights in output pixels (``o`` per grid pixel): ramps only towards neighbours, over the
    overlap actually shared with the previous / next span."""
    ramps = []
    for i, (a, b) in enumerate(spans):
        lo = spans[i - 1][1] - a if i else 0
        hi = b - spans[i + 1][0] if i + 1 < len(spans) else 0
        ramps.append(_ramp((b - a) * o, lo * o, hi * o))
    return ramps


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
    ys, xs = tile_spans(gh, grid.tile, grid.overlap), tile_spans(gw, grid.tile, grid.overlap)
    o = int(round(step * scale))  # output pixels per grid pixel
    wys, wxs = _axis_ramps(ys, o), _axis_ramps(xs, o)
    out = weight = None
    for (y0, y1), wy in zip(ys, wys):
        for (x0, x1), wx in zip(xs, wxs):
            piece = fn(x[:, :, y0 * step:y1 * step, x0 * step:x1 * step])  # (B, C', (y1 - y0)·o, (x1 - x0)·o)
            if out is None:
                out = piece.new_zeros(b, piece.shape[1], gh * o, gw * o)
                weight = piece.new_zeros(1, 1, gh * o, gw * o)
            wt = (wy[:, None] * wx[None, :]).to(piece)[None, None]  # (1, 1, (y1 - y0)·o, (x1 - x0)·o)
            rows, cols = slice(y0 * o, y1 * o), slice(x0 * o, x1 * o)
            out[:, :, rows, cols] += piece * wt
            weight[:, :, rows, cols] += wt
    return out / weight


class TiledAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` (same parameters and keys) that encodes / decodes maps larger than ``tiling.tile`` latent
    pixels in overlapping, blended tiles: peak memory follows the tile, not the image. Set by ``set_vae_tiling``."""

    tiling: Tiling

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        f = self.downsample_factor
        if max(x.shape[-2:]) > self.tiling.tile * f:
            return tiled_apply(super()._moments, x, self.tiling, step=f, scale=1 / f)
        return super()._moments(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if max(z.shape[-2:]) > self.tiling.tile:
            return tiled_apply(super()._decode, z, self.tiling, step=1, scale=self.downsample_factor)
        return super()._decode(z)


def set_vae_tiling(model: nn.Module, tiling: Tiling | None) -> int:
    """Tile every KL autoencoder in ``model`` (``model`` itself included) with ``tiling``, or stop tiling (None), in
    place; returns how many autoencoders were set."""
    count = 0
    for m in model.modules():
        if type(m) is AutoencoderKL and tiling is not None:
            m.__class__ = TiledAutoencoderKL
        if isinstance(m, TiledAutoencoderKL):
            if tiling is None:
                m.__class__ = AutoencoderKL
                del m.tiling
            else:
                m.tiling = tiling
        count += isinstance(m, AutoencoderKL)
    return count
