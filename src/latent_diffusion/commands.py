"""Running a parsed ``ldm`` subcommand: the one place an ``LDMError`` becomes a one-line message (``ldm: error:
...``) and exit status 2. Used by ``cli.py`` and by the stand-alone entry points (``python -m
latent_diffusion.train.ldm_cli``), so neither imports the other."""

from __future__ import annotations

import argparse
import sys

from .errors import LDMError


def run(args: argparse.Namespace) -> int:
    """``args.func(args)``; an ``LDMError`` becomes one ``ldm: error: ...`` line on stderr and exit status 2."""
    try:
        return args.func(args)
    except LDMError as e:
        print(f"ldm: error: {e}", file=sys.stderr)
        return 2
