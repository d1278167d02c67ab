"""``ldm txt2img | img2img | inpaint | upscale | sample | layout2img | semantic2img | demo | info``: argument parsing
and PNG writing only."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import Interrupted, LDMError
from .defaults import TASKS, TaskDefaults
from .limits import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS, MAX_SEED, Limits, check_seed

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _model_args(p: argparse.ArgumentParser, task: TaskDefaults, *, embedded: str = "text-to-image") -> None:
    """The options every generating command takes; --steps / --sampler / --cfg default to ``task``'s
    (``defaults.py``, the table the ``Pipeline`` task functions use too)."""
    p.add_argument("--ckpt", default=None,
                   help=f"checkpoint (.safetensors / .ckpt); default: the embedded ShapesWorld {embedded} model")
    p.add_argument("--config", default=None, help="model YAML (ours or the original inference YAML)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--steps", type=int, default=task.steps)
    p.add_argument("--sampler", default=task.sampler)
    p.add_argument("--cfg", type=float, default=task.cfg_scale, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--seed", type=_seed_arg, default=None, help="image i gets seed + i, 0 .. 2**64-1 (default: random)")
    p.add_argument("--n", type=int, default=1, help="number of images (each written as soon as it is made)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images sampled together (default 1: one progress bar per image; more can be faster on a GPU)")
    p.add_argument("--out", required=True, help="output folder; files are named 00000-<seed>.png, 00001-... with the "
                   "next free numbers (existing files are never overwritten; several runs may share the folder)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no messages")
    lim = p.add_argument_group("limits (checked before any work)")
    lim.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                     help=f"most pixels (width x height) of an input image or an image made (default {DEFAULT_MAX_PIXELS})")
    lim.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES, metavar="N",
                     help=f"most images per run (default {DEFAULT_MAX_IMAGES})")
    f = p.add_argument_group("speed and memory (docs/performance.md)")
    f.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="UNet compute precision: bf16 = autocast, with the UNet's Linear / Conv weights stored in bf16 "
                        "(the same numbers, half the memory); auto (default) = bf16 on a CPU with AVX-512 BF16 / AMX "
                        "(or a bf16 GPU) when the weights are fp32, else fp32")
    f.add_argument("--deepcache", type=int, default=None, metavar="N",
                   help="DeepCache: reuse the UNet's deep features on N-1 of every N steps (faster, slightly "
                        "different images)")
    f.add_argument("--attention-slice", type=int, default=None, metavar="Q",
                   help="compute attention Q queries at a time (lower peak memory)")
    f.add_argument("--vae-tiling", action="store_true", help="decode (and encode) large images in overlapping tiles")
    f.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first call)")


def _size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--height", type=int, default=None, help="default: the model's native size")
    p.add_argument("--width", type=int, default=None, help="default: the model's native size")


def _text_args(p: argparse.ArgumentParser, *, prompt_required: bool = True) -> None:
    p.add_argument("--prompt", required=prompt_required, default=None)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--guidance-rescale", type=float, default=0.0)


def add_generate_commands(sub: Any) -> None:
    t = sub.add_parser("txt2img", help="text-to-image")
    _model_args(t, TASKS["txt2img"])
    _text_args(t, prompt_required=False)
    t.add_argument("--height", type=int, default=None, help="default: 512, or 64 with the embedded model")
    t.add_argument("--width", type=int, default=None, help="default: 512, or 64 with the embedded model")
    t.add_argument("--from-png", default=None, help="re-create an image from its PNG parameters (these replace "
                   "the prompt, negative prompt, steps, sampler, cfg, seed, n and size given here)")
    t.set_defaults(func=_cmd_txt2img)
    i = sub.add_parser("img2img", help="image-to-image (SDEdit)")
    _model_args(i, TASKS["img2img"])
    _text_args(i)
    i.add_argument("--init-image", required=True)
    i.add_argument("--strength", type=float, default=TASKS["img2img"].strength)
    i.set_defaults(func=_cmd_img2img)
    m = sub.add_parser("inpaint", help="repaint the white part of --mask")
    _model_args(m, TASKS["inpaint"], embedded="inpainting")
    _text_args(m)
    m.add_argument("--init-image", required=True)
    m.add_argument("--mask", required=True, help="white = repaint, black = keep; same size as the image")
    m.add_argument("--strength", type=float, default=TASKS["inpaint"].strength)
    m.add_argument("--paste-back", action="store_true",
                   help="keep the input's pixels exactly outside the mask (otherwise they pass through the autoencoder)")
    m.add_argument("--blend-latents", action="store_true",
                   help="9-channel inpainting models: also keep the unmasked latents at every step (ordinary models "
                        "always do)")
    m.set_defaults(func=_cmd_inpaint)
    u = sub.add_parser("upscale", help="super-resolution: a concat-conditioned LDM or the SD x4 upscaler")
    _model_args(u, TASKS["upscale"], embedded="x4 super-resolution")
    u.add_argument("--init-image", required=True)
    u.add_argument("--prompt", default="", help="SD x4 upscaler only: what the image shows")
    u.add_argument("--negative-prompt", default="", help="SD x4 upscaler only")
    u.add_argument("--noise-level", type=int, default=None,
                   help="SD x4 upscaler only: noise added to the low-res image, 0..max_noise_level (default 20)")
    u.add_argument("--strength", type=float, default=TASKS["upscale"].strength,
                   help="concat LDMs only: 1 = sample from pure noise (the paper); < 1 = start from the bicubic "
                        "upsample noised that far up (SDEdit): closer to the input, higher PSNR (0.5 on ShapesWorld)")
    _size_args(u)
    u.set_defaults(func=_cmd_upscale)
    s = sub.add_parser("sample", help="class-conditional or unconditional sampling")
    _model_args(s, TASKS["sample"],
                embedded="class-conditional (with --class-label) or unconditional")
    s.add_argument("--class-label", default=None,
                   help="an integer class, or a name: one of the classes the model was trained on (its class "
                        "folders; `ldm inspect` lists them), or for ShapesWorld models 'red circle'")
    _size_args(s)
    s.set_defaults(func=_cmd_sample)
    lay = sub.add_parser("layout2img", help="layout-to-image: objects with boxes")
    _model_args(lay, TASKS["layout2img"], embedded="layout-to-image")
    lay.add_argument("--object", nargs=5, action="append", metavar=("CLASS", "X0", "Y0", "X1", "Y1"),
                     help="an object: class (integer or e.g. 'red circle') and its box in image fractions, "
                          "x to the right, y down (repeatable)")
    lay.add_argument("--example", type=int, default=None, metavar="I",
                     help="take the layout of held-out ShapesWorld scene I (instead of --object)")
    lay.add_argument("--prompt", default=None,
                     help="a caption; the layout planner (--planner) draws one layout from --seed, and all --n "
                          "images are drawn for it (grounded text-to-image: pipelines/grounded.py)")
    lay.add_argument("--planner", default=None,
                     help="caption -> layout planner .safetensors for --prompt (`ldm train planner`; default: the "
                          "embedded ShapesWorld planner)")
    _size_args(lay)
    lay.set_defaults(func=_cmd_layout2img)
    sem = sub.add_parser("semantic2img", help="semantic-map-to-image")
    _model_args(sem, TASKS["semantic2img"], embedded="semantic-map-to-image")
    sem.add_argument("--map", default=None, help="label PNG (8-bit grayscale or palette): 0 = background, "
                                                  "1 + class = object; the image gets its size")
    sem.add_argument("--example", type=int, default=None, metavar="I",
                     help="take the semantic map of held-out ShapesWorld scene I (instead of --map)")
    sem.set_defaults(func=_cmd_semantic2img)
    d = sub.add_parser("demo", help="grids from the embedded models (no download): text-to-image by default, any "
                       "task of the paper with --task, or the MNIST digits model (--task mnist)")
    d.add_argument("--task", default="txt2img", choices=["txt2img", "grounded", "class", "unconditional", "layout",
                                                         "semantic", "superres", "inpaint", "mnist", "all"],
                   help="txt2img (default: grid.png), grounded (the prompts through the layout planner and the "
                        "layout model: grounded.png, planned boxes | samples), another task (<task>.png: condition "
                        "| samples [| truth]), mnist (real handwritten digits: one row per digit, mnist.png), or all "
                        "(every task whose embedded models are present)")
    d.add_argument("--out", default="out/demo", help="output folder (default ./out/demo; a new out/demo-N if taken)")
    d.add_argument("--n", type=int, default=4, help="images per prompt / condition")
    d.add_argument("--rows", type=int, default=6,
                   help="classes / held-out scenes per task other than txt2img and grounded")
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale (default: the task's own: txt2img 5, grounded / class / "
                        "layout 3, inpaint 1; tasks that cannot guide always use 1)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--prompt", action="append", default=None,
                   help="a txt2img / grounded prompt (repeatable; default: six built-in ones)")
    d.add_argument("--force", action="store_true", help="write into --out even if it holds an earlier demo")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_cmd_demo)
    info = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image")
    info.set_defaults(func=_cmd_info)


# -- helpers -----------------------------------------------------------------------------------------
def _pipeline(args: argparse.Namespace, task: str = "txt2img"):  # -> Pipeline
    import torch

    from .pipeline import Pipeline

    if args.ckpt is None:
        from ..default_model import task_model_path

        args.ckpt = str(task_model_path(task))
    from .task_common import check_run

    limits = _limits(args)  # bad values refused before the model loads
    if isinstance(args.batch_size, bool) or args.batch_size < 1:
        raise LDMError(f"--batch-size must be a positive integer, got {args.batch_size}")
    # the checks every task makes, before the model loads (cfg None: the model decides, so nothing to check)
    check_run(args.steps, args.sampler, 1.0 if args.cfg is None else args.cfg, args.n, limits,
              names=("--steps", "--cfg", "--n"))
    if args.seed is not None:
        check_seed(args.seed, args.n)  # image i gets seed + i: the whole range, before any work
    _prepare_output(args, getattr(args, "prompt", None) or "", getattr(args, "negative_prompt", None) or "")
    pipe = Pipeline.from_checkpoint(args.ckpt, args.config, dtype=getattr(torch, DTYPES[args.dtype]),
                                    device=args.device, use_ema=args.ema, precision=args.precision,
                                    deepcache=args.deepcache, attention_slice=args.attention_slice,
                                    compile=args.compile, vae_tiling=args.vae_tiling)
    pipe.limits = limits
    return pipe


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(args.max_pixels, args.max_images)


def _inputs(args: argparse.Namespace, *names: str) -> list:
    """The input images named by these arguments (``init_image``, ``mask``, ``map``), read before the model loads
    (their size checked against --max-pixels from the header); None for an argument not given."""
    from .images import open_image

    limits = _limits(args)
    return [None if getattr(args, n) is None else open_image(getattr(args, n), "--" + n.replace("_", "-"), limits)
            for n in names]


def _seed_arg(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{seed} is outside 0 .. 2**64-1 ({MAX_SEED})")
    return seed


def _progress(args: argparse.Namespace) -> bool:
    """A bar per image (per batch with --batch-size > 1) on stderr, where tqdm draws: off with --quiet or no TTY."""
    return not args.quiet and sys.stderr.isatty()


def _seed(args: argparse.Namespace) -> int:
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    return args.seed


def _prepare_output(args: argparse.Namespace, *texts: str) -> None:
    """Before any sampling: the prompts must be storable in the PNG (UTF-8) and --out a writable folder."""
    from ..fileio import check_output_dir
    from .metadata import check_text

    for what, text in zip(("--prompt", "--negative-prompt"), texts):
        check_text(text or "", what)
    check_output_dir(args.out)


def _generate(args: argparse.Namespace, pipe: Any, make: Callable[..., list], prompt: str, negative: str,
              settings: dict, seed: int, *, pick: int | None = None) -> list[Path]:
    """``make(seed=s, n=k, progress=...)`` runs the task for images s .. s+k-1; the n images are made --batch-size
    at a time and each is written as soon as it is decoded (``NNNNN-<seed>.png`` with the next free number, taken
    atomically), so a run stopped part-way keeps what it made. Image i has seed ``seed + i`` whatever the split."""
    written: list[Path] = []
    with pipe.reusing_inputs():  # the text and input-image encodings once, not once per batch
        try:
            for path in _generate_batches(args, pipe, make, prompt, negative, settings, seed, pick, args.batch_size):
                written.append(path)
        except KeyboardInterrupt:
            total = 1 if pick is not None else args.n
            raise Interrupted(f"interrupted: {len(written)} of {total} image(s) written to {args.out}") from None
    if pick is not None and not written:
        raise LDMError(f"nothing was written: image {pick} of the batch was not made")
    return written


def _generate_batches(args: argparse.Namespace, pipe: Any, make: Callable[..., list], prompt: str, negative: str,
                      settings: dict, seed: int, pick: int | None, size: int) -> Iterator[Path]:
    from .metadata import format_parameters, save_numbered_png

    from .batches import bar_label

    for first in range(0, args.n, size):
        count = min(size, args.n - first)
        label = bar_label(_progress(args), slice(first, first + count), args.n)
        images = make(seed=seed + first, n=count, progress=label)
        for j, img in enumerate(images):
            i = first + j
            if pick is not None and i != pick:
                continue
            s = dict(settings)
            s.update({"Seed": seed + i, "Size": f"{img.size[0]}x{img.size[1]}"})
            if pipe.model_hash:
                s["Model hash"] = pipe.model_hash
            if count > 1:  # sampled together with others: re-creating it needs the same batch (same seeds)
                s.update({"Batch size": count, "Batch pos": j})
            path = save_numbered_png(img, args.out, seed + i, format_parameters(prompt, negative, s))
            if not args.quiet:
                print(f"wrote {path}")
            yield path


def _base_settings(args: argparse.Namespace) -> dict:
    return {"Steps": args.steps, "Sampler": args.sampler, "CFG scale": args.cfg}


def _text_settings(args: argparse.Namespace) -> dict:
    s = _base_settings(args)
    if args.guidance_rescale:
        s["Guidance rescale"] = args.guidance_rescale
    return s


# -- commands ----------------------------------------------------------------------------------------
def _apply_png(args: argparse.Namespace) -> int | None:
    """Fill args from --from-png; returns the batch position to keep (None = all)."""
    from .metadata import parse_parameters, read_png_parameters

    prompt, negative, s = parse_parameters(read_png_parameters(args.from_png))
    try:
        args.prompt, args.negative_prompt = prompt, negative
        args.steps, args.sampler, args.cfg = int(s["Steps"]), s["Sampler"], float(s["CFG scale"])
        width, height = (int(v) for v in s["Size"].split("x"))
        pos, batch = int(s.get("Batch pos", 0)), int(s.get("Batch size", 1))
        if batch < 1 or not 0 <= pos < batch:
            raise ValueError(f"Batch pos {pos} / Batch size {batch}: need 0 <= pos < size")
        args.seed, args.n, args.height, args.width = int(s["Seed"]) - pos, batch, height, width
        args.batch_size = batch
        args.guidance_rescale = float(s.get("Guidance rescale", 0.0))
    except (KeyError, ValueError) as e:
        raise LDMError(f"{args.from_png}: parameters lack or mangle a setting ({e}); need Steps, Sampler, "
                       "CFG scale, Seed, Size") from None
    args.expected_hash = s.get("Model hash")
    return pos if batch > 1 else None


def _cmd_txt2img(args: argparse.Namespace) -> int:
    pick = _apply_png(args) if args.from_png else None
    if args.prompt is None:
        raise LDMError("txt2img needs --prompt TEXT (or --from-png IMAGE.png)")
    pipe = _pipeline(args)  # --height / --width unset: txt2img's default; the PNG records the image's size
    expected = getattr(args, "expected_hash", None)
    if expected and expected != pipe.model_hash:
        print(f"ldm: warning: {args.from_png} was made with model hash {expected}, but {args.ckpt} has hash "
              f"{pipe.model_hash}; the image will differ", file=sys.stderr)
    seed = _seed(args)

    def make(**each: Any) -> list:
        return pipe.txt2img(args.prompt, args.negative_prompt, steps=args.steps, sampler=args.sampler,
                            cfg_scale=args.cfg, height=args.height, width=args.width,
                            guidance_rescale=args.guidance_rescale, **each)

    _generate(args, pipe, make, args.prompt, args.negative_prompt, _text_settings(args), seed, pick=pick)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_PROMPTS, PROMPT_TASKS, run_demo

    if args.prompt and args.task not in (*PROMPT_TASKS, "all"):
        raise LDMError(f"--prompt is for the txt2img and grounded demos; the {args.task} demo takes its conditions "
                       "from held-out ShapesWorld scenes or classes")
    run_demo(args.out, prompts=tuple(args.prompt) if args.prompt else DEMO_PROMPTS, n=args.n, steps=args.steps,
             cfg_scale=args.cfg, seed=args.seed, force=args.force, progress=not args.quiet and sys.stderr.isatty(),
             task=args.task, rows=args.rows)
    return 0


def _cmd_img2img(args: argparse.Namespace) -> int:
    (init,) = _inputs(args, "init_image")
    pipe, seed = _pipeline(args), _seed(args)

    def make(**each: Any) -> list:
        return pipe.img2img(init, args.prompt, args.negative_prompt, strength=args.strength, steps=args.steps,
                            sampler=args.sampler, cfg_scale=args.cfg, guidance_rescale=args.guidance_rescale, **each)

    s = _text_settings(args) | {"Denoising strength": args.strength}
    _generate(args, pipe, make, args.prompt, args.negative_prompt, s, seed)
    return 0


def _cmd_inpaint(args: argparse.Namespace) -> int:
    init, mask = _inputs(args, "init_image", "mask")
    pipe, seed = _pipeline(args, "inpaint"), _seed(args)

    def make(**each: Any) -> list:
        return pipe.inpaint(init, mask, args.prompt, args.negative_prompt, strength=args.strength, steps=args.steps,
                            sampler=args.sampler, cfg_scale=args.cfg, guidance_rescale=args.guidance_rescale,
                            paste_back=args.paste_back, blend_latents=True if args.blend_latents else None, **each)

    s = _text_settings(args) | {"Denoising strength": args.strength}
    if args.paste_back:
        s["Paste back"] = True
    if args.blend_latents:
        s["Blend latents"] = True
    _generate(args, pipe, make, args.prompt, args.negative_prompt, s, seed)
    return 0


def _cmd_upscale(args: argparse.Namespace) -> int:
    from .defaults import upscale_cfg_scale, upscale_noise_level

    (low_res,) = _inputs(args, "init_image")
    pipe, seed = _pipeline(args, "superres"), _seed(args)
    text = pipe.kind == "text_upscale"

    def make(**each: Any) -> list:
        return pipe.upscale(low_res, args.prompt, args.negative_prompt, steps=args.steps, sampler=args.sampler,
                            cfg_scale=args.cfg, noise_level=args.noise_level, strength=args.strength,
                            height=args.height, width=args.width, **each)

    settings = _base_settings(args) | {"CFG scale": upscale_cfg_scale(pipe.kind, args.cfg)}  # as the task resolves it
    if text:
        settings["Noise level"] = upscale_noise_level(args.noise_level)
    if args.strength != 1.0:
        settings["Denoising strength"] = args.strength
    _generate(args, pipe, make, args.prompt, args.negative_prompt, settings, seed)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    pipe = _pipeline(args, "unconditional" if args.class_label is None else "class")
    seed = _seed(args)
    if args.class_label is not None:
        from .structured import class_from_name

        label = args.class_label.strip()
        names = tuple(pipe.cfg.class_names)
        args.class_label = (int(label) if label.lstrip("-").isdigit() and label not in names
                            else class_from_name(label, names))

    def make(**each: Any) -> list:
        return pipe.sample(args.class_label, steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg,
                           height=args.height, width=args.width, **each)

    s = _base_settings(args)
    if args.class_label is not None:
        s["Class label"] = args.class_label
    _generate(args, pipe, make, "", "", s, seed)
    return 0


def _example(i: int) -> dict:
    """Held-out ShapesWorld scene ``i`` (the evaluation seed, which no model trains on)."""
    from ..data.shapes import EVAL_SEED, ShapesWorld

    if i < 0:
        raise LDMError(f"--example must be >= 0, got {i}")
    return ShapesWorld(size=64, seed=EVAL_SEED, length=i + 1)[i]


def _cmd_layout2img(args: argparse.Namespace) -> int:
    from ..data.shapes import class_name

    given = [args.object is not None, args.example is not None, args.prompt is not None]
    if sum(given) != 1:
        raise LDMError("layout2img needs the layout, one way: --object CLASS X0 Y0 X1 Y1 (repeatable), --example I, "
                       "or --prompt TEXT [--planner FILE]")
    if args.planner is not None and args.prompt is None:
        raise LDMError("--planner draws the layout for a --prompt; pass --prompt TEXT")
    if args.prompt is not None:
        from ..default_model import planner_path
        from ..models.layout_planner import LayoutPlanner
        from .grounded import plan_layouts

        args.planner = args.planner or str(planner_path())
        planned = plan_layouts(LayoutPlanner.load(args.planner), [args.prompt], seed=_seed(args))[0]
        layout = [(class_name(int(r[0])), *(round(float(v), 4) for v in r[1:])) for r in planned if r[0] >= 0]
    elif args.example is not None:
        rows = _example(args.example)["layout"]
        layout = [(class_name(int(r[0])), *(round(float(v), 4) for v in r[1:])) for r in rows if r[0] >= 0]
    else:
        layout = [(o[0] if not o[0].lstrip("-").isdigit() else int(o[0]), *o[1:]) for o in args.object]
    pipe, seed = _pipeline(args, "layout"), _seed(args)

    def make(**each: Any) -> list:
        return pipe.layout2img(layout, steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg,
                               height=args.height, width=args.width, **each)

    text = "; ".join(f"{o[0]} {' '.join(str(v) for v in o[1:])}" for o in layout)
    planned = {"Planned from": args.prompt, "Planner": args.planner} if args.prompt is not None else {}
    _generate(args, pipe, make, "", "", _base_settings(args) | {"Layout": text} | planned, seed)
    return 0


def _cmd_semantic2img(args: argparse.Namespace) -> int:
    if (args.map is None) == (args.example is None):
        raise LDMError("semantic2img needs the map: --map LABELS.png or --example I")
    (label_map,) = _inputs(args, "map") if args.example is None else (_example(args.example)["segmentation"],)
    pipe, seed = _pipeline(args, "semantic"), _seed(args)

    def make(**each: Any) -> list:
        return pipe.semantic2img(label_map, steps=args.steps, sampler=args.sampler, **each)

    what = args.map if args.example is None else f"ShapesWorld held-out scene {args.example}"
    _generate(args, pipe, make, "", "", _base_settings(args) | {"Semantic map": what}, seed)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .metadata import read_png_parameters

    print(read_png_parameters(args.image))
    return 0
