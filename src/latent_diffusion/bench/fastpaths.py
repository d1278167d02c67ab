"""``ldm bench fastpaths``: our sampling fast paths against our own plain fp32 path, same weights, noise and prompt.

The SD1.5-shaped UNet (seeded random weights, as the ``unet`` case) in a DPM++ 2M loop with CFG 7.5 (cond and
uncond in one batch of 2) on 64² latents (512² images), run through the ``Pipeline``'s own ``sampling_context``
with each fast path: bf16 autocast, DeepCache (reuse interval 3, branch 0), attention slicing. Reported: seconds per
step (median over the steps after the first), speed-up over plain fp32, and the quality cost as the relative RMS
difference of the final latents from the plain fp32 ones. ``torch.compile`` is not timed here: compiling the SD UNet
on a CPU takes many minutes (docs/performance.md).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..accel import AccelOptions, Precision, sampling_context
from ..diffusion.samplers import SampleOptions, randn, sample
from ..diffusion.schedules import ddpm_buffers, make_beta_schedule
from ..models.ldm import DiffusionWrapper
from .common import markdown, median
from .unet import SD15_UNET, TINY_UNET, seeded_unet

FP32, BF16 = Precision("fp32"), Precision("bf16")
CONFIGS = [("fp32", AccelOptions(FP32)), ("bf16", AccelOptions(BF16)),
           ("fp32 + deepcache 3", AccelOptions(FP32, deepcache=3)),
           ("bf16 + deepcache 3", AccelOptions(BF16, deepcache=3)),
           ("bf16 + attention slice 1024", AccelOptions(BF16, attention_slice=1024))]


class UNetOnly(torch.nn.Module):
    """What ``sampling_context`` and ``sample`` need of a LatentDiffusion: ``model.diffusion_model``, the schedule,
    ``apply_model`` — without the text encoder and VAE, which the fast paths do not touch."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.model = DiffusionWrapper(unet, "crossattn")
        self.parameterization = "eps"
        self.alphas_cumprod = ddpm_buffers(make_beta_schedule("linear", 1000, 0.00085, 0.012))["alphas_cumprod"]

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, c_crossattn=cond)


def run(*, quick: bool, log: Callable[[str], None] = print, precisions: tuple[str, ...] = ("fp32", "bf16"),
        **_) -> dict:
    cfg = TINY_UNET if quick else SD15_UNET
    size, steps = (8, 4) if quick else (64, 10)
    model = UNetOnly(seeded_unet(cfg))
    g = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(1, 77, cfg.context_dim, generator=g), torch.randn(1, 77, cfg.context_dim, generator=g)
    noise = randn((1, 4, size, size), [torch.Generator().manual_seed(0)])
    results, plain = [], None
    for name, fast in [(name, fast) for name, fast in CONFIGS if fast.precision.name in precisions]:
        marks: list[float] = []
        t0 = time.perf_counter()
        with sampling_context(model, fast, noise.device):
            z = sample("dpmpp_2m", model, noise, SampleOptions(steps=steps, cfg_scale=7.5), cond=cond, uncond=uncond,
                       callback=lambda i, x, x0: marks.append(time.perf_counter())).float()
        per_step = [b - a for a, b in zip([t0] + marks[:-1], marks)]
        plain = z if plain is None else plain
        s = median(per_step[1:]) if len(per_step) > 1 else per_step[0]
        results.append({"case": name, "precision": fast.precision.name, "deepcache": fast.deepcache,
                        "attention_slice": fast.attention_slice, "s_per_step": s, "total_s": sum(per_step),
                        "steps_s": per_step,
                        "rel_diff_vs_fp32": ((z - plain).pow(2).mean().sqrt() / plain.pow(2).mean().sqrt()).item()})
        log(f"  fastpaths {name}: {sum(per_step):.2f} s for {steps} steps, "
            f"rel. diff vs fp32 {results[-1]['rel_diff_vs_fp32']:.2e}")
    base = results[0]["total_s"]
    for r in results:
        r["speedup_vs_fp32"] = base / r["total_s"]
    return {"setup": {"unet": "tiny" if quick else "SD1.5", "latent": size, "steps": steps, "sampler": "dpmpp_2m",
                      "cfg": 7.5}, "results": results, "table": table(results, steps)}


def table(results: list[dict], steps: int) -> str:
    rows = [[r["case"], f"{r['total_s']:.2f}", f"{r['s_per_step']:.3f}", f"**{r['speedup_vs_fp32']:.2f}×**",
             f"{r['rel_diff_vs_fp32']:.1e}"] for r in results]
    return markdown(["sampling path", f"s for {steps} steps", "s / step (median)", "speed-up vs fp32",
                     "final latents: rel. RMS diff vs fp32"], rows)


def plot(section: dict, out_dir) -> list:  # noqa: ANN001
    from .common import bar_plot

    res = section["results"]
    return [bar_plot(out_dir / "fastpaths-speedup.png", "Sampling fast paths: speed-up over plain fp32",
                     [r["case"] for r in res], {"speed-up": [r["speedup_vs_fp32"] for r in res]}, "×")]
