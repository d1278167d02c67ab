"""Per-image annotations beside an image folder: label maps (semantic synthesis) and COCO-style boxes (layouts).

- **Label maps**: a second folder with one single-channel image per training image, paired by relative path and
  stem (``images/a/b.jpg`` ↔ ``labels/a/b.png``); each pixel's value is its class id, ``0 .. n_classes - 1``
  (ADE20K / COCO-Stuff / Cityscapes-style PNGs). Checked when the folder is scanned: every image has one, of the
  image's size, and no value is ``>= n_classes``.
- **Layouts**: a COCO ``instances``-style JSON — ``images`` (``id``, ``file_name`` relative to the image folder),
  ``annotations`` (``image_id``, ``bbox`` = ``[x, y, width, height]`` in pixels, ``category_id``) and
  ``categories`` (``id``, ``name``). Category ``k`` in id order is layout class ``k``; ``names`` lists them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .decode import DECODE_ERRORS, IMAGE_SUFFIXES
from .folder import FolderIndex
from .images import DataError


def label_map_path(index: FolderIndex, image: Path, labels_root: Path) -> Path | None:
    rel = image.relative_to(index.root).with_suffix("")
    for suffix in (".png", *IMAGE_SUFFIXES):
        p = labels_root / rel.with_suffix(suffix)
        if p.is_file():
            return p
    return None


def load_label_map(path: Path) -> Image.Image:
    """A label map as PIL mode ``L`` or ``I`` (palette PNGs keep their indices, not their colours)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            return im.convert("I") if im.mode.startswith("I;16") else im.copy()
        raise DataError(f"label map {path} has mode {im.mode}; need a single-channel image (L, P, I or I;16) whose "
                        "pixel values are class ids")


def pair_label_maps(index: FolderIndex, labels_root: str | os.PathLike, n_classes: int) -> list[Path]:
    """The label map of every record, checked (see the module docstring)."""
    root = Path(labels_root)
    if not root.is_dir():
        raise DataError(f"label-map folder {root} does not exist or is not a folder")
    out, missing, bad = [], [], []
    for r in index.records:
        p = label_map_path(index, r.path, root)
        if p is None:
            missing.append(str(r.path.relative_to(index.root)))
            continue
        try:
            lab = load_label_map(p)
        except DECODE_ERRORS as e:
            bad.append(f"{p.name} ({type(e).__name__}: {e})")
            continue
        if lab.size != (r.width, r.height):
            bad.append(f"{p.name} is {lab.size[0]}x{lab.size[1]}, its image {r.width}x{r.height}")
        elif int(np.asarray(lab).max()) >= n_classes or int(np.asarray(lab).min()) < 0:
            bad.append(f"{p.name} holds values {int(np.asarray(lab).min())}..{int(np.asarray(lab).max())}, "
                       f"outside 0..{n_classes - 1} (data.num_segment_classes = {n_classes})")
        out.append(p)
    if missing:
        raise DataError(f"{root}: {len(missing)} image(s) have no label map (paired by relative path and stem), "
                        f"e.g. {missing[:5]}")
    if bad:
        raise DataError(f"{root}: {len(bad)} label map(s) cannot be used, e.g. {bad[:5]}")
    return out


@dataclass(frozen=True)
class Layouts:
    names: tuple[str, ...]  # layout class k = names[k]
    boxes: dict[Path, np.ndarray]  # image → (N, 4) x0, y0, x1, y1 in pixels
    classes: dict[Path, np.ndarray]  # image → (N,) int64 layout classes


def read_coco_layouts(index: FolderIndex, json_path: str | os.PathLike) -> Layouts:
    """Boxes and categories of every record from a COCO-style JSON (records it does not list have no boxes)."""
    path = Path(json_path)
    if not path.is_file():
        raise DataError(f"layout file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cats = sorted(data["categories"], key=lambda c: c["id"])
        images = {im["id"]: (index.root / str(im["file_name"]).replace("\\", "/")).resolve() for im in data["images"]}
        anns = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a COCO-style layout file (images, annotations, categories): "
                        f"{type(e).__name__}: {e}") from e
    cat_index = {c["id"]: k for k, c in enumerate(cats)}
    by_path = {r.path.resolve(): r.path for r in index.records}
    boxes: dict[Path, list] = {p: [] for p in by_path.values()}
    classes: dict[Path, list] = {p: [] for p in by_path.values()}
    for n, a in enumerate(anns):
        try:
            img, (x, y, w, h), cat = images[a["image_id"]], a["bbox"], cat_index[a["category_id"]]
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{path}: annotation {n} has an unknown image_id / category_id or a bbox that is not "
                            f"[x, y, width, height] ({type(e).__name__}: {e})") from e
        if img in by_path:
            boxes[by_path[img]].append((x, y, x + w, y + h))
            classes[by_path[img]].append(cat)
    matched = set(images.values()) & set(by_path)
    if not matched:
        raise DataError(f"{path}: none of its {len(images)} images is in {index.root} (file_name is relative to the "
                        f"image folder; e.g. {next(iter(images.values()), None)}); check data.root and data.layout_json")
    if len(matched) < len(by_path):
        import warnings

        warnings.warn(f"{path} lists {len(matched)} of the folder's {len(by_path)} images; the others train with an "
                      "empty layout", stacklevel=2)
    return Layouts(tuple(str(c["name"]) for c in cats),
                   {p: np.asarray(b, np.float64).reshape(-1, 4) for p, b in boxes.items()},
                   {p: np.asarray(c, np.int64) for p, c in classes.items()})


def layout_rows(boxes: np.ndarray, classes: np.ndarray, max_objects: int) -> np.ndarray:
    """(max_objects, 5) float32 rows ``(class, x0, y0, x1, y1)`` of [0, 1] boxes, largest first, padding rows
    ``(-1, 0, 0, 0, 0)`` (the ShapesWorld layout format)."""
    rows = np.zeros((max_objects, 5), np.float32)
    rows[:, 0] = -1
    if len(boxes):
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")[:max_objects]
        rows[: len(order), 0] = classes[order]
        rows[: len(order), 1:] = boxes[order]
    return rows
