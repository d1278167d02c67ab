"""Training conditions made on the fly from real images: super-resolution inputs and inpainting masks.

Super-resolution (the LDM paper's ImageNet SR setup: bicubic ×4 down-sampling with antialiasing):
    ``bicubic_downsample(img, factor=4)``: (3, H, W) or (B, 3, H, W) float in [-1, 1] → (…, 3, H/f, W/f), clamped to
    [-1, 1]. It is torch's antialiased bicubic, which matches PIL's ``resize(BICUBIC, reducing_gap=None)`` to within
    one 8-bit level at ×4 (measured max 0.90 levels, mean 0.27, on random uint8 noise). At ×2 on pure noise PIL can
    differ by up to ~5 levels: PIL stores the horizontal pass as uint8, clipping its overshoot; torch keeps floats.

Inpainting (the paper used LaMa's mask generator; this is a LaMa-style re-implementation, not a copy):
    ``make_mask(cfg, H, W, generator)`` → float32 (1, H, W) in {0, 1}, 1 = the hole to inpaint. Kinds:
      - ``strokes``: LaMa's "thick" irregular masks: a few polylines from a random start, each segment at a random angle
        with a random length and brush width, drawn as thick lines with discs at the joints;
      - ``boxes``: a few axis-aligned rectangles kept ``box_margin`` away from the border;
      - ``lama``: per mask, strokes with probability ``p_strokes``, boxes otherwise (LaMa's MixedMaskGenerator picks
        one generator per mask; its "thick" setting weights irregular and box masks equally, hence 0.5);
      - ``outpaint``: a band of random width on each of the four sides with probability ``p_side`` (at least one).
    A draw whose hole fraction falls outside [min_hole, max_hole] is re-drawn (up to ``max_tries``, from the same RNG
    stream, so still deterministic); if all tries miss, the closest draw is repaired: grown by 3×3 dilation when too
    small, then trimmed by removing hole pixels in raster order from a random side when too large. (An out-of-range
    outpaint draw is replaced by a one-sided band of in-range width, so its complement stays a rectangle.)
    Every random number comes from one ``numpy`` Generator seeded from the given ``torch.Generator``, so a mask is a
    pure function of that generator's state. ``mask_for_item(cfg, H, W, seed, index)`` is the per-item form.
    Default ``lama`` config at 64×64 (2000 masks): hole fraction mean 0.32, 5th / 95th percentile 0.07 / 0.61.
    Re-draws (~10 % of raw stroke masks exceed max_hole=0.7, <1 % fall below min_hole) tilt the mix towards boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..errors import ConfigError
from .images import DataError
from .seeds import seed_of

MASK_KINDS = ("lama", "strokes", "boxes", "outpaint")
_MASK_SALT = 0x4D41534B  # "MASK": keeps mask seeds apart from the other seed_of(seed, …) streams of a dataset


def bicubic_downsample(img: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W) in [-1, 1] → (…, 3, H/factor, W/factor): antialiased bicubic, clamped."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise DataError(f"factor must be an int >= 1, got {factor!r}")
    if img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise DataError(f"expected an image (3, H, W) or a batch (B, 3, H, W), got shape {tuple(img.shape)}")
    if not img.is_floating_point():
        raise DataError(f"expected a float image in [-1, 1], got dtype {img.dtype}")
    h, w = img.shape[-2:]
    if h % factor or w % factor:
        raise DataError(f"image size {h}x{w} (HxW) is not divisible by the down-sampling factor {factor}")
    x = img if img.dim() == 4 else img[None]
    out = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", antialias=True, align_corners=False)
    out = out.clamp(-1.0, 1.0)
    return out if img.dim() == 4 else out[0]


@dataclass
class MaskConfig:
    """Inpainting mask generator. Lengths and widths are fractions of the shorter image side; box sides are fractions
    of the height (box height) and width (box width); outpaint bands of the side they cut across; holes of the area.
    Defaults follow LaMa's "thick" masks at 256 px (brush 5-104 px, segments 10-209 px, 1-5 strokes of 1-5 segments,
    1-4 boxes of 30-150 px with a 10 px margin), rescaled to fractions so they hold at any resolution."""

    kind: str = "lama"
    p_strokes: float = 0.5  # lama: probability that a mask is strokes (else boxes)
    stroke_count: tuple[int, int] = (1, 5)  # strokes per mask, inclusive
    stroke_vertices: tuple[int, int] = (1, 5)  # segments per stroke, inclusive
    stroke_length: tuple[float, float] = (0.04, 0.8)  # segment length / shorter side
    brush_width: tuple[float, float] = (0.02, 0.4)  # brush width / shorter side
    max_angle: float = 4.0  # radians; segment angles are uniform in [0, max_angle) (mirrored on odd strokes)
    box_count: tuple[int, int] = (1, 4)  # boxes per mask, inclusive
    box_side: tuple[float, float] = (0.12, 0.58)  # box height / H and box width / W
    box_margin: float = 0.04  # gap between boxes and the border / side
    outpaint_width: tuple[float, float] = (0.1, 0.4)  # band width / the side it cuts across
    p_side: float = 0.5  # outpaint: probability of a band on each side (at least one side always)
    min_hole: float = 0.02  # hole area / image area, inclusive
    max_hole: float = 0.7
    max_tries: int = 16  # re-draws before the closest draw is repaired

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise ConfigError(f"MaskConfig.kind must be one of {list(MASK_KINDS)}, got {self.kind!r}")
        for name in ("stroke_count", "stroke_vertices", "box_count"):
            _check_range(self, name, 1, 64, integer=True)
        for name in ("stroke_length", "brush_width", "box_side", "outpaint_width"):
            _check_range(self, name, 0.0, 1.0, integer=False)
        for name in ("p_strokes", "p_side"):
            _check_number(self, name, 0.0, 1.0)
        _check_number(self, "max_angle", 0.0, 2 * math.pi, open_low=True)
        _check_number(self, "box_margin", 0.0, 0.25)
        if self.box_side[1] + 2 * self.box_margin > 1.0:
            raise ConfigError(f"MaskConfig.box_side must leave room for the margins (upper end + 2 * box_margin "
                              f"<= 1), got box_side={self.box_side}, box_margin={self.box_margin}")
        if self.outpaint_width[1] >= 0.5:
            raise ConfigError(f"MaskConfig.outpaint_width must lie in (0, 0.5) so that some image is kept, "
                              f"got {self.outpaint_width}")
        _check_number(self, "min_hole", 0.0, 1.0)
        _check_number(self, "max_hole", 0.0, 1.0, open_low=True)
        if self.min_hole >= self.max_hole:
            raise ConfigError(f"MaskConfig.min_hole must be < max_hole (both in [0, 1]), "
                              f"got min_hole={self.min_hole}, max_hole={self.max_hole}")
        if isinstance(self.max_tries, bool) or not isinstance(self.max_tries, int) or not 1 <= self.max_tries <= 1000:
            raise ConfigError(f"MaskConfig.max_tries must be an int in [1, 1000], got {self.max_tries!r}")


def _check_number(cfg: MaskConfig, name: str, lo: float, hi: float, open_low: bool = False) -> None:
    v = getattr(cfg, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (v > lo if open_low else v >= lo) and v <= hi
    if not ok:
        raise ConfigError(f"MaskConfig.{name} must be a number in {'(' if open_low else '['}{lo}, {hi}], got {v!r}")


def _check_range(cfg: MaskConfig, name: str, lo: float, hi: float, integer: bool) -> None:
    v = getattr(cfg, name)
    kind = int if integer else (int, float)
    ok = (isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, kind) and not isinstance(x, bool)
                                                               for x in v))
    if ok:
        ok = (lo <= v[0] <= v[1] <= hi) and (integer or v[0] > 0)
    if not ok:
        what = "ints" if integer else "numbers"
        bounds = f"[{lo}, {hi}]" if integer else f"({lo}, {hi}]"
        raise ConfigError(f"MaskConfig.{name} must be a pair (low, high) of {what} with low <= high, both in "
                          f"{bounds}, got {v!r}")
    setattr(cfg, name, tuple(v))


# ---------------------------------------------------------------------------------------------------- drawing
def _strokes(rng: np.random.Generator, cfg: MaskConfig, h: int, w: int) -> np.ndarray:
    """LaMa-style thick irregular strokes: (H, W) bool."""
    side = min(h, w)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for i in range(int(rng.integers(cfg.stroke_count[0], cfg.stroke_count[1] + 1))):
        x, y = float(rng.integers(w)), float(rng.integers(h))
        for _ in range(int(rng.integers(cfg.stroke_vertices[0], cfg.stroke_vertices[1] + 1))):
            angle = float(rng.uniform(0.0, cfg.max_angle))
            if i % 2 == 0:  # as LaMa: alternate strokes turn the other way
                angle = 2 * math.pi - angle
            length = float(rng.uniform(*cfg.stroke_length)) * side
            width = max(1, round(float(rng.uniform(*cfg.brush_width)) * side))
            x1 = min(max(x + length * math.sin(angle), 0.0), w - 1.0)
            y1 = min(max(y + length * math.cos(angle), 0.0), h - 1.0)
            draw.line([(x, y), (x1, y1)], fill=1, width=width)
            r = width / 2.0
            for cx, cy in ((x, y), (x1, y1)):  # round joints and caps
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
            x, y = x1, y1
    return np.asarray(canvas, dtype=np.uint8) > 0


def _boxes(rng: np.random.Generator, cfg: MaskConfig, h: int, w: int) -> np.ndarray:
    """A few axis-aligned rectangles inside the margins: (H, W) bool."""
    mask = np.zeros((h, w), dtype=bool)
    my, mx = int(cfg.box_margin * h), int(cfg.box_margin * w)
    for _ in range(int(rng.integers(cfg.box_count[0], cfg.box_count[1] + 1))):
        bh = _side_px(rng, cfg.box_side, h, h - 2 * my)
        bw = _side_px(rng, cfg.box_side, w, w - 2 * mx)
        top = int(rng.integers(my, h - my - bh + 1))
        left = int(rng.integers(mx, w - mx - bw + 1))
        mask[top:top + bh, left:left + bw] = True
    return mask


def _side_px(rng: np.random.Generator, frac: tuple[float, float], n: int, room: int) -> int:
    lo = max(1, round(frac[0] * n))
    hi = max(lo, min(round(frac[1] * n), room))
    return int(rng.integers(lo, hi + 1))


def _outpaint(rng: np.random.Generator, cfg: MaskConfig, h: int, w: int) -> np.ndarray:
    """Bands along 1-4 sides (top, bottom, left, right): (H, W) bool whose complement is a rectangle."""
    sides = rng.random(4) < cfg.p_side
    if not sides.any():
        sides[int(rng.integers(4))] = True
    mask = np.zeros((h, w), dtype=bool)
    for s in np.flatnonzero(sides):
        n = h if s < 2 else w
        band = max(1, round(float(rng.uniform(*cfg.outpaint_width)) * n))
        _band(mask, int(s), band)
    return mask


def _band(mask: np.ndarray, side: int, band: int) -> None:
    if side == 0:
        mask[:band] = True
    elif side == 1:
        mask[mask.shape[0] - band:] = True
    elif side == 2:
        mask[:, :band] = True
    else:
        mask[:, mask.shape[1] - band:] = True


def _draw(rng: np.random.Generator, cfg: MaskConfig, h: int, w: int) -> np.ndarray:
    if cfg.kind == "strokes":
        return _strokes(rng, cfg, h, w)
    if cfg.kind == "boxes":
        return _boxes(rng, cfg, h, w)
    if cfg.kind == "outpaint":
        return _outpaint(rng, cfg, h, w)
    use_strokes = rng.random() < cfg.p_strokes  # lama: one generator per mask
    return _strokes(rng, cfg, h, w) if use_strokes else _boxes(rng, cfg, h, w)


# ---------------------------------------------------------------------------------------------------- repair
def _dilate(mask: np.ndarray) -> np.ndarray:
    """3×3 square dilation (a union of rectangles stays one)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])


def _trim(rng: np.random.Generator, mask: np.ndarray, keep: int) -> np.ndarray:
    """Keep the first ``keep`` hole pixels in raster order seen from a random side (a straight cut)."""
    side = int(rng.integers(4))
    view = [mask, mask[::-1], mask.T, mask.T[::-1]][side]
    flat = view.reshape(-1).copy()
    flat[np.flatnonzero(flat)[keep:]] = False
    out = flat.reshape(view.shape)
    return [out, out[::-1], out.T, out[::-1].T][side].copy()


def _repair(rng: np.random.Generator, cfg: MaskConfig, mask: np.ndarray, lo: int, hi: int) -> np.ndarray:
    h, w = mask.shape
    if cfg.kind == "outpaint":  # one band of in-range width keeps the complement a rectangle
        options = [(s, n, m) for s, (n, m) in enumerate([(h, w), (h, w), (w, h), (w, h)])
                   if max(1, _ceil_div(lo, m)) <= min(hi // m, n - 1)]
        side, n, m = options[int(rng.integers(len(options)))]
        out = np.zeros_like(mask)
        _band(out, side, int(rng.integers(max(1, _ceil_div(lo, m)), min(hi // m, n - 1) + 1)))
        return out
    if not mask.any():
        mask = mask.copy()
        mask[int(rng.integers(h)), int(rng.integers(w))] = True
    while mask.sum() < lo:
        mask = _dilate(mask)
    return _trim(rng, mask, hi) if mask.sum() > hi else mask


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _hole_bounds(cfg: MaskConfig, h: int, w: int) -> tuple[int, int]:
    """[lo, hi] hole pixel counts; an error when no mask of this size can satisfy them."""
    if isinstance(h, bool) or isinstance(w, bool) or not isinstance(h, int) or not isinstance(w, int) \
            or h < 4 or w < 4:
        raise DataError(f"mask size must be ints >= 4, got height={h!r}, width={w!r}")
    n = h * w
    lo, hi = math.ceil(cfg.min_hole * n - 1e-9), math.floor(cfg.max_hole * n + 1e-9)
    if cfg.kind == "outpaint":
        ok = any(max(1, _ceil_div(lo, m)) <= min(hi // m, k - 1) for k, m in ((h, w), (w, h)))
    else:
        ok = max(lo, 1) <= hi
    if not ok:
        raise DataError(f"no {cfg.kind} mask of size {h}x{w} has a hole fraction in [min_hole={cfg.min_hole}, "
                        f"max_hole={cfg.max_hole}]; widen the range or use a larger size")
    return lo, hi


# ---------------------------------------------------------------------------------------------------- public
def make_mask(cfg: MaskConfig, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A float32 (1, height, width) mask in {0, 1}, 1 = hole; a pure function of ``generator``'s state."""
    lo, hi = _hole_bounds(cfg, height, width)
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=generator.device))
    rng = np.random.default_rng(seed)
    best, best_miss = None, None
    for _ in range(cfg.max_tries):
        mask = _draw(rng, cfg, height, width)
        area = int(mask.sum())
        miss = max(lo - area, area - hi, 0)
        if miss == 0:
            best = mask
            break
        if best_miss is None or miss < best_miss:
            best, best_miss = mask, miss
    else:
        best = _repair(rng, cfg, best, lo, hi)
    return torch.from_numpy(best.astype(np.float32))[None]


def mask_for_item(cfg: MaskConfig, height: int, width: int, seed: int, index: int) -> torch.Tensor:
    """The mask of dataset item ``index`` in a run seeded with ``seed``: same (seed, index), same mask."""
    g = torch.Generator().manual_seed(seed_of(seed, _MASK_SALT, index))
    return make_mask(cfg, height, width, g)


__all__ = ["MASK_KINDS", "MaskConfig", "bicubic_downsample", "make_mask", "mask_for_item"]
