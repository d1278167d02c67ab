"""``ldm bench``: ours against diffusers (and the machine's own GEMM peak), each case in the same process run.

``run_bench`` is imported on first use, so that importing this package (the ``ldm`` parser does) loads no torch."""

from __future__ import annotations

from typing import Any

from .cases import CASES

__all__ = ["CASES", "run_bench"]


def __getattr__(name: str) -> Any:
    if name == "run_bench":
        from .runner import run_bench

        return run_bench
    raise AttributeError(f"module 'latent_diffusion.bench' has no attribute {name!r}")
