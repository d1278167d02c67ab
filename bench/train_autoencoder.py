"""Images/s of one stage-1 training step (autoencoder forward + loss + backward + Adam, discriminator step
included) for a KL-f8 model on 64×64 images, fp32 vs bf16 autocast, on this machine's CPU.

    python bench/train_autoencoder.py [--batch 8] [--steps 5] [--threads 1] [--lpips] [--out bench-results/x.json]

The GAN is on (disc_start = 0), so each step runs the discriminator for both optimisers as in late training.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def one_step_rate(precision: str, batch: int, steps: int, lpips: bool) -> float:
    from latent_diffusion.train.autoencoder import AutoencoderModule
    from latent_diffusion.train.autoencoder_config import AutoencoderTrainConfig

    cfg = AutoencoderTrainConfig.from_dict({
        "kind": "kl", "f": 8,
        "model": {"ch": 64, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4,
                  "resolution": 64},
        "loss": {"disc_start": 0, "perceptual_weight": 1.0 if lpips else 0.0, "disc_ndf": 32},
        "run": {"batch_size": batch, "max_steps": 10**6}})
    m = AutoencoderModule(cfg)
    opt_ae, opt_d = m.configure_optimizers()
    x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            x_rec, post, _ = m.reconstruct(x, i)
            loss, _ = m.loss.generator_loss(x, x_rec, post, 1, last_layer=m.last_layer())
        opt_ae.zero_grad()
        loss.backward()
        opt_ae.step()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            d, _ = m.loss.discriminator_loss(x, x_rec.detach(), 1)
        opt_d.zero_grad()
        d.backward()
        opt_d.step()
        times.append(time.perf_counter() - t)
    return batch / (sorted(times[2:])[len(times[2:]) // 2])  # median step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--lpips", action="store_true", help="include the LPIPS term (the seeded-VGG substitute)")
    p.add_argument("--out", default="bench-results/train_autoencoder.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.simplefilter("ignore")
    res = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__, "batch": a.batch,
           "lpips": a.lpips, "model": "KL-f8 ch64 (1,2,2,4) 64x64"}
    for prec in ("fp32", "bf16"):
        res[f"{prec}_images_per_s"] = round(one_step_rate(prec, a.batch, a.steps, a.lpips), 2)
    res["bf16_speedup"] = round(res["bf16_images_per_s"] / res["fp32_images_per_s"], 2)
    print(json.dumps(res, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
