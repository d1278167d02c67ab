"""``ldm bench [CASE ...] [--quick] [--out DIR]``: argument parsing only; the cases live in this package."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli_parser import deprecated_alias
from ..extras import require_extras
from .cases import CASES, DEFAULT_CASES

_BF16 = {"auto": None, "fp32": False, "bf16": True}  # --precision -> run_bench(bf16=): time bf16 rows too?


def add_bench_commands(sub: Any) -> None:
    b = sub.add_parser("bench", help="benchmark ours against diffusers (unet, vae, pipeline, samplers, train, "
                                     "fastpaths); writes bench-results.json and plots")
    b.add_argument("cases", nargs="*", metavar="CASE", help=f"cases to run: {', '.join(CASES)} (default: "
                   f"{', '.join(DEFAULT_CASES)})")
    b.add_argument("--quick", action="store_true", help="tiny shapes, one thread: a smoke test (seconds)")
    b.add_argument("--out", default="bench-results", help="folder for bench-results.json, .md and PNG plots")
    b.add_argument("--repeats", type=int, default=None, help="timed calls per side (default: per case)")
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; --quick: 1)")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    b.add_argument("--no-rerun", action="store_true",
                   help="keep timing rounds that other processes disturbed (default: rerun them, up to 5 tries)")
    b.add_argument("--vae-latent", type=int, default=None, metavar="N",
                   help="vae case: decode N² latents (image 8N²; default 64, i.e. 512²; --quick: 16)")
    b.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda[:N]: on a GPU the unet case runs fp32, fp16 and bf16 autocast")
    b.add_argument("--compile", action="store_true",
                   help="unet case: also a torch.compile mode for both models (slow to compile on a CPU)")
    b.add_argument("--precision", choices=list(_BF16), default="auto",
                   help="compute precisions to time: fp32, or fp32 and bf16 autocast (bf16); auto (default): bf16 "
                        "too where the CPU / GPU has native bf16, and in --quick")
    deprecated_alias(b, "--bf16", dest="precision", use="--precision bf16", const="bf16", flag=True)
    deprecated_alias(b, "--no-bf16", dest="precision", use="--precision fp32", const="fp32", flag=True)
    b.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    require_extras("ldm bench", "bench", ["diffusers"] + ([] if args.no_plots else ["matplotlib"]))
    if "data" in args.cases:  # times the training data path: Lightning module, tar shards
        require_extras("ldm bench data", "train,data", ["lightning", "webdataset"])
    from .runner import run_bench

    run_bench(args.cases, out=args.out, quick=args.quick, repeats=args.repeats, threads=args.threads,
              plots=not args.no_plots, rerun=not args.no_rerun, vae_latent=args.vae_latent, device=args.device,
              compile=args.compile, bf16=_BF16[args.precision])
    return 0
