"""Our SD1.5-shaped UNet against diffusers' UNet2DConditionModel, timed in the same process run — a thin wrapper
around ``latent_diffusion.bench.unet`` (the ``ldm bench unet`` case), kept for its extra modes and sizes.

    PYTHONPATH=src python bench/unet.py [--quick] [--extras] [--modes M1,M2] [--sizes 64,32] [--out DIR] [--repeats N]

--quick: the SD1.5 UNet at 32×32 only, 3 repeats; --extras: also channels_last and cached-cast modes ("bf16 cached
casts" is a call as our sampling loop makes it: no_grad, one autocast and cast cache around all calls); --modes: only
these modes by name. Without --modes the bf16 modes run only on a CPU with native bf16 (AVX-512 BF16 / AMX).
Writes --out/bench-results.json (the ``ldm bench`` schema, case "unet").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latent_diffusion.bench import common
from latent_diffusion.bench import unet as unet_case
from latent_diffusion.errors import ConfigError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32×32 only, fewer repeats")
    parser.add_argument("--extras", action="store_true", help="also channels_last and cached-cast modes")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for bench-results.json")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per model and case")
    parser.add_argument("--modes", default=None,
                        help='comma-separated mode names to run, e.g. "bf16,bf16 cached casts" (with --extras)')
    parser.add_argument("--sizes", default=None, help="comma-separated latent sizes (default 64,32; --quick: 32)")
    args = parser.parse_args(argv)
    try:  # checked before the GEMM-peak timing and the models
        sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else ([32] if args.quick else [64, 32])
    except ValueError:
        parser.error(f"--sizes takes comma-separated integers, got {args.sizes!r}")
    if any(v < 8 or v % 8 for v in sizes):
        parser.error(f"--sizes: each latent size must be a multiple of 8 (the UNet halves it three times), got {sizes}")
    only = [v.strip() for v in args.modes.split(",")] if args.modes else None
    try:
        unet_case.select_modes(extras=args.extras, only=only)
    except ConfigError as e:
        hint = "" if args.extras else " (channels_last and cached-cast modes need --extras)"
        parser.error(f"--modes: {e}{hint}")
    info = common.machine_info()
    print(common.machine_line(info))
    peak = common.gemm_peak()
    print(f"GEMM peak (2048³): {common.peak_rates(peak)} GFLOP/s")
    section = unet_case.run(quick=False, peak=peak, extras=args.extras, sizes=sizes, only=only,
                            precisions=common.bench_precisions(None),
                            repeats=args.repeats or (3 if args.quick else 7))
    print(section["table"])
    report = {"schema": common.SCHEMA, "quick": False, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": info,
              "gemm_peak_gflops": peak, "cases": {"unet": section}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-results.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'bench-results.json'}")


if __name__ == "__main__":
    main()
