"""The paper's rate–distortion experiment in miniature (Table 8): KL and VQ autoencoders with
f ∈ {1, 2, 4, 8, 16}, same data (ShapesWorld, 32×32), same budget (steps × batch), then PSNR / SSIM /
LPIPS-substitute / rFID-substitute on 256 held-out images. Writes JSON, a Markdown table and a plot.

    python bench/autoencoder_sweep.py --steps 300 --out bench-results/ae_sweep [--kinds kl vq] [--fs 1 2 4 8 16]

Every model: ch 32, ch_mult = ``ch_mult_for(f)`` = (1, 2, 2, 4, 4)[:log2 f + 1], one ResBlock per level, 4 latent
channels (KL) or a 512 × 4 codebook (VQ), Adam lr 4e-4 (base 5e-5 × batch 8), bf16 autocast, no GAN and no
perceptual term (both would need weights or budget we do not have; the point is the trend in f).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch


def sweep_config(kind: str, f: int, steps: int, size: int, out: Path) -> dict:
    from latent_diffusion.train.autoencoder_config import ch_mult_for

    model = {"ch": 32, "ch_mult": list(ch_mult_for(f)), "num_res_blocks": 1, "resolution": size,
             "z_channels": 4, "embed_dim": 4}
    if kind == "vq":
        model |= {"n_embed": 512, "double_z": False}
    return {"kind": kind, "f": f, "model": model,
            "loss": {"disc_factor": 0.0, "disc_start": 0, "perceptual_weight": 0.0, "disc_ndf": 8},
            "data": {"source": "shapes", "size": size, "num_val": 32},
            "optim": {"base_lr": 5e-5},
            "run": {"max_steps": steps, "batch_size": 8, "epoch_steps": steps, "log_every": 25, "num_threads": 1,
                    "precision": "bf16-mixed", "out_dir": str(out / f"{kind}-f{f}")}}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for kind, marker in (("kl", "o-"), ("vq", "s--")):
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["f"])
        if not rs:
            continue
        for ax, key, label in zip(axes, ("psnr", "ssim", "rfid"), ("PSNR (dB)", "SSIM", "rFID-substitute")):
            ax.plot([r["f"] for r in rs], [r[key] for r in rs], marker, label=kind.upper())
            ax.set_xscale("log", base=2)
            ax.set_xlabel("downsampling factor f")
            ax.set_title(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--kinds", nargs="+", default=["kl", "vq"])
    p.add_argument("--fs", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--out", default="bench-results/ae_sweep")
    a = p.parse_args()
    warnings.simplefilter("ignore")
    from latent_diffusion.eval.autoencoder_eval import evaluate_autoencoder, markdown_table
    from latent_diffusion.eval.cli_commands import heldout_images
    from latent_diffusion.eval.features import VGGPoolFeatures
    from latent_diffusion.losses.lpips import LPIPS
    from latent_diffusion.autoencoder_io import load_autoencoder
    from latent_diffusion.train.autoencoder_config import AutoencoderTrainConfig
    from latent_diffusion.train.autoencoder_run import train_autoencoder

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    images = heldout_images("shapes", a.n_eval, a.size, seed=0)
    lpips, feats = LPIPS(), VGGPoolFeatures()
    results_path = out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["kind"], r["f"]) for r in rows}
    for kind in a.kinds:
        for f in a.fs:
            if (kind, f) in done:
                continue
            cfg = AutoencoderTrainConfig.from_dict(sweep_config(kind, f, a.steps, a.size, out))
            t0 = time.perf_counter()
            summary = train_autoencoder(cfg, force=True, progress=False, echo=False)
            model = load_autoencoder(summary["autoencoder"])
            r = {"name": f"{kind.upper()}-f{f}", "kind": kind, "f": f, "steps": a.steps,
                 "train_seconds": round(time.perf_counter() - t0, 1)}
            r |= evaluate_autoencoder(model, images, batch_size=32, lpips=lpips, fid_features=feats)
            rows.append(r)
            results_path.write_text(json.dumps(rows, indent=2))
            print(json.dumps(r), flush=True)
    rows.sort(key=lambda r: (r["kind"], r["f"]))
    (out / "table.md").write_text(markdown_table(rows))
    plot(rows, out / "rate_distortion.png")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
