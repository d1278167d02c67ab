"""Inception-v3 pool features (2048-d) for FID, in plain torch, with torchvision's state-dict key layout.

Load weights from a file (``InceptionV3Features.from_file(path)``; ``$LDM_INCEPTION_WEIGHTS`` is what
``ldm eval autoencoder --inception`` falls back to): either torchvision's ``inception_v3`` state dict or
pytorch-fid's ``pt_inception-2015-12-05`` (the TF FID graph ported; same keys, ``fc`` of 1008 classes).
``fid_variant=True`` (pytorch-fid's blocks: average pools that exclude padding, a max pool in the last block's
pool branch; input scaled to [-1, 1]) reproduces standard FID features with the pytorch-fid weights.
``AuxLogits.*`` and ``fc.*`` are ignored. Nothing is downloaded.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

INCEPTION_ENV = "LDM_INCEPTION_WEIGHTS"


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, k, s=1, p=0) -> None:  # noqa: ANN001 - int or (h, w)
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: torch.Tensor, fid: bool) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=not fid)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int, fid: bool) -> None:
        super().__init__()
        self.fid = fid
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = BasicConv2d(cin, 48, 1), BasicConv2d(48, 64, 5, p=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = BasicConv2d(64, 96, 3, p=1), BasicConv2d(96, 96, 3, p=1)
        self.branch_pool = BasicConv2d(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x, self.fid))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, s=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = BasicConv2d(64, 96, 3, p=1), BasicConv2d(96, 96, 3, s=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, fid: bool) -> None:
        super().__init__()
        self.fid = fid
        row, col = dict(k=(1, 7), p=(0, 3)), dict(k=(7, 1), p=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2, self.branch7x7_3 = BasicConv2d(c7, c7, **row), BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = BasicConv2d(c7, c7, **col), BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = BasicConv2d(c7, c7, **col), BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x, self.fid))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = BasicConv2d(cin, 192, 1), BasicConv2d(192, 320, 3, s=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), p=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), p=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, s=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, pool: str) -> None:  # pool: "avg" | "avg_fid" | "max"
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = BasicConv2d(384, 384, (1, 3), p=(0, 1)), BasicConv2d(384, 384, (3, 1), p=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = BasicConv2d(cin, 448, 1), BasicConv2d(448, 384, 3, p=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), p=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), p=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.pool == "max" else _avg(x, self.pool == "avg_fid")
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a), self.branch3x3dbl_3a(d),
                          self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class InceptionV3Features(nn.Module):
    """(B, 3, H, W) float in [0, 1] (or uint8) → (B, 2048) pool features; images resized to 299×299 (bilinear)."""

    num_features = 2048

    def __init__(self, fid_variant: bool = True) -> None:
        super().__init__()
        self.fid_variant = fid_variant
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, s=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, p=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        f = fid_variant
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32, f), InceptionA(256, 64, f), InceptionA(288, 64, f)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128, f), InceptionC(768, 160, f)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160, f), InceptionC(768, 192, f)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg_fid" if f else "avg")
        self.Mixed_7c = InceptionE(2048, "max" if f else "avg")
        self.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike, fid_variant: bool = True) -> "InceptionV3Features":
        from ..safe_load import read_state_dict

        sd, _ = read_state_dict(path)
        sd = {k: v for k, v in sd.items() if not k.startswith(("AuxLogits.", "fc."))}
        model = cls(fid_variant)
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
        shapes = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
        if missing or unexpected or shapes:
            raise CheckpointError(
                f"{os.fspath(path)} is not a torchvision-layout Inception-v3 state dict (keys like "
                f"Mixed_7c.branch_pool.conv.weight): missing {missing[:3]}, unexpected {unexpected[:3]}, "
                f"mis-shaped {shapes[:3]}")
        model.load_state_dict({k: v.float() for k, v in sd.items()})
        return model.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        if self.fid_variant:
            x = 2.0 * x - 1.0
        else:  # torchvision's transform_input: ImageNet statistics
            mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            x = (x - mean) / std
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))  # (B, 2048)
