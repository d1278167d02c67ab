"""``ldm demo``: grids of images from the embedded ShapesWorld models, nothing downloaded.

``--task txt2img`` (the default): a few prompts with the default text-to-image model into ``grid.png``.
``--task grounded``: the same prompts through the embedded layout planner and layout model (``pipelines/grounded``),
the planned boxes next to the samples, into ``grounded.png``. The other tasks of the paper (class, unconditional,
layout, semantic, superres, inpaint; ``all`` = every one whose model files are present) write ``<task>.png`` with
the condition next to the samples (``demo_tasks``). ``--task mnist``: the class-conditional model trained on real
handwritten digits through the image-folder path, one row per digit, into ``mnist.png``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from ..errors import CheckpointError, LDMError

DEMO_PROMPTS = (
    "a red circle above a blue square",
    "a green triangle left of a yellow star",
    "a purple cross below an orange circle",
    "a cyan square right of a pink triangle",
    "a blue star",
    "a yellow circle left of a red cross",
)
TASKS = ("txt2img", "grounded", "class", "unconditional", "layout", "semantic", "superres", "inpaint", "mnist")
PROMPT_TASKS = ("txt2img", "grounded")  # rows = prompts; the others' rows are classes or held-out scenes


def grid_name(task: str) -> str:
    return "grid.png" if task == "txt2img" else f"{task}.png"


def task_files(task: str) -> list[Path]:
    """The embedded files ``task`` needs, its diffusion model first (grounded: the layout model, then the planner)."""
    from .. import default_model

    if task == "grounded":
        return [default_model.ASSETS / default_model.TASK_MODELS["layout"],
                default_model.ASSETS / default_model.PLANNER_FILE]
    return [default_model.ASSETS / default_model.TASK_MODELS[task]]


def _holds_demo(folder: Path) -> bool:
    return any((folder / grid_name(t)).exists() for t in TASKS)


def free_output_dir(out: Path, force: bool) -> Path:
    """``out`` if it holds no earlier demo grid (or ``force``), else the first free ``out-2``, ``out-3``, ..."""
    if force or not _holds_demo(out):
        return out
    k = 2
    while _holds_demo(out.parent / f"{out.name}-{k}"):
        k += 1
    return out.parent / f"{out.name}-{k}"


def resolve_tasks(task: str) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """``task`` (or ``all``) → ([(task, model file) to run], [(task, missing file) skipped]).

    An explicitly named task whose model file is missing is an error naming the file."""
    from .. import default_model

    if task != "all" and task not in TASKS:
        raise LDMError(f"unknown demo task {task!r}; accepted: {', '.join(TASKS)}, all")
    files = {t: task_files(t) for t in (TASKS if task == "all" else [task])}
    found = [(t, fs[0]) for t, fs in files.items() if all(p.is_file() for p in fs)]
    missing = [(t, next(p for p in fs if not p.is_file())) for t, fs in files.items()
               if not all(p.is_file() for p in fs)]
    if task != "all" and missing:
        raise CheckpointError(f"the {task} demo needs the embedded file {missing[0][1]}, which does not exist (not "
                              "trained / not installed yet); `ldm demo --task all` runs the tasks whose models are "
                              "present")
    if not found:
        raise CheckpointError(f"none of the embedded task models exists in {default_model.ASSETS} "
                              f"(looked for {', '.join(dict.fromkeys(p.name for fs in files.values() for p in fs))})")
    return found, missing


def _load(task: str, path: Path):  # -> Pipeline
    from .demo_tasks import TASK_KINDS
    from .pipeline import Pipeline

    pipe = Pipeline.from_checkpoint(path)
    if pipe.kind not in TASK_KINDS[task]:
        raise CheckpointError(f"{path} holds a {pipe.family} model ({pipe.kind}), which cannot do the {task} demo "
                              f"(needs a {' or '.join(TASK_KINDS[task])} model)")
    return pipe


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60]


def run_demo(out: str | Path = "out/demo", *, prompts: tuple[str, ...] = DEMO_PROMPTS, n: int = 4, steps: int = 20,
             cfg_scale: float | None = None, sampler: str = "ddim", seed: int = 0, force: bool = False,
             progress: bool = True, echo: bool = True, task: str = "txt2img", rows: int = 6,
             size: int | None = None) -> dict:
    """Write ``n`` images per row and a grid per task into ``out`` (a new ``out-N`` if it holds an earlier demo).

    txt2img: rows = ``prompts``, ``grid.png``; grounded: rows = ``prompts`` (planned boxes | samples),
    ``grounded.png``; other tasks: ``rows`` classes / held-out scenes, ``<task>.png``.
    ``cfg_scale=None``: each task's natural scale (txt2img 5, grounded / class / layout 3, the rest 1); tasks
    without guidance always use 1. ``size``: the image (and ShapesWorld scene) size, default the embedded models'
    64. Returns {"grid", "grids", "files", "skipped", "dir", "seconds"}."""
    if n < 1 or not prompts or rows < 1:
        raise LDMError(f"demo needs n >= 1, rows >= 1 and at least one prompt, got n={n}, rows={rows}, "
                       f"{len(prompts)} prompts")
    from ..default_model import DEFAULT_SIZE

    size = DEFAULT_SIZE if size is None else size
    t0 = time.perf_counter()
    todo, skipped = resolve_tasks(task)
    target = free_output_dir(Path(out), force)
    target.mkdir(parents=True, exist_ok=True)
    grids, files = {}, []
    for t, path in todo:
        t1 = time.perf_counter()
        pipe = _load(t, path)
        if t == "txt2img":
            grid, written, what = _txt2img(pipe, target, prompts, n, steps, cfg_scale, sampler, seed, progress, size)
        elif t == "grounded":
            grid, written, what = _grounded(pipe, target, prompts, n, steps, cfg_scale, sampler, seed, progress, size)
        else:  # the digits model draws at its own 32 px
            own = pipe.cfg.autoencoder.resolution if t == "mnist" else size
            grid, written, what = _task(t, pipe, target, rows, n, steps, cfg_scale, sampler, seed, progress, own)
        grids[t], files = grid, files + written
        if echo:
            print(f"{t}: wrote {len(written)} images and {grid} ({what}, {steps} {sampler} steps) "
                  f"in {time.perf_counter() - t1:.1f} s")
    seconds = time.perf_counter() - t0
    if echo:
        for t, p in skipped:
            print(f"{t}: skipped, its model {p} does not exist yet")
        print(f"open {(next(iter(grids.values())) if len(grids) == 1 else target).resolve()}  "
              f"(total {seconds:.1f} s)")
    return {"grid": next(iter(grids.values())), "grids": grids, "files": files, "skipped": [t for t, _ in skipped],
            "dir": target, "seconds": seconds}


def _txt2img(pipe, target: Path, prompts: tuple[str, ...], n: int, steps: int, cfg_scale: float | None,
             sampler: str, seed: int, progress: bool, size: int) -> tuple[Path, list[Path], str]:
    from .grid import image_grid
    from .demo_tasks import task_cfg

    cfg = task_cfg("txt2img", pipe, cfg_scale)
    rows, files = [], []
    for i, prompt in enumerate(prompts):
        label = f"[{i + 1}/{len(prompts)}] {prompt}" if progress else False
        images = pipe.txt2img(prompt, steps=steps, sampler=sampler, cfg_scale=cfg, seed=seed, n=n,
                              height=size, width=size, progress=label)
        rows.append(images)
        for j, im in enumerate(images):
            path = target / f"{i:02d}-{j}-{prompt.replace(' ', '_')}.png"
            im.save(path)
            files.append(path)
    grid = target / "grid.png"
    image_grid(rows, labels=list(prompts), scale=2, label_width=170).save(grid)
    return grid, files, f"{len(prompts)} prompts x {n} seeds, cfg {cfg}"


def _grounded(pipe, target: Path, prompts: tuple[str, ...], n: int, steps: int, cfg_scale: float | None,
              sampler: str, seed: int, progress: bool, size: int) -> tuple[Path, list[Path], str]:
    """Each prompt's layout is planned alone from ``seed``, so a row is what ``ldm layout2img --prompt P --seed S
    --n N --steps STEPS --cfg C --sampler SAMPLER`` draws."""
    from .. import default_model
    from ..models.layout_planner import LayoutPlanner
    from .grid import image_grid
    from .demo_tasks import render_layout, task_cfg
    from .grounded import plan_layouts

    planner = LayoutPlanner.load(default_model.planner_path())
    cfg = task_cfg("grounded", pipe, cfg_scale)
    rows, files = [], []
    for i, prompt in enumerate(prompts):
        layout = plan_layouts(planner, [prompt], seed=seed)[0]  # (max_objects, 5), padding rows class -1
        label = f"[grounded {i + 1}/{len(prompts)}] {prompt}" if progress else False
        images = pipe.layout2img(layout, n=n, steps=steps, sampler=sampler, cfg_scale=cfg, seed=seed, height=size,
                                 width=size, progress=label)
        rows.append([render_layout(layout, size), *images])
        for j, im in enumerate(images):
            path = target / f"grounded-{i:02d}-{j}-{_slug(prompt)}.png"
            im.save(path)
            files.append(path)
    grid = target / grid_name("grounded")
    image_grid(rows, labels=list(prompts), scale=2, label_width=170).save(grid)
    return grid, files, f"{len(prompts)} prompts: planned boxes | {n} samples, cfg {cfg}"


def _task(task: str, pipe, target: Path, rows: int, n: int, steps: int, cfg_scale: float | None, sampler: str,
          seed: int, progress: bool, size: int) -> tuple[Path, list[Path], str]:
    from .grid import image_grid
    from .demo_tasks import task_rows

    r = task_rows(task, pipe, k=rows, n=n, steps=steps, sampler=sampler, seed=seed, cfg=cfg_scale,
                  progress=progress, size=size)
    files = []
    for i, (images, name) in enumerate(zip(r.samples, r.names)):
        for j, im in enumerate(images):
            path = target / f"{task}-{i:02d}-{j}-{_slug(name)}.png"
            im.save(path)
            files.append(path)
    grid = target / grid_name(task)
    scale = 4 if task == "mnist" else 2  # the 32-px digits drawn at 4x, the 64-px scenes at 2x
    image_grid(r.rows, labels=r.labels, scale=scale, label_width=170 if r.labels else 0).save(grid)
    return grid, files, f"{len(r.rows)} rows: {r.columns}, cfg {r.cfg}"
