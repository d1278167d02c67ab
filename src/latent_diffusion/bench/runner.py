"""Runs the chosen ``ldm bench`` cases and writes ``bench-results.json``, PNG plots and a Markdown report."""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import LDMError
from . import common
from .cases import CASES, CUDA_CASES, DEFAULT_CASES
from .common import SCHEMA, gemm_peak, machine_info, machine_line, peak_rates


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_bench(cases: list[str] | None = None, *, out: str | Path = "bench-results", quick: bool = False,
              repeats: int | None = None, threads: int | None = None, plots: bool = True, rerun: bool = True,
              vae_latent: int | None = None, device: str = "cpu", compile: bool = False, bf16: bool | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Run ``cases`` (default: all), write ``out/bench-results.json`` (+ PNGs unless ``plots=False``), return the
    report. ``quick``: tiny shapes, one thread, one repeat — a smoke test of every case and of the schema.
    ``rerun``: rerun timing rounds other processes disturbed (off in quick mode; off on a machine that is never
    quiet, where the interleaving alone keeps the ratios fair). ``vae_latent``: latent side of the vae case.
    ``device``: "cpu" (default) or a CUDA device for the cases in ``CUDA_CASES``; ``compile``: add a
    ``torch.compile`` mode to the unet case. ``bf16``: time bf16 autocast rows too (True), not (False), or where the
    device has native bf16 and in quick mode (None; ``common.bench_precisions``)."""
    on_cuda = str(device).startswith("cuda")
    cases = list(cases or (CUDA_CASES if on_cuda else DEFAULT_CASES))
    bad = [c for c in cases if c not in CASES]
    if bad:
        raise LDMError(f"unknown bench case(s) {', '.join(map(repr, bad))}; accepted: {', '.join(CASES)}")
    if vae_latent is not None and (not isinstance(vae_latent, int) or vae_latent < 8):
        raise LDMError(f"vae_latent must be an integer >= 8 (latent pixels per side), got {vae_latent!r}")
    if repeats is not None and (not isinstance(repeats, int) or repeats < 1):
        raise LDMError(f"repeats must be a positive integer, got {repeats!r}")
    device = _check_device(device, cases)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LDMError(f"--out must be a folder, but {out} is a file")
    # the rerun test reads the host's CPU load: meaningless for GPU timings, and a busy host would stall them
    previous, common.RERUN_DISTURBED = common.RERUN_DISTURBED, rerun and not quick and device == "cpu"
    try:  # the flag is module state: put it back for whoever calls the cases next (tests, a second run)
        with _threads(threads or (1 if quick else None)):
            info = machine_info(device)
            log(machine_line(info))
            precisions = common.bench_precisions(bf16, device, quick)
            if "bf16" not in precisions:
                log("bf16 rows left out: " + ("--precision fp32" if bf16 is False else
                                              "this CPU has no native bf16 (AVX-512 BF16 / AMX), so bf16 autocast is "
                                              "emulated and --precision auto runs fp32; --precision bf16 times it "
                                              "anyway"))
            n = (256 if quick else 2048) * (4 if device.startswith("cuda") else 1)
            peak = gemm_peak(n, 2 if quick else 10, device, bf16="bf16" in precisions)
            log(f"GEMM peak ({n}³): {peak_rates(peak)} GFLOP/s")
            report = {"schema": SCHEMA, "quick": quick, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "machine": info, "precisions": list(precisions), "gemm_peak_gflops": peak, "cases": {}}
            for case in cases:
                module = importlib.import_module(f".{case}", __package__)
                t0 = time.perf_counter()
                section = module.run(quick=quick, repeats=repeats, peak=peak, log=log, vae_latent=vae_latent,
                                     device=device, compile=compile, precisions=precisions)
                section["wall_s"] = time.perf_counter() - t0
                report["cases"][case] = section
    finally:
        common.RERUN_DISTURBED = previous
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        for case, section in report["cases"].items():
            module = importlib.import_module(f".{case}", __package__)
            section["plots"] = [p.name for p in module.plot(section, out)]
    (out / "bench-results.json").write_text(json.dumps(report, indent=2, default=str))
    md = markdown_report(report)
    (out / "bench-results.md").write_text(md)
    log("\n" + md)
    log(f"wrote {out / 'bench-results.json'}")
    return report


def _check_device(device: str, cases: list[str]) -> str:
    """``device`` as torch spells it, after checking that it exists here and that every case can run on it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise LDMError(f"--device must be cpu or cuda[:N], got {device!r}") from e
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise LDMError(f"--device must be cpu or cuda[:N], got {device!r}")
    if not torch.cuda.is_available():
        raise LDMError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU here; "
                       "run on a machine with one, or leave --device out for the CPU benchmarks")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise LDMError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                       f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    cpu_only = [c for c in cases if c not in CUDA_CASES]
    if cpu_only:
        raise LDMError(f"bench case(s) {', '.join(cpu_only)} run on the CPU only; on {device} run: "
                       f"{', '.join(CUDA_CASES)}")
    return str(dev)


def markdown_report(report: dict) -> str:
    info, peak = report["machine"], report["gemm_peak_gflops"]
    parts = [f"# ldm bench{' (--quick)' if report['quick'] else ''}", "", "```", machine_line(info), "```", "",
             f"Measured GEMM peak: {peak_rates(peak)} GFLOP/s", ""]
    for case, section in report["cases"].items():
        parts += [f"## {case}", "", section["table"], ""]
    return "\n".join(parts)
