"""The tasks conditioned on something other than text: class-conditional / unconditional ``sample``, ``layout2img``
and ``semantic2img`` (paper sec. 4.3), each a function of a ``Pipeline`` bound as its method of the same name
(``pipeline.py``); their defaults come from ``defaults.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..errors import LDMError
from ..models.conditioners import null_class, num_class_labels
from .defaults import LAYOUT2IMG, SAMPLE, SEMANTIC2IMG, native_hw
from .structured import LayoutLike, layout_text, load_semantic_map, null_layout, pad_layout, parse_layout, semantic_concat
from .output import resolve_seed
from .task_common import Callback

if TYPE_CHECKING:
    from .pipeline import Pipeline


def sample(pipe: Pipeline, class_label: int | None = None, *, n: int = 1, seed: int | None = None, steps: int = SAMPLE.steps,
           sampler: str = SAMPLE.sampler, cfg_scale: float = SAMPLE.cfg_scale, height: int | None = None,
           width: int | None = None, callback: Callback | None = None, progress: bool = False,
           batch_size: int | None = None, output: str = "pil") -> list[Image.Image] | torch.Tensor:
    """Class-conditional (``class_label``) or unconditional sampling. Guidance (cfg_scale != 1) on a class model
    needs a "no class" label: ``conditioner.null_class`` (our ShapesWorld model: 40), or CompVis's convention of
    1001 classes with class 1000 = "no class" (cin256-v2)."""
    pipe._require("sample", "class", "uncond")
    pipe._check_common(steps, sampler, cfg_scale, n)
    height, width = native_hw(pipe, height, width)
    pipe._check_size(height, width)
    cond = uncond = None
    if pipe.kind == "class":
        n_classes, null = num_class_labels(pipe.cfg), null_class(pipe.cfg)
        real = n_classes if null is None else null  # labels from the null label on are not classes
        if class_label is None or isinstance(class_label, bool) or not 0 <= int(class_label) < real:
            raise LDMError(f"{pipe.family} needs class_label in [0, {real - 1}], got {class_label!r}")
        if cfg_scale != 1.0 and null is None:
            raise LDMError(f"{pipe.family} has {n_classes} classes and no 'no class' label to guide against "
                           f"(conditioner.null_class unset; CompVis convention: 1001 classes, the last one "
                           f"empty); use cfg_scale=1, got {cfg_scale}")
        cond = _labels(pipe, int(class_label), n)
        uncond = _labels(pipe, null, n) if cfg_scale != 1.0 else None
    else:
        if class_label is not None:
            raise LDMError(f"this is an unconditional model ({pipe.family}); it takes no class label")
        if cfg_scale != 1.0:
            raise LDMError(f"an unconditional model has nothing to guide; use cfg_scale=1, got {cfg_scale}")
    label = None if class_label is None else int(class_label)
    record = pipe._record(resolve_seed(seed), batch_size, steps, sampler, cfg_scale, extra={"Class label": label})
    return pipe._generate(record, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                          cond=cond, uncond=uncond, callback=callback, progress=progress)


def layout2img(pipe: Pipeline, layout: LayoutLike, *, n: int = 1, seed: int | None = None, steps: int = LAYOUT2IMG.steps,
               sampler: str = LAYOUT2IMG.sampler, cfg_scale: float = LAYOUT2IMG.cfg_scale, height: int | None = None,
               width: int | None = None, callback: Callback | None = None, progress: bool = False,
               batch_size: int | None = None, output: str = "pil") -> list[Image.Image] | torch.Tensor:
    """Layout-to-image (paper sec. 4.3.1): objects ``(class or "red circle", x0, y0, x1, y1)``, boxes in image
    fractions, encoded as (class, quantised box) tokens — or one Fourier-coded token per object
    (``conditioner.layout_boxes="fourier"``) — for cross-attention. Guidance against the empty layout (what
    condition dropout trained) when ``cfg_scale != 1``."""
    pipe._require("layout2img", "layout")
    pipe._check_common(steps, sampler, cfg_scale, n)
    c = pipe.cfg.conditioner
    # objects the sequence holds: [CLS] + 5 tokens per object, or the Fourier encoder's own count
    slots = getattr(pipe.model.cond_stage_model, "slots", (c.max_length - 1) // 5)
    rows = pad_layout(parse_layout(layout, c.layout_classes, max_objects=slots), slots)  # as in training
    height, width = native_hw(pipe, height, width)
    pipe._check_size(height, width)
    device, _ = pipe._device_dtype()
    with torch.no_grad():  # layout and empty layout in one encoder batch
        emb = pipe.model.cond_stage_model.encode(torch.stack([rows, null_layout(rows.shape[0])]).to(device))
    cond, uncond = emb[:1].expand(n, -1, -1), (emb[1:] if cfg_scale != 1.0 else None)
    record = pipe._record(resolve_seed(seed), batch_size, steps, sampler, cfg_scale,
                          extra={"Layout": layout_text(rows)})
    return pipe._generate(record, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=cfg_scale,
                          cond=cond, uncond=uncond, callback=callback, progress=progress)


def semantic2img(pipe: Pipeline, semantic_map: Any, *, n: int = 1, seed: int | None = None, steps: int = SEMANTIC2IMG.steps,
                 sampler: str = SEMANTIC2IMG.sampler, callback: Callback | None = None, progress: bool = False,
                 batch_size: int | None = None, output: str = "pil") -> list[Image.Image] | torch.Tensor:
    """Semantic-map-to-image (paper sec. 4.3.2): the one-hot label map (0 = background, 1 + class = object),
    area-resized to the latent size, concatenated to the latents. The image has the map's size."""
    pipe._require("semantic2img", "semantic")
    pipe._check_common(steps, sampler, 1.0, n)
    n_labels = pipe.cfg.unet.in_channels - pipe.cfg.unet.out_channels
    labels = load_semantic_map(semantic_map, n_labels, pipe.limits)
    height, width = labels.shape
    pipe._check_size(height, width)
    device, dtype = pipe._device_dtype()
    f = pipe.latent_factor
    cond = semantic_concat(labels, n_labels, (height // f, width // f)).to(device, dtype).expand(n, -1, -1, -1)
    record = pipe._record(resolve_seed(seed), batch_size, steps, sampler, 1.0)
    return pipe._generate(record, n, height, width, output, steps=steps, sampler=sampler, cfg_scale=1.0,
                          cond=cond, uncond=None, callback=callback, progress=progress)


def _labels(pipe: Pipeline, label: int, n: int) -> torch.Tensor:
    """``label`` for n images: the class encoder's embedding, or the raw labels for a UNet with ``num_classes``."""
    device, _ = pipe._device_dtype()
    labels = torch.full((n,), label, dtype=torch.long, device=device)
    if pipe.cfg.conditioner.kind == "class":
        with torch.no_grad():
            return pipe.model.get_learned_conditioning(labels)
    return labels  # UNet num_classes: routed to c_adm
