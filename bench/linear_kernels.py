"""fp32 GEMM kernels on this CPU, on the SD1.5 UNet's Linear shapes: MKL (``F.linear``, torch's default) against
oneDNN (``torch.ops.mkldnn._linear_pointwise``, what ``accel/linear.py`` calls for fp32 inference), with and
without a fused GELU. Prints the CPU and a Markdown table of GFLOP/s (median of N interleaved calls after warm-up;
rounds that other processes disturbed are rerun).

    PYTHONPATH=src python bench/linear_kernels.py [--repeats N] [--threads T]

Run it on an idle machine: it is the evidence for (or against) the oneDNN path on a new CPU.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from latent_diffusion.accel import linear
from latent_diffusion.bench import common

# (rows, in, out): batch-2 tokens of the 64², 32², 16² levels (to_q/k/v/out, GEGLU halves, ff out) and the
# GEMM-lowered 3×3 convs at 16² and 8² (rows = 2·H·W, in = 9·C)
SHAPES = [(8192, 320, 320), (8192, 320, 1280), (8192, 1280, 320), (2048, 640, 640), (2048, 640, 2560),
          (2048, 2560, 640), (512, 1280, 1280), (512, 1280, 5120), (512, 5120, 1280), (512, 11520, 1280),
          (128, 11520, 1280)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(common.machine_line(common.machine_info()))
    if not linear.AVAILABLE:
        raise SystemExit("this torch has no oneDNN (torch.backends.mkldnn): nothing to compare")
    op = torch.ops.mkldnn._linear_pointwise
    rows = []
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for m, k, n in SHAPES:
            x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) / k**0.5, torch.randn(n)
            flops = 2 * m * k * n
            times, _ = common.interleaved_times({
                "mkl": lambda: F.linear(x, w, b), "onednn": lambda: op(x, w, b, "none", [], ""),
                "mkl_gelu": lambda: F.gelu(F.linear(x, w, b)), "onednn_gelu": lambda: op(x, w, b, "gelu", [], "none"),
            }, args.repeats)
            rates = [flops / common.median(ts) / 1e9 for ts in times.values()]
            rows.append([f"({m}, {k}) → {n}"] + [f"{r:.0f}" for r in rates] + [f"{rates[1] / rates[0]:.2f}×"])
    print(common.markdown(["GEMM", "MKL", "oneDNN", "MKL + GELU", "oneDNN, GELU fused", "oneDNN / MKL"], rows))


if __name__ == "__main__":
    main()
