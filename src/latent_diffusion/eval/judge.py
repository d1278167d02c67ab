"""The independent judge: a small segmentation net trained only on ShapesWorld ground truth.

Everything the evaluations need is derived from one per-pixel prediction (factorised into a shape head,
background + 5 shapes, and a colour head, background + 8 colours):

* ``segment`` — (B, H, W) ShapesWorld segmentation labels (0 = background, ``1 + class``), for semantic mIoU;
* ``detect`` — objects = 4-connected components of the foreground (blobs under ``min_blob_fraction`` of the image
  are ignored), each with the majority shape and colour of its pixels, its box (normalised, x1/y1 exclusive like
  ShapesWorld's layouts) and box centre; from these: shape, colour, count, class of the main object, relations
  (``adherence``), boxes for layout IoU;
* ``features`` — (B, 64) global-average-pooled bottleneck activations, for FID / KID / precision-recall.

The judge is never used to train a generator. Its weights live in ``assets/judge-shapes.safetensors`` and are
re-created by ``ldm train judge`` (``eval.judge_train``); its own accuracy is in docs/judge.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import COLOUR_NAMES, SHAPES, class_index
from ..errors import CheckpointError, LDMError

DEFAULT_JUDGE_PATH = Path(__file__).resolve().parent.parent / "assets" / "judge-shapes.safetensors"
JUDGE_KIND = "shapes-judge"  # the metadata ``kind`` of a judge file
NUM_SHAPE_LABELS = len(SHAPES) + 1  # 0 = background
NUM_COLOUR_LABELS = len(COLOUR_NAMES) + 1


@dataclass(frozen=True)
class JudgeConfig:
    channels: tuple[int, ...] = (16, 32, 48, 64)  # widths at full, 1/2, 1/4, 1/8 resolution
    min_blob_fraction: float = 0.004  # components smaller than this fraction of the image are noise (16 px at 64²)

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or any(int(c) <= 0 for c in self.channels):
            raise LDMError(f"JudgeConfig.channels needs >= 2 positive widths, got {self.channels}")


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class JudgeNet(nn.Module):
    """A small U-Net. (B, 3, H, W) in [-1, 1], H and W multiples of 2**(levels-1) →
    shape logits (B, 6, H, W), colour logits (B, 9, H, W), pooled features (B, channels[-1])."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or JudgeConfig()
        ch = config.channels
        self.stem = nn.Sequential(_conv(3, ch[0]), _conv(ch[0], ch[0]))
        self.down = nn.ModuleList(nn.Sequential(_conv(a, b, 2), _conv(b, b)) for a, b in zip(ch[:-1], ch[1:]))
        self.mid = _conv(ch[-1], ch[-1])
        self.lateral = nn.ModuleList(nn.Conv2d(b, a, 1) for a, b in zip(ch[:-1], ch[1:]))
        self.up = nn.ModuleList(_conv(a, a) for a in ch[:-1])
        self.shape_head = nn.Conv2d(ch[0], NUM_SHAPE_LABELS, 1)
        self.colour_head = nn.Conv2d(ch[0], NUM_COLOUR_LABELS, 1)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        skips = [h]
        for block in self.down:
            h = block(h)
            skips.append(h)
        h = self.mid(h)  # (B, C_last, H/8, W/8)
        feats = h.mean(dim=(2, 3))  # (B, C_last)
        for i in reversed(range(len(self.up))):
            h = F.interpolate(self.lateral[i](h), scale_factor=2.0, mode="nearest") + skips[i]
            h = self.up[i](h)
        return self.shape_head(h), self.colour_head(h), feats


@dataclass
class DetectedObject:
    shape: str
    colour: str
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in [0, 1], x1 / y1 exclusive
    area: int  # pixels

    @property
    def cls(self) -> int:
        return class_index(self.shape, self.colour)

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


class Judge:
    """Inference wrapper: ``Judge.load()`` (the committed weights) or ``Judge(JudgeNet(...))``."""

    def __init__(self, net: JudgeNet, device: str | torch.device = "cpu") -> None:
        self.net = net.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.config = net.config

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Judge:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path) if path is not None else DEFAULT_JUDGE_PATH
        if not path.is_file():
            raise CheckpointError(f"judge weights not found at {path}; re-create them with `ldm train judge`")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("kind") != JUDGE_KIND:
            raise CheckpointError(f"{path} is not a judge checkpoint (metadata kind={meta.get('kind')!r})")
        raw = json.loads(meta["config"])
        net = JudgeNet(JudgeConfig(channels=tuple(raw["channels"]), min_blob_fraction=raw["min_blob_fraction"]))
        net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
        return cls(net, device)

    # -- raw predictions ----------------------------------------------------------------------------
    def _check(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise LDMError(f"the judge takes (B, 3, H, W) images in [-1, 1], got shape {tuple(images.shape)}")
        m = self.net.multiple
        if images.shape[-1] % m or images.shape[-2] % m:
            raise LDMError(f"the judge needs H and W multiples of {m}, got {tuple(images.shape[-2:])}")
        return images.to(self.device, torch.float32).clamp(-1, 1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) → per-pixel shape labels (B, H, W) in 0..5 and colour labels (B, H, W) in 1..8
        (colour is the best non-background colour; it only matters where the shape label is not 0)."""
        images = self._check(images)
        shapes, colours = [], []
        for x in images.split(batch_size):
            s, c, _ = self.net(x)
            shapes.append(s.argmax(1).cpu())
            colours.append(c[:, 1:].argmax(1).cpu() + 1)
        return torch.cat(shapes), torch.cat(colours)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, C) float64 pooled features."""
        images = self._check(images)
        return torch.cat([self.net(x)[2].double().cpu() for x in images.split(batch_size)])

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 ShapesWorld labels: 0 background, else 1 + shape * 8 + colour."""
        shape, colour = self.predict(images)
        return torch.where(shape > 0, 1 + (shape - 1) * len(COLOUR_NAMES) + (colour - 1), torch.zeros_like(shape))

    def detect(self, images: torch.Tensor) -> list[list[DetectedObject]]:
        """Objects of each image, largest first."""
        shape, colour = self.predict(images)
        return [objects_from_labels(s.numpy(), c.numpy(), self.config.min_blob_fraction)
                for s, c in zip(shape, colour)]


def objects_from_labels(shape: np.ndarray, colour: np.ndarray, min_blob_fraction: float) -> list[DetectedObject]:
    """(H, W) shape labels (0 = background) and colour labels → components with majority shape / colour."""
    from scipy import ndimage

    h, w = shape.shape
    comps, n = ndimage.label(shape > 0)  # 4-connectivity: a one-pixel diagonal touch does not merge objects
    objs = []
    for i, sl in enumerate(ndimage.find_objects(comps), start=1):
        if sl is None:
            continue
        region = comps[sl] == i
        area = int(region.sum())
        if area < min_blob_fraction * h * w:
            continue
        s = np.bincount(shape[sl][region], minlength=NUM_SHAPE_LABELS)[1:].argmax()
        c = np.bincount(colour[sl][region], minlength=NUM_COLOUR_LABELS)[1:].argmax()
        ys, xs = sl
        box = (xs.start / w, ys.start / h, xs.stop / w, ys.stop / h)
        objs.append(DetectedObject(SHAPES[s], COLOUR_NAMES[c], box, area))
    return sorted(objs, key=lambda o: -o.area)


def save_judge(net: JudgeNet, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Atomic safetensors write with the config (and ``extra``, e.g. the training recipe) as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": JUDGE_KIND, "config": json.dumps(asdict(net.config))}
    meta |= {k: json.dumps(v) for k, v in (extra or {}).items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().float().contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
