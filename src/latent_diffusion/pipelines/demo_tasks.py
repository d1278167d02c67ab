"""``ldm demo --task ...``: one grid row per prompt or condition for every task of the paper, the conditions from
held-out ShapesWorld scenes (or classes), each row's samples drawn in one call, sample j with seed ``seed + j``.

Each row is ``[condition, sample_1 .. sample_n(, ground truth)]`` drawn at 64×64 (mnist: 32×32):

=============  ===========================================  ===============================================
task           condition column (row label)                 last column
=============  ===========================================  ===============================================
txt2img        none (the prompt)                            -
grounded       the boxes the planner drew (the prompt)      -
class, mnist   none (the class name)                        -
unconditional  none (no label)                              -
layout         the boxes, filled with the class colour,     -
               on grey (the objects' names)
semantic       the label map in class colours (caption)     -
superres       the 16×16 input, nearest-upsampled (caption)  the ground-truth 64×64 image
inpaint        the image with the hole grey (caption)       the original image
=============  ===========================================  ===============================================

A row also says what its samples' PNGs record (``DemoRow.prompt`` / ``.settings``: the keys the CLI writes for the
same task, e.g. ``Class label``, ``Layout``, ``Semantic map``, ``Denoising strength``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image, ImageDraw

from ..data.shapes import COLOUR_NAMES, COLOURS, NUM_CLASSES, SHAPES, class_index, class_name
from ..errors import LDMError
from .defaults import DEMO
from .images import tensor_to_pil

SCENE_TASKS = ("layout", "semantic", "superres", "inpaint")  # rows = held-out scenes
GUIDED = ("txt2img", "grounded", "class", "layout", "inpaint", "mnist")  # tasks whose cfg scale the user may set
# Pipeline.kind each task's model must have (grounded: the layout model that draws the planned boxes)
TASK_KINDS = {"txt2img": ("text",), "grounded": ("layout",), "class": ("class",), "unconditional": ("uncond",),
              "layout": ("layout",), "semantic": ("semantic",), "superres": ("concat",), "inpaint": ("inpaint", "text"),
              "mnist": ("class",)}
DEFAULT_CFG = dict(DEMO.cfg_scale)  # the demo's row of the defaults table (defaults.py)
# one class of each shape, different colours: red circle, blue square, green triangle, yellow star, purple cross, ...
DEMO_CLASSES = tuple(class_index(s, c) for s, c in [("circle", "red"), ("square", "blue"), ("triangle", "green"),
                                                   ("star", "yellow"), ("cross", "purple"), ("circle", "cyan")])
GREY = (128, 128, 128)
SIZE = 64  # ShapesWorld resolution of the embedded models


@dataclass
class DemoRow:
    """One grid row: its cells (condition?, samples, ground truth?) and what its samples' PNGs record."""

    cells: list[Image.Image]
    samples: list[Image.Image]  # sample j has seed ``seed + j``; the n were drawn in one batch
    label: str  # written left of the row ("" = none)
    name: str  # in the samples' file names
    condition: str  # the row, as the grid's parameters describe it
    seed: int
    prompt: str = ""  # the samples' prompt ("" for tasks without one)
    settings: dict[str, Any] = field(default_factory=dict)  # the task's own keys: Class label, Layout, ...


@dataclass
class TaskRows:
    """What a task's demo produced: its rows, what the columns are, the guidance scale used, what a row is."""

    rows: list[DemoRow]
    columns: str  # e.g. "boxes | samples"
    cfg: float
    unit: str  # prompts, classes, digits, scenes, rows
    settings: dict[str, Any] = field(default_factory=dict)  # keys every PNG of the task records (grounded: Planner)

    @property
    def labels(self) -> list[str] | None:
        return [r.label for r in self.rows] if any(r.label for r in self.rows) else None


COLUMNS = {"txt2img": "samples", "grounded": "planned boxes | samples", "class": "samples", "mnist": "samples",
           "unconditional": "samples", "layout": "boxes | samples", "semantic": "label map | samples",
           "superres": "16x16 input | samples | ground truth", "inpaint": "masked input | samples | original"}
UNITS = {"txt2img": "prompts", "grounded": "prompts", "class": "classes", "mnist": "digits", "unconditional": "rows",
         **{t: "scenes" for t in SCENE_TASKS}}


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


def recorded_layout(layout: torch.Tensor) -> torch.Tensor:
    """(K, 5) ``layout`` with its boxes rounded to 4 decimals: the grid's labels and the recorded ``Layout`` stay short,
    and the boxes drawn are exactly the boxes recorded (``structured.layout_text``)."""
    return torch.tensor([[c, *(round(v, 4) for v in box)] for c, *box in layout.tolist()], dtype=torch.float32)


def layout_setting(layout: torch.Tensor) -> str:
    """(K, 5) layout → its ``Layout`` parameter, as ``ldm layout2img`` records it (``structured.layout_text``)."""
    from .structured import layout_text

    return layout_text(layout)


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


def row_count(task: str, pipe: Any, k: int, prompts: tuple[str, ...]) -> int:
    """How many rows ``task_rows`` will draw (for the progress line before it starts)."""
    if task in ("txt2img", "grounded"):
        return len(prompts)
    if task == "mnist":
        return len(pipe.cfg.class_names)
    return len(demo_classes(pipe, k)) if task == "class" else k


def task_rows(task: str, pipe: Any, *, k: int, n: int, steps: int, sampler: str, seed: int, cfg: float | None,
              progress: bool, size: int = SIZE, prompts: tuple[str, ...] = ()) -> TaskRows:
    """Sample ``n`` images (``size``²) for each row of ``task`` with ``pipe``: one per prompt (txt2img, grounded),
    digit (mnist), or one of ``k`` classes / held-out scenes / unconditional rows. Each row's n samples are drawn in
    one call, image j with seed ``seed + j`` (unconditional row i: ``seed + i * n + j``)."""
    scale = task_cfg(task, pipe, cfg)
    kw = dict(n=n, steps=steps, sampler=sampler)
    total = row_count(task, pipe, k, prompts)

    def bar(i: int, what: str) -> bool | str:
        return f"[{task} {i + 1}/{total}] {what}" if progress else False

    if task in ("txt2img", "grounded"):
        return _prompt_rows(task, pipe, prompts, scale, seed, bar, size, kw)
    if task in ("class", "mnist"):  # mnist: one row per digit, named by the model's class folders
        digits = task == "mnist"
        rows = []
        for i, c in enumerate(range(total) if digits else demo_classes(pipe, k)):
            name = pipe.cfg.class_names[c] if digits else label_name(c)
            what = f"digit {name}" if digits else name
            images = pipe.sample(c, cfg_scale=scale, seed=seed, height=size, width=size, progress=bar(i, what), **kw)
            rows.append(DemoRow(images, images, name, what.replace(" ", "-") if digits else name, f"{what} (class {c})",
                                seed, settings={"Class label": c, "Class name": name}))
        return TaskRows(rows, COLUMNS[task], scale, UNITS[task])
    if task == "unconditional":
        rows = []
        for i in range(k):
            images = pipe.sample(None, height=size, width=size, progress=bar(i, "unconditional"), seed=seed + i * n,
                                 **kw)
            rows.append(DemoRow(images, images, "", "sample", "unconditional", seed + i * n))
        return TaskRows(rows, COLUMNS[task], 1.0, UNITS[task])
    if task not in SCENE_TASKS:
        raise LDMError(f"unknown demo task {task!r}; accepted: {', '.join(COLUMNS)}")
    rows = []
    for i, scene in enumerate(held_out_scenes(k, size)):
        row, run = _scene_row(task, scene, pipe, scale, i, size, seed)
        row.samples = run(progress=bar(i, row.label), seed=seed, **kw)
        row.cells[1:1] = row.samples  # condition | samples | truth
        rows.append(row)
    return TaskRows(rows, COLUMNS[task], scale, UNITS[task])


def _prompt_rows(task: str, pipe: Any, prompts: tuple[str, ...], scale: float, seed: int,
                 bar: Callable[[int, str], bool | str], size: int, kw: dict) -> TaskRows:
    """txt2img: what ``ldm txt2img --prompt P --seed S --n N`` draws. grounded: each prompt's layout is planned alone
    from ``seed``, so a row is what ``ldm layout2img --prompt P --seed S --n N`` draws (boxes first)."""
    if task == "txt2img":
        rows = []
        for i, p in enumerate(prompts):
            images = pipe.txt2img(p, cfg_scale=scale, seed=seed, height=size, width=size, progress=bar(i, p), **kw)
            rows.append(DemoRow(images, images, p, p, p, seed, prompt=p))
        return TaskRows(rows, COLUMNS[task], scale, UNITS[task])
    from .. import default_model
    from ..models.layout_planner import LayoutPlanner
    from .grounded import plan_layouts

    planner_file = default_model.planner_path()
    planner = LayoutPlanner.load(planner_file)
    rows = []
    for i, p in enumerate(prompts):
        layout = recorded_layout(plan_layouts(planner, [p], seed=seed)[0])  # (max_objects, 5), padding: class -1
        images = pipe.layout2img(layout, cfg_scale=scale, seed=seed, height=size, width=size, progress=bar(i, p),
                                 **kw)
        objects = layout_setting(layout)
        rows.append(DemoRow([render_layout(layout, size), *images], images, p, p, f"{p} -> {objects}", seed,
                            settings={"Layout": objects, "Planned from": p, "Planner seed": seed}))
    return TaskRows(rows, COLUMNS[task], scale, UNITS[task], {"Planner": str(planner_file)})


def _scene_row(task: str, scene: dict, pipe: Any, scale: float, i: int, size: int,
               seed: int) -> tuple[DemoRow, Callable[..., list[Image.Image]]]:
    """Held-out scene ``i``'s row (cells: condition[, ground truth]; samples still to draw) and its sampler call."""
    from .defaults import INPAINT

    truth = tensor_to_pil(scene["image"][None])[0]
    where = f"ShapesWorld held-out scene {i}"
    caption = scene["caption"]

    def row(cells: list[Image.Image], label: str, settings: dict[str, Any], prompt: str = "",
            condition: str = "") -> DemoRow:
        return DemoRow(cells, [], label, label, f"held-out scene {i}: {condition or label}", seed, prompt, settings)

    if task == "layout":
        layout = recorded_layout(scene["layout"])
        return (row([render_layout(layout, size)], objects_text(layout),
                    {"Layout": layout_setting(layout), "Layout from": where}),
                lambda **kw: pipe.layout2img(layout, cfg_scale=scale, height=size, width=size, **kw))
    if task == "semantic":
        seg = scene["segmentation"]
        return (row([render_semantic(seg)], caption, {"Semantic map": where}),
                lambda **kw: pipe.semantic2img(seg, **kw))
    if task == "superres":
        low = tensor_to_pil(scene["lowres"][None])[0]
        what = f"{where} ({low.size[0]}x{low.size[1]})"
        return (row([render_lowres(scene["lowres"], size), truth], caption, {"Low-res image": what}),
                lambda **kw: pipe.upscale(low, cfg_scale=1.0, height=size, width=size, **kw))
    # inpaint: alternate box and stroke holes so both kinds show
    hole = "box" if i % 2 == 0 else "stroke"
    mask = scene[f"mask_{hole}"]
    settings = {"Denoising strength": INPAINT.strength, "Init image": where, "Mask": f"{where} {hole} hole"}
    return (row([render_masked(scene["image"], mask), truth], caption, settings, caption, f"{caption} ({hole} hole)"),
            lambda **kw: pipe.inpaint(truth, mask_pil(mask), caption, cfg_scale=scale, **kw))
