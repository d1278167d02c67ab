"""Sampling progress on stderr: a tqdm bar on a terminal or in a notebook, plain log lines elsewhere (a log file, a
CI job, a pipe), where a bar would be noise or nothing at all."""

from __future__ import annotations

import math
import sys
import time
from typing import Callable

import torch

Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
LINES = 4  # log lines per run when stderr is not a terminal: at 25 %, 50 %, 75 % and 100 % of the steps


def with_progress(callback: Callback | None, total: int, progress: bool | str) -> Callback | None:
    """Wrap ``callback`` to report each step; a string ``progress`` labels the bar / lines ("sampling" otherwise)."""
    if not progress:
        return callback
    label = progress if isinstance(progress, str) else "sampling"
    tick = _bar(label, total) if sys.stderr.isatty() or "ipykernel" in sys.modules else _lines(label, total)

    def report(step: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        tick(step)
        if callback is not None:
            callback(step, x, x0)

    return report


def _bar(label: str, total: int) -> Callable[[int], None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, leave=False)

    def tick(step: int) -> None:
        bar.update(1)
        if step == total - 1:
            bar.close()

    return tick


def _lines(label: str, total: int) -> Callable[[int], None]:
    marks = {math.ceil(total * k / LINES) for k in range(1, LINES + 1)}
    start = time.perf_counter()

    def tick(step: int) -> None:
        if step + 1 in marks:
            print(f"{label}: step {step + 1}/{total} ({time.perf_counter() - start:.1f} s)", file=sys.stderr,
                  flush=True)

    return tick
