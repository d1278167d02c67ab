"""Structured conditions from the user: layouts (class + box per object) and semantic maps, checked and turned into
the tensors the layout-to-image and semantic-map-to-image models were trained on (``train/ldm.py``).

* A layout is a sequence of objects ``(class, x0, y0, x1, y1)``: ``class`` an integer label or a name such as
  ``"red circle"`` (ShapesWorld: colour + shape), the box in image fractions, ``0 <= x0 < x1 <= 1`` (y down).
* A semantic map is an integer image of labels (``0`` = background, ``1 + class`` = an object of that class, as
  ShapesWorld's ``segmentation``): a (H, W) tensor / array, or an 8-bit grayscale / palette PNG holding the labels.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.shapes import COLOUR_NAMES, NUM_CLASSES, SHAPES, class_index, class_name
from ..errors import LDMError
from .images import open_image
from .limits import Limits

LayoutLike = torch.Tensor | np.ndarray | Sequence[Sequence[Any]]


def class_from_name(name: str, class_names: tuple[str, ...] = ()) -> int:
    """A class name → its label: one of the model's ``class_names`` (recorded from its training data; matched without
    regard to case), or for a model without them a ShapesWorld ``"red circle"``. The error lists what is accepted."""
    if class_names:
        lowered = [c.lower() for c in class_names]
        if name.strip().lower() in lowered:
            return lowered.index(name.strip().lower())
        shown = ", ".join(repr(c) for c in class_names[:30]) + (" ..." if len(class_names) > 30 else "")
        raise LDMError(f"unknown class {name!r}: this model's classes are {shown} (or give an integer label "
                       f"0..{len(class_names) - 1})")
    words = name.lower().replace("_", " ").split()
    if len(words) != 2 or words[0] not in COLOUR_NAMES or words[1] not in SHAPES:
        raise LDMError(f"unknown object {name!r}: give '<colour> <shape>' with colour in {list(COLOUR_NAMES)} and "
                       f"shape in {list(SHAPES)}, or an integer class")
    return class_index(words[1], words[0])


def parse_layout(layout: LayoutLike, n_classes: int, max_objects: int | None = None) -> torch.Tensor:
    """Objects ``(class, x0, y0, x1, y1)`` → (K, 5) float tensor; rows with class -1 are padding (kept as given)."""
    if isinstance(layout, (torch.Tensor, np.ndarray)):
        rows = torch.as_tensor(layout, dtype=torch.float32)
        if rows.ndim != 2 or rows.shape[1] != 5:
            raise LDMError(f"a layout tensor must have shape (K, 5) with rows (class, x0, y0, x1, y1), "
                           f"got {tuple(rows.shape)}")
    else:
        parsed = []
        for i, obj in enumerate(layout):
            if isinstance(obj, (str, bytes)) or len(obj) != 5:
                raise LDMError(f"layout object {i} must be (class, x0, y0, x1, y1), got {obj!r}")
            c = class_from_name(obj[0]) if isinstance(obj[0], str) else obj[0]
            try:
                parsed.append([float(c), *(float(v) for v in obj[1:])])
            except (TypeError, ValueError):
                raise LDMError(f"layout object {i} must hold a class and four numbers, got {obj!r}") from None
        rows = torch.tensor(parsed, dtype=torch.float32).reshape(-1, 5)
    objects = rows[rows[:, 0] != -1]
    if objects.shape[0] == 0:
        raise LDMError("the layout has no objects; give at least one (class, x0, y0, x1, y1)")
    if max_objects is not None and objects.shape[0] > max_objects:
        raise LDMError(f"this model's layout encoder takes at most {max_objects} objects, got {objects.shape[0]}")
    cls = objects[:, 0]
    if (cls != cls.round()).any() or (cls < 0).any() or (cls >= n_classes).any():
        raise LDMError(f"layout classes must be integers in [0, {n_classes}) (or -1 for padding), "
                       f"got {cls.tolist()}")
    box = objects[:, 1:]
    if not torch.isfinite(box).all() or (box < 0).any() or (box > 1).any():
        raise LDMError(f"layout boxes must lie inside the image, coordinates in [0, 1], got {box.tolist()}")
    if (box[:, 2] <= box[:, 0]).any() or (box[:, 3] <= box[:, 1]).any():
        raise LDMError(f"layout boxes need x0 < x1 and y0 < y1 (x to the right, y down), got {box.tolist()}")
    return rows


def layout_text(rows: torch.Tensor) -> str:
    """A parsed layout as the images' parameters record it: ``red circle 0.1 0.2 0.5 0.6; ...`` (padding left out;
    a class past ShapesWorld's names as its number). Each coordinate is written as the shortest text that reads back
    to the same float32, so the boxes recorded are exactly the boxes drawn (the layout model sees 1e-5)."""
    objects = []
    for c, *box in rows.tolist():
        if c >= 0:
            name = class_name(int(c)) if int(c) < NUM_CLASSES else str(int(c))
            objects.append(" ".join([name, *(str(np.float32(v)) for v in box)]))
    return "; ".join(objects)


def pad_layout(rows: torch.Tensor, k: int) -> torch.Tensor:
    """(K', 5) → (max(K', k), 5) with padding rows (class -1) appended: the layout encoder was trained on a fixed
    number of rows (ShapesWorld: 3), and the position of its [SEP] token depends on the row count."""
    if rows.shape[0] >= k:
        return rows
    return torch.cat([rows, null_layout(k - rows.shape[0])])


def null_layout(k: int) -> torch.Tensor:
    """The layout condition dropout trains with: every row padding."""
    rows = torch.zeros(k, 5)
    rows[:, 0] = -1
    return rows


def load_semantic_map(semantic_map: torch.Tensor | np.ndarray | Image.Image | str | os.PathLike,
                      n_labels: int, limits: Limits | None = None) -> torch.Tensor:
    """A label map → (H, W) int64 with labels in [0, n_labels)."""
    if isinstance(semantic_map, (str, os.PathLike)):
        semantic_map = open_image(semantic_map, "semantic map", limits)
    if isinstance(semantic_map, Image.Image):
        if semantic_map.mode not in ("L", "P", "I", "I;16"):
            raise LDMError(f"a semantic map image must hold one label per pixel (grayscale 'L', palette 'P' or "
                           f"integer 'I' PNG), got mode {semantic_map.mode!r}")
        semantic_map = np.asarray(semantic_map).astype(np.int64)
    labels = torch.as_tensor(semantic_map)
    if labels.ndim == 3 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 2:
        raise LDMError(f"a semantic map must be (H, W) labels, got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        if (labels != labels.round()).any():
            raise LDMError("a semantic map must hold integer labels, got fractional values")
        labels = labels.long()
    labels = labels.long()
    if labels.min() < 0 or labels.max() >= n_labels:
        raise LDMError(f"semantic map labels must be in [0, {n_labels}) (0 = background, 1 + class = object), "
                       f"got range [{int(labels.min())}, {int(labels.max())}]")
    return labels


def semantic_concat(labels: torch.Tensor, n_labels: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W) labels → (1, n_labels, h, w): one-hot, area-resized to the latent size (as in training)."""
    onehot = F.one_hot(labels, n_labels).permute(2, 0, 1)[None].float()  # (1, L, H, W)
    return F.interpolate(onehot, size=latent_hw, mode="area")
