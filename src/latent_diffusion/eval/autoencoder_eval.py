"""Reconstruction quality of a first-stage autoencoder: PSNR, SSIM, LPIPS, rFID, codebook use; JSON + Markdown.

``rfid`` is torchmetrics' Fréchet distance between the features of the inputs and of the reconstructions, with
the extractor of ``eval.features`` (an LPIPS-style VGG16 pool; see there for what its numbers mean). ``lpips`` is
real LPIPS only if ``lpips_pretrained`` is true; else the documented substitute of ``losses.lpips``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..losses.lpips import LPIPS
from ..models.vq import VQModel
from .image_metrics import codebook_stats, psnr, ssim


@torch.no_grad()
def evaluate_autoencoder(model: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
                         lpips: LPIPS | None = None, fid_features: nn.Module | None = None,
                         device: str | torch.device = "cpu") -> dict[str, Any]:
    """``images``: (N, 3, H, W) in [-1, 1]. KL models decode the posterior mode; VQ models quantise."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    model = model.to(device).eval()
    fid = None
    if fid_features is not None:
        fid = FrechetInceptionDistance(feature=fid_features, normalize=True, reset_real_features=True)
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    idxs, latent_shape = [], None
    for x in images.split(batch_size):
        x = x.to(device)
        if isinstance(model, VQModel):
            h = model.encode(x)
            quant, _, idx = model.quantize(h)
            rec = model.decoder(model.post_quant_conv(quant))
            idxs.append(idx.cpu())
        else:
            h = model.encode(x).mode()
            rec = model.decode(h)
        latent_shape = tuple(h.shape[1:])
        rec = rec.float().clamp(-1, 1)
        sums["psnr"] += float(psnr(x, rec).sum())
        sums["ssim"] += float(ssim(x, rec).sum())
        if lpips is not None:
            sums["lpips"] += float(lpips(x.float(), rec).sum())
        if fid is not None:
            fid.update(((x.float() + 1) / 2).clamp(0, 1).cpu(), real=True)
            fid.update(((rec + 1) / 2).cpu(), real=False)
    n = images.shape[0]
    out: dict[str, Any] = {"n_images": n, "psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n,
                           "params": sum(p.numel() for p in model.parameters()), "latent_shape": list(latent_shape or ())}
    if lpips is not None:
        out |= {"lpips": sums["lpips"] / n, "lpips_pretrained": lpips.pretrained}
    if fid is not None:
        real = type(fid_features).__name__ == "InceptionV3Features" or getattr(fid_features, "pretrained", False)
        out |= {"rfid": float(fid.compute()),
                "rfid_features": type(fid_features).__name__ + ("(weights from file)" if real else "(substitute)")}
    if idxs:
        out |= codebook_stats(torch.cat(idxs), model.cfg.n_embed)  # type: ignore[union-attr]
    return out


COLUMNS = [("name", "model"), ("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS*"), ("rfid", "rFID*"),
           ("codebook_usage", "codebook use"), ("perplexity", "perplexity"), ("params", "params"),
           ("latent_shape", "latent (C×h×w)")]


def _cell(key: str, v: Any) -> str:
    if v is None:
        return "–"
    if key == "latent_shape":
        return "×".join(str(d) for d in v)
    if key == "params":
        return f"{v / 1e6:.2f} M"
    if key in ("psnr", "perplexity"):
        return f"{v:.2f}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict[str, Any]], json_path: str | Path | None, md_path: str | Path | None) -> None:
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rows, indent=2))
    if md_path is not None:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        note = ("\n\\* LPIPS and rFID use the documented substitutes (seeded random VGG16) unless the rows say "
                "`lpips_pretrained: true` in the JSON; compare them only with each other.\n")
        Path(md_path).write_text(markdown_table(rows) + note)
