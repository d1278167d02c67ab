"""Plain data out of a checkpoint's extra entries (``global_step``, hyper-parameters, ...), converted within budgets:
a few KB of pickle can describe 2**40 shared values, and a structure may contain itself."""

from __future__ import annotations

import json
from typing import Any

import numpy

__all__ = ["NotPlain", "PlainData", "MAX_EXTRA_NODES_TOTAL"]

MAX_EXTRA_NODES = 100_000  # values in one plain top-level entry of a checkpoint; a bigger one is skipped
MAX_EXTRA_NODES_TOTAL = 1_000_000  # ... and in all of them together
MAX_EXTRA_DEPTH = 100  # nesting of one plain entry; deeper (or self-containing) ones are skipped


class NotPlain(Exception):
    """A value that is not plain data, or is too big or too deep to convert (a self-referencing expansion bomb)."""


def _plain_key(key: Any) -> str:
    """A dict key as JSON writes it: str as is; None, bool, int, float as their JSON text (``1`` -> ``"1"``)."""
    if isinstance(key, str):
        return str(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise NotPlain


_PLAIN_TYPES = frozenset((bool, int, float, str))
_BUSY = object()  # marks a container being converted: meeting it again means it contains itself


class PlainData:
    """Converts checkpoint entries to JSON-like data (dict with str keys, list, str, int, float, bool, None; tuples
    become lists, numpy scalars and 0-d arrays their Python value) within budgets: MAX_EXTRA_NODES values per entry
    and ``total`` for all entries, counted as if shared values were copied, and MAX_EXTRA_DEPTH levels. A value the
    pickle shares is converted once and stays shared, so a structure that doubles at each level (2**40 values in a
    few KB) costs its few distinct containers in time and is refused by its counted size."""

    def __init__(self, total: int) -> None:
        self.total, self.left = total, 0
        self.done: dict[int, tuple[Any, int, int, Any]] = {}  # id -> (converted, values, height, the original)

    def entry(self, value: Any) -> Any:
        """One top-level entry converted; raises NotPlain if it is not plain data or over a budget."""
        self.left = start = min(MAX_EXTRA_NODES, self.total)
        try:
            return self._convert(value, 0)[0]
        finally:
            self.total -= start - max(self.left, 0)

    def _convert(self, value: Any, depth: int) -> tuple[Any, int]:
        """(converted value, its height)."""
        self.left -= 1
        if self.left < 0 or depth > MAX_EXTRA_DEPTH:
            raise NotPlain
        if value is None or type(value) in _PLAIN_TYPES:
            return value, 0
        if isinstance(value, (str, int, float)):  # subclasses (numpy.float64, numpy.str_): the plain value
            return (str if isinstance(value, str) else int if isinstance(value, int) else float)(value), 0
        if isinstance(value, numpy.generic) or (isinstance(value, numpy.ndarray) and value.ndim == 0):
            return self._convert(value.item(), depth + 1)  # an object array may hold itself
        if not isinstance(value, (dict, list, tuple)):
            raise NotPlain
        if id(value) in self.done:
            converted, size, height, _ = self.done[id(value)]
            self.left -= size - 1
            if converted is _BUSY or self.left < 0 or depth + height > MAX_EXTRA_DEPTH:
                raise NotPlain
            return converted, height
        return self._container(value, depth)

    def _container(self, value: dict | list | tuple, depth: int) -> tuple[Any, int]:
        self.done[id(value)] = (_BUSY, 0, 0, value)
        before, height = self.left + 1, 0
        try:
            if isinstance(value, dict):
                converted: Any = {}
                for key, item in value.items():
                    converted[_plain_key(key)], item_height = self._convert(item, depth + 1)
                    height = max(height, item_height)
            else:
                converted = []
                for item in value:
                    item, item_height = self._convert(item, depth + 1)
                    converted.append(item)
                    height = max(height, item_height)
        except NotPlain:
            del self.done[id(value)]
            raise
        self.done[id(value)] = (converted, before - self.left, height + 1, value)
        return converted, height + 1
