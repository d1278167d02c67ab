"""``ldm`` command line: thin — parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys

from .cli_parser import Parser
from .commands import run
from .errors import LDMError
from .eval.cli_commands import add_eval_commands
from .bench.cli_commands import add_bench_commands
from .data.cli_commands import add_data_commands
from .pipelines.cli_commands import add_generate_commands
from .train.cli_commands import add_data_encode_command, add_train_commands


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_file import format_report, inspect_file

    if (args.path is None) == (args.ckpt is None):
        raise LDMError("inspect takes one file: PATH or --ckpt PATH")
    info = inspect_file(args.path or args.ckpt, args.config)
    print(json.dumps(info, indent=2) if args.json else format_report(info))
    return 0


def _cmd_make_tiny(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .tiny import tiny_model

    path = save_checkpoint(tiny_model(args.family, seed=args.seed), args.out, overwrite=args.force)
    print(f"wrote {path}")
    return 0


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ldm", description="Latent Diffusion Models in plain PyTorch")
    p.add_argument("--version", action="version", version=f"ldm (latent-diffusion) {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="describe a file the project writes or reads: LDM / autoencoder / planner / "
                         "judge checkpoints, training checkpoints, PNGs")
    ins.add_argument("path", nargs="?", default=None, help="a file (or a folder of pre-encoded latents or shards)")
    ins.add_argument("--ckpt", default=None, metavar="PATH", help="the same as PATH (the generating commands' name)")
    ins.add_argument("--config", default=None, help="model YAML of an LDM checkpoint (ours or the original inference "
                     "YAML)")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.set_defaults(func=_cmd_inspect)
    mk = sub.add_parser("make-tiny", help="write a tiny random checkpoint of a family (for tests and smoke runs)")
    mk.add_argument("family", choices=["sd1", "sd2", "sd1-inpaint", "sd-x4-upscaler", "class", "uncond-vq"])
    mk.add_argument("--out", required=True)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--force", action="store_true", help="overwrite an existing file")
    mk.set_defaults(func=_cmd_make_tiny)
    add_generate_commands(sub)
    add_bench_commands(sub)
    add_data_encode_command(add_data_commands(sub))
    add_train_commands(sub)
    add_eval_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
