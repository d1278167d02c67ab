"""``ldm demo --task ...``: one grid row per condition for every task of the paper, on held-out ShapesWorld scenes.

Each row is ``[condition, sample_1 .. sample_n(, ground truth)]`` drawn at 64×64:

=============  ===========================================  ===============================================
task           condition column (row label)                 last column
=============  ===========================================  ===============================================
class          none (the class name)                        -
unconditional  none (no label)                              -
layout         the boxes, filled with the class colour,     -
               on grey (the objects' names)
semantic       the label map in class colours (caption)     -
superres       the 16×16 input, nearest-upsampled (caption)  the ground-truth 64×64 image
inpaint        the image with the hole grey (caption)       the original image
=============  ===========================================  ===============================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image, ImageDraw

from ..data.shapes import COLOUR_NAMES, COLOURS, NUM_CLASSES, SHAPES, class_index, class_name
from ..errors import LDMError
from .images import tensor_to_pil

SCENE_TASKS = ("layout", "semantic", "superres", "inpaint")  # rows = held-out scenes
GUIDED = ("txt2img", "grounded", "class", "layout", "inpaint", "mnist")  # tasks whose cfg scale the user may set
# Pipeline.kind each task's model must have (grounded: the layout model that draws the planned boxes)
TASK_KINDS = {"txt2img": ("text",), "grounded": ("layout",), "class": ("class",), "unconditional": ("uncond",),
              "layout": ("layout",), "semantic": ("semantic",), "superres": ("concat",), "inpaint": ("inpaint", "text"),
              "mnist": ("class",)}
DEFAULT_CFG = {"txt2img": 5.0, "grounded": 3.0, "class": 3.0, "layout": 3.0, "inpaint": 1.0, "mnist": 3.0}
# one class of each shape, different colours: red circle, blue square, green triangle, yellow star, purple cross, ...
DEMO_CLASSES = tuple(class_index(s, c) for s, c in [("circle", "red"), ("square", "blue"), ("triangle", "green"),
                                                   ("star", "yellow"), ("cross", "purple"), ("circle", "cyan")])
GREY = (128, 128, 128)
SIZE = 64  # ShapesWorld resolution of the embedded models


@dataclass
class TaskRows:
    """What a task's demo produced: grid rows (condition, samples, truth), their labels, the samples alone."""

    rows: list[list[Image.Image]]
    labels: list[str] | None
    samples: list[list[Image.Image]]
    columns: str  # what the columns are, for the message
    cfg: float
    names: list[str] = field(default_factory=list)  # per row, for file names


def held_out_scenes(k: int, size: int = SIZE) -> list[dict]:
    """The first ``k`` held-out ShapesWorld scenes (evaluation seed: no model trains on them), drawn at ``size``."""
    from ..data.shapes import EVAL_SEED, ShapesWorld

    world = ShapesWorld(size=size, seed=EVAL_SEED, length=k)
    return [world[i] for i in range(k)]


# -- condition rendering ------------------------------------------------------------------------------
def class_rgb(c: int) -> tuple[int, int, int]:
    """The nominal colour of ShapesWorld class ``c`` as 8-bit RGB."""
    r, g, b = COLOURS[COLOUR_NAMES[c % len(COLOUR_NAMES)]]
    return round(r * 255), round(g * 255), round(b * 255)


def render_layout(layout: torch.Tensor, size: int) -> Image.Image:
    """(K, 5) rows ``(class, x0, y0, x1, y1)`` (class -1 = padding) → boxes filled with the class colour on grey."""
    im = Image.new("RGB", (size, size), GREY)
    draw = ImageDraw.Draw(im)
    for c, x0, y0, x1, y1 in layout.tolist():
        if c < 0:
            continue
        box = (round(x0 * size), round(y0 * size), round(x1 * size) - 1, round(y1 * size) - 1)
        draw.rectangle(box, fill=class_rgb(int(c)), outline=(255, 255, 255))
    return im


def render_semantic(segmentation: torch.Tensor) -> Image.Image:
    """(H, W) labels (0 = background, 1 + class) → RGB: grey background, each object in its class colour."""
    palette = torch.tensor([GREY] + [class_rgb(c) for c in range(NUM_CLASSES)], dtype=torch.uint8)  # (41, 3)
    labels = segmentation.long().clamp(0, NUM_CLASSES)
    return Image.fromarray(palette[labels].numpy())  # (H, W, 3)


def render_lowres(lowres: torch.Tensor, size: int) -> Image.Image:
    """(3, h, w) in [-1, 1] → PIL, nearest-upsampled to ``size`` (the pixels the upscaler sees)."""
    return tensor_to_pil(lowres[None])[0].resize((size, size), Image.NEAREST)


def render_masked(image: torch.Tensor, mask: torch.Tensor) -> Image.Image:
    """(3, H, W) image in [-1, 1] and (1, H, W) mask (1 = hole) → the image with the hole grey."""
    return tensor_to_pil((image * (1 - mask))[None])[0]


def mask_pil(mask: torch.Tensor) -> Image.Image:
    """(1, H, W) {0, 1} → an 'L' mask, white = repaint (what ``Pipeline.inpaint`` reads)."""
    return Image.fromarray((mask[0] * 255).to(torch.uint8).numpy(), mode="L")


def objects_text(layout: torch.Tensor) -> str:
    return ", ".join(class_name(int(r[0])) for r in layout if r[0] >= 0)


# -- per-task rows ------------------------------------------------------------------------------------
def task_cfg(task: str, pipe: Any, requested: float | None) -> float:
    """The guidance scale the demo uses: the task's natural one (``DEFAULT_CFG``), 1 where the model cannot guide."""
    from ..models.conditioners import null_class

    if task not in GUIDED or (task == "class" and null_class(pipe.cfg) is None):
        return 1.0
    return DEFAULT_CFG[task] if requested is None else requested


def demo_classes(pipe: Any, k: int) -> list[int]:
    """``k`` classes to show: ``DEMO_CLASSES`` (repeated colours beyond six), or the first ``k`` labels of a model
    with fewer classes than ShapesWorld's."""
    from ..models.conditioners import null_class, num_class_labels

    null, total = null_class(pipe.cfg), num_class_labels(pipe.cfg) or 0
    real = total if null is None else null  # labels from the null label on are not classes
    picks = [DEMO_CLASSES[i] if i < len(DEMO_CLASSES) else class_index(SHAPES[i % 5], COLOUR_NAMES[i % 8])
             for i in range(k)]
    return picks if max(picks) < real else list(range(min(k, real)))


def label_name(c: int) -> str:
    return class_name(c) if 0 <= c < NUM_CLASSES else f"class {c}"


def task_rows(task: str, pipe: Any, *, k: int, n: int, steps: int, sampler: str, seed: int, cfg: float | None,
              progress: bool, size: int = SIZE) -> TaskRows:
    """Sample ``n`` images (``size``²) for each of ``k`` conditions of ``task`` with ``pipe``; the grid rows."""
    scale = task_cfg(task, pipe, cfg)
    kw = dict(n=n, steps=steps, sampler=sampler, seed=seed)

    def bar(i: int, what: str) -> bool | str:
        return f"[{task} {i + 1}/{k}] {what}" if progress else False

    if task == "mnist":  # one row per digit, named by the model's class folders
        names = list(pipe.cfg.class_names)
        samples = [pipe.sample(c, cfg_scale=scale, height=size, width=size, progress=bar(c, f"digit {name}"), **kw)
                   for c, name in enumerate(names)]
        return TaskRows(samples, names, samples, f"{n} samples per digit", scale, [f"digit-{x}" for x in names])
    if task == "class":
        classes = demo_classes(pipe, k)
        samples = [pipe.sample(c, cfg_scale=scale, height=size, width=size, progress=bar(i, label_name(c)), **kw)
                   for i, c in enumerate(classes)]
        names = [label_name(c) for c in classes]
        return TaskRows(samples, names, samples, f"{n} samples per class", scale, names)
    if task == "unconditional":
        samples = [pipe.sample(None, height=size, width=size, progress=bar(i, "unconditional"),
                               **kw | {"seed": seed + i * n}) for i in range(k)]
        return TaskRows(samples, None, samples, f"{k} x {n} samples", scale, ["sample"] * k)
    if task not in SCENE_TASKS:
        raise LDMError(f"unknown demo task {task!r}; accepted: class, unconditional, {', '.join(SCENE_TASKS)}")
    rows, labels, samples = [], [], []
    for i, scene in enumerate(held_out_scenes(k, size)):
        cond, label, truth, run = _scene_task(task, scene, pipe, scale, i, size)
        images = run(progress=bar(i, label), **kw)
        rows.append([cond, *images, *([truth] if truth is not None else [])])
        labels.append(label)
        samples.append(images)
    columns = {"layout": "boxes | samples", "semantic": "label map | samples",
               "superres": "16x16 input | samples | ground truth", "inpaint": "masked input | samples | original"}
    return TaskRows(rows, labels, samples, columns[task], scale, labels)


def _scene_task(task: str, scene: dict, pipe: Any, scale: float, i: int,
                size: int) -> tuple[Image.Image, str, Image.Image | None, Callable[..., list[Image.Image]]]:
    """(condition image, row label, ground truth or None, sampler call) for held-out scene ``i``."""
    truth = tensor_to_pil(scene["image"][None])[0]
    if task == "layout":
        layout = scene["layout"]
        return (render_layout(layout, size), objects_text(layout), None,
                lambda **kw: pipe.layout2img(layout, cfg_scale=scale, height=size, width=size, **kw))
    if task == "semantic":
        seg = scene["segmentation"]
        return render_semantic(seg), scene["caption"], None, lambda **kw: pipe.semantic2img(seg, **kw)
    if task == "superres":
        low = tensor_to_pil(scene["lowres"][None])[0]
        return (render_lowres(scene["lowres"], size), scene["caption"], truth,
                lambda **kw: pipe.upscale(low, cfg_scale=1.0, height=size, width=size, **kw))
    # inpaint: alternate box and stroke holes so both kinds show
    mask = scene["mask_box"] if i % 2 == 0 else scene["mask_stroke"]
    return (render_masked(scene["image"], mask), scene["caption"], truth,
            lambda **kw: pipe.inpaint(truth, mask_pil(mask), scene["caption"], cfg_scale=scale, **kw))
