"""Splitting one call's n images into sampler batches: the rows of the conditioning each batch takes, and its
progress bar's label."""

from __future__ import annotations

from typing import Any

import torch


def take(c: Any, rows: slice, n: int) -> Any:
    """Rows ``rows`` of per-image conditioning (tensors with n rows, dicts of them); shared (1-row) parts as given."""
    if isinstance(c, dict):
        return {k: take(v, rows, n) for k, v in c.items()}
    if isinstance(c, torch.Tensor) and c.shape[0] == n:
        return c[rows]
    return c


def bar_label(progress: bool | str, rows: slice, n: int) -> bool | str:
    """The progress bar's description for the batch ``rows`` of n images (False: no bar)."""
    if not progress:
        return False
    if isinstance(progress, str):
        return progress
    return f"image {rows.start + 1}/{n}" if rows.stop - rows.start == 1 else f"images {rows.start + 1}-{rows.stop}/{n}"
