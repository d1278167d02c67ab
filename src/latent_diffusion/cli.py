"""``ldm`` command line: thin — parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys

from .commands import run
from .eval.cli_commands import add_eval_commands
from .bench.cli_commands import add_bench_commands
from .data.cli_commands import add_data_commands
from .pipelines.cli_commands import add_generate_commands
from .train.cli_commands import add_train_commands
from .train.encode import add_data_encode_command


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .checkpoint import inspect_checkpoint

    info = inspect_checkpoint(args.path, args.config)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}")
    rows = [("family", info["family"]), ("parameterization", info["parameterization"]),
            ("scale factor", info["scale_factor"])]
    rows += [(f"{part} params", f"{n:,}") for part, n in info["parameters"].items() if n]
    rows += [("dtypes", ", ".join(info["dtypes"])), ("EMA weights", "yes" if info["ema"] else "no"),
             ("tensors", info["tensors"]), ("config", info["config_source"])]
    if info["class_names"]:
        names = info["class_names"]
        rows.append(("classes", f"{len(names)}: " + ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")))
    for label, value in rows:
        print(f"  {label + ':':20}{value}")
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
    p = argparse.ArgumentParser(prog="ldm", description="Latent Diffusion Models in plain PyTorch")
    p.add_argument("--version", action="version", version=f"ldm (latent-diffusion) {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print a checkpoint's family, parameter counts, dtypes, EMA presence")
    ins.add_argument("path")
    ins.add_argument("--config", default=None, help="model YAML (ours or the original inference YAML)")
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
