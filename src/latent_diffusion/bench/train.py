"""``ldm bench train``: training steps per second of a small text-conditional LDM UNet, ours vs the same loop
around diffusers' UNet2DConditionModel holding the same initial weights.

One step: ε-prediction MSE at uniform random timesteps on fixed latents (B, 4, 16, 16) and a fixed context
(B, 77, 64), backward, AdamW. Both sides run the identical loop in the same process, interleaved; fp32 and bf16
autocast. The first-stage and text encoder are frozen in a real run and cost the same on both sides, so they are
left out (latents and context are given).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..config import UNetConfig, to_dict
from ..diffusion.schedules import make_beta_schedule
from .common import interleaved_times, markdown, median
from .unet import TINY_UNET, diffusers_twin, seeded_unet

SMALL_UNET = UNetConfig(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                        attention_resolutions=(2, 4), num_heads=4, context_dim=64, use_spatial_transformer=True,
                        legacy=False)


def make_step(unet: torch.nn.Module, call: Callable, latents: torch.Tensor, context: torch.Tensor, bf16: bool,
              seed: int = 0) -> Callable[[], float]:
    """One optimiser step on ``unet`` (``call(x, t, ctx)`` returns ε̂); fixed data, seeded noise and timesteps."""
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    alphas = torch.cumprod(1 - make_beta_schedule("linear", 1000, 0.00085, 0.012), 0).float()
    g = torch.Generator().manual_seed(seed)

    def step() -> float:
        t = torch.randint(0, 1000, (latents.shape[0],), generator=g)
        noise = torch.randn(latents.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        x = a.sqrt() * latents + (1 - a).sqrt() * noise
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(call(x, t, context).float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run(*, quick: bool, repeats: int | None = None, log: Callable[[str], None] = print,
        precisions: tuple[str, ...] = ("fp32", "bf16"), **_) -> dict:
    cfg = TINY_UNET if quick else SMALL_UNET
    batch, size = (2, 8) if quick else (8, 16)
    repeats = repeats or (1 if quick else 5)
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(batch, 4, size, size, generator=g)
    context = torch.randn(batch, 77, cfg.context_dim, generator=g)
    results = []
    for precision in precisions:
        ours = seeded_unet(cfg).train()
        ref = diffusers_twin(ours).train()
        bf16 = precision == "bf16"
        steps = {"ours": make_step(ours, lambda x, t, c: ours(x, t, context=c), latents, context, bf16),
                 "diffusers": make_step(ref, lambda x, t, c: ref(x, t, encoder_hidden_states=c).sample, latents,
                                        context, bf16)}
        first = {k: fn() for k, fn in steps.items()}  # same weights, data and noise: same first loss
        times, discarded = interleaved_times(steps, repeats)
        med = {k: median(v) for k, v in times.items()}
        results.append({"case": f"{precision} batch {batch} {size}²", "precision": precision,
                        "ours_steps_per_s": 1 / med["ours"], "diffusers_steps_per_s": 1 / med["diffusers"],
                        "ratio": med["ours"] / med["diffusers"], "ours_s": med["ours"], "diffusers_s": med["diffusers"],
                        "first_loss": first, "discarded_rounds": discarded})
        r = results[-1]
        log(f"  train {r['case']}: ours {r['ours_steps_per_s']:.2f} steps/s  diffusers "
            f"{r['diffusers_steps_per_s']:.2f} steps/s  time ratio {r['ratio']:.3f}")
    return {"setup": {"unet": to_dict(cfg), "batch": batch, "latent": size, "optimizer": "AdamW lr 1e-4",
                      "repeats": repeats}, "results": results, "table": table(results)}


def table(results: list[dict]) -> str:
    rows = [[r["case"], f"{r['ours_steps_per_s']:.2f}", f"{r['diffusers_steps_per_s']:.2f}", f"**{r['ratio']:.3f}**",
             f"{r['first_loss']['ours']:.4f} / {r['first_loss']['diffusers']:.4f}"] for r in results]
    return markdown(["training step", "ours steps/s", "diffusers steps/s", "time ours/diffusers",
                     "first loss ours / diffusers"], rows)


def plot(section: dict, out_dir) -> list:  # noqa: ANN001
    from .common import paired_bars

    return [paired_bars(out_dir / "train-steps-per-s.png", "Training steps per second", section["results"],
                        lambda r, side: r[f"{side}_steps_per_s"], "steps/s")]
