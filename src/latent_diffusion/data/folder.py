"""A user's image folder as records: each image (recursive), its caption, its class label — checked at step 0.

Conventions users already have:

- **captions**: ``metadata.jsonl`` or ``metadata.csv`` (the Hugging Face ``imagefolder`` convention: a ``file_name``
  column plus ``text`` or ``caption``; the file may sit in any sub-folder, ``file_name`` relative to it), or a
  sidecar ``name.txt`` next to ``name.png`` (the kohya / A1111 convention). ``captions="auto"`` takes metadata when
  there is any, else sidecars when there are any.
- **class labels**: a ``label`` column in the metadata, or the first-level sub-folder (``root/cat/x.jpg``: the
  torchvision ``ImageFolder`` convention). ``class_names`` are the folder names (or the column's values), sorted
  (numerically when they are all integers), and label ``i`` is ``class_names[i]``.

Every image is decoded completely when the folder is scanned (in threads: PIL releases the GIL while decoding), so a
file that cannot be read is found before training starts: skipped with one warning naming the count and the first
files, or an error with ``strict``.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .decode import check_image, is_image_file, load_rgb
from .images import DataError

CAPTION_SOURCES = ("auto", "metadata", "sidecar", "none")
LABEL_SOURCES = ("none", "auto", "folders", "column")
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")


@dataclass(frozen=True)
class Record:
    path: Path
    width: int  # after EXIF orientation
    height: int
    caption: str | None = None
    label: int | None = None


@dataclass
class FolderIndex:
    root: Path
    records: list[Record]
    class_names: tuple[str, ...] = ()
    skipped: list[str] = field(default_factory=list)  # "name (reason)" of files that could not be decoded

    def __len__(self) -> int:
        return len(self.records)

    def load(self, k: int) -> tuple[Image.Image, str | None, int | None]:
        """Record ``k``'s RGB image, caption and label."""
        r = self.records[k]
        return load_rgb(r.path), r.caption, r.label

    def fields(self, k: int) -> tuple[str | None, int | None]:
        return self.records[k].caption, self.records[k].label

    @property
    def has_captions(self) -> bool:
        return any(r.caption is not None for r in self.records)


def _read_metadata(path: Path) -> list[dict]:
    """Rows of a metadata.jsonl / .csv, each with ``file_name``; a DataError naming the file and line otherwise."""
    rows: list[dict] = []
    try:
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not a JSON object ({e})") from e
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}")
                    rows.append(row)
        else:
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a byte-order mark
                rows = list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e})") from e
    for n, row in enumerate(rows, 1):
        if "file_name" not in row:
            raise DataError(f"{path}: row {n} has no 'file_name' (columns: {sorted(row)}); the imagefolder "
                            "convention is file_name plus text or caption")
    return rows


def _metadata(root: Path) -> dict[Path, dict]:
    """Image path → its metadata row, from every metadata file under ``root``."""
    out: dict[Path, dict] = {}
    for name in METADATA_NAMES:
        for meta in sorted(root.rglob(name)):
            for row in _read_metadata(meta):
                p = (meta.parent / str(row["file_name"]).replace("\\", "/")).resolve()
                if p in out:
                    raise DataError(f"{meta}: {row['file_name']} is listed twice in the folder's metadata")
                out[p] = row
    return out


def _row_caption(row: dict) -> str | None:
    for key in ("text", "caption"):
        if key in row and row[key] is not None:
            return str(row[key])
    return None


def _sort_names(names: set[str]) -> tuple[str, ...]:
    if names and all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _check_all(paths: list[Path], workers: int) -> list[tuple[int, int] | str]:
    if workers <= 1 or len(paths) < 64:
        return [check_image(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(check_image, paths, chunksize=32))


def scan_folder(root: str | os.PathLike, *, captions: str = "auto", labels: str = "none",
                missing_caption: str = "error", strict: bool = False, workers: int | None = None,
                need_captions: bool = False) -> FolderIndex:
    """Index the images under ``root`` (see the module docstring). ``missing_caption``: ``error`` names the image
    whose caption is missing; ``empty`` trains it with the empty caption. ``labels="none"`` reads no labels.
    ``need_captions``: a folder in which ``captions="auto"`` finds no captions at all is an error (a text task)."""
    root = Path(root)
    if captions not in CAPTION_SOURCES:
        raise DataError(f"data.captions must be one of {list(CAPTION_SOURCES)}, got {captions!r}")
    if labels not in LABEL_SOURCES:
        raise DataError(f"data.labels must be one of {list(LABEL_SOURCES)}, got {labels!r}")
    if missing_caption not in ("error", "empty"):
        raise DataError(f"data.missing_caption must be 'error' or 'empty', got {missing_caption!r}")
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder")
    paths = sorted(p for p in root.rglob("*") if is_image_file(p) and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1]))
    if not paths:
        raise DataError(f"data folder {root} has no images (accepted suffixes: .png .jpg .jpeg .webp .bmp .gif "
                        ".tif .tiff .ppm .pgm)")
    meta = _metadata(root) if captions in ("auto", "metadata") or labels in ("auto", "column") else {}
    if captions == "auto":
        captions = "metadata" if meta else ("sidecar" if any(p.with_suffix(".txt").is_file() for p in paths)
                                           else "none")
        if captions == "none" and need_captions:
            raise DataError(f"{root} has no captions: give each image a caption in metadata.jsonl / metadata.csv "
                            "(file_name + text, the imagefolder convention) or in a sidecar name.txt beside name.png")
    if captions == "metadata" and not meta:
        raise DataError(f"data.captions='metadata' but {root} has no metadata.jsonl / metadata.csv")
    if labels == "auto":
        labels = "column" if any("label" in r for r in meta.values()) else "folders"
    caps = _captions(root, paths, meta, captions, missing_caption)
    label_names = _labels(root, paths, meta, labels)
    results = _check_all(paths, workers if workers is not None else min(8, os.cpu_count() or 1))
    good, bad = [], []
    for p, res in zip(paths, results):
        if isinstance(res, str):
            bad.append(f"{p.relative_to(root)} ({res})")
        else:
            good.append((p, res))
    # class ids from the classes that kept an image (a class whose files are all broken gets none)
    class_names = _sort_names({label_names[p] for p, _ in good}) if label_names else ()
    ids = {n: i for i, n in enumerate(class_names)}
    records = [Record(p, w, h, caps.get(p), ids[label_names[p]] if label_names else None) for p, (w, h) in good]
    if bad and strict:
        raise DataError(f"{root}: {len(bad)} image(s) cannot be decoded (--strict-data), e.g. {bad[:5]}")
    if bad:
        warnings.warn(f"{root}: skipped {len(bad)} unreadable/corrupt image(s), e.g. {bad[:5]}", stacklevel=2)
    if not records:
        raise DataError(f"data folder {root} has no readable images ({len(bad)} corrupt, e.g. {bad[:3]})")
    return FolderIndex(root, records, class_names, bad)


def _captions(root: Path, paths: list[Path], meta: dict[Path, dict], source: str,
              missing: str) -> dict[Path, str]:
    if source == "none":
        return {}
    out: dict[Path, str] = {}
    lacking: list[str] = []
    for p in paths:
        if source == "metadata":
            row = meta.get(p.resolve())
            cap = None if row is None else _row_caption(row)
        else:
            side = p.with_suffix(".txt")
            try:
                cap = side.read_text(encoding="utf-8-sig").strip() if side.is_file() else None
            except UnicodeDecodeError as e:
                raise DataError(f"caption file {side} is not UTF-8 text ({e}); save it as UTF-8") from e
        if cap is None:
            lacking.append(str(p.relative_to(root)))
            cap = ""
        out[p] = cap
    if lacking and missing == "error":
        where = ("a row with text or caption in metadata.jsonl / metadata.csv" if source == "metadata"
                 else "a sidecar .txt file next to it")
        raise DataError(f"{root}: {len(lacking)} image(s) have no caption ({where}), e.g. {lacking[:5]}; add them, "
                        "or train those images with the empty caption (data.missing_caption: empty, "
                        "--allow-missing-captions)")
    return out


def _labels(root: Path, paths: list[Path], meta: dict[Path, dict], source: str) -> dict[Path, str]:
    """Image → its class name (sub-folder or ``label`` column); {} without labels."""
    if source == "none":
        return {}
    if source == "column":
        raw: dict[Path, str] = {}
        lacking = []
        for p in paths:
            row = meta.get(p.resolve())
            if row is None or row.get("label") in (None, ""):
                lacking.append(str(p.relative_to(root)))
            else:
                raw[p] = str(row["label"])
        if lacking:
            raise DataError(f"{root}: {len(lacking)} image(s) have no 'label' in the metadata, e.g. {lacking[:5]}")
    else:
        loose = [str(p.relative_to(root)) for p in paths if p.parent == root]
        if loose:
            raise DataError(f"{root}: class labels come from sub-folder names (root/CLASS/image), but {len(loose)} "
                            f"image(s) sit in the root itself, e.g. {loose[:5]}; move them into class folders or "
                            "give a 'label' column in metadata.jsonl")
        raw = {p: p.relative_to(root).parts[0] for p in paths}
    return raw
