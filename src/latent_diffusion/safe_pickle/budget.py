"""The per-load budget: what constructors may allocate and how much key hashing a pickle may cause, and the bounded
stand-ins for the allow-listed builtins that allocate in proportion to an argument."""

from __future__ import annotations

import operator
import pathlib
import sys
from typing import Any

import numpy
import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from .allowlist import _ALLOWED, _SAFER

MAX_MADE_BYTES = 64 << 20  # what constructors may make in one load, beyond the file's own size (bytes; elements x16)
MAX_RANGE_LEN = 1 << 20  # a pickled range longer than this is refused: allowed callables would expand it
MAX_KEY_ITEMS = 10_000  # nested tuple items in one dict key or set element (tuples hash all of them, every time)
MAX_KEY_ITEMS_TOTAL = 1 << 20  # ... in all such keys of one load together
_ELEMENT_BYTES = 16  # what one element of a container made by a constructor counts against MAX_MADE_BYTES
MAX_PATH_CHARS = 1 << 16  # a path a pickle makes longer than this is refused (real ones: PATH_MAX is 4096)
MAX_DIMS = 64  # a shape (or nesting of data) with more dimensions than this, given to a sized constructor, is refused
_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "ascii", "utf-8", "utf8"})  # any other imports encodings.*


def _length(value: Any) -> int:
    """Elements in ``value``; 0 for what has no length (a constructor given it fails, or makes little)."""
    try:
        return len(value)
    except OverflowError:  # range(10**30)
        return sys.maxsize
    except TypeError:
        return 0


def _bytes_made(args: tuple, kwargs: dict) -> int:
    """Bytes that ``bytes(...)``, ``bytearray(...)`` or ``_codecs.encode(...)`` would make from these arguments."""
    source = args[0] if args else kwargs.get("source", kwargs.get("obj", b""))
    if isinstance(source, int):
        return max(source, 0)  # bytearray(10**11): a zero-filled buffer of that size
    if isinstance(source, pathlib.PurePath):
        return len(str(source))  # bytes(path) encodes its text
    try:
        with memoryview(source) as view:
            return view.nbytes
    except TypeError:  # str (one byte per character for latin-1, what pickle uses), a list of ints, a range
        return _length(source)


def _elements_made(args: tuple, kwargs: dict) -> int:
    """What a container constructor (set, list, dict, deque, Counter, ...) would make, at _ELEMENT_BYTES an element."""
    return _ELEMENT_BYTES * (sum(_length(arg) for arg in args) + len(kwargs))


class _Budget:
    """Bytes that bounded constructors may still make in one load: MAX_MADE_BYTES plus the file's size. A real
    checkpoint copies each of its values at most once; a bomb repeats small calls that each allocate a lot."""

    def __init__(self, path: str, file_size: int) -> None:
        self.path, self.limit = path, MAX_MADE_BYTES + file_size
        self.left, self.key_items_left = self.limit, MAX_KEY_ITEMS_TOTAL
        self.storage_keys: set[Any] = set()  # persistent-id storages already charged

    def charge(self, what: str, nbytes: int) -> None:
        """Take ``nbytes`` off what is left, or refuse: ``what`` says what the pickle does, e.g. "calls `bytes`"."""
        if nbytes > self.left:
            raise CheckpointError(f"refused to load {self.path}: its pickle {what} to make about {nbytes} bytes, past "
                                  f"the limit of {self.limit} bytes that constructors may make while loading it "
                                  f"(64 MiB plus the file's size); nothing was allocated (a corrupt or hostile file). "
                                  f"{_SAFER}")
        self.left -= nbytes

    def bad_size(self, what: str, detail: str) -> CheckpointError:
        """The error for a size no constructor may take (``detail``: a negative size, too many dimensions)."""
        return CheckpointError(f"refused to load {self.path}: its pickle {what} with {detail}; nothing was allocated "
                               f"(a corrupt or hostile file). {_SAFER}")

    def charge_storage(self, pid: Any) -> None:
        """Charge the storage torch makes for a persistent id ``('storage', type, key, location, numel, ...)`` (zip
        and legacy layouts) before torch allocates it: numel x element size, once per key (views and tied weights
        name a key again). A real file's storages fit in the file itself."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
            return
        storage_type, key, numel = pid[1], pid[2], pid[4]
        try:
            if key in self.storage_keys:
                return
            self.storage_keys.add(key)
        except TypeError:  # unhashable: torch's own lookup fails
            pass
        try:
            count = _index(numel) or 0  # not a size: torch fails on it
        except _BadSize as exc:
            raise self.bad_size(f"asks torch for storage {_short(key)}", str(exc)) from None
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
        nbytes = count * _itemsize(dtype, 1)
        if nbytes > self.left:  # the message only when needed: a file has thousands of storages
            self.charge(f"asks torch for storage {_short(key)} ({count} elements of {dtype})", nbytes)
        self.left -= nbytes

    def check_keys(self, keys: Any) -> None:
        """Refuse keys (dict keys, set elements) whose hash would take ages: a tuple hashes all its nested items and
        caches nothing, so 40 levels of ``x = (x, x)`` (a few hundred bytes pickled) hash 2**40 items."""
        for key in keys:
            if isinstance(key, tuple):
                items = _tuple_items(key, min(MAX_KEY_ITEMS, self.key_items_left))
                if items is None:
                    raise CheckpointError(f"refused to load {self.path}: its pickle uses a key made of more than "
                                          f"{MAX_KEY_ITEMS} nested tuple items (or more than {MAX_KEY_ITEMS_TOTAL} "
                                          f"in all; the limits), which would take ages to hash; nothing was hashed "
                                          f"(a corrupt or hostile file). {_SAFER}")
                self.key_items_left -= items


def _tuple_items(key: tuple, limit: int) -> int | None:
    """Items in ``key`` and its nested tuples, counted as hashing visits them (shared ones each time); None past
    ``limit``."""
    count, todo = 0, [key]
    while todo:
        item = todo.pop()
        count += len(item)
        if count > limit:
            return None
        todo.extend(i for i in item if isinstance(i, tuple))
    return count


def _keys_of(name: str, args: tuple) -> Any:
    """What a set or dict constructor will hash: the elements of an iterable argument (for a dict, the first item of
    each pair). A mapping's keys were checked when it was built; an argument that is not iterable fails the call."""
    pairs = name.rsplit(".", 1)[-1] in ("dict", "OrderedDict", "defaultdict")
    for arg in args:
        if isinstance(arg, dict) or not hasattr(arg, "__iter__"):
            continue
        for element in arg:
            if not pairs:
                yield element
            elif isinstance(element, (tuple, list)) and element:
                yield element[0]


_BYTES_MAKERS = ("builtins.bytes", "builtins.bytearray", "_codecs.encode")
_HASHING_MAKERS = frozenset(f"builtins.{n}" for n in ("set", "frozenset", "dict")) | frozenset(
    f"collections.{n}" for n in ("Counter", "OrderedDict", "defaultdict"))
_CONTAINER_MAKERS = tuple(f"builtins.{n}" for n in ("set", "frozenset", "list", "tuple", "dict")) + tuple(
    f"collections.{n}" for n in ("deque", "Counter", "OrderedDict", "defaultdict"))


def _bounded_constructors(budget: _Budget) -> dict[str, Any]:
    """Stand-ins for the allow-listed functions (and classes never used as types) that can allocate without bound:
    each charges ``budget`` first (ranges, which other calls would expand, are refused past MAX_RANGE_LEN; codecs
    are checked)."""
    def bounded(name: str, make: Any, cost: Any) -> Any:
        hashes, encodes = name in _HASHING_MAKERS, name in _BYTES_MAKERS

        def call(*args: Any, **kwargs: Any) -> Any:
            if encodes:
                _check_codec(budget, name, args, kwargs)
            budget.charge(f"calls `{name}`", cost(args, kwargs))
            if hashes:
                budget.check_keys(_keys_of(name, args))
            return make(*args, **kwargs)
        return call

    def bounded_range(*args: Any) -> range:
        made = range(*args)
        if _length(made) > MAX_RANGE_LEN:
            raise CheckpointError(f"refused to load {budget.path}: its pickle makes a range of more than "
                                  f"{MAX_RANGE_LEN} elements (the limit; other calls would expand it), "
                                  f"{made!r}; nothing was allocated (a corrupt or hostile file). {_SAFER}")
        return made

    return {"builtins.range": bounded_range,
            **{name: bounded(name, _ALLOWED[name], _bytes_made) for name in _BYTES_MAKERS if name in _ALLOWED},
            **{name: bounded(name, _ALLOWED[name], _elements_made) for name in _CONTAINER_MAKERS}}


class _BadSize(ValueError):
    """A size no constructor may take: negative, or a shape of more than MAX_DIMS dimensions."""


def _short(value: Any) -> str:
    """A short description of a value named in an error (never a whole repr: that can be huge)."""
    if isinstance(value, (str, bytes)):
        return repr(value[:60])
    return str(value) if type(value) is int and abs(value) < 1 << 64 else f"a {type(value).__name__}"


def _index(value: Any) -> int | None:
    """``value`` as a size (an int, or anything with ``__index__``, as torch and numpy take them); None if it is not
    one. A negative size raises _BadSize."""
    try:
        size = operator.index(value)
    except Exception:  # TypeError; a tensor of several elements raises RuntimeError
        return None
    if size < 0:
        raise _BadSize(f"a negative size ({size})")
    return size


def _itemsize(dtype: Any, default: int = 16) -> int:
    """Bytes per element of a torch or numpy dtype; ``default`` for anything else (the call then fails)."""
    if type(dtype) is torch.dtype:  # fast: once per tensor
        return dtype.itemsize or 1
    return dtype.itemsize or 1 if isinstance(dtype, numpy.dtype) else default


def _check_codec(budget: _Budget, name: str, args: tuple, kwargs: dict) -> None:
    """Refuse a codec other than latin-1, ASCII or UTF-8 (what pickles use) in ``_codecs.encode(obj, encoding)``,
    ``bytes(text, encoding)`` or ``str(data, encoding)``: any other name imports an ``encodings`` module."""
    encoding = args[1] if len(args) > 1 else kwargs.get("encoding")
    if encoding is None or (isinstance(encoding, str) and encoding.lower().replace("_", "-") in _CODECS):
        return
    raise UnsafeCheckpointError(f"refused to load {budget.path}: its pickle calls `{name}` with the codec "
                                f"{_short(encoding)}; only {', '.join(sorted(_CODECS))} are allowed (others import "
                                f"an `encodings` module); nothing was run. {_SAFER}")
