"""What the opcodes that change an object (BUILD, SETITEM(S), APPEND(S), ADDITEMS) may change: only objects the
load made itself, never a class, function, module or shared singleton."""

from __future__ import annotations

import argparse
import collections
import types
from typing import Any

import numpy
import torch

from ..errors import UnsafeCheckpointError
from .allowlist import _SAFER
from .allowlist import InertObject

_MUTABLE = {  # what each pickle opcode that changes an object may change: kinds of object that a load makes fresh
    "BUILD": (InertObject, torch.Tensor, numpy.ndarray, numpy.dtype, collections.OrderedDict, collections.defaultdict,
              collections.Counter, argparse.Namespace),
    "SETITEM": (dict, InertObject),
    "APPEND": (list, collections.deque, InertObject),
    "ADDITEMS": (set,),
}


def _may_change(target: Any, op: str) -> bool:
    """Whether opcode ``op`` may change ``target``: never a class, function or module (not in ``_MUTABLE``), nor one
    of numpy's shared builtin dtypes (Lightning's numpy scalars BUILD a fresh copy, ``numpy.dtype('f8', False, True)``).
    """
    if isinstance(target, type) or not isinstance(target, _MUTABLE[op]):
        return False
    return not isinstance(target, numpy.dtype) or (target.isbuiltin == 0 and target is not numpy.dtype(target.char))


def _describe(obj: Any) -> str:
    """A short name for an object a pickle tried to change (never its repr: that can be huge)."""
    if isinstance(obj, numpy.dtype):
        return f"numpy.dtype({obj.str!r})"  # numpy's shared one
    named = (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)
    kind = obj if isinstance(obj, named) else type(obj)
    name = f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', getattr(kind, '__name__', '?'))}"
    return name if kind is obj else f"a {name} object"


def _check_change(path: str, found: dict[int, tuple[str, Any]], target: Any, op: str) -> None:
    """Refuse opcode ``op`` changing ``target``: an object ``find_class`` returned, or one ``_may_change`` refuses."""
    if id(target) in found or not _may_change(target, op):
        name = found[id(target)][0] if id(target) in found else _describe(target)
        raise UnsafeCheckpointError(f"refused to load {path}: its pickle tried to modify `{name}` ({op}); a loader "
                                    f"changes only objects it made itself, and nothing was changed. {_SAFER}")
