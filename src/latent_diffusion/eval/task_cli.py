"""``ldm eval {txt2img,class,layout,semantic,superres,inpaint,uncond,judge}`` and ``ldm train judge``.

Listed in ``eval.cli_commands._EVAL_ADDERS`` / ``train.cli_commands._STAGE_ADDERS``. Default sample counts
(finish in minutes on a 2-core CPU with the 64×64 ShapesWorld models at 20 DDIM steps) are the ``--n`` defaults.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from ..cli_parser import deprecated_alias
from ..errors import LDMError

# task -> (default --n, help)
_TASKS: dict[str, tuple[int, str]] = {
    "txt2img": (64, "prompt adherence (all attributes right) and FID per CFG scale, held-out ShapesWorld captions"),
    "class": (80, "class-conditional accuracy (the judge finds the requested class)"),
    "layout": (64, "mean IoU of the judge's boxes with the requested layout boxes"),
    "semantic": (64, "mIoU of the judge's segmentation against the input semantic maps"),
    "superres": (64, "x4 super-resolution PSNR / SSIM vs ground truth and vs bicubic"),
    "inpaint": (64, "PSNR inside the mask, change outside it"),
    "uncond": (256, "FID / KID / precision / recall on the judge's features against real ShapesWorld"),
}


def add_eval_task_commands(esub: Any) -> None:
    for task, (n, text) in _TASKS.items():
        p = esub.add_parser(task, help=text)
        p.add_argument("--ckpt", default=None,
                       help=f"model .safetensors (default: the embedded ShapesWorld {task} model)")
        p.add_argument("--ema", action="store_true",
                       help="sample with the file's model_ema.* weights (a training run's model.safetensors)")
        p.add_argument("--n", type=int, default=n, help=f"held-out scenes / samples (default {n})")
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--sampler", default="ddim")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--batch-size", type=int, default=16, help="images per sampling batch")
        if task in ("txt2img", "inpaint", "class", "layout"):
            p.add_argument("--cfg", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.5] if task == "txt2img"
                           else [1.0], help="classifier-free guidance scale(s), one table row each")
        if task == "inpaint":
            p.add_argument("--blend-latents", action="store_true",
                           help="also keep the unmasked latents at every step (Pipeline.inpaint blend_latents=True)")
        if task == "superres":
            p.add_argument("--strength", type=float, nargs="+", default=[1.0, 0.5],
                           help="1 = sample from pure noise (the paper); < 1 = start from the bicubic upsample noised "
                                "that far up (SDEdit); one table row each (default: 1 0.5)")
        if task == "txt2img":
            p.add_argument("--grounded", action="store_true",
                           help="evaluate grounded text-to-image instead: a caption -> layout planner draws the boxes, "
                                "the layout model (--ckpt, default the embedded one) the image")
            p.add_argument("--planner", default=None,
                           help="planner .safetensors for --grounded (default: the embedded planner-shapes)")
        if task in ("txt2img", "uncond"):
            p.add_argument("--n-real", type=int, default=None, help="real images for FID (default: max(--n, 256))")
        p.add_argument("--judge", default=None, help="judge weights (default: the committed assets/judge-shapes)")
        _add_output_args(p)
        p.set_defaults(func=_cmd_eval_task, eval_task=task)
    j = esub.add_parser("judge", help="the judge's own per-attribute accuracy on held-out real ShapesWorld images")
    j.add_argument("--judge", default=None)
    j.add_argument("--n", type=int, default=1000)
    j.add_argument("--roundtrip", default=None, metavar="AUTOENCODER",
                   help="score the scenes after this autoencoder's encode/decode round trip instead (the ceiling "
                        "of any LDM built on it)")
    _add_output_args(j)
    j.set_defaults(func=_cmd_eval_judge)


def add_train_judge_command(tsub: Any) -> None:
    p = tsub.add_parser("judge", help="train the evaluation judge on ShapesWorld ground truth (deterministic)")
    p.add_argument("--out", default=None, help="weights path (default: src/latent_diffusion/assets/judge-shapes...)")
    p.add_argument("--max-steps", dest="steps", type=int, default=None, metavar="N", help="override the recipe's steps")
    deprecated_alias(p, "--steps", dest="steps", use="--max-steps", type=int)
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train_judge)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, help="write results as JSON here")
    p.add_argument("--markdown", default=None, help="write a Markdown table here")
    p.add_argument("--force", action="store_true", help="replace existing --json / --markdown files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_train_judge(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from .judge import DEFAULT_JUDGE_PATH
    from .judge_train import JudgeTrainConfig, train_judge

    out = Path(args.out) if args.out else DEFAULT_JUDGE_PATH
    if out.exists() and not args.force:
        raise LDMError(f"{out} already exists; pass --force to replace it")
    cfg = JudgeTrainConfig()
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    _, summary = train_judge(cfg, out=out, log=None if args.quiet else print)
    print(f"wrote {out} ({summary['params']:,} parameters, {summary['train_seconds']} s); "
          f"check it with `ldm eval judge --judge {out}`")
    return 0


def _cmd_eval_judge(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .judge import Judge
    from .judge_accuracy import accuracy_markdown, judge_accuracy
    from .reports import check_outputs

    check_outputs(args.json, args.markdown, force=args.force)
    transform = None
    if args.roundtrip is not None:
        from ..autoencoder_io import load_autoencoder

        transform = autoencoder_roundtrip(load_autoencoder(args.roundtrip).eval())
    acc = judge_accuracy(Judge.load(args.judge), n=args.n, transform=transform)
    table = accuracy_markdown(acc)
    if args.json:
        Path(args.json).write_text(json.dumps(acc, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table, end="")
    print("trusted (every attribute >= 95 %):", "yes" if acc["trusted"] else "NO")
    return 0 if acc["trusted"] else 1


def autoencoder_roundtrip(ae: Any, batch_size: int = 50) -> Any:
    """images (N, 3, H, W) → decode(encode(images)) (KL: the posterior mode; VQ: quantised), in [-1, 1]."""
    import torch

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        outs = []
        for b in x.split(batch_size):
            h = ae.encode(b)
            outs.append(ae.decode(h.mode() if hasattr(h, "mode") else h))  # VQModel.decode quantises
        return torch.cat(outs).float().clamp(-1, 1)

    return run


def _load_pipeline(ckpt: str | None, task: str, use_ema: bool = False) -> Any:
    from ..default_model import task_model_path
    from ..pipelines.pipeline import Pipeline

    return Pipeline.from_checkpoint(ckpt if ckpt is not None else task_model_path(EMBEDDED.get(task, task)),
                                    use_ema=use_ema)


EMBEDDED = {"uncond": "unconditional"}  # evaluation task name -> default_model.TASK_MODELS key


def _cmd_eval_task(args: argparse.Namespace) -> int:
    from .reports import check_outputs, markdown_table, write_reports

    check_outputs(args.json, args.markdown, force=args.force)
    if args.n <= 0:
        raise LDMError(f"--n must be positive, got {args.n}")
    t0 = time.perf_counter()
    grounded = getattr(args, "grounded", False)
    if getattr(args, "planner", None) is not None and not grounded:
        raise LDMError("--planner is for --grounded evaluation; add --grounded")
    rows = run_task(args.eval_task, _load_pipeline(args.ckpt, "layout" if grounded else args.eval_task, args.ema),
                    args)
    cli = sys.argv[1:3] == ["eval", args.eval_task]  # run from the shell (not main(argv) from Python)
    meta = {"command": "ldm " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if cli else None,
            "ckpt": args.ckpt or "default", "ema": args.ema, "steps": args.steps, "sampler": args.sampler,
            "seed": args.seed, "seconds": round(time.perf_counter() - t0, 1)}
    if grounded:
        meta |= {"grounded": True, "planner": args.planner or "default"}
    write_reports(args.eval_task, rows, meta, args.json, args.markdown)
    print(markdown_table(args.eval_task, rows), end="")
    print(f"({meta['seconds']} s)")
    return 0


def run_task(task: str, pipe: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Build the generator for ``task`` from ``pipe`` (checking the model does it) and evaluate."""
    from . import adapters as ad
    from . import tasks as tk
    from .distribution import DistributionMetrics
    from .judge import Judge

    ad.check_task(pipe, "layout" if getattr(args, "grounded", False) else task)
    s = ad.SampleSettings(steps=args.steps, sampler=args.sampler, seed=args.seed, batch_size=args.batch_size,
                          progress=not args.quiet and sys.stderr.isatty())
    judge = Judge.load(args.judge)
    size = 64
    data = tk.heldout(args.n, size=size)
    if task in ("txt2img", "uncond"):
        n_real = args.n_real or max(args.n, 256)
        metrics = DistributionMetrics(judge, tk.heldout(n_real, size=size, offset=100_000)["images"], seed=args.seed)
        if task == "uncond":
            return [tk.evaluate_uncond(ad.uncond_generator(pipe, s), metrics, args.n)]
        if getattr(args, "grounded", False):
            from ..default_model import planner_path
            from ..models.layout_planner import LayoutPlanner

            generate = ad.grounded_generator(LayoutPlanner.load(args.planner or planner_path()), pipe, s)
        else:
            generate = ad.text_generator(pipe, s, size)
        return tk.evaluate_txt2img(generate, judge, data["captions"], args.cfg, metrics=metrics)
    if task == "class":
        return [{"cfg_scale": c} | tk.evaluate_class(ad.class_generator(pipe, s, c), judge, data["labels"])
                for c in args.cfg]
    if task == "layout":
        return [{"cfg_scale": c} | tk.evaluate_layout(ad.layout_generator(pipe, s, c), judge, data["layouts"])
                for c in args.cfg]
    if task == "semantic":
        return [tk.evaluate_semantic(ad.semantic_generator(pipe, s), judge, data["segmentation"], size=(size, size))]
    if task == "superres":
        return [{"strength": a} | tk.evaluate_superres(ad.superres_generator(pipe, s, a), data["images"],
                                                       data["lowres"]) for a in args.strength]
    if task == "inpaint":
        blend = True if args.blend_latents else None
        blended = bool(args.blend_latents) or pipe.kind != "inpaint"  # ordinary models always blend
        return [{"cfg_scale": c, "blend_latents": blended}
                | tk.evaluate_inpaint(ad.inpaint_generator(pipe, s, c, blend), data["images"], data["masks"],
                                      data["captions"]) for c in args.cfg]
    raise LDMError(f"unknown evaluation task {task!r}; accepted: {sorted(_TASKS)}")
