"""Memory and time of one UNet training step (forward + backward) with and without gradient checkpointing.

An SD1.5-shaped UNet at reduced width (``--width``, SD1.5: 320), 32×32 latents, batch 2, 77×768 context; fp32 and
bf16 autocast. Each case runs in its own process: peak resident memory is ``ru_maxrss`` after the steps minus before
them (the step's saved activations and workspace; weights and gradient buffers are already there), time is the median of
``--repeats`` steps after one warm-up step. Prints the CPU and a Markdown table.

    PYTHONPATH=src python bench/gradient_checkpointing.py [--width 128] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def _case(width: int, ckpt: bool, amp: bool, repeats: int, threads: int) -> dict:
    from latent_diffusion.bench.unet import SD15_UNET
    from latent_diffusion.models.unet import UNetModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = UNetModel(dataclasses.replace(SD15_UNET, model_channels=width, use_checkpoint=ckpt)).train()
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([10, 700])
    for p in unet.parameters():  # gradients exist before the steps, as in training after the first one
        p.grad = torch.zeros_like(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(repeats + 1):
        unet.zero_grad(set_to_none=False)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = unet(x, t, context=ctx).float().square().mean()
        loss.backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = sum(p.numel() for p in unet.parameters())
    return {"params": params, "peak_mib": (peak - before) / 1024, "step_s": statistics.median(times[1:])}


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)
    if args.case:
        ckpt, amp = (c == "1" for c in args.case.split(","))
        print(json.dumps(_case(args.width, ckpt, amp, args.repeats, args.threads)))
        return
    print(f"CPU: {_cpu()}, {args.threads} threads, torch {torch.__version__}; SD1.5-shaped UNet, model_channels="
          f"{args.width}, latents 2×4×32×32, context 2×77×768\n")
    print("| precision | checkpointing | step peak RSS (MiB) | step time (s) |\n|---|---|---|---|")
    for amp in (False, True):
        for ckpt in (False, True):
            cmd = [sys.executable, __file__, "--width", str(args.width), "--repeats", str(args.repeats),
                   "--threads", str(args.threads), "--case", f"{int(ckpt)},{int(amp)}"]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            print(f"| {'bf16 autocast' if amp else 'fp32'} | {'on' if ckpt else 'off'} | {r['peak_mib']:.0f} | "
                  f"{r['step_s']:.2f} |", flush=True)
    print(f"\n({r['params'] / 1e6:.1f} M parameters)")


if __name__ == "__main__":
    main()
