"""``ldm txt2img | img2img | inpaint | upscale | sample | layout2img | semantic2img | demo | info``: the arguments,
turned into typed requests (``requests.py``) for one function per command (``generate.py``); ``args`` is never
changed."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import LDMError
from .defaults import DEMO, TASKS, TaskDefaults
from .limits import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PIXELS, MAX_SEED, Limits

DTYPES = ("bf16", "fp16", "fp32")  # the weights' dtype (--dtype)


def _model_args(p: argparse.ArgumentParser, task: TaskDefaults, *, embedded: str = "text-to-image") -> None:
    """The options every generating command takes; --steps / --sampler / --cfg default to ``task``'s
    (``defaults.py``, the table the ``Pipeline`` task functions use too)."""
    p.add_argument("--ckpt", default=None,
                   help=f"checkpoint (.safetensors / .ckpt); default: the embedded ShapesWorld {embedded} model")
    p.add_argument("--config", default=None, help="model YAML (ours or the original inference YAML)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="the weights' dtype (compute: --precision)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--steps", type=int, default=task.steps)
    p.add_argument("--sampler", default=task.sampler,
                   help="ddim, plms, ddpm, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras, dpmpp_sde, unipc, or an "
                        "A1111 name such as 'DPM++ 2M Karras' or 'Euler a' (docs/sampling.md)")
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
    d.add_argument("--out", default="out/demo",
                   help="output folder (default ./out/demo). A demo never writes into an existing folder: if it "
                        "exists, the first of out/demo-2, out/demo-3, ... that does not (--force: into --out anyway). "
                        "--task all writes one sub-folder per task (out/demo/txt2img/, out/demo/class/, ...)")
    d.add_argument("--n", type=int, default=DEMO.n, help="images per prompt / condition")
    d.add_argument("--rows", type=int, default=DEMO.rows,
                   help="classes / held-out scenes per task other than txt2img and grounded")
    d.add_argument("--steps", type=int, default=DEMO.steps, help=f"{DEMO.sampler} steps")
    d.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale (default: the task's own: txt2img 5, grounded / class / "
                        "layout 3, inpaint 1; tasks that cannot guide always use 1)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--prompt", action="append", default=None,
                   help="a txt2img / grounded prompt (repeatable; default: six built-in ones)")
    d.add_argument("--force", action="store_true", help="write into --out even if it exists, replacing files of the "
                   "same names")
    d.add_argument("--quiet", action="store_true", help="no progress bars and no per-task progress lines")
    d.set_defaults(func=_cmd_demo)
    info = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image")
    info.set_defaults(func=_cmd_info)


# -- arguments -> requests ----------------------------------------------------------------------------
def _model(args: argparse.Namespace) -> Any:  # -> ModelRequest
    from .requests import ModelRequest

    return ModelRequest(ckpt=args.ckpt, config=args.config, device=args.device, dtype=args.dtype, ema=args.ema,
                        precision=args.precision, deepcache=args.deepcache, attention_slice=args.attention_slice,
                        compile=args.compile, vae_tiling=args.vae_tiling)


def _run(args: argparse.Namespace) -> Any:  # -> RunRequest
    from .requests import RunRequest

    return RunRequest(out=args.out, steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg, seed=args.seed,
                      n=args.n, batch_size=args.batch_size, quiet=args.quiet,
                      limits=Limits(args.max_pixels, args.max_images))


def _seed_arg(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{seed} is outside 0 .. 2**64-1 ({MAX_SEED})")
    return seed


# -- commands ----------------------------------------------------------------------------------------
def _cmd_txt2img(args: argparse.Namespace) -> int:
    from . import generate
    from .requests import Txt2Img

    model, run = _model(args), _run(args)
    task = Txt2Img(args.prompt, args.negative_prompt, args.height, args.width, args.guidance_rescale)
    pick = expected = None
    if args.from_png:
        model, run, task, pick, expected = generate.txt2img_from_png(args.from_png, model, run, task)
    elif args.prompt is None:
        raise LDMError("txt2img needs --prompt TEXT (or --from-png IMAGE.png)")
    generate.txt2img(model, run, task, pick=pick, expected_hash=expected)
    return 0


def _cmd_img2img(args: argparse.Namespace) -> int:
    from . import generate
    from .requests import Img2Img

    generate.img2img(_model(args), _run(args), Img2Img(args.init_image, args.prompt, args.negative_prompt,
                                                       args.strength, args.guidance_rescale))
    return 0


def _cmd_inpaint(args: argparse.Namespace) -> int:
    from . import generate
    from .requests import Inpaint

    generate.inpaint(_model(args), _run(args), Inpaint(args.init_image, args.mask, args.prompt, args.negative_prompt,
                                                       args.strength, args.guidance_rescale, args.paste_back,
                                                       args.blend_latents))
    return 0


def _cmd_upscale(args: argparse.Namespace) -> int:
    from . import generate
    from .requests import Upscale

    generate.upscale(_model(args), _run(args), Upscale(args.init_image, args.prompt, args.negative_prompt,
                                                       args.noise_level, args.strength, args.height, args.width))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from . import generate
    from .requests import Sample

    generate.sample(_model(args), _run(args), Sample(args.class_label, args.height, args.width))
    return 0


def _cmd_layout2img(args: argparse.Namespace) -> int:
    from . import generate
    from .requests import Layout2Img

    objects = None if args.object is None else tuple(tuple(o) for o in args.object)
    generate.layout2img(_model(args), _run(args), Layout2Img(objects, args.example, args.prompt, args.planner,
                                                             args.height, args.width))
    return 0


def _cmd_semantic2img(args: argparse.Namespace) -> int:
    from . import generate
    from .requests import Semantic2Img

    generate.semantic2img(_model(args), _run(args), Semantic2Img(args.map, args.example))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_PROMPTS, PROMPT_TASKS, run_demo

    if args.prompt and args.task not in (*PROMPT_TASKS, "all"):
        raise LDMError(f"--prompt is for the txt2img and grounded demos; the {args.task} demo takes its conditions "
                       "from held-out ShapesWorld scenes or classes")
    run_demo(args.out, prompts=tuple(args.prompt) if args.prompt else DEMO_PROMPTS, n=args.n, steps=args.steps,
             cfg_scale=args.cfg, seed=args.seed, force=args.force, progress=not args.quiet and sys.stderr.isatty(),
             quiet=args.quiet, task=args.task, rows=args.rows)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .metadata import read_png_parameters

    print(read_png_parameters(args.image))
    return 0
