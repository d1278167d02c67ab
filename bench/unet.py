"""Our SD1.5-shaped UNet against diffusers' UNet2DConditionModel, timed in the same process run.

    PYTHONPATH=src python bench/unet.py [--quick] [--out DIR] [--repeats N]

Both models hold the same random weights (diffusers' own CompVis converter copies ours across). One call is one
classifier-free-guidance step: batch 2, context (2, 77, 768). Cases: fp32 and bf16 autocast, 64×64 and 32×32
latents. Timings are medians of N interleaved repeats (ours, diffusers, ours, ...) after warm-up, so drift in
clock speed or a noisy neighbour hits both sides alike. FLOPs come from ``torch.utils.flop_counter``; the GEMM
peak is a 2048³ matmul timed in the same run. Writes ``bench-results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils import flop_counter

from latent_diffusion.config import DiffusionConfig, to_dict
from latent_diffusion.models.unet import UNetModel

ROOT = Path(__file__).resolve().parents[1]
YAML = ROOT / "tests" / "data" / "v1-inference.yaml"
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """CPU model, the ISA flags that matter for bf16 (avx512_bf16, amx_*), torch version and threads."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
    return {"cpu": model, "isa": {f: f in flags for f in wanted}, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.is_available()}


def gemm_peak(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured GFLOP/s of an n³ matmul, fp32 and bf16 (median of ``repeats`` after one warm-up)."""
    out = {}
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t = median_time(lambda: torch.mm(a, b), repeats)
        out[name] = 2 * n**3 / t / 1e9
    return out


# ---------------------------------------------------------------------------------------------------- models


def sd15_unet(seed: int = 0) -> UNetModel:
    """SD1.5-shaped UNet with seeded default init; the zero-initialised output convs get re-initialised too
    (zeros would make whole branches vanish and hide both cost-free shortcuts and numerical differences)."""
    torch.manual_seed(seed)
    model = UNetModel(DiffusionConfig.from_yaml(YAML).unet).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return model


def diffusers_twin(ours: UNetModel) -> torch.nn.Module:
    """The same weights in diffusers' UNet2DConditionModel, through diffusers' own CompVis converter."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    params = to_dict(ours.cfg)
    if ours.cfg.num_classes is None:
        params.pop("num_classes")
    params.pop("num_head_channels" if ours.cfg.num_head_channels == -1 else "num_heads")
    original = {"model": {"params": {"unet_config": {"params": params},
                                     "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}}}}}
    cfg = sfu.create_unet_diffusers_config_from_ldm(original, {})
    sd = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    ref = UNet2DConditionModel(**cfg, norm_num_groups=32)
    ref.load_state_dict(sfu.convert_ldm_unet_checkpoint(sd, cfg), strict=True)
    return ref.eval()


def inputs(size: int, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents (B, 4, size, size), timesteps (B,), context (B, 77, 768) — one CFG step."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, size, size, generator=g), torch.tensor([500.0] * batch),
            torch.randn(batch, 77, 768, generator=g))


def callers(ours, ref, x, t, ctx, dtype) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument forward calls for both models, under bf16 autocast when ``dtype`` is set."""

    def wrap(fn):
        def call():
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=bool(dtype)):
                return fn()
        return call

    return {"ours": wrap(lambda: ours(x, t, context=ctx)),
            "diffusers": wrap(lambda: ref(x, t, encoder_hidden_states=ctx).sample)}


# ---------------------------------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call for each fn, repeats interleaved (a, b, a, b, ...) after ``warmup`` calls of each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call. CPU SDPA dispatches to an op the stock counter lacks; counted like the other SDPAs."""
    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(q, k, v)

    with flop_counter.FlopCounterMode(display=False, custom_mapping={cpu_sdpa: sdpa}) as counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------------------ cases


def run_case(ours, ref, size: int, dtype_name: str, repeats: int, peak: dict[str, float]) -> dict:
    x, t, ctx = inputs(size)
    fns = callers(ours, ref, x, t, ctx, DTYPES[dtype_name])
    out = {k: fn().float() for k, fn in fns.items()}
    flops = count_flops(fns["ours"])
    times = interleaved_times(fns, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    gflops = {k: flops / v / 1e9 for k, v in med.items()}
    return {
        "case": f"{size}x{size} {dtype_name}", "size": size, "dtype": dtype_name, "repeats": repeats,
        "ours_s": med["ours"], "diffusers_s": med["diffusers"], "ratio": med["ours"] / med["diffusers"],
        "times": times, "gflop_per_call": flops / 1e9, "gflops": gflops,
        "peak_fraction": {k: v / peak[dtype_name] for k, v in gflops.items()},
        "max_abs_err": (out["ours"] - out["diffusers"]).abs().max().item(),
        "ref_max_abs": out["diffusers"].abs().max().item(),
    }


def markdown_table(results: list[dict]) -> str:
    rows = ["| case | ours s | diffusers s | ours/diffusers | GFLOP/call | ours GFLOP/s (% peak) "
            "| diffusers GFLOP/s (% peak) | max abs err |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        g, p = r["gflops"], r["peak_fraction"]
        rows.append(f"| {r['case']} | {r['ours_s']:.3f} | {r['diffusers_s']:.3f} | {r['ratio']:.3f} "
                    f"| {r['gflop_per_call']:.0f} | {g['ours']:.0f} ({p['ours']:.0%}) "
                    f"| {g['diffusers']:.0f} ({p['diffusers']:.0%}) | {r['max_abs_err']:.1e} |")
    return "\n".join(rows)


def run(sizes: list[int], repeats: int, out_dir: Path) -> dict:
    info = machine_info()
    print(f"CPU: {info['cpu']}  ISA: {' '.join(k for k, v in info['isa'].items() if v)}")
    print(f"torch {info['torch']}, {info['threads']} threads, mkldnn={info['mkldnn']}")
    ours = sd15_unet()
    ref = diffusers_twin(ours)
    peak = gemm_peak()
    print(f"GEMM peak (2048³): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    results = []
    for size in sizes:
        for dtype_name in DTYPES:
            results.append(run_case(ours, ref, size, dtype_name, repeats, peak))
            r = results[-1]
            print(f"  {r['case']}: ours {r['ours_s']:.3f}s  diffusers {r['diffusers_s']:.3f}s  "
                  f"ratio {r['ratio']:.3f}  err {r['max_abs_err']:.1e} (|ref| ≤ {r['ref_max_abs']:.1f})", flush=True)
    print(markdown_table(results))
    report = {"machine": info, "gemm_peak_gflops": peak, "batch": 2, "context": [2, 77, 768], "results": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench-results.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out_dir / 'bench-results.json'}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32×32 only, fewer repeats")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for bench-results.json")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per model and case")
    args = parser.parse_args(argv)
    sizes = [32] if args.quick else [64, 32]
    run(sizes, args.repeats or (3 if args.quick else 7), args.out)


if __name__ == "__main__":
    main()
