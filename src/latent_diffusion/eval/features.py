"""Feature extractors for Fréchet distances (torchmetrics' FID with ``feature=<module>``).

``VGGPoolFeatures`` — the documented substitute for Inception-v3 when no Inception weights are at hand: the LPIPS
VGG16 trunk (real torchvision weights if ``LDM_VGG16_WEIGHTS`` / ``vgg_path`` is given, else the seeded random
init of ``losses.lpips``), input resized to 64×64 only if smaller than 32 px, ``relu5_3`` global-average-pooled to a
512-d vector. A Fréchet distance on these features ("rFID-substitute") ranks reconstructions of the same data
consistently but is **not** comparable to published FID numbers.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.lpips import LPIPS


class VGGPoolFeatures(nn.Module):
    """(B, 3, H, W) float in [0, 1] → (B, 512)."""

    num_features = 512

    def __init__(self, vgg_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        lp = LPIPS(vgg_path=vgg_path, lin_path=None)
        self.net, self.pretrained = lp.net, lp.pretrained_trunk
        self.register_buffer("shift", lp.shift.clone(), persistent=False)
        self.register_buffer("scale", lp.scale.clone(), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.dtype == torch.uint8 or x.max() > 1.5:  # torchmetrics' dummy probe may send uint8
            x = x / 255.0
        if min(x.shape[-2:]) < 32:  # five max-pools need >= 32 px for a non-empty relu5_3 map
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        x = (x * 2.0 - 1.0 - self.shift) / self.scale
        return self.net(x)[-1].mean(dim=(2, 3))  # (B, 512)
