"""Our SD1.5-shaped UNet against diffusers' UNet2DConditionModel, timed in the same process run.

    PYTHONPATH=src python bench/unet.py [--quick] [--extras] [--out DIR] [--repeats N]

Both models hold the same random weights (diffusers' own CompVis converter copies ours across). One call is one
classifier-free-guidance step: batch 2, context (2, 77, 768). Cases: fp32 and bf16 autocast, 64×64 and 32×32
latents; ``--extras`` adds channels_last and cached-cast modes. Timings: medians of N repeats after warm-up,
interleaved ours, diffusers, diffusers, ours, ... so drift hits both alike; rounds disturbed by other processes
are rerun. FLOPs: ``torch.utils.flop_counter``; GEMM peak: best 2048³ matmul. Writes --out/bench-results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils import flop_counter

from latent_diffusion.config import DiffusionConfig, to_dict
from latent_diffusion.models.unet import UNetModel

YAML = Path(__file__).resolve().parents[1] / "tests" / "data" / "v1-inference.yaml"


@dataclass(frozen=True)
class Mode:
    """How a case runs: fp32 or bf16 autocast; memory format of weights and activations; and cached casts: one
    no_grad + autocast context around warm-up and repeats, as a sampling loop can hold, so that autocast's cast
    cache turns each fp32 weight into bf16 once, not on every call (inference_mode turns that cache off)."""

    name: str
    bf16: bool = False
    channels_last: bool = False
    cached_casts: bool = False

    @contextlib.contextmanager
    def outer(self):
        """Around warm-up and repeats: no_grad + autocast for the cached-casts mode, nothing otherwise."""
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cached_casts):
            yield

    @contextlib.contextmanager
    def per_call(self):
        """Around each call; with cached casts, the inner autocast leaves the outer one's cache alone."""
        with torch.inference_mode(not self.cached_casts), torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            yield


MODES = [Mode("fp32"), Mode("bf16", bf16=True)]
EXTRA_MODES = [Mode("fp32 channels_last", channels_last=True), Mode("bf16 channels_last", True, channels_last=True),
               Mode("bf16 cached casts", bf16=True, cached_casts=True)]


def machine_info() -> dict:
    """CPU model, the ISA flags that matter for bf16 (avx512_bf16, amx_*), torch version and threads."""
    cpu: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for key, _, value in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()):
            cpu.setdefault(key.strip(), value.strip())
    model, flags = cpu.get("model name", platform.processor()), set(cpu.get("flags", "").split())
    wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
    env = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "KMP_", "MALLOC_", "GOMP_", "LD_PRELOAD"))}
    return {"cpu": model, "isa": {f: f in flags for f in wanted}, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.is_available(), "env": env}


def gemm_peak(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured GFLOP/s of an n³ matmul, fp32 and bf16 (best of ``repeats`` after one warm-up)."""
    out = {}
    for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        times, _ = interleaved_times({"mm": lambda: torch.mm(a, b)}, repeats)
        out[name] = 2 * n**3 / min(times["mm"]) / 1e9
    return out


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


def callers(ours, ref, x, t, ctx, mode: Mode) -> dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument forward calls for both models, each inside ``mode``'s per-call contexts."""
    def wrap(fn):
        def call():
            with mode.per_call():
                return fn()
        return call

    return {"ours": wrap(lambda: ours(x, t, context=ctx)),
            "diffusers": wrap(lambda: ref(x, t, encoder_hidden_states=ctx).sample)}


def busy_cpu_seconds() -> float:
    """CPU seconds all processes together have been busy since boot (/proc/stat; 0.0 where unreadable)."""
    with contextlib.suppress(OSError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # idle, iowait are not busy
    return 0.0


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                      max_tries: int = 5) -> tuple[dict[str, list[float]], int]:
    """Seconds per call for each fn, repeats interleaved (a, b, b, a, ...) after ``warmup`` calls of each, and
    the number of rounds discarded: on a shared machine a second process on one of 2 cores stalls every OpenMP
    barrier of ours, so a round in which others used over 5% of the CPUs is run again, after a back-off."""
    for fn in list(fns.values()) * warmup:
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    discarded = 0
    for i in range(repeats):
        order = list(fns.items())[:: -1 if i % 2 else 1]  # alternate who goes first
        for attempt in range(max_tries):
            busy0, own0, wall0, rnd = busy_cpu_seconds(), time.process_time(), time.perf_counter(), {}
            for name, fn in order:
                t0 = time.perf_counter()
                fn()
                rnd[name] = time.perf_counter() - t0
            others = busy_cpu_seconds() - busy0 - (time.process_time() - own0)
            if others <= 0.05 * (time.perf_counter() - wall0) * (os.cpu_count() or 1) or attempt == max_tries - 1:
                break
            discarded += 1
            time.sleep(2**attempt)
        for name, t in rnd.items():
            times[name].append(t)
    return times, discarded


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call. CPU SDPA dispatches to an op the stock counter lacks; counted like the other SDPAs."""
    cpu_sdpa = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v)}
    with flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        fn()
    return counter.get_total_flops()


def run_case(ours, ref, size: int, mode: Mode, repeats: int, peak: dict[str, float]) -> dict:
    fmt = torch.channels_last if mode.channels_last else torch.contiguous_format
    for model in (ours, ref):
        model.to(memory_format=fmt)  # in place; changes only the conv weights' strides
    x, t, ctx = inputs(size)
    fns = callers(ours, ref, x.contiguous(memory_format=fmt), t, ctx, mode)
    with mode.outer():
        out = {k: fn().float() for k, fn in fns.items()}
        flops = count_flops(fns["ours"])
        times, discarded = interleaved_times(fns, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    gflops = {k: flops / v / 1e9 for k, v in med.items()}
    return {
        "case": f"{size}x{size} {mode.name}", "size": size, "mode": mode.name, "repeats": repeats,
        "discarded_rounds": discarded,
        "ours_s": med["ours"], "diffusers_s": med["diffusers"], "ratio": med["ours"] / med["diffusers"],
        "min_s": {k: min(v) for k, v in times.items()}, "times": times, "gflop_per_call": flops / 1e9,
        "gflops": gflops, "peak_fraction": {k: v / peak["bf16" if mode.bf16 else "fp32"] for k, v in gflops.items()},
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


def run(sizes: list[int], modes: list[Mode], repeats: int, out_dir: Path) -> dict:
    info = machine_info()
    print(f"CPU: {info['cpu']}  ISA: {' '.join(k for k, v in info['isa'].items() if v)}\n"
          f"torch {info['torch']}, {info['threads']} threads, mkldnn={info['mkldnn']}, env {info['env']}")
    ours = sd15_unet()
    ref = diffusers_twin(ours)
    peak = gemm_peak()
    print(f"GEMM peak (2048³): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    results = []
    for size in sizes:
        for mode in modes:
            results.append(run_case(ours, ref, size, mode, repeats, peak))
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
    parser.add_argument("--extras", action="store_true", help="also channels_last and cached-cast modes")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for bench-results.json")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per model and case")
    args = parser.parse_args(argv)
    sizes = [32] if args.quick else [64, 32]
    modes = MODES + (EXTRA_MODES if args.extras else [])
    run(sizes, modes, args.repeats or (3 if args.quick else 7), args.out)


if __name__ == "__main__":
    main()
