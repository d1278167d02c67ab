"""Shared pieces of ``ldm bench``: machine description, measured GEMM peak, interleaved timing, FLOP counting,
peak-memory probes, and the report (``bench-results.json``, PNG plots, Markdown tables).

Every case runs ours and the reference in the same process run on the same weights and inputs and reports
ratios (ours / reference: < 1 means ours is faster or smaller). diffusers is imported lazily, only by the cases.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils import flop_counter

from ..accel import linear
from ..accel.cpu import cpu_flags, native_bf16
from ..errors import LDMError

SCHEMA = "ldm-bench/1"
RERUN_DISTURBED = True  # interleaved_times reruns rounds disturbed by other processes (off in --quick)
ISA_FLAGS = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]


def require_diffusers():  # noqa: ANN201 - the module
    """diffusers is the reference of every case; it is in the [bench] / [test] extras, never a dependency."""
    try:
        import diffusers
    except ImportError as e:
        raise LDMError("ldm bench compares against diffusers, which is not installed; "
                       "install the extra: pip install 'latent-diffusion[bench]'") from e
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time
    return diffusers


def machine_info(device: str = "cpu") -> dict:
    """CPU model, the ISA flags that matter for bf16 (avx512_bf16, amx_*), torch version and threads; on a CUDA
    ``device`` also the GPU's name, memory and CUDA version."""
    model, flags = cpu_flags()
    env = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "KMP_", "MALLOC_", "GOMP_", "LD_PRELOAD"))}
    info = {"cpu": model, "isa": {f: f in flags for f in ISA_FLAGS}, "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(), "env": env, "python": platform.python_version(),
            "device": str(device)}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "memory_gib": props.total_memory / 2**30,
                       "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda}
    return info


def machine_line(info: dict) -> str:
    isa = " ".join(k for k, v in info["isa"].items() if v) or "none of " + ", ".join(ISA_FLAGS)
    line = (f"CPU: {info['cpu']} ({info['logical_cpus']} logical CPUs)  ISA: {isa}\n"
            f"torch {info['torch']}, {info['threads']} threads, mkldnn={info['mkldnn']}")
    if "gpu" in info:
        gpu = info["gpu"]
        line += (f"\nGPU ({info['device']}): {gpu['name']}, {gpu['memory_gib']:.0f} GiB, "
                 f"{gpu['multiprocessors']} SMs, CUDA {gpu['cuda']}")
    return line


def peak_rates(peak: dict[str, float]) -> str:
    """"fp32 212, bf16 436" (and fp16 where measured): the GEMM-peak GFLOP/s of ``gemm_peak`` as printed (two
    significant digits below 10, e.g. a CPU's emulated bf16)."""
    return ", ".join(f"{k} {peak[k]:.0f}" if peak[k] >= 10 else f"{k} {peak[k]:.2g}"
                     for k in ("fp32", "bf16", "fp16") if k in peak)


def bench_precisions(bf16: bool | None, device: str | torch.device = "cpu", quick: bool = False) -> tuple[str, ...]:
    """The precisions the cases time: fp32, and bf16 autocast when ``bf16`` is True or, for None (auto), where the
    device has native bf16 or in ``quick`` mode (tiny shapes: the bf16 code paths stay exercised everywhere).
    Without native bf16 a CPU emulates it — on an AVX2-only AMD EPYC a 2048³ bf16 matmul ran at ~0.4 GFLOP/s
    against 150 fp32 — so its rows would take hours and time a path ``--precision auto`` never picks there."""
    return ("fp32", "bf16") if (bf16 if bf16 is not None else quick or native_bf16(device)) else ("fp32",)


def synchronized(fn: Callable[[], object], device: str | torch.device) -> Callable[[], object]:
    """``fn`` that returns only when the device has finished its work (CUDA kernels run asynchronously); as is on
    the CPU."""
    if torch.device(device).type != "cuda":
        return fn

    def call() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return call


def gemm_peak(n: int = 2048, repeats: int = 10, device: str = "cpu", bf16: bool = True) -> dict[str, float]:
    """Measured GFLOP/s of an n³ matmul, fp32 and (``bf16``) bf16 (best of ``repeats`` after one warm-up). On the
    CPU: the better of ``torch.mm`` (MKL for fp32 on x86) and oneDNN's matmul, which our fp32 inference Linear
    layers call on AVX-512 CPUs (``accel/linear.py``) and which beat MKL by ~1.4× on an AMD EPYC; also keyed
    ``{dtype}_mm`` and ``{dtype}_onednn`` (0.0 where this torch has no oneDNN). A CPU without native bf16 times
    its emulated bf16 on a matmul of at most 512³, 3 calls (2048³ there is ~40 s a call). On a CUDA device:
    ``torch.mm`` (cuBLAS; fp32 without TF32, torch's default) for fp32, bf16 and fp16."""
    out = {}
    on_cuda = torch.device(device).type == "cuda"
    dtypes = ([("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if bf16 else [])
              + ([("fp16", torch.float16)] if on_cuda else []))
    for name, dtype in dtypes:
        emulated = dtype == torch.bfloat16 and not native_bf16(device)
        size, calls = (min(n, 512), min(repeats, 3)) if emulated else (n, repeats)
        a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
        fns = {"mm": synchronized(lambda: torch.mm(a, b), device)}
        onednn_dtype = dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported()  # bf16: AVX-512 / AMX
        if linear.AVAILABLE and not on_cuda and onednn_dtype:
            fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        with torch.inference_mode():
            times, _ = interleaved_times(fns, calls)
        for kernel in ("mm", "onednn"):
            out[f"{name}_{kernel}"] = 2 * size**3 / min(times[kernel]) / 1e9 if kernel in times else 0.0
        out[name] = max(out[f"{name}_mm"], out[f"{name}_onednn"])
    return out


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
            quiet = others <= 0.05 * (time.perf_counter() - wall0) * (os.cpu_count() or 1)
            if quiet or not RERUN_DISTURBED or attempt == max_tries - 1:
                break
            discarded += 1
            time.sleep(min(2**attempt, 4))
        for name, t in rnd.items():
            times[name].append(t)
    return times, discarded


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call. CPU SDPA and oneDNN's linear (``accel/linear.py``) dispatch to ops the stock counter
    lacks; they are counted like the other SDPAs and like ``mm``."""
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
              lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v)}
    if linear.AVAILABLE:  # _linear_pointwise(x (..., K), weight (N, K), bias, ...): 2·rows·K·N
        custom[torch.ops.mkldnn._linear_pointwise] = (
            lambda x, w, *args, out_shape=None, **kwargs: 2 * math.prod(x[:-1]) * x[-1] * w[0])
    with flop_counter.FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return counter.get_total_flops()


# -- memory ----------------------------------------------------------------------------------------------------
def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes; (0, 0) where /proc is missing."""
    with contextlib.suppress(OSError, KeyError):
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024
    return 0, 0


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[dict]:
    """Yields a dict that gets ``peak_bytes``: how far this process's peak RSS rose above its RSS at entry.
    Linux resets the high-water mark through /proc/self/clear_refs ("5"); where that fails the value is None."""
    gc.collect()
    out: dict = {"peak_bytes": None}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        ok = True
    except OSError:
        ok = False
    base, _ = _rss()
    try:
        yield out
    finally:
        _, peak = _rss()
        if ok:
            out["peak_bytes"] = max(0, peak - base)


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


# -- report ----------------------------------------------------------------------------------------------------
def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bar_plot(path: Path, title: str, labels: list[str], series: dict[str, list[float]], ylabel: str,
             log: bool = False) -> Path:
    """Grouped bars (one group per label, one bar per series) written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) * max(1, len(series))), 3.6))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def paired_bars(path: Path, title: str, results: list[dict], value: Callable[[dict, str], float],
                ylabel: str) -> Path:
    """``bar_plot`` of one quantity per case (``r["case"]``), ours beside diffusers; ``value(r, side)`` reads it."""
    return bar_plot(path, title, [r["case"] for r in results],
                    {side: [value(r, side) for r in results] for side in ("ours", "diffusers")}, ylabel)


def line_plot(path: Path, title: str, xs: list[float], series: dict[str, list[float]], xlabel: str, ylabel: str,
              log: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, values in series.items():
        ax.plot(xs, values, marker="o", linestyle="--" if name.endswith("(diffusers)") else "-", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
