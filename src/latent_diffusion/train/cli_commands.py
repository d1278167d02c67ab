"""``ldm train <what>``: ONE ``train`` sub-command whose sub-commands are the training stages.

Each stage contributes an ``add_train_<stage>_command(tsub)`` function; ``add_train_commands`` calls them all.
Add a new stage (e.g. ``ldm train ldm``) by writing its adder and listing it in ``_STAGE_ADDERS``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def add_train_autoencoder_command(tsub: Any) -> None:
    p = tsub.add_parser("autoencoder", help="stage 1: train a KL or VQ autoencoder (L1 + LPIPS + KL/VQ + patch-GAN)")
    p.add_argument("--config", required=True, help="training YAML, e.g. configs/autoencoder/kl-f4-shapes.yaml")
    p.add_argument("--resume", default=None, help="Lightning checkpoint to continue from (OUT_DIR/checkpoints/last.ckpt)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="train on this image folder or folder of webdataset .tar shards (sets data.source and "
                        "data.root)")
    p.add_argument("--strict-data", action="store_true",
                   help="an image that cannot be decoded is an error (default: skipped with one warning)")
    p.add_argument("--out-dir", default=None, help="override run.out_dir")
    p.add_argument("--max-steps", type=int, default=None, help="override run.max_steps")
    p.add_argument("--export", default=None, help="also write the trained autoencoder to this .safetensors path")
    p.add_argument("--export-dtype", choices=sorted(DTYPES), default="fp32", help="storage dtype of --export")
    p.add_argument("--force", action="store_true", help="replace an existing run folder / export file")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-step lines")
    p.set_defaults(func=_cmd_train_autoencoder)


from ..eval.task_cli import add_train_judge_command  # noqa: E402 - the evaluation judge (not a generator)

from .ldm_cli import add_train_ldm_command  # noqa: E402 - stage 2 (latent diffusion)



def add_train_planner_command(tsub: Any) -> None:
    p = tsub.add_parser("planner", help="train the caption -> layout planner of grounded text-to-image "
                        "(models/layout_planner.py) on ShapesWorld ground truth")
    p.add_argument("--out", required=True, help="weights .safetensors to write")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 3000)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train_planner)


def _cmd_train_planner(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from ..errors import ConfigError
    from .planner import PlannerTrainConfig, train_planner

    if Path(args.out).exists() and not args.force:
        raise ConfigError(f"{args.out} already exists; pass --force to replace it")
    cfg = PlannerTrainConfig()
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    model, summary = train_planner(cfg, log=None if args.quiet else print)
    model.save(args.out, overwrite=True)
    print(f"wrote {args.out} ({summary['params']:,} parameters, {summary['steps']} steps, loss "
          f"{summary['loss']:.4f}, {summary['train_seconds']} s)")
    return 0


_STAGE_ADDERS = [add_train_autoencoder_command, add_train_ldm_command, add_train_judge_command,
                 add_train_planner_command]


def add_train_commands(sub: Any) -> None:
    train = sub.add_parser("train", help="train a model: `ldm train autoencoder ...` (stage 1)")
    tsub = train.add_subparsers(dest="train_command", required=True)
    for adder in _STAGE_ADDERS:
        adder(tsub)


def _cmd_train_autoencoder(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from .autoencoder_config import AutoencoderTrainConfig
    from .autoencoder_run import train_autoencoder

    from ..errors import ConfigError
    from .ldm_cli import data_source_of

    cfg = AutoencoderTrainConfig.from_yaml(args.config)
    changes: dict = {}
    if args.data is not None:
        changes |= {"source": data_source_of(args.data), "root": args.data}
    if args.strict_data:
        changes["strict"] = True
    if changes:
        try:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes))
        except ValueError as e:
            raise ConfigError(f"--data {args.data}: {e}") from e
    run = cfg.run
    if args.out_dir is not None:
        run = dataclasses.replace(run, out_dir=args.out_dir)
    if args.max_steps is not None:
        run = dataclasses.replace(run, max_steps=args.max_steps)
    cfg = dataclasses.replace(cfg, run=run)
    summary = train_autoencoder(cfg, resume=args.resume, force=args.force, export=args.export,
                                export_dtype=getattr(torch, DTYPES[args.export_dtype]),
                                progress=not args.quiet and sys.stdout.isatty(), echo=not args.quiet)
    if not args.quiet:
        print(f"done: {summary['steps']} steps in {summary['train_seconds']} s, held-out PSNR "
              f"{summary['val_psnr']:.2f} dB -> {summary['autoencoder']}")
    return 0
