"""One function per generating command (``ldm txt2img`` ... ``ldm semantic2img``), each taking typed requests
(``requests.py``): everything that needs no model is checked first, then the model loads, and the n images are
made ``batch_size`` at a time, each PNG written (with its parameters) as soon as it is decoded under the next free
number in the folder, so a run stopped part-way keeps what it made. Image i has seed ``seed + i`` whatever the
split. Each function returns the paths written."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import Interrupted, LDMError
from .limits import check_seed
from .output import resolve_seed
from .requests import Img2Img, Inpaint, Layout2Img, ModelRequest, RunRequest, Sample, Semantic2Img, Txt2Img, Upscale

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
Make = Callable[..., list]  # make(seed=s, n=k, progress=...) -> k images, image j with seed s + j
# settings that only the other tasks record: a PNG holding one is not a txt2img image
OTHER_TASKS = ("Denoising strength", "Init image", "Mask", "Class label", "Layout", "Semantic map", "Noise level",
               "Low-res image")


def txt2img(model: ModelRequest, run: RunRequest, task: Txt2Img, *, pick: int | None = None,
            expected_hash: str | None = None) -> list[Path]:
    """``pick``: write only image ``pick`` of the batch (re-creating one image of a batch from its PNG);
    ``expected_hash``: the model hash the PNG recorded (a different model gets a warning)."""
    _check(run, task.prompt, task.negative_prompt)
    pipe = _load(model, run, "txt2img")
    if expected_hash and expected_hash != pipe.model_hash:
        _say(f"warning: the image was made with model hash {expected_hash}, but {pipe.checkpoint_path} has hash "
             f"{pipe.model_hash}; the image will differ", err=True)

    def make(**each: Any) -> list:
        return pipe.txt2img(task.prompt, task.negative_prompt, steps=run.steps, sampler=run.sampler,
                            cfg_scale=run.cfg_scale, height=task.height, width=task.width,
                            guidance_rescale=task.guidance_rescale, **each)

    return _write(pipe, run, make, resolve_seed(run.seed), pick=pick)


def txt2img_from_png(path: str, model: ModelRequest, run: RunRequest,
                     task: Txt2Img) -> tuple[ModelRequest, RunRequest, Txt2Img, int | None, str | None]:
    """The requests that re-create the image ``path`` from its parameters (prompt, negative prompt, steps, sampler,
    CFG scale, seed, size, guidance rescale, its batch, and the UNet precision and DeepCache interval when ``model``
    leaves them to the default), the batch position to keep (None: all) and the model hash it recorded. ``model``,
    ``run`` and ``task`` give the rest (checkpoint, output folder, ...)."""
    from ..diffusion.samplers import canonical_sampler
    from .metadata import parse_parameters, read_png_parameters

    prompt, negative, s = parse_parameters(read_png_parameters(path))
    if "Grid" in s:
        raise LDMError(f"{path} is an ldm demo grid (its parameters describe rows, not one image); give one of the "
                       "demo's sample PNGs")
    other = [k for k in OTHER_TASKS if k in s]
    if other:
        raise LDMError(f"{path} was not made by txt2img (its parameters have {', '.join(other)}); --from-png "
                       "re-creates txt2img images")
    try:
        width, height = (int(v) for v in s["Size"].split("x"))
        pos, batch = int(s.get("Batch pos", 0)), int(s.get("Batch size", 1))
        if batch < 1 or not 0 <= pos < batch:
            raise ValueError(f"Batch pos {pos} / Batch size {batch}: need 0 <= pos < size")
        sampler = canonical_sampler(s["Sampler"], s.get("Schedule type"))  # ours, or A1111's name and schedule
        run = dataclasses.replace(run, steps=int(s["Steps"]), sampler=sampler, cfg_scale=float(s["CFG scale"]),
                                  seed=int(s["Seed"]) - pos, n=batch, batch_size=batch)
        task = dataclasses.replace(task, prompt=prompt, negative_prompt=negative, height=height, width=width,
                                   guidance_rescale=float(s.get("Guidance rescale", 0.0)))
        if model.precision == "auto" and "Precision" in s:
            model = dataclasses.replace(model, precision=s["Precision"])
        if model.deepcache is None and "DeepCache" in s:
            model = dataclasses.replace(model, deepcache=int(s["DeepCache"]))
    except (KeyError, ValueError) as e:
        raise LDMError(f"{path}: parameters lack or mangle a setting ({e}); need Steps, Sampler, CFG scale, Seed, "
                       "Size") from None
    return model, run, task, (pos if batch > 1 else None), s.get("Model hash")


def img2img(model: ModelRequest, run: RunRequest, task: Img2Img) -> list[Path]:
    _check(run, task.prompt, task.negative_prompt)
    (init,) = _inputs(run, ("--init-image", task.init_image))
    pipe = _load(model, run, "txt2img")

    def make(**each: Any) -> list:
        return pipe.img2img(init, task.prompt, task.negative_prompt, strength=task.strength, steps=run.steps,
                            sampler=run.sampler, cfg_scale=run.cfg_scale, guidance_rescale=task.guidance_rescale,
                            **each)

    return _write(pipe, run, make, resolve_seed(run.seed))


def inpaint(model: ModelRequest, run: RunRequest, task: Inpaint) -> list[Path]:
    _check(run, task.prompt, task.negative_prompt)
    init, mask = _inputs(run, ("--init-image", task.init_image), ("--mask", task.mask))
    pipe = _load(model, run, "inpaint")

    def make(**each: Any) -> list:
        return pipe.inpaint(init, mask, task.prompt, task.negative_prompt, strength=task.strength, steps=run.steps,
                            sampler=run.sampler, cfg_scale=run.cfg_scale, guidance_rescale=task.guidance_rescale,
                            paste_back=task.paste_back, blend_latents=True if task.blend_latents else None, **each)

    return _write(pipe, run, make, resolve_seed(run.seed))


def upscale(model: ModelRequest, run: RunRequest, task: Upscale) -> list[Path]:
    _check(run, task.prompt, task.negative_prompt)
    (low_res,) = _inputs(run, ("--init-image", task.init_image))
    pipe = _load(model, run, "superres")

    def make(**each: Any) -> list:
        return pipe.upscale(low_res, task.prompt, task.negative_prompt, steps=run.steps, sampler=run.sampler,
                            cfg_scale=run.cfg_scale, noise_level=task.noise_level, strength=task.strength,
                            height=task.height, width=task.width, **each)

    return _write(pipe, run, make, resolve_seed(run.seed))


def sample(model: ModelRequest, run: RunRequest, task: Sample) -> list[Path]:
    _check(run)
    pipe = _load(model, run, "unconditional" if task.class_label is None else "class")
    label = None if task.class_label is None else _class_label(task.class_label, tuple(pipe.cfg.class_names))

    def make(**each: Any) -> list:
        return pipe.sample(label, steps=run.steps, sampler=run.sampler, cfg_scale=run.cfg_scale, height=task.height,
                           width=task.width, **each)

    return _write(pipe, run, make, resolve_seed(run.seed))


def layout2img(model: ModelRequest, run: RunRequest, task: Layout2Img) -> list[Path]:
    if sum(x is not None for x in (task.objects, task.example, task.prompt)) != 1:
        raise LDMError("layout2img needs the layout, one way: --object CLASS X0 Y0 X1 Y1 (repeatable), --example I, "
                       "or --prompt TEXT [--planner FILE]")
    if task.planner is not None and task.prompt is None:
        raise LDMError("--planner draws the layout for a --prompt; pass --prompt TEXT")
    _check(run, task.prompt or "")
    seed, extra = resolve_seed(run.seed), {}
    if task.prompt is not None:  # one layout drawn from the seed; all n images are drawn for it
        from ..default_model import planner_path
        from ..models.layout_planner import LayoutPlanner
        from .grounded import plan_layouts

        planner = task.planner or str(planner_path())
        layout = plan_layouts(LayoutPlanner.load(planner), [task.prompt], seed=seed)[0]
        extra = {"Planned from": task.prompt, "Planner seed": seed, "Planner": planner}
    elif task.example is not None:
        layout = _example(task.example)["layout"]
    else:
        layout = [(int(o[0]) if o[0].lstrip("-").isdigit() else o[0], *o[1:]) for o in task.objects]
    pipe = _load(model, run, "layout")

    def make(**each: Any) -> list:
        return pipe.layout2img(layout, steps=run.steps, sampler=run.sampler, cfg_scale=run.cfg_scale,
                               height=task.height, width=task.width, **each)

    return _write(pipe, run, make, seed, extra=extra)


def semantic2img(model: ModelRequest, run: RunRequest, task: Semantic2Img) -> list[Path]:
    if (task.map is None) == (task.example is None):
        raise LDMError("semantic2img needs the map: --map LABELS.png or --example I")
    _check(run)
    if task.example is None:
        (label_map,) = _inputs(run, ("--map", task.map))
    else:
        label_map = _example(task.example)["segmentation"]
    pipe = _load(model, run, "semantic")

    def make(**each: Any) -> list:
        return pipe.semantic2img(label_map, steps=run.steps, sampler=run.sampler, **each)

    what = task.map if task.example is None else f"ShapesWorld held-out scene {task.example}"
    return _write(pipe, run, make, resolve_seed(run.seed), extra={"Semantic map": what})


# -- the shared steps ------------------------------------------------------------------------------------
def _check(run: RunRequest, *texts: str) -> None:
    """Before the model loads: the run's numbers, the sampler, the seed range, the prompts storable in a PNG
    (UTF-8) and the output folder writable."""
    from ..fileio import check_output_dir
    from .metadata import check_text
    from .task_common import check_run

    if isinstance(run.batch_size, bool) or not isinstance(run.batch_size, int) or run.batch_size < 1:
        raise LDMError(f"--batch-size must be a positive integer, got {run.batch_size}")
    # cfg None: the model decides (upscalers), so nothing to check yet
    check_run(run.steps, run.sampler, 1.0 if run.cfg_scale is None else run.cfg_scale, run.n, run.limits,
              names=("--steps", "--cfg", "--n"))
    if run.seed is not None:
        check_seed(run.seed, run.n)  # image i gets seed + i: the whole range, before any work
    for what, text in zip(("--prompt", "--negative-prompt"), texts):
        check_text(text or "", what)
    check_output_dir(run.out)


def _inputs(run: RunRequest, *named: tuple[str, str]) -> list:
    """The input images (flag, path), read before the model loads (their size checked against the limits from
    the header)."""
    from .images import open_image

    return [open_image(path, flag, run.limits) for flag, path in named]


def _load(model: ModelRequest, run: RunRequest, embedded_task: str) -> Any:  # -> Pipeline
    import torch

    from .pipeline import Pipeline

    ckpt = model.ckpt
    if ckpt is None:
        from ..default_model import task_model_path

        ckpt = str(task_model_path(embedded_task))
    pipe = Pipeline.from_checkpoint(ckpt, model.config, dtype=getattr(torch, DTYPES[model.dtype]),
                                    device=model.device, use_ema=model.ema, precision=model.precision,
                                    deepcache=model.deepcache, attention_slice=model.attention_slice,
                                    compile=model.compile, vae_tiling=model.vae_tiling)
    pipe.limits = run.limits
    return pipe


def _write(pipe: Any, run: RunRequest, make: Make, seed: int, *, extra: dict[str, Any] | None = None,
           pick: int | None = None) -> list[Path]:
    """Run ``make`` over the n images a batch at a time and write each as it comes; Ctrl-C says what was kept."""
    written: list[Path] = []
    with pipe.reusing_inputs():  # the text and input-image encodings once, not once per batch
        try:
            for path in _batches(run, make, seed, extra or {}, pick):
                written.append(path)
        except KeyboardInterrupt:
            total = 1 if pick is not None else run.n
            raise Interrupted(f"interrupted: {len(written)} of {total} image(s) written to {run.out}") from None
    if pick is not None and not written:
        raise LDMError(f"nothing was written: image {pick} of the batch was not made")
    return written


def _batches(run: RunRequest, make: Make, seed: int, extra: dict[str, Any], pick: int | None) -> Iterator[Path]:
    from .batches import bar_label
    from .metadata import add_settings, save_numbered_png

    for first in range(0, run.n, run.batch_size):
        count = min(run.batch_size, run.n - first)
        images = make(seed=seed + first, n=count, progress=bar_label(not run.quiet, slice(first, first + count),
                                                                      run.n))
        for j, image in enumerate(images):
            if pick is not None and first + j != pick:
                continue
            path = save_numbered_png(image, run.out, seed + first + j, add_settings(image.info["parameters"], extra))
            if not run.quiet:
                _say(f"wrote {path}")
            yield path


def _class_label(text: str, names: tuple[str, ...]) -> int:
    """An integer label, or a class name (the model's classes, or ShapesWorld's 'red circle')."""
    from .structured import class_from_name

    label = text.strip()
    return int(label) if label.lstrip("-").isdigit() and label not in names else class_from_name(label, names)


def _example(i: int) -> dict:
    """Held-out ShapesWorld scene ``i`` (the evaluation seed, which no model trains on)."""
    from ..data.shapes import EVAL_SEED, ShapesWorld

    if i < 0:
        raise LDMError(f"--example must be >= 0, got {i}")
    return ShapesWorld(size=64, seed=EVAL_SEED, length=i + 1)[i]


def _say(text: str, *, err: bool = False) -> None:
    print(text if not err else f"ldm: {text}", file=sys.stderr if err else sys.stdout)
