"""``Parser``: the ``ldm`` argument parser — defaults in --help, "did you mean" on a typo, deprecated spellings.

``Parser`` is an ``argparse.ArgumentParser`` whose sub-commands (``add_subparsers`` makes them of the parent's class)
all get:

- --help that shows each option's default — not a None / False / empty one, nor where the help text already says
  "default" — with descriptions and epilogs kept as written;
- ``ldm txt2img: error: unrecognized arguments: --stpes 10 (did you mean --steps?)``, from the sub-command that was
  chosen (argparse itself raises this error from the top parser, naming only ``ldm``);
- ``invalid choice: 'superess'; did you mean 'superres'? (choose from ...)`` for options with choices and for
  sub-command names.

``deprecated_alias(parser, "--out-dir", dest="out_dir", use="--out")`` keeps an old spelling working, hidden from
--help, printing one ``ldm: warning: --out-dir is deprecated; use --out`` line when it is used.

This module imports nothing of the package: any layer's command registration may use it.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import sys
from typing import Any, Iterable, Sequence

_SAYS_DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)
_CHOSEN = "_ldm_chosen_parser"  # namespace attribute: the innermost (sub-)parser that parsed the arguments


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The ``candidates`` close to ``word`` (difflib ratio >= 0.6), best first."""
    return difflib.get_close_matches(word, list(dict.fromkeys(candidates)), n=n, cutoff=0.6)


def did_you_mean(word: str, candidates: Iterable[str], quote: bool = True) -> str:
    """``"did you mean 'x'?"`` (or ``'x' or 'y'``) for the candidates close to ``word``; ``""`` when none is."""
    close = [repr(c) if quote else c for c in close_matches(word, candidates)]
    return f"did you mean {' or '.join(close)}?" if close else ""


def _shows_default(action: argparse.Action) -> bool:
    """Whether --help should print ``action``'s default: a value the user would not assume anyway."""
    default = action.default
    if default is None or default is False or default is argparse.SUPPRESS or default == "" or default == []:
        return False
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; ``(default: X)`` after each option's help (see ``_shows_default``),
    also for options without a help text; a list default as it would be typed (``1.0 3.0``)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not _shows_default(action) or _SAYS_DEFAULT.search(text):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"

    def _expand_help(self, action: argparse.Action) -> str:
        if isinstance(action.default, (list, tuple)):
            action = copy.copy(action)
            action.default = " ".join(map(str, action.default))
        return super()._expand_help(action)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``HelpFormatter`` and "did you mean" errors (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if not hasattr(namespace, _CHOSEN):  # the innermost sub-parser returns first; its parents keep its mark
            setattr(namespace, _CHOSEN, self)
        return namespace, extras

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        chosen = vars(namespace).pop(_CHOSEN, self)
        if extras:
            hint = chosen.suggest_options(extras)
            chosen.error(f"unrecognized arguments: {' '.join(extras)}" + (f" ({hint})" if hint else ""))
        return namespace

    def suggest_options(self, words: Sequence[str]) -> str:
        """``did you mean --steps?`` for the option-like ``words`` close to one of this parser's visible options;
        with several, each names the word it is for; ``""`` when none is close."""
        visible = [s for a in self._actions if a.help is not argparse.SUPPRESS for s in a.option_strings]
        flags = [w.split("=", 1)[0] for w in words if w.startswith("--") or (w.startswith("-") and
                                                                                not _is_number(w))]
        hits = [(w, close_matches(w, visible, n=1)) for w in flags]
        hits = [(w, m[0]) for w, m in hits if m]
        if not hits:
            return ""
        if len(hits) == 1:
            return f"did you mean {hits[0][1]}?"
        return "did you mean " + ", ".join(f"{m} for {w}" for w, m in hits) + "?"

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as e:
            hint = did_you_mean(value, map(str, action.choices or ())) if isinstance(value, str) else ""
            if not hint:
                raise
            msg = e.message.replace(f"invalid choice: {value!r}", f"invalid choice: {value!r}; {hint}", 1)
            raise argparse.ArgumentError(action, msg if msg != e.message else f"{e.message}; {hint}") from None


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


class _DeprecatedAlias(argparse.Action):
    """An old spelling: sets ``dest`` (to its value, or to ``const`` for a flag) after one warning line."""

    def __init__(self, option_strings: Sequence[str], dest: str, use: str, const: Any = None, flag: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0 if flag else kwargs.pop("nargs", None), const=const,
                         **kwargs)
        self.use, self.flag = use, flag

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        prog = parser.prog.split()[0] if parser.prog else "ldm"
        print(f"{prog}: warning: {option_string} is deprecated; use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.flag else values)


def deprecated_alias(parser: argparse.ArgumentParser, *option_strings: str, dest: str, use: str,
                     const: Any = None, flag: bool = False, **kwargs: Any) -> argparse.Action:
    """Accept ``option_strings`` (an old spelling) for ``dest``, hidden from --help; using it prints
    ``ldm: warning: OLD is deprecated; use USE``. ``flag``: it takes no value and stores ``const`` (``--no-bf16`` ->
    ``const="fp32"``); otherwise it takes a value like the new option (pass its ``type`` / ``nargs`` / ``choices``).
    Its default is ``SUPPRESS``, so the new option's default stands."""
    return parser.add_argument(*option_strings, dest=dest, action=_DeprecatedAlias, use=use, const=const, flag=flag,
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


__all__ = ["Parser", "HelpFormatter", "deprecated_alias", "did_you_mean", "close_matches"]
