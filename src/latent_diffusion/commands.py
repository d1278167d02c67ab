"""Running a parsed ``ldm`` subcommand: the one place an ``LDMError`` becomes a one-line message (``ldm: error:
...``) and exit status 2, and a Python warning one ``ldm: warning: ...`` line (no file path, no source line). Used by ``cli.py`` and by the stand-alone entry points (``python -m
latent_diffusion.train.ldm_cli``), so neither imports the other."""

from __future__ import annotations

import argparse
import sys
import warnings

from .errors import Interrupted, LDMError


def run(args: argparse.Namespace) -> int:
    """``args.func(args)``; an ``LDMError`` becomes one ``ldm: error: ...`` line on stderr and exit status 2, Ctrl-C
    one ``ldm: interrupted...`` line (saying what was kept, where the command knows) and exit status 130."""
    try:
        with warnings.catch_warnings():  # restores the hook after the command
            warnings.showwarning = _one_line
            return args.func(args)
    except LDMError as e:
        print(f"ldm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"ldm: {e}" if isinstance(e, Interrupted) and str(e) else "ldm: interrupted", file=sys.stderr)
        return 130


def _one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
              line: str | None = None) -> None:
    print(f"ldm: warning: {message}", file=sys.stderr)
