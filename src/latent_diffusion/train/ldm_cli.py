"""``ldm train ldm --config ... [--resume PATH]``: stage-2 training from the command line.

``add_train_ldm_command(tsub)`` adds the ``ldm`` stage to ``ldm train``'s sub-commands; ``python -m
latent_diffusion.train.ldm_cli`` runs the same command stand-alone (Lightning's DDP launcher re-runs this
command line once per extra process).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..cli_parser import Parser, deprecated_alias

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training YAML, e.g. configs/ldm/txt2img-shapes.yaml")
    p.add_argument("--resume", default=None, help="Lightning checkpoint to continue from (OUT/checkpoints/last.ckpt)")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="train on this image folder or folder of webdataset .tar shards (sets data.source and "
                        "data.root; see docs/training.md for captions, class folders and the other tasks' files)")
    p.add_argument("--strict-data", action="store_true",
                   help="an image that cannot be decoded is an error (default: skipped with one warning)")
    p.add_argument("--allow-missing-captions", action="store_true",
                   help="train images that have no caption with the empty caption (default: an error naming them)")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="fine-tune this model (sets init_from): a Stable Diffusion 1.x / 2.x or CompVis LDM checkpoint, "
                        "or one exported by this command; a recipe without model: takes the model from it")
    p.add_argument("--first-stage", default=None, metavar="AE",
                   help="override first_stage_path: the frozen autoencoder (e.g. one `ldm train autoencoder` exported)")
    p.add_argument("--out", dest="out_dir", default=None, metavar="OUT", help="run folder (overrides run.out_dir)")
    deprecated_alias(p, "--out-dir", dest="out_dir", use="--out")
    p.add_argument("--max-steps", type=int, default=None, help="override run.max_steps")
    p.add_argument("--devices", type=int, default=None, help="override run.devices (processes; CPU uses gloo DDP)")
    p.add_argument("--seed", type=int, default=None, help="override run.seed (weights, noise and batch order; the "
                   "scenes are data.seed's)")
    p.add_argument("--export", default=None, help="also write the trained model (EMA weights) to this .safetensors")
    p.add_argument("--export-dtype", choices=sorted(DTYPES), default="fp32",
                   help="storage dtype of --export (fp16 halves the file; loading casts back to fp32)")
    p.add_argument("--export-vocab", choices=("full", "data"), default="full",
                   help="data: a frozen MiniLM in --export keeps only the word pieces of the training captions (the "
                        "file then needs neither the optional package nor its 30 522-row table; other words read as "
                        "[UNK])")
    p.add_argument("--force", action="store_true", help="replace an existing run folder / export file")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no per-step lines")
    p.set_defaults(func=_cmd_train_ldm)


def add_train_ldm_command(tsub: Any) -> None:
    p = tsub.add_parser("ldm", help="stage 2: train a latent diffusion model (txt2img, class, layout, semantic, "
                        "superres, inpaint, unconditional) on a frozen first stage")
    _add_arguments(p)


def _cmd_train_ldm(args: argparse.Namespace) -> int:
    import torch

    from .ldm_config import LDMTrainConfig
    from .ldm_run import train_ldm

    cfg = LDMTrainConfig.from_yaml(args.config, data=data_flags(args.data, strict=args.strict_data,
                                                               allow_missing_captions=args.allow_missing_captions),
                                   init_from=args.init_from)
    if args.first_stage is not None:
        import dataclasses

        cfg = dataclasses.replace(cfg, first_stage_path=args.first_stage)
    overrides = (("out_dir", args.out_dir), ("max_steps", args.max_steps), ("devices", args.devices),
                 ("seed", args.seed))
    changes = {k: v for k, v in overrides if v is not None}
    if changes:
        cfg = cfg.replace_run(**changes)
    summary = train_ldm(cfg, resume=args.resume, force=args.force, export=args.export,
                        export_dtype=getattr(torch, DTYPES[args.export_dtype]), export_vocab=args.export_vocab,
                        progress=not args.quiet and sys.stderr.isatty(), echo=not args.quiet)
    if not args.quiet and summary.get("world_size", 1) >= 1:
        print(f"done: {summary['steps']} steps in {summary['train_seconds']} s -> {cfg.run.out_dir}/model.safetensors"
              + (f" and {args.export}" if args.export else ""))
    return 0


def data_source_of(path: str) -> str:
    """``latents`` for a folder ``ldm data encode`` wrote; ``shards`` for a .tar file, a folder ``ldm data shard``
    wrote, or a folder of .tar files without images; else ``folder``. A folder holding both images and .tar files
    (and no index saying which it is) is an error naming both."""
    import json
    from pathlib import Path

    from ..data.decode import is_image_file
    from ..data.latents import is_latent_folder
    from ..errors import ConfigError

    p = Path(path)
    if is_latent_folder(p):
        return "latents"
    if p.is_file() and p.suffix == ".tar":
        return "shards"
    if not p.is_dir() or not any(p.glob("*.tar")):
        return "folder"
    try:
        if json.loads((p / "index.json").read_text()).get("kind") == "shards":
            return "shards"
    except (OSError, ValueError, AttributeError):
        pass
    image = next((x for x in p.rglob("*") if is_image_file(x)), None)
    if image is None:
        return "shards"
    tar = next(p.glob("*.tar"))
    raise ConfigError(f"--data {p} holds both images (e.g. {image.relative_to(p)}) and .tar files (e.g. {tar.name}); "
                      "give a folder of images or a folder of shards")


def data_flags(data: str | None, *, strict: bool = False, allow_missing_captions: bool = False) -> dict[str, Any]:
    """The ``data:`` keys that ``--data`` / ``--strict-data`` / ``--allow-missing-captions`` set."""
    changes: dict[str, Any] = {}
    if data is not None:
        changes |= {"source": data_source_of(data), "root": data}
    if strict:
        changes["strict"] = True
    if allow_missing_captions:
        changes["missing_caption"] = "empty"
    return changes


def main(argv: list[str] | None = None) -> int:
    from ..commands import run

    p = Parser(prog="ldm train ldm", description="stage 2: train a latent diffusion model")
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
