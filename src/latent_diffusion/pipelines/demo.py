"""``ldm demo``: a grid of images for a few prompts from the embedded default model, nothing downloaded."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import LDMError

DEMO_PROMPTS = (
    "a red circle above a blue square",
    "a green triangle left of a yellow star",
    "a purple cross below an orange circle",
    "a cyan square right of a pink triangle",
    "a blue star",
    "a yellow circle left of a red cross",
)


def free_output_dir(out: Path, force: bool) -> Path:
    """``out`` if it holds no earlier demo (or ``force``), else the first free ``out-2``, ``out-3``, ..."""
    if force or not (out / "grid.png").exists():
        return out
    k = 2
    while (out.parent / f"{out.name}-{k}" / "grid.png").exists():
        k += 1
    return out.parent / f"{out.name}-{k}"


def run_demo(out: str | Path = "out/demo", *, prompts: tuple[str, ...] = DEMO_PROMPTS, n: int = 4, steps: int = 20,
             cfg_scale: float = 7.0, sampler: str = "ddim", seed: int = 0, force: bool = False,
             progress: bool = True, echo: bool = True) -> dict:
    """Write ``n`` images per prompt and ``grid.png`` (rows = prompts) into ``out``; returns paths and timing."""
    from ..default_model import DEFAULT_SIZE, load_default_model
    from ..train.grid import image_grid
    from .pipeline import Pipeline

    if n < 1 or not prompts:
        raise LDMError(f"demo needs n >= 1 and at least one prompt, got n={n}, {len(prompts)} prompts")
    t0 = time.perf_counter()
    target = free_output_dir(Path(out), force)
    target.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(load_default_model())
    rows, files = [], []
    for i, prompt in enumerate(prompts):
        label = f"[{i + 1}/{len(prompts)}] {prompt}" if progress else False
        images = pipe.txt2img(prompt, steps=steps, sampler=sampler, cfg_scale=cfg_scale, seed=seed, n=n,
                              height=DEFAULT_SIZE, width=DEFAULT_SIZE, progress=label)
        rows.append(images)
        for j, im in enumerate(images):
            path = target / f"{i:02d}-{j}-{prompt.replace(' ', '_')}.png"
            im.save(path)
            files.append(path)
    grid = target / "grid.png"
    image_grid(rows, labels=list(prompts), scale=2, label_width=170).save(grid)
    seconds = time.perf_counter() - t0
    if echo:
        print(f"wrote {len(files)} images and {grid} ({len(prompts)} prompts x {n} seeds, {steps} {sampler} steps, "
              f"cfg {cfg_scale}) in {seconds:.1f} s")
        print(f"open {grid.resolve()}")
    return {"grid": grid, "files": files, "seconds": seconds}
