"""What a loaded model can do, read from its config: its kind (which tasks it serves) and, for an error that names
the wrong task, the tasks that kind does serve."""

from __future__ import annotations

from typing import Any

from ..models.conditioners import TEXT_KINDS

_TASKS = {"text": "txt2img / img2img / inpaint", "inpaint": "inpaint (or txt2img / img2img)",
          "class": "sample --class-label", "uncond": "sample", "concat": "upscale",
          "text_upscale": "upscale (with a prompt)", "layout": "layout2img", "semantic": "semantic2img"}


def model_kind(cfg: Any) -> str:
    """text | inpaint (9-channel hybrid) | text_upscale (SD x4) | class | uncond | layout | concat (image
    concatenated: super-resolution) | semantic (a one-hot label map concatenated) | other."""
    key = cfg.conditioning_key
    if cfg.conditioner.kind == "layout":
        return "layout"
    if cfg.conditioner.kind in TEXT_KINDS:
        if key == "hybrid-adm" and cfg.low_scale is not None:
            return "text_upscale"  # SD x4 upscaler
        if key == "hybrid" and cfg.unet.in_channels == cfg.unet.out_channels + 5:
            return "inpaint"
        return "text" if key == "crossattn" else "other"
    if cfg.conditioner.kind == "class" or cfg.unet.num_classes is not None:
        return "class"
    if key is None:
        return "uncond"
    if key == "concat":  # 3 extra channels: a low-res RGB image; more: a one-hot semantic map
        return "concat" if cfg.unet.in_channels - cfg.unet.out_channels == 3 else "semantic"
    return "other"


def tasks_hint(kind: str) -> str:
    """The tasks a model of ``kind`` can do, as the CLI names them ("none" for an unknown kind)."""
    return _TASKS.get(kind, "none")
