"""Aspect-ratio bucketing (kohya sd-scripts / NovelAI style) for photos of mixed shapes.

``make_buckets(size, step, max_ratio)``: every ``(w, h)`` with sides multiples of ``step`` (the model's total
downsampling: first-stage factor × UNet levels), area at most ``size²`` and each side as large as that allows, with
aspect ratio within ``max_ratio``. Each image goes to the bucket whose aspect ratio is nearest its own (in log ratio),
is resized to cover it and cropped to it — nothing is squashed and less is cut than with a square crop.

``bucket_batches(buckets_of, batch, seed, epoch)``: one pass's micro-batches — each bucket's images permuted, cut
into batches of ``batch`` (a bucket's incomplete last batch sits this pass out; the next pass permutes anew), and the
batches of all buckets permuted together, from ``(seed, epoch)``; every batch holds one bucket, so its images stack.
"""

from __future__ import annotations

import math

import torch

from .images import DataError
from .seeds import seed_of


def make_buckets(size: int, step: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """Bucket sizes ``(w, h)`` of area <= ``size²`` (see the module docstring), square first."""
    if step < 1 or size < step:
        raise DataError(f"bucketing needs 1 <= bucket step <= size, got step {step}, size {size}")
    if max_ratio < 1:
        raise DataError(f"data.bucket_max_ratio must be >= 1, got {max_ratio}")
    area = size * size
    out = set()
    w = step
    while w <= size * max_ratio:
        h = (area // w) // step * step  # the largest height that keeps the area
        if h >= step and max(w / h, h / w) <= max_ratio:
            out.add((w, h))
            out.add((h, w))
        w += step
    return sorted(out, key=lambda b: (abs(math.log(b[0] / b[1])), -b[0] * b[1], b))


def assign_buckets(sizes: list[tuple[int, int]], buckets: list[tuple[int, int]]) -> list[int]:
    """For each image ``(w, h)``, the index of the bucket with the nearest aspect ratio (ties: the larger area)."""
    logs = torch.tensor([math.log(w / h) for w, h in buckets])
    areas = torch.tensor([w * h for w, h in buckets], dtype=torch.float64)
    out = []
    for w, h in sizes:
        d = (logs - math.log(w / h)).abs()
        best = torch.nonzero(d <= d.min() + 1e-9).flatten()
        out.append(int(best[areas[best].argmax()]))
    return out


def bucket_batches(bucket_of: list[int], batch: int, seed: int, epoch: int) -> list[list[int]]:
    """One pass's batches of item indices, each inside one bucket (see the module docstring)."""
    g = torch.Generator().manual_seed(seed_of(seed, 23, epoch))
    members: dict[int, list[int]] = {}
    for i, b in enumerate(bucket_of):
        members.setdefault(b, []).append(i)
    batches = []
    for b in sorted(members):
        items = torch.tensor(members[b])[torch.randperm(len(members[b]), generator=g)].tolist()
        batches += [items[k:k + batch] for k in range(0, len(items) - batch + 1, batch)]
    if not batches:
        raise DataError(f"no bucket holds a whole batch of {batch} images (bucket sizes: "
                        f"{sorted(bucket_of.count(b) for b in set(bucket_of))}); use a smaller batch or fewer buckets")
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
