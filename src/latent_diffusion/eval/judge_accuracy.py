"""The judge's own accuracy on held-out REAL ShapesWorld images, per attribute (it is trusted only at ≥ 95 %).

Detections are matched to ground-truth objects by greedy box IoU (a match needs IoU ≥ 0.5). Per attribute:

* shape / colour — fraction of ground-truth objects whose match has the right shape / colour (no match = wrong);
* class — fraction of images whose main object (object 0) is matched with the right class;
* count — fraction of images with exactly the right number of detected objects;
* relation — fraction of images with ≥ 2 objects where the matches of objects 0 and 1 stand in the caption's
  relation (``adherence.relation_between``);
* box — fraction of ground-truth objects matched with IoU ≥ 0.75 (and ``box_mean_iou``);
* pixel mIoU — mean over the 41 segmentation labels present of the dataset-level IoU;
* caption — fraction of images whose own caption the judge calls satisfied (``check_caption(...)["all"]``).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..data.shapes import NUM_SEGMENT_CLASSES, ShapesWorld, ShapesWorldConfig, class_name
from .adherence import check_caption, parse_caption, relation_between
from .judge import DetectedObject, Judge
from .judge_train import EVAL_SEED

TRUST_THRESHOLD = 0.95
ATTRIBUTES = ("shape", "colour", "class", "count", "relation", "box", "pixel_miou", "caption")


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(gt: list[tuple[float, ...]], dets: list[DetectedObject],
                min_iou: float = 0.5) -> list[tuple[DetectedObject | None, float]]:
    """For each ground-truth box, its detection (greedy by IoU, each used once) and the IoU (0 if none)."""
    pairs = sorted(((box_iou(g, d.box), i, j) for i, g in enumerate(gt) for j, d in enumerate(dets)), reverse=True)
    out: list[tuple[DetectedObject | None, float]] = [(None, 0.0)] * len(gt)
    used_g, used_d = set(), set()
    for iou, i, j in pairs:
        if iou < min_iou or i in used_g or j in used_d:
            continue
        out[i] = (dets[j], iou)
        used_g.add(i)
        used_d.add(j)
    return out


def confusion_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_SEGMENT_CLASSES) -> dict:
    """Dataset-level IoU per label from (N, H, W) int maps; mean over labels present in either."""
    idx = (target.flatten() * num_classes + pred.flatten()).long()
    conf = torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    iou = inter[present] / union[present]
    return {"miou": float(iou.mean()), "pixel_accuracy": float(inter.sum() / conf.sum()),
            "classes_present": int(present.sum())}


def judge_accuracy(judge: Judge, *, n: int = 1000, seed: int = EVAL_SEED, size: int = 64,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """Evaluate on ``n`` held-out real images of ShapesWorld(seed); returns per-attribute accuracies.
    ``transform`` (e.g. an autoencoder round trip) is applied to the images first; the truth stays the scene's."""
    world = ShapesWorld(ShapesWorldConfig(size=size, seed=seed, length=n))
    items = [world[i] for i in range(n)]
    images = torch.stack([it["image"] for it in items])
    if transform is not None:
        images = transform(images)
    seg_true = torch.stack([it["segmentation"] for it in items])
    seg_pred = judge.segment(images)
    dets = judge.detect(images)
    tally = {k: [] for k in ("shape", "colour", "class", "count", "relation", "box", "caption")}
    ious = []
    errors: list[str] = []
    for it, d in zip(items, dets):
        k = int(it["num_objects"])
        gt = [tuple(float(v) for v in row[1:]) for row in it["layout"][:k]]
        gcls = [int(row[0]) for row in it["layout"][:k]]
        matches = match_boxes(gt, d)
        for (m, iou), c in zip(matches, gcls):
            name = class_name(c)
            tally["shape"].append(m is not None and m.shape == name.split()[1])
            tally["colour"].append(m is not None and m.colour == name.split()[0])
            tally["box"].append(iou >= 0.75)
            ious.append(iou)
        tally["class"].append(matches[0][0] is not None and matches[0][0].cls == gcls[0])
        tally["count"].append(len(d) == k)
        spec = parse_caption(it["caption"])
        if k >= 2:
            a, b = matches[0][0], matches[1][0]
            tally["relation"].append(a is not None and b is not None and relation_between(a, b) == spec.relation)
        ok = check_caption(spec, d)["all"]
        tally["caption"].append(ok)
        if not ok and len(errors) < 10:
            errors.append(f"{it['caption']!r} -> " + ", ".join(f"{o.colour} {o.shape}" for o in d))
    out: dict[str, Any] = {k: float(np.mean(v)) for k, v in tally.items()}
    seg = confusion_miou(seg_pred, seg_true)
    out |= {"pixel_miou": seg["miou"], "pixel_accuracy": seg["pixel_accuracy"], "box_mean_iou": float(np.mean(ious)),
            "n_images": n, "n_objects": len(ious), "n_relations": len(tally["relation"]), "seed": seed,
            "examples_wrong": errors}
    out["trusted"] = all(out[a] >= TRUST_THRESHOLD for a in ATTRIBUTES)
    return out


def accuracy_markdown(acc: dict[str, Any]) -> str:
    rows = [("shape (per object)", "shape"), ("colour (per object)", "colour"), ("class of the main object", "class"),
            ("object count (per image)", "count"), ("relation (images with ≥ 2 objects)", "relation"),
            ("box IoU ≥ 0.75 (per object)", "box"), ("pixel mIoU (41 labels)", "pixel_miou"),
            ("whole caption right (per image)", "caption")]
    lines = ["| attribute | accuracy |", "|---|---:|"]
    lines += [f"| {label} | {100 * acc[key]:.2f} % |" for label, key in rows]
    lines.append(f"| (box mean IoU) | {acc['box_mean_iou']:.4f} |")
    lines.append(f"| (pixel accuracy) | {100 * acc['pixel_accuracy']:.2f} % |")
    return "\n".join(lines) + "\n"
