"""Task evaluations over a generator callable + ShapesWorld ground truth, scored by the judge.

Each ``evaluate_<task>`` takes ``generate``: a callable from a batch of conditions to images (N, 3, H, W) in
[-1, 1] (``eval.adapters`` builds these from a ``Pipeline``; tests pass tiny models or the ground truth itself),
validates the conditions at the boundary and returns a dict of numbers. Held-out scenes come from
``heldout(n)`` = ShapesWorld(seed=EVAL_SEED), which neither the judge nor the generators train on.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.shapes import NUM_CLASSES, NUM_SEGMENT_CLASSES, ShapesWorld, ShapesWorldConfig
from ..errors import LDMError
from .adherence import check_caption, parse_caption
from .distribution import DistributionMetrics
from .image_metrics import psnr, ssim, to_unit
from .judge import Judge
from .judge_accuracy import box_iou, confusion_miou
from .judge_train import EVAL_SEED


def heldout(n: int, *, size: int = 64, seed: int = EVAL_SEED, offset: int = 0) -> dict[str, Any]:
    """Items ``offset .. offset + n - 1`` of ShapesWorld(seed), stacked: images (n, 3, H, W), captions, labels,
    layouts (n, 3, 5), segmentation (n, H, W), lowres (n, 3, H/4, W/4), mask_box (n, 1, H, W)."""
    if n <= 0:
        raise LDMError(f"the number of evaluation samples must be positive, got {n}")
    world = ShapesWorld(ShapesWorldConfig(size=size, seed=seed, length=offset + n))
    items = [world[i] for i in range(offset, offset + n)]
    out: dict[str, Any] = {"captions": [it["caption"] for it in items]}
    for key, name in (("image", "images"), ("class_label", "labels"), ("layout", "layouts"),
                      ("segmentation", "segmentation"), ("lowres", "lowres"), ("mask_box", "masks")):
        out[name] = torch.stack([it[key] for it in items])
    return out


# -- text-to-image -----------------------------------------------------------------------------------------------
def adherence(judge: Judge, images: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Fraction of images whose caption the judge finds satisfied (``all``), and per attribute."""
    specs = [parse_caption(c) for c in captions]
    verdicts = [check_caption(s, d) for s, d in zip(specs, judge.detect(images))]
    keys = ("all", "objects", "shape", "colour", "count", "relation")
    return {k: float(np.mean([v[k] for v in verdicts if k in v])) if any(k in v for v in verdicts) else float("nan")
            for k in keys}


def evaluate_txt2img(generate: Callable[[list[str], float], torch.Tensor], judge: Judge, captions: list[str],
                     cfg_scales: Sequence[float], *, metrics: DistributionMetrics | None = None) -> list[dict[str, Any]]:
    """One row per CFG scale: prompt adherence (all attributes right) and per-attribute rates, FID / KID."""
    for c in captions:
        parse_caption(c)  # a non-ShapesWorld prompt cannot be judged: fail before sampling
    rows = []
    for i, scale in enumerate(cfg_scales):
        images = _check_images(generate(list(captions), float(scale)), len(captions), "txt2img")
        row: dict[str, Any] = {"cfg_scale": float(scale), "n": len(captions)}
        row |= {f"adherence_{k}" if k != "all" else "adherence": v
                for k, v in adherence(judge, images, captions).items()}
        if metrics is not None:
            row |= metrics.score(images, warn=i == 0)
        rows.append(row)
    return rows


# -- class-conditional -------------------------------------------------------------------------------------------
def evaluate_class(generate: Callable[[torch.Tensor], torch.Tensor], judge: Judge,
                   labels: torch.Tensor) -> dict[str, Any]:
    """A sample is right when the judge finds an object of the requested class in it (ShapesWorld's class label
    is the main object's, and a scene may hold up to two more objects); also the rate of the largest object."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim != 1 or ((labels < 0) | (labels >= NUM_CLASSES)).any():
        raise LDMError(f"class labels must be a 1-D tensor in [0, {NUM_CLASSES}), got {labels.tolist()[:8]}...")
    images = _check_images(generate(labels), labels.shape[0], "class")
    dets = judge.detect(images)
    present = [any(o.cls == int(c) for o in d) for d, c in zip(dets, labels)]
    largest = [bool(d) and d[0].cls == int(c) for d, c in zip(dets, labels)]
    return {"n": int(labels.shape[0]), "class_accuracy": float(np.mean(present)),
            "largest_object_accuracy": float(np.mean(largest))}


# -- layout-to-image ---------------------------------------------------------------------------------------------
def check_layouts(layouts: torch.Tensor) -> torch.Tensor:
    """(N, K, 5) rows (class, x0, y0, x1, y1), padding rows class -1; boxes must lie inside [0, 1]."""
    layouts = torch.as_tensor(layouts, dtype=torch.float32)
    if layouts.ndim != 3 or layouts.shape[-1] != 5:
        raise LDMError(f"layouts must have shape (N, K, 5) with rows (class, x0, y0, x1, y1), "
                       f"got {tuple(layouts.shape)}")
    real = layouts[..., 0] >= 0
    cls, box = layouts[..., 0][real], layouts[..., 1:][real]
    if ((cls != cls.round()) | (cls >= NUM_CLASSES)).any():
        raise LDMError(f"layout classes must be integers in [0, {NUM_CLASSES}) (or -1 for padding), "
                       f"got {sorted(set(cls.tolist()))}")
    bad = (box < 0).any(1) | (box > 1).any(1) | (box[:, 2] <= box[:, 0]) | (box[:, 3] <= box[:, 1])
    if bad.any():
        raise LDMError(f"layout box {box[bad][0].tolist()} lies outside the image or is empty; boxes are "
                       f"(x0, y0, x1, y1) with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
    return layouts


def evaluate_layout(generate: Callable[[torch.Tensor], torch.Tensor], judge: Judge,
                    layouts: torch.Tensor) -> dict[str, Any]:
    """Mean IoU of each requested box with the judge's best box of the requested class (0 if none)."""
    layouts = check_layouts(layouts)
    images = _check_images(generate(layouts), layouts.shape[0], "layout")
    ious = []
    for d, rows in zip(judge.detect(images), layouts):
        for row in rows[rows[:, 0] >= 0]:
            box = tuple(float(v) for v in row[1:])
            ious.append(max((box_iou(box, o.box) for o in d if o.cls == int(row[0])), default=0.0))
    return {"n": int(layouts.shape[0]), "n_objects": len(ious), "mean_iou": float(np.mean(ious)),
            "recall_iou50": float(np.mean([i >= 0.5 for i in ious]))}


# -- semantic map to image ---------------------------------------------------------------------------------------
def check_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.ndim != 3 or tuple(maps.shape[-2:]) != tuple(size):
        raise LDMError(f"semantic maps must have shape (N, {size[0]}, {size[1]}) for this model, "
                       f"got {tuple(maps.shape)}")
    if maps.is_floating_point() or maps.min() < 0 or maps.max() >= NUM_SEGMENT_CLASSES:
        raise LDMError(f"semantic maps must hold integer labels in [0, {NUM_SEGMENT_CLASSES}), got dtype "
                       f"{maps.dtype}, range [{maps.min().item()}, {maps.max().item()}]")
    return maps.long()


def evaluate_semantic(generate: Callable[[torch.Tensor], torch.Tensor], judge: Judge, maps: torch.Tensor, *,
                      size: tuple[int, int] = (64, 64)) -> dict[str, Any]:
    """mIoU of the judge's segmentation of the generated images against the input maps."""
    maps = check_maps(maps, size)
    images = _check_images(generate(maps), maps.shape[0], "semantic", size)
    seg = confusion_miou(judge.segment(images), maps)
    return {"n": int(maps.shape[0]), "miou": seg["miou"], "pixel_accuracy": seg["pixel_accuracy"]}


# -- super-resolution --------------------------------------------------------------------------------------------
def quantise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → the 8-bit value it would be stored as, back in [-1, 1] (what a PNG input carries)."""
    return (to_unit(x) * 255).round() / 255 * 2 - 1


def evaluate_superres(generate: Callable[[torch.Tensor], torch.Tensor], highres: torch.Tensor,
                      lowres: torch.Tensor) -> dict[str, Any]:
    """PSNR / SSIM of the model and of bicubic upsampling against the ground truth (both from 8-bit low-res)."""
    if lowres.ndim != 4 or highres.ndim != 4 or lowres.shape[0] != highres.shape[0]:
        raise LDMError(f"need (N, 3, h, w) low-res and (N, 3, H, W) high-res images, got {tuple(lowres.shape)} "
                       f"and {tuple(highres.shape)}")
    lowres = quantise(lowres)
    images = _check_images(generate(lowres), lowres.shape[0], "superres", tuple(highres.shape[-2:]))
    bicubic = F.interpolate(lowres, size=highres.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    out = {"n": int(lowres.shape[0]), "psnr": float(psnr(images, highres).mean()),
           "ssim": float(ssim(images, highres).mean()), "psnr_bicubic": float(psnr(bicubic, highres).mean()),
           "ssim_bicubic": float(ssim(bicubic, highres).mean())}
    out["psnr_gain_db"] = out["psnr"] - out["psnr_bicubic"]
    return out


# -- inpainting --------------------------------------------------------------------------------------------------
def evaluate_inpaint(generate: Callable[[torch.Tensor, torch.Tensor, list[str]], torch.Tensor], images: torch.Tensor,
                     masks: torch.Tensor, captions: list[str]) -> dict[str, Any]:
    """PSNR inside the mask against the ground truth; the largest and mean change outside it (8-bit levels)."""
    if masks.shape[0] != images.shape[0] or masks.shape[1] != 1 or masks.shape[-2:] != images.shape[-2:]:
        raise LDMError(f"masks must be (N, 1, H, W) matching images {tuple(images.shape)}, got {tuple(masks.shape)}")
    out_imgs = _check_images(generate(images, masks, list(captions)), images.shape[0], "inpaint",
                             tuple(images.shape[-2:]))
    a, b = to_unit(out_imgs), to_unit(images)
    inside = masks.expand_as(a) > 0.5
    change = ((a - b).abs() * 255).masked_fill(inside, 0.0)
    outside_px = (~inside).sum().clamp_min(1)
    # baseline: the hole filled with the mean colour of the pixels around it (outside the mask)
    keep = (~inside).float()
    fill = (b * keep).sum((2, 3), keepdim=True) / keep.sum((2, 3), keepdim=True).clamp_min(1)
    return {"n": int(images.shape[0]), "psnr_inside": _psnr_inside(a, b, inside),
            "psnr_inside_mean_fill": _psnr_inside(fill.expand_as(b), b, inside),
            "max_change_outside": float(change.max()), "mean_change_outside": float(change.sum() / outside_px)}


def _psnr_inside(x: torch.Tensor, y: torch.Tensor, inside: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB, signal range 1) of x against y over each image's ``inside`` pixels (an
    image with an empty mask counts as MSE 0, i.e. the 100 dB cap)."""
    err = (x - y).pow(2)
    mse = torch.stack([e[m].mean() if m.any() else e.new_tensor(0.0) for e, m in zip(err, inside)])
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


# -- unconditional -----------------------------------------------------------------------------------------------
def evaluate_uncond(generate: Callable[[int], torch.Tensor], metrics: DistributionMetrics, n: int) -> dict[str, Any]:
    images = _check_images(generate(n), n, "uncond")
    return {"n": n} | metrics.score(images)


def _check_images(images: torch.Tensor, n: int, task: str, size: tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[:2] != (n, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise LDMError(f"the {task} generator must return (N={n}, 3, H, W) images in [-1, 1], got {shape}")
    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        raise LDMError(f"the {task} generator returned {tuple(images.shape[-2:])} images; the ground truth is {size}")
    return images.float().clamp(-1, 1)
