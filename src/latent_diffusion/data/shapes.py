"""ShapesWorld: a procedural, seeded dataset with ground truth for all seven LDM tasks.

Each item is drawn on the fly from ``numpy.random.default_rng([seed, index])``, so item ``i`` of a dataset
with seed ``s`` is the same on every machine, worker and epoch, and costs ~1 ms at 64×64.

An item (``ShapesWorld[i]``) is a dict:

=================  =========================  ==========================================================
key                type / shape               meaning
=================  =========================  ==========================================================
``image``          float32 (3, H, W) [-1, 1]  the RGB picture
``caption``        str                        "a red circle above a blue square" (relation of objects 0, 1)
``class_label``    int64 ()                   class of the *main* object (the first one the caption names)
``layout``         float32 (MAX_OBJECTS, 5)   rows ``(class, x0, y0, x1, y1)``, box in [0, 1] (x1, y1
                                              exclusive), padding rows are ``(-1, 0, 0, 0, 0)``
``num_objects``    int64 ()                   number of real rows in ``layout``
``segmentation``   int64 (H, W)               0 = background, ``1 + class`` where an object is drawn
``lowres``         float32 (3, H/4, W/4)      area-downsampled ``image`` (×4, for super-resolution)
``mask_box``       float32 (1, H, W) {0, 1}   a random rectangle, 1 = the region to inpaint
``mask_stroke``    float32 (1, H, W) {0, 1}   1-3 random thick strokes, 1 = the region to inpaint
=================  =========================  ==========================================================

Class mapping: ``class = shape_index * len(COLOURS) + colour_index`` with the orders of ``SHAPES`` and
``COLOURS`` below (so ``0`` = red circle, ``1`` = green circle, ..., ``8`` = red square, ...);
``class_name(c)`` gives "red circle". There are ``NUM_CLASSES = 40`` classes and ``NUM_SEGMENT_CLASSES = 41``
segmentation labels (with the background).

Captions: one object → "a red circle"; two → "a red circle above a blue square"; three → "... and a green
star" (the third object carries no relation). The relation words are ``above``, ``below``, ``left of``,
``right of``; objects are placed so that the stated relation is the dominant axis (|Δ| along it exceeds 1.5×
the other) and objects never overlap, so the caption, boxes and segmentation agree exactly.
Backgrounds are neutral grey (plain, stripes, checker or noise) so they never carry a colour name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.55, 0.10, 0.80),
    "orange": (1.00, 0.55, 0.00),
    "cyan": (0.00, 0.85, 0.85),
    "pink": (1.00, 0.50, 0.80),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
RELATIONS: tuple[str, ...] = ("above", "below", "left of", "right of")
BACKGROUNDS: tuple[str, ...] = ("plain", "stripes", "checker", "noise")
NUM_CLASSES = len(SHAPES) * len(COLOURS)
NUM_SEGMENT_CLASSES = NUM_CLASSES + 1
MAX_OBJECTS = 3
EVAL_SEED = 777  # held-out scenes for every evaluation and demo (generators train on seed 0)
# the seven tasks this dataset supplies ground truth for (keys a training config may ask for)
TASKS: tuple[str, ...] = ("unconditional", "class", "txt2img", "layout", "semantic", "superres", "inpaint")


def class_index(shape: str, colour: str) -> int:
    return SHAPES.index(shape) * len(COLOURS) + COLOUR_NAMES.index(colour)


def class_name(c: int) -> str:
    """``class_name(0) == "red circle"``."""
    if not 0 <= c < NUM_CLASSES:
        raise ConfigError(f"ShapesWorld class must be in [0, {NUM_CLASSES}), got {c}")
    return f"{COLOUR_NAMES[c % len(COLOURS)]} {SHAPES[c // len(COLOURS)]}"


def vocabulary() -> list[str]:
    """Every word a ShapesWorld caption can contain (for a restricted-vocabulary text encoder)."""
    words = ["a", "an", "and"] + list(COLOUR_NAMES) + list(SHAPES) + ["above", "below", "left", "right", "of"]
    return words


@dataclass
class ShapesWorldConfig:
    """What the generator draws. Sizes are fractions of ``min(H, W)`` (half-extent of an object)."""

    size: int | tuple[int, int] = 64  # H = W = size, or (H, W)
    length: int = 100_000  # number of items (indices 0..length-1)
    seed: int = 0
    min_objects: int = 1
    max_objects: int = 3
    min_half_size: float = 0.11
    max_half_size: float = 0.19
    backgrounds: tuple[str, ...] = BACKGROUNDS
    colour_jitter: float = 0.04  # uniform ± per channel on the object colour
    object_weights: tuple[float, ...] | None = None  # P(n objects) for n = min..max; None = uniform

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ConfigError(
                f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {self.min_objects}, {self.max_objects}"
            )
        bad = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if bad or not self.backgrounds:
            raise ConfigError(f"unknown background(s) {bad}; accepted: {list(BACKGROUNDS)}")
        h, w = self.hw
        if min(h, w) < 8:
            raise ConfigError(f"ShapesWorld size must be at least 8 pixels, got {self.size}")
        if self.object_weights is not None and len(self.object_weights) != self.max_objects - self.min_objects + 1:
            raise ConfigError(
                f"object_weights needs {self.max_objects - self.min_objects + 1} entries (one per object count "
                f"{self.min_objects}..{self.max_objects}), got {list(self.object_weights)}"
            )

    @property
    def hw(self) -> tuple[int, int]:
        return (self.size, self.size) if isinstance(self.size, int) else (int(self.size[0]), int(self.size[1]))


@dataclass
class SceneObject:
    shape: str
    colour: str
    cx: float  # centre, pixels
    cy: float
    half: float  # half-extent, pixels
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    box: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))  # normalised, from the mask

    @property
    def cls(self) -> int:
        return class_index(self.shape, self.colour)


# ---- geometry ---------------------------------------------------------------------------------------


def _polygon_mask(px: np.ndarray, py: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon for every pixel centre; px, py: (H, W); vx, vy: (V,)."""
    inside = np.zeros(px.shape, dtype=bool)
    j = len(vx) - 1
    for i in range(len(vx)):
        cond = (vy[i] > py) != (vy[j] > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = (vx[j] - vx[i]) * (py - vy[i]) / (vy[j] - vy[i]) + vx[i]
        inside ^= cond & (px < xcross)
        j = i
    return inside


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, s: float) -> np.ndarray:
    """Boolean mask of ``shape`` with half-extent ``s`` given pixel offsets from its centre (image y points down)."""
    if shape == "circle":
        return dx * dx + dy * dy <= s * s
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * s
    if shape == "triangle":  # apex up
        vx = np.array([0.0, -s, s])
        vy = np.array([-s, 0.8 * s, 0.8 * s])
        return _polygon_mask(dx, dy, vx, vy)
    if shape == "star":  # five points, one up
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, s, 0.45 * s)
        return _polygon_mask(dx, dy, rad * np.cos(ang), rad * np.sin(ang) + 0.05 * s)
    if shape == "cross":
        arm = 0.33 * s
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= s)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= s))
    raise ConfigError(f"unknown shape {shape!r}; accepted: {list(SHAPES)}")


def _relation_holds(rel: str, a: SceneObject, b: SceneObject) -> bool:
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if rel in ("above", "below"):
        ok = abs(dy) > 1.5 * abs(dx)
        return ok and (dy < 0 if rel == "above" else dy > 0)
    ok = abs(dx) > 1.5 * abs(dy)
    return ok and (dx < 0 if rel == "left of" else dx > 0)


def _separated(a: SceneObject, b: SceneObject, gap: float) -> bool:
    return max(abs(a.cx - b.cx), abs(a.cy - b.cy)) > a.half + b.half + gap


# ---- the dataset ------------------------------------------------------------------------------------


class ShapesWorld(Dataset):
    """``ShapesWorld(ShapesWorldConfig(size=64, seed=0))[i]`` → the dict described in the module docstring."""

    tasks = TASKS
    num_classes = NUM_CLASSES
    num_segment_classes = NUM_SEGMENT_CLASSES

    def __init__(self, config: ShapesWorldConfig | None = None, **overrides) -> None:
        if config is None:
            config = ShapesWorldConfig(**overrides)
        elif overrides:
            raise ConfigError("pass either a ShapesWorldConfig or keyword overrides, not both")
        self.config = config
        h, w = config.hw
        self.h, self.w = h, w
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        self._px, self._py = xs + 0.5, ys + 0.5  # pixel centres

    def __len__(self) -> int:
        return self.config.length

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, index])

    # -- scene sampling -----------------------------------------------------------------------------
    def sample_scene(self, index: int) -> tuple[list[SceneObject], str | None, np.random.Generator]:
        """Objects (main object first) and the relation of object 0 to object 1 (None if one object)."""
        if not 0 <= index < len(self):
            raise IndexError(f"ShapesWorld index {index} out of range [0, {len(self)})")
        cfg, rng = self.config, self.rng(index)
        counts = np.arange(cfg.min_objects, cfg.max_objects + 1)
        p = None if cfg.object_weights is None else np.asarray(cfg.object_weights, float) / sum(cfg.object_weights)
        n = int(rng.choice(counts, p=p))
        relation = str(rng.choice(RELATIONS)) if n >= 2 else None
        kinds: list[tuple[str, str]] = []
        while len(kinds) < n:  # distinct (shape, colour) pairs, so the caption names each object unambiguously
            k = (str(rng.choice(SHAPES)), str(rng.choice(COLOUR_NAMES)))
            if k not in kinds:
                kinds.append(k)
        m = min(self.h, self.w)
        for _attempt in range(200):
            objs = [self._random_object(rng, s, c, m) for s, c in kinds]
            if relation is not None and not _relation_holds(relation, objs[0], objs[1]):
                continue
            if all(_separated(a, b, 0.03 * m) for i, a in enumerate(objs) for b in objs[i + 1:]):
                break
        else:  # deterministic fallback: small objects on a fixed grid that satisfies the relation
            objs = self._fallback_objects(kinds, relation, m)
        for o in objs:
            jit = rng.uniform(-cfg.colour_jitter, cfg.colour_jitter, size=3)
            o.rgb = tuple(np.clip(np.array(COLOURS[o.colour]) + jit, 0.0, 1.0).tolist())
        return objs, relation, rng

    def _random_object(self, rng: np.random.Generator, shape: str, colour: str, m: int) -> SceneObject:
        cfg = self.config
        half = rng.uniform(cfg.min_half_size, cfg.max_half_size) * m
        cx = rng.uniform(half + 1, self.w - half - 1)
        cy = rng.uniform(half + 1, self.h - half - 1)
        return SceneObject(shape, colour, cx, cy, half)

    def _fallback_objects(self, kinds, relation, m) -> list[SceneObject]:
        half = 0.1 * m
        spots = {"above": [(0.5, 0.25), (0.5, 0.75), (0.2, 0.5)], "below": [(0.5, 0.75), (0.5, 0.25), (0.2, 0.5)],
                 "left of": [(0.25, 0.5), (0.75, 0.5), (0.5, 0.2)], "right of": [(0.75, 0.5), (0.25, 0.5), (0.5, 0.2)],
                 None: [(0.5, 0.5)]}[relation]
        return [SceneObject(s, c, x * self.w, y * self.h, half) for (s, c), (x, y) in zip(kinds, spots)]

    # -- rendering ----------------------------------------------------------------------------------
    def _object_mask(self, o: SceneObject) -> np.ndarray:
        """Full-image boolean mask of ``o``, computed only inside its bounding square (speed)."""
        y0, y1 = max(0, int(o.cy - o.half) - 1), min(self.h, int(o.cy + o.half) + 2)
        x0, x1 = max(0, int(o.cx - o.half) - 1), min(self.w, int(o.cx + o.half) + 2)
        mask = np.zeros((self.h, self.w), dtype=bool)
        px, py = self._px[y0:y1, x0:x1], self._py[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] = shape_mask(o.shape, px - o.cx, py - o.cy, o.half)
        return mask

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        kind = str(rng.choice(self.config.backgrounds))
        base = rng.uniform(0.3, 0.7)
        h, w = self.h, self.w
        if kind == "plain":
            g = np.full((h, w), base)
        elif kind == "stripes":
            period = rng.uniform(4, 12) * max(h, w) / 64
            theta = rng.uniform(0, np.pi)
            t = self._px * np.cos(theta) + self._py * np.sin(theta)
            g = base + 0.08 * np.sign(np.sin(2 * np.pi * t / period))
        elif kind == "checker":
            cell = max(2, int(rng.integers(4, 12) * max(h, w) / 64))
            g = base + 0.07 * (((self._px // cell) + (self._py // cell)) % 2 * 2 - 1)
        else:  # noise
            g = base + rng.normal(0.0, 0.05, size=(h, w))
        return np.repeat(np.clip(g, 0, 1)[None], 3, axis=0)  # (3, H, W) neutral grey

    def _strokes(self, rng: np.random.Generator) -> np.ndarray:
        m = min(self.h, self.w)
        mask = np.zeros((self.h, self.w), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            width = rng.uniform(0.04, 0.1) * m
            pts = rng.uniform([0, 0], [self.w, self.h], size=(int(rng.integers(2, 5)), 2))
            for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
                vx, vy = x1 - x0, y1 - y0
                t = np.clip(((self._px - x0) * vx + (self._py - y0) * vy) / max(vx * vx + vy * vy, 1e-9), 0, 1)
                d2 = (self._px - x0 - t * vx) ** 2 + (self._py - y0 - t * vy) ** 2
                mask |= d2 <= width * width
        return mask

    def _box_mask(self, rng: np.random.Generator) -> np.ndarray:
        bh = int(rng.uniform(0.25, 0.6) * self.h)
        bw = int(rng.uniform(0.25, 0.6) * self.w)
        y0 = int(rng.integers(0, self.h - bh + 1))
        x0 = int(rng.integers(0, self.w - bw + 1))
        mask = np.zeros((self.h, self.w), dtype=bool)
        mask[y0:y0 + bh, x0:x0 + bw] = True
        return mask

    def _set_box(self, o: SceneObject, mask: np.ndarray) -> None:
        ys, xs = np.nonzero(mask)
        o.box = (xs.min() / self.w, ys.min() / self.h, (xs.max() + 1) / self.w, (ys.max() + 1) / self.h)

    def caption_and_layout(self, index: int) -> tuple[str, torch.Tensor]:
        """Item ``index``'s caption and (MAX_OBJECTS, 5) layout without rendering the image (the same values as
        ``self[index]``)."""
        objs, relation, _ = self.sample_scene(int(index))
        for o in objs:
            self._set_box(o, self._object_mask(o))
        return caption_for(objs, relation), torch.from_numpy(_layout_rows(objs))

    def __getitem__(self, index: int) -> dict:
        objs, relation, rng = self.sample_scene(int(index))
        img = self._background(rng)  # (3, H, W) in [0, 1]
        seg = np.zeros((self.h, self.w), dtype=np.int64)
        for o in objs:
            m = self._object_mask(o)
            img[:, m] = np.asarray(o.rgb)[:, None]
            seg[m] = 1 + o.cls
            self._set_box(o, m)
        layout = _layout_rows(objs)
        image = torch.from_numpy(img.astype(np.float32)) * 2 - 1  # (3, H, W) in [-1, 1]
        lowres = _downsample4(img)
        return {
            "image": image,
            "caption": caption_for(objs, relation),
            "class_label": torch.tensor(objs[0].cls, dtype=torch.int64),
            "layout": torch.from_numpy(layout),
            "num_objects": torch.tensor(len(objs), dtype=torch.int64),
            "segmentation": torch.from_numpy(seg),
            "lowres": lowres,
            "mask_box": torch.from_numpy(self._box_mask(rng).astype(np.float32))[None],
            "mask_stroke": torch.from_numpy(self._strokes(rng).astype(np.float32))[None],
        }


def _layout_rows(objs: list[SceneObject]) -> np.ndarray:
    """(MAX_OBJECTS, 5) float32 rows (class, x0, y0, x1, y1); rows without an object have class -1."""
    layout = np.zeros((MAX_OBJECTS, 5), dtype=np.float32)
    layout[:, 0] = -1
    for i, o in enumerate(objs):
        layout[i] = (o.cls, *o.box)
    return layout


def _downsample4(img: np.ndarray) -> torch.Tensor:
    """(3, H, W) in [0, 1] → (3, H//4, W//4) in [-1, 1], box (area) filter."""
    c, h, w = img.shape
    if h % 4 == 0 and w % 4 == 0:  # numpy block mean: much cheaper than adaptive_avg_pool2d on a busy CPU
        small = img.reshape(c, h // 4, 4, w // 4, 4).mean(axis=(2, 4))
        return torch.from_numpy(small.astype(np.float32)) * 2 - 1
    t = torch.from_numpy(img.astype(np.float32))[None] * 2 - 1
    return F.interpolate(t, size=(max(1, h // 4), max(1, w // 4)), mode="area")[0]


def caption_for(objs: list[SceneObject], relation: str | None) -> str:
    """"a red circle above a blue square and a green star"."""
    names = [f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.colour} {o.shape}" for o in objs]
    if relation is None:
        return names[0]
    text = f"{names[0]} {relation} {names[1]}"
    return text + "".join(f" and {n}" for n in names[2:])
