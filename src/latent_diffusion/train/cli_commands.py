"""``ldm train <what>``: ONE ``train`` sub-command whose sub-commands are the training stages.

Each stage contributes an ``add_train_<stage>_command(tsub)`` function; ``add_train_commands`` calls them all.
Add a new stage (e.g. ``ldm train ldm``) by writing its adder and listing it in ``_STAGE_ADDERS``.
``ldm data encode`` (which runs a first stage over a dataset, ``train/encode.py``) is registered here too.
Registration imports only argparse-level modules; each command imports what it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..cli_parser import deprecated_alias
from ..extras import require_extras, requiring

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def add_train_autoencoder_command(tsub: Any) -> None:
    p = tsub.add_parser("autoencoder", help="stage 1: train a KL or VQ autoencoder (L1 + LPIPS + KL/VQ + patch-GAN)")
    p.add_argument("--config", required=True, help="training YAML, e.g. configs/autoencoder/kl-f4-shapes.yaml")
    p.add_argument("--resume", default=None, help="Lightning checkpoint to continue from (OUT/checkpoints/last.ckpt)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="train on this image folder or folder of webdataset .tar shards (sets data.source and "
                        "data.root)")
    p.add_argument("--strict-data", action="store_true",
                   help="an image that cannot be decoded is an error (default: skipped with one warning)")
    p.add_argument("--out", dest="out_dir", default=None, metavar="OUT", help="run folder (overrides run.out_dir)")
    deprecated_alias(p, "--out-dir", dest="out_dir", use="--out")
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
    p.add_argument("--max-steps", dest="steps", type=int, default=None, metavar="N",
                   help="optimiser steps (default 3000)")
    deprecated_alias(p, "--steps", dest="steps", use="--max-steps", type=int)
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
    for stage in ("autoencoder", "ldm"):  # Lightning runs; the judge and the planner train in plain torch
        requiring(tsub.choices[stage], f"ldm train {stage}", "train")


def add_data_encode_command(dsub: Any) -> None:
    p = dsub.add_parser("encode", help="pre-encode a dataset's latents (and frozen text encoders' caption contexts) "
                        "with a first stage; train on them with --data OUT")
    p.add_argument("out", help="folder to write (new or empty; --force replaces an earlier encoding)")
    p.add_argument("--first-stage", required=True, help="autoencoder .safetensors (ours, CompVis or a full LDM file)")
    p.add_argument("--data", required=True, help="image folder or folder of .tar shards")
    p.add_argument("--size", type=int, required=True, help="the square crop (the model's image size)")
    p.add_argument("--resize", type=int, default=None, help="shorter side first resized to this (default: --size)")
    p.add_argument("--small", choices=("error", "upscale", "skip"), default="error",
                   help="images smaller than the crop (default: an error naming them)")
    p.add_argument("--captions", choices=("auto", "metadata", "sidecar", "none"), default="auto")
    p.add_argument("--labels", choices=("none", "auto", "folders", "column"), default="none",
                   help="store class labels (from sub-folders or a 'label' column); default none")
    p.add_argument("--text-config", default=None, metavar="RECIPE",
                   help="a training recipe whose frozen text encoder (minilm / clip / open_clip) encodes the captions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--strict-data", action="store_true", help="an undecodable image is an error, not skipped")
    p.add_argument("--force", action="store_true", help="replace an earlier encoding in OUT")
    p.set_defaults(func=_cmd_encode)


def _cmd_encode(args: argparse.Namespace) -> int:
    if args.text_config is not None:  # the frozen text encoder is built by the training model
        require_extras("ldm data encode --text-config", "train", ["lightning"])
    from .encode import encode_dataset

    meta = encode_dataset(args.first_stage, args.data, args.out, size=args.size, resize=args.resize, small=args.small,
                          captions=args.captions, labels=args.labels, text_recipe=args.text_config,
                          batch_size=args.batch_size, strict=args.strict_data, overwrite=args.force)
    n = sum(f["count"] for f in meta["files"])
    print(f"wrote {n} latents {tuple(meta['latent_shape'])} to {args.out} (first stage sha256 "
          f"{meta['first_stage_sha256'][:12]}...)" + (", with caption contexts" if meta["text_encoder"] else ""))
    return 0


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
