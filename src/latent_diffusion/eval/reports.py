"""JSON + Markdown output of the task evaluations (one table per task; rows are dicts of numbers)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import LDMError

# task -> (column header, row key, format) in table order; "%" formats multiply by 100
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "txt2img": [("CFG", "cfg_scale", "g"), ("adherence", "adherence", "%"), ("objects", "adherence_objects", "%"),
                ("count", "adherence_count", "%"), ("relation", "adherence_relation", "%"), ("FID", "fid", ".3f"),
                ("KID", "kid_mean", ".4f"), ("precision", "precision", ".3f"), ("recall", "recall", ".3f"),
                ("n", "n", "d")],
    "class": [("CFG", "cfg_scale", "g"), ("class accuracy", "class_accuracy", "%"), ("largest object right", "largest_object_accuracy", "%"),
              ("n", "n", "d")],
    "layout": [("CFG", "cfg_scale", "g"), ("mean IoU", "mean_iou", ".3f"), ("boxes found (IoU ≥ 0.5)", "recall_iou50", "%"),
               ("objects", "n_objects", "d"), ("n", "n", "d")],
    "semantic": [("mIoU", "miou", ".3f"), ("pixel accuracy", "pixel_accuracy", "%"), ("n", "n", "d")],
    "superres": [("strength", "strength", "g"), ("PSNR (dB)", "psnr", ".2f"), ("SSIM", "ssim", ".3f"), ("bicubic PSNR", "psnr_bicubic", ".2f"),
                 ("bicubic SSIM", "ssim_bicubic", ".3f"), ("gain (dB)", "psnr_gain_db", "+.2f"), ("n", "n", "d")],
    "inpaint": [("CFG", "cfg_scale", "g"), ("blend latents", "blend_latents", "yes/no"), ("PSNR inside mask (dB)", "psnr_inside", ".2f"),
                ("mean-colour fill PSNR (dB)", "psnr_inside_mean_fill", ".2f"),
                ("max change outside (8-bit)", "max_change_outside", ".1f"),
                ("mean change outside", "mean_change_outside", ".2f"), ("n", "n", "d")],
    "uncond": [("FID", "fid", ".3f"), ("KID", "kid_mean", ".4f"), ("precision", "precision", ".3f"),
               ("recall", "recall", ".3f"), ("n", "n", "d")],
}


def _fmt(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if fmt == "%":
        return f"{100 * v:.1f} %"
    if fmt == "yes/no":
        return "yes" if v else "no"
    return format(int(v) if fmt == "d" else v, fmt)


def markdown_table(task: str, rows: Sequence[dict[str, Any]]) -> str:
    cols = COLUMNS[task]
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---:|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k), f) for _, k, f in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def check_outputs(*paths: str | None, force: bool = False) -> None:
    """Refuse to overwrite a user's file unless ``force``."""
    for p in paths:
        if p is not None and Path(p).exists() and not force:
            raise LDMError(f"{p} already exists; pass --force to replace it")


def write_reports(task: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any], json_path: str | None,
                  markdown_path: str | None) -> None:
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps({"task": task, **meta, "rows": list(rows)}, indent=2) + "\n")
    if markdown_path is not None:
        Path(markdown_path).parent.mkdir(parents=True, exist_ok=True)
        cmd = meta.get("command")
        head = f"`{cmd}`\n\n" if cmd else ""
        Path(markdown_path).write_text(head + markdown_table(task, rows))
