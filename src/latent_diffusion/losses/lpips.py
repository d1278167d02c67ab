"""LPIPS (Zhang et al., 2018) in plain torch: a VGG16 feature stack and five learned 1×1 "lin" heads.

d(x, y) = Σ_l mean_{h,w} ‖w_l ⊙ (n(φ_l(x)) − n(φ_l(y)))‖² where φ_l are the relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3 activations of VGG16, n(·) normalises each pixel's feature vector to unit length, and w_l ≥ 0 are the heads.

Weight files (never downloaded):
- the VGG16 trunk in torchvision's layout (``features.{0,2,5,...,28}.weight|bias``; ``classifier.*`` is ignored),
  from ``vgg_path`` or the ``LDM_VGG16_WEIGHTS`` environment variable;
- the heads in the lpips package's ``vgg.pth`` layout (``lin0.model.1.weight`` … ``lin4.model.1.weight``, each
  (1, C, 1, 1)), from ``lin_path`` or ``LDM_LPIPS_WEIGHTS``.

**Fallback** when a file is absent (a warning says so once per process; never silent): the trunk gets a fixed
seeded Kaiming-normal init (seed 0, biases 0) — a *random-feature* perceptual distance, which Zhang et al. found
still correlates with human judgement far better than L2 — and every head weight is 0.1, so that each layer adds
0.2·(1 − cosine similarity) and the sum is the mean over the 5 layers of the per-pixel cosine distance (range
[0, 2]). Numbers computed with the fallback are an "LPIPS substitute", not comparable to published LPIPS values;
``LPIPS.pretrained`` tells which one you got.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

VGG_ENV = "LDM_VGG16_WEIGHTS"
LIN_ENV = "LDM_LPIPS_WEIGHTS"
CHANNELS = (64, 128, 256, 512, 512)
# torchvision vgg16 ``features`` indices: 'M' = max-pool; every conv is followed by a ReLU at index + 1.
_VGG_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in ``features``
FALLBACK_HEAD = 0.1
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` layout (keys ``features.N``), returning the 5 LPIPS taps."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in _VGG_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(item)
        self.features = nn.Sequential(*layers)  # 30 modules, indices 0..29

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                taps.append(x)
            if i == _TAPS[-1]:
                break
        return taps

    def seeded_init(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    m.bias.zero_()


class NetLinLayer(nn.Module):
    """lpips' head: ``model = Sequential(Dropout, Conv2d(C, 1, 1, bias=False))`` → key ``model.1.weight``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(B, C, H, W) → each pixel's C-vector divided by its L2 norm (+eps, as lpips)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def _resolve(path: str | os.PathLike | None, env: str) -> Path | None:
    value = path if path is not None else os.environ.get(env) or None
    return Path(value) if value is not None else None


def _read(path: Path, what: str) -> dict[str, torch.Tensor]:
    from ..safe_load import read_state_dict

    if not path.is_file():
        raise CheckpointError(f"{what} weight file {path} does not exist")
    sd, _ = read_state_dict(path)
    return sd


class LPIPS(nn.Module):
    """``forward(x, y)`` with images in [-1, 1], (B, 3, H, W) → distances (B, 1, 1, 1). Frozen, eval mode."""

    def __init__(self, vgg_path: str | os.PathLike | None = None, lin_path: str | os.PathLike | None = None,
                 *, seed: int = 0) -> None:
        super().__init__()
        # lpips' ScalingLayer: ImageNet statistics expressed for inputs in [-1, 1]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        for i, c in enumerate(CHANNELS):
            self.add_module(f"lin{i}", NetLinLayer(c))
        self.pretrained_trunk = self._load_trunk(_resolve(vgg_path, VGG_ENV), seed)
        self.pretrained_heads = self._load_heads(_resolve(lin_path, LIN_ENV))
        self.requires_grad_(False)
        self.eval()

    @property
    def pretrained(self) -> bool:
        """True only when both the VGG16 trunk and the lin heads came from weight files (real LPIPS)."""
        return self.pretrained_trunk and self.pretrained_heads

    def _load_trunk(self, path: Path | None, seed: int) -> bool:
        if path is None:
            _warn_once("vgg", f"LPIPS: no VGG16 weights (pass vgg_path= or set {VGG_ENV}); using the documented "
                       f"fallback: a seeded random-init VGG16 (seed {seed}). Values are an LPIPS *substitute*.")
            self.net.seeded_init(seed)
            return False
        sd = {k: v for k, v in _read(path, "VGG16").items() if k.startswith("features.")}
        expected = self.net.state_dict()
        bad = sorted(set(expected) ^ set(sd)) + [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
        if bad:
            raise CheckpointError(
                f"{path} is not a torchvision-layout VGG16 state dict: expected keys features.N.weight/bias for "
                f"N in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28) with VGG16 shapes; offending: {bad[:5]}")
        self.net.load_state_dict({k: v.float() for k, v in sd.items()})
        return True

    def _load_heads(self, path: Path | None) -> bool:
        if path is None:
            _warn_once("lin", f"LPIPS: no lin-head weights (pass lin_path= or set {LIN_ENV}, the lpips package's "
                       f"vgg.pth); using the documented fallback: every head weight = {FALLBACK_HEAD} (mean cosine "
                       "distance over the 5 layers).")
            with torch.no_grad():
                for i in range(len(CHANNELS)):
                    getattr(self, f"lin{i}").model[1].weight.fill_(FALLBACK_HEAD)
            return False
        sd = _read(path, "LPIPS lin-head")
        want = {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate(CHANNELS)}
        got = {k: tuple(v.shape) for k, v in sd.items()}
        if got != want:
            raise CheckpointError(
                f"{path} is not in the lpips package's vgg.pth layout: expected exactly the keys "
                f"lin0.model.1.weight … lin4.model.1.weight with shapes {list(want.values())}; got "
                f"{sorted(got.items())[:6]}")
        with torch.no_grad():
            for k, v in sd.items():
                getattr(self, k.split(".")[0]).model[1].weight.copy_(v.float())
        return True

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two (B, 3, H, W) images of equal shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0], 1, 1, 1)
        for i, (a, b) in enumerate(zip(fx, fy)):
            diff = (normalize_channels(a) - normalize_channels(b)).pow(2)  # (B, C_l, H_l, W_l)
            total = total + getattr(self, f"lin{i}")(diff).mean(dim=(2, 3), keepdim=True)
        return total

    def train(self, mode: bool = True) -> "LPIPS":  # always frozen: dropout off even inside a training module
        return super().train(False)
