"""Reconstruction grids (PNG) and loss-curve plots for training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..eval.image_metrics import to_unit


def image_grid(rows: list[torch.Tensor], pad: int = 2) -> Image.Image:
    """rows: tensors (N, 3, H, W) in [-1, 1], one grid row each → an RGB image with ``pad``-pixel white gaps."""
    n, _, h, w = rows[0].shape
    canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, imgs in enumerate(rows):
        arr = (to_unit(imgs).permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        for c in range(n):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y:y + h, x:x + w] = arr[c]
    return Image.fromarray(canvas)


def save_reconstruction_grid(x: torch.Tensor, x_rec: torch.Tensor, path: str | Path, n: int = 8,
                             scale: int = 2) -> Path:
    """Top row inputs, bottom row reconstructions; nearest-upscaled ×``scale`` for viewing."""
    img = image_grid([x[:n], x_rec[:n]])
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def read_log(path: str | Path) -> list[dict]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def plot_loss_curves(log_path: str | Path, out: str | Path, title: str = "") -> Path | None:
    """One panel per loss term (log-y where positive) plus held-out PSNR, from a run's ``log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(log_path)
    train = [r for r in rows if "val_psnr" not in r]
    val = [r for r in rows if "val_psnr" in r]
    if not train:
        return None
    keys = [k for k in ("total", "nll", "l1", "lpips", "kl", "codebook", "g_loss", "d_weight", "disc_loss", "psnr",
                        "perplexity") if any(k in r for r in train)]
    cols = 3
    nrows = (len(keys) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in train if k in r]
        ax.plot(*zip(*pts), lw=1)
        ax.set_title(k)
        if all(v > 0 for _, v in pts) and k not in ("psnr", "perplexity"):
            ax.set_yscale("log")
    ax = axes.flat[len(keys)]
    if val:
        ax.plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-")
    ax.set_title("held-out PSNR (dB)")
    for a in list(axes.flat)[len(keys) + 1:]:
        a.axis("off")
    for a in axes.flat:
        a.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
