"""The optional parts of the install (pyproject.toml's extras) and the one-line error of a command whose extra is
missing: ``ldm: error: ldm train ldm needs the training extras (lightning not installed): pip install
'latent-diffusion[train]'``. The check runs before the command imports anything heavy, and imports nothing itself
(``importlib.util.find_spec``)."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Iterable

from .errors import LDMError

# extra -> (its name in messages, the import names of the packages it adds that commands check for)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": ("training", ("lightning", "matplotlib")),
    "eval": ("evaluation", ("torchmetrics", "scipy")),
    "data": ("data", ("webdataset", "mlxtend", "sklearn", "skimage")),
    "bench": ("benchmark", ("diffusers", "matplotlib")),
}


def require_extras(command: str, extras: str, modules: Iterable[str] | None = None) -> None:
    """An ``LDMError`` naming the pip command if ``modules`` (default: every package of ``extras``) are not all
    installed. ``extras``: as pip spells them, e.g. ``"train"`` or ``"eval,data"``."""
    names = extras.split(",")
    wanted = list(modules) if modules is not None else [m for e in names for m in EXTRAS[e][1]]
    missing = [m for m in dict.fromkeys(wanted) if importlib.util.find_spec(m) is None]
    if missing:
        what = " and ".join(EXTRAS[e][0] for e in names)
        raise LDMError(f"{command} needs the {what} extras ({', '.join(missing)} not installed): "
                       f"pip install 'latent-diffusion[{extras}]'")


def requiring(parser: argparse.ArgumentParser, command: str, extras: str,
              modules: Iterable[str] | None = None) -> None:
    """Make the command of ``parser`` (its ``func`` default) run ``require_extras`` first."""
    run = parser.get_default("func")
    modules = None if modules is None else tuple(modules)

    def checked(args: argparse.Namespace) -> int:
        require_extras(command, extras, modules)
        return run(args)

    parser.set_defaults(func=checked)
