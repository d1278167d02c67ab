"""Per-image reconstruction metrics on images in [-1, 1]: PSNR, SSIM, and codebook statistics of a VQ model."""

from __future__ import annotations

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped (what an 8-bit image would show)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pairs in [-1, 1] → (B,) PSNR in dB on the [0, 1] scale (MSE floored at 1e-10)."""
    mse = (to_unit(x) - to_unit(y)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM (torchmetrics: 11×11 Gaussian window, σ = 1.5) on the [0, 1] scale."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(to_unit(x), to_unit(y), data_range=1.0, reduction="none")


def codebook_stats(indices: torch.Tensor, n_embed: int) -> dict[str, float]:
    """Usage (fraction of the ``n_embed`` codes that occur) and perplexity exp(H(p)) of the code histogram."""
    counts = torch.bincount(indices.flatten().long(), minlength=n_embed).double()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codebook_usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}
