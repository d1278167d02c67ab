"""``ldm bench``: ours against diffusers (and the machine's own GEMM peak), each case in the same process run."""

from .runner import CASES, run_bench

__all__ = ["CASES", "run_bench"]
