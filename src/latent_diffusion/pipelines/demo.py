"""``ldm demo``: grids of images from the embedded ShapesWorld models, nothing downloaded.

``--task txt2img`` (the default): a few prompts with the default text-to-image model into ``grid.png``.
``--task grounded``: the same prompts through the embedded layout planner and layout model (``pipelines/grounded``),
the planned boxes next to the samples, into ``grounded.png``. The other tasks of the paper (class, unconditional,
layout, semantic, superres, inpaint) write ``<task>.png`` with the condition next to the samples (``demo_tasks``).
``--task mnist``: the class-conditional model trained on real handwritten digits through the image-folder path, one
row per digit, into ``mnist.png``.

Where: one task writes its grid and samples into ``out`` itself; ``--task all`` (every task whose model files are
present) writes each task into ``out/<task>/`` (``out/txt2img/grid.png``, ``out/class/class.png``, ...). ``out`` is
a new folder: if it exists, the first ``out-2``, ``out-3``, ... that does not (taken with ``os.mkdir``, so two demos
at once never share one); ``force`` writes into ``out`` whatever it holds, replacing files of the same names.

Every PNG carries its generation parameters (A1111 ``parameters`` text, ``metadata``; ``ldm info`` prints them): a
sample the exact settings that re-create it (``ldm txt2img --from-png`` for txt2img), batch size and position
included, since a row's n samples are drawn together; a grid says what it is (task, steps, sampler, cfg, base seed,
then one line per row: its seeds and its prompt or condition).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, LDMError
from .defaults import DEMO

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


def output_dir(out: Path, force: bool) -> tuple[Path, bool]:
    """(the folder the demo writes into, whether this call created it): ``out`` itself with ``force``, else a new
    folder — ``out``, or the first of ``out-2``, ``out-3``, ... that does not exist (``fileio.claim_new_folder``)."""
    from ..fileio import check_output_dir, claim_new_folder

    return (check_output_dir(out), False) if force else (claim_new_folder(out), True)


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


def _check_args(prompts: tuple[str, ...], n: int, rows: int) -> None:
    from .metadata import check_text

    if n < 1 or not prompts or rows < 1:
        raise LDMError(f"demo needs n >= 1, rows >= 1 and at least one prompt, got n={n}, rows={rows}, "
                       f"{len(prompts)} prompts")
    for p in prompts:  # before any sampling: every prompt must fit in a PNG's parameters
        if not isinstance(p, str):
            raise LDMError(f"demo prompts must be strings, got {p!r}")
        check_text(p, "--prompt")


def run_demo(out: str | Path = "out/demo", *, prompts: tuple[str, ...] = DEMO_PROMPTS, n: int = DEMO.n,
             steps: int = DEMO.steps, cfg_scale: float | None = None, sampler: str = DEMO.sampler, seed: int = 0,
             force: bool = False, progress: bool = True, echo: bool = True, task: str = "txt2img", rows: int = DEMO.rows,
             size: int | None = None, quiet: bool | None = None) -> dict:
    """Write ``n`` images per row and a grid per task, every PNG with its parameters (module doc), into a new
    folder ``out`` (or ``out-N``; ``force``: ``out`` as it is); ``task="all"``: each task into ``out/<task>/``.

    txt2img: rows = ``prompts``, ``grid.png``; grounded: rows = ``prompts`` (planned boxes | samples),
    ``grounded.png``; other tasks: ``rows`` classes / held-out scenes, ``<task>.png``.
    ``cfg_scale=None``: each task's natural scale (txt2img 5, grounded / class / layout 3, the rest 1); tasks
    without guidance always use 1. ``size``: the image (and ShapesWorld scene) size, default the embedded models'
    64. ``progress``: bars per row; ``echo``: what was written, on stdout; ``quiet`` (None: ``not progress``): no
    "[k/N] task: ..." line on stderr as each task of ``all`` starts.
    Returns {"grid", "grids", "dirs", "files", "skipped", "dir", "seconds"} (``files``: the samples)."""
    from ..default_model import DEFAULT_SIZE

    _check_args(prompts, n, rows)
    size = DEFAULT_SIZE if size is None else size
    quiet = not progress if quiet is None else quiet
    t0 = time.perf_counter()
    todo, skipped = resolve_tasks(task)
    target, created = output_dir(Path(out), force)
    grids, dirs, files = {}, {}, []
    try:
        for k, (t, path) in enumerate(todo, 1):
            t1 = time.perf_counter()
            folder = target / t if task == "all" else target
            pipe = _load(t, path)
            if task == "all" and not quiet:
                from .demo_tasks import UNITS, row_count

                print(f"[{k}/{len(todo)}] {t}: {row_count(t, pipe, rows, prompts)} {UNITS[t]} x {n} "
                      f"image{'s' if n > 1 else ''}", file=sys.stderr, flush=True)
            own = pipe.cfg.autoencoder.resolution if t == "mnist" else size  # the digits model draws at its 32 px
            grid, written, what = _run_task(t, pipe, folder, prompts=prompts, rows=rows, n=n, steps=steps,
                                            cfg_scale=cfg_scale, sampler=sampler, seed=seed, progress=progress,
                                            size=own, force=force)
            grids[t], dirs[t], files = grid, folder, files + written
            if echo:
                print(f"{t}: wrote {len(written)} images and {grid} ({what}, {steps} {sampler} steps) "
                      f"in {time.perf_counter() - t1:.1f} s")
    except BaseException:
        if created:  # leave no empty folder behind a demo that wrote nothing
            with contextlib.suppress(OSError):
                target.rmdir()
        raise
    seconds = time.perf_counter() - t0
    if echo:
        _summary(task, target, grids, len(files), skipped, seconds)
    return {"grid": next(iter(grids.values())), "grids": grids, "dirs": dirs, "files": files,
            "skipped": [t for t, _ in skipped], "dir": target, "seconds": seconds}


def _summary(task: str, target: Path, grids: dict[str, Path], images: int, skipped: list[tuple[str, Path]],
             seconds: float) -> None:
    for t, p in skipped:
        print(f"{t}: skipped, its model {p} does not exist yet")
    if task != "all":
        print(f"open {next(iter(grids.values())).resolve()}  (total {seconds:.1f} s)")
        return
    left = f"; skipped {len(skipped)}: {', '.join(t for t, _ in skipped)}" if skipped else "; none skipped"
    print(f"wrote {len(grids)} task(s) ({images} images, {len(grids)} grids), one folder each in {target.resolve()}: "
          f"{', '.join(t + '/' for t in grids)}{left}  (total {seconds:.1f} s)")


def _run_task(task: str, pipe: Any, folder: Path, *, prompts: tuple[str, ...], rows: int, n: int, steps: int,
              cfg_scale: float | None, sampler: str, seed: int, progress: bool, size: int,
              force: bool) -> tuple[Path, list[Path], str]:
    """Sample ``task``'s rows and write them: each sample as ``[<task>-]<row>-<j>-<name>.png``, then the grid; every
    PNG with its parameters. Returns (grid, samples written, what the grid shows)."""
    from .demo_tasks import task_rows
    from .grid import image_grid
    from .metadata import save_png

    r = task_rows(task, pipe, k=rows, n=n, steps=steps, sampler=sampler, seed=seed, cfg=cfg_scale,
                  progress=progress, size=size, prompts=prompts)
    prefix = "" if task == "txt2img" else f"{task}-"
    files = []
    for i, row in enumerate(r.rows):
        for j, im in enumerate(row.samples):
            text = sample_parameters(r, row, j, im)
            files.append(save_png(im, folder / f"{prefix}{i:02d}-{j}-{_slug(row.name)}.png", text, overwrite=force))
    scale = 4 if task == "mnist" else 2  # the 32-px digits drawn at 4x, the 64-px scenes at 2x
    grid = image_grid([row.cells for row in r.rows], labels=r.labels, scale=scale,
                      label_width=170 if r.labels else 0)
    text = grid_parameters(task, r, steps, sampler, seed, pipe.model_hash)
    path = save_png(grid, folder / grid_name(task), text, overwrite=force)
    return path, files, f"{len(r.rows)} {r.unit} x {n} images: {r.columns}, cfg {r.cfg:g}"


def sample_parameters(r: Any, row: Any, j: int, image: Any) -> str:
    """Sample j of ``row`` (a ``demo_tasks.DemoRow`` of ``r``): the parameters the pipeline recorded for it (as the
    CLI writes them: Steps, Sampler, CFG scale, the task's keys, Seed, Size, Model hash, Batch size / Batch pos —
    the row's samples are drawn in one batch) plus where the demo's condition came from."""
    from .metadata import add_settings

    if "parameters" not in image.info:
        raise LDMError(f"demo row {row.name!r}: sample {j} carries no generation parameters")
    return add_settings(image.info["parameters"], {**row.settings, **r.settings})


def grid_parameters(task: str, r: Any, steps: int, sampler: str, seed: int, model_hash: str | None) -> str:
    """A grid's parameters: one line per row (``row 2 (seeds 0-3): <prompt or condition>``), then what the grid is.
    It has no ``Size`` (``Cell size`` instead), so ``ldm txt2img --from-png`` does not take it for one image."""
    from .metadata import format_parameters

    n = len(r.rows[0].samples)
    lines = [f"row {i + 1} ({_seeds(row.seed, n)}): {row.condition}" for i, row in enumerate(r.rows)]
    w, h = r.rows[0].samples[0].size
    s = {"Grid": f"ldm demo --task {task}", "Rows": f"{len(r.rows)} {r.unit}", "Columns": r.columns,
         "Steps": steps, "Sampler": sampler, "CFG scale": r.cfg, "Seed": seed, **r.settings, "Cell size": f"{w}x{h}"}
    if model_hash:
        s["Model hash"] = model_hash
    return format_parameters("\n".join(lines), "", s)


def _seeds(first: int, n: int) -> str:
    return f"seed {first}" if n == 1 else f"seeds {first}-{first + n - 1}"
