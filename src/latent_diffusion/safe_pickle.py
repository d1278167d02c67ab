"""The allow-list unpickler behind ``read_pickle``: what a pickle-based torch file may ask for, and what it may do.

Tensors, containers and numpy scalars load for real; other classes (Lightning callbacks, OmegaConf) become inert
``InertObject`` placeholders that never import their module; anything that can run code is refused before it runs.
A pickle may not change any object it did not make (a class, a function, a shared singleton); constructors may not
allocate without bound (``bytearray(10**11)``, ``set(range(10**10))``) nor keys take ages to hash (nested shared
tuples). ``pickle_module(path, size)`` is what ``torch.load(pickle_module=...)`` takes, one per load.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import copyreg
import pathlib
import pickle
import sys
import types
from typing import Any

import numpy
import torch
from torch._weights_only_unpickler import _get_allowed_globals  # private, but torch is pinned

from .errors import CheckpointError, UnsafeCheckpointError

__all__ = ["InertObject", "pickle_module", "SAFER"]

MAX_MADE_BYTES = 64 << 20  # what constructors may make in one load, beyond the file's own size (bytes; elements x16)
MAX_RANGE_LEN = 1 << 20  # a pickled range longer than this is refused: allowed callables would expand it
MAX_KEY_ITEMS = 10_000  # nested tuple items in one dict key or set element (tuples hash all of them, every time)
MAX_KEY_ITEMS_TOTAL = 1 << 20  # ... in all such keys of one load together
_ELEMENT_BYTES = 16  # what one element of a container made by a constructor counts against MAX_MADE_BYTES
SAFER = "Load checkpoints only from trusted sources; prefer a .safetensors copy (or convert on a trusted machine)."
_SAFER = SAFER

# torch.load(weights_only=True)'s allow-list (tensor rebuilders, storages, dtypes, Size, device...) plus plain data.
_PATHS = ("pathlib", "pathlib._local")  # paths load as *pure* paths: same data, no filesystem methods
_EXTRA_ALLOWED: dict[str, Any] = {
    **{f"builtins.{t.__name__}": t for t in (set, frozenset, slice, complex, bytearray, bytes, list, dict, tuple,
                                             int, float, str, bool, range, object)},
    **{f"collections.{n}": getattr(collections, n) for n in ("OrderedDict", "defaultdict", "Counter", "deque")},
    # Protocol 0-2 object reconstruction; each only calls a class that itself came through find_class.
    **{f"copyreg.{n}": getattr(copyreg, n) for n in ("_reconstructor", "__newobj__", "__newobj_ex__")},
    "argparse.Namespace": argparse.Namespace,
    **{f"{m}.{n}": pathlib.PurePosixPath for m in _PATHS for n in ("Path", "PosixPath", "PurePosixPath", "PurePath")},
    **{f"{m}.{n}": pathlib.PureWindowsPath for m in _PATHS for n in ("WindowsPath", "PureWindowsPath")},
    # numpy scalars and arrays (Lightning checkpoints hold them); numpy 2 renamed numpy.core to numpy._core.
    "numpy.dtype": numpy.dtype, "numpy.ndarray": numpy.ndarray,
    **{f"numpy.{core}.multiarray.{n}": getattr((getattr(numpy, "_core", None) or numpy.core).multiarray, n)
       for core in ("core", "_core") for n in ("scalar", "_reconstruct")},
}
_ALLOWED = {**_get_allowed_globals(), **_EXTRA_ALLOWED}
# Packages refused outright (apart from the allowed names above): they run code, spawn processes or touch files.
_DENIED_ROOTS = frozenset("""os posix nt posixpath ntpath subprocess sys importlib imp runpy shutil socket ssl select
    pickle _pickle marshal types ctypes _ctypes cffi code codeop pty tty webbrowser functools _functools operator
    _operator io _io codecs _codecs copyreg tempfile glob fileinput zipfile tarfile shelve dbm sqlite3 multiprocessing
    threading _thread asyncio signal gc inspect sysconfig site pkgutil zipimport timeit trace pdb bdb cProfile profile
    pydoc doctest platform logging urllib http ftplib smtplib telnetlib xmlrpc requests dill cloudpickle joblib torch
    numpy""".split())
_DENIED_BUILTINS = frozenset("""eval exec compile open __import__ getattr setattr delattr globals locals vars input
    breakpoint help exit quit __build_class__ __loader__""".split())  # other builtin *functions* are refused too
_TORCH_PLACEHOLDER_PREFIXES = ("torch.nn.modules.", "torch.optim.", "torch.torch_version.")  # whole-model pickles


class InertObject:
    """Stand-in for a class or function the allow-list does not load; its module is never imported. Creating,
    calling, building or filling one only records what the pickle passed (``args``, ``kwargs``, ``state``, ``items``,
    ``elements``); ``qualified_name`` is what the pickle named, e.g. ``"omegaconf.dictconfig.DictConfig"``."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:  # no __init__: object's ignores the arguments
        self = object.__new__(cls)
        self.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, elements=[])
        return self

    def __setstate__(self, state: Any) -> None:  # pickle BUILD
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # pickle SETITEM(S) on dict subclasses
        self.items[key] = value

    def append(self, value: Any) -> None:  # pickle APPEND(S) on list subclasses
        self.elements.append(value)

    def __call__(self, *args: Any, **kwargs: Any) -> InertObject:  # REDUCE with a placeholder *instance* as callable
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


def _resolve_global(path: str, module: str, name: str, allowed: dict[str, Any], placeholders: dict[str, type]) -> Any:
    """What ``find_class(module, name)`` returns: an allow-listed object, an inert placeholder, or a refusal."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))  # Python 2 pickles
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    qualified = f"{module}.{name}"
    if qualified in allowed:
        return allowed[qualified]
    if module == "builtins":  # builtin functions can run code or touch files; unknown builtin classes stay inert
        refuse = name in _DENIED_BUILTINS or isinstance(getattr(builtins, name, None), types.BuiltinFunctionType)
    else:
        refuse = module.split(".")[0] in _DENIED_ROOTS and not (module + ".").startswith(_TORCH_PLACEHOLDER_PREFIXES)
    if refuse:
        raise UnsafeCheckpointError(f"refused to load {path}: its pickle asks for `{qualified}`, which can run code; "
                                    f"nothing from the file was executed. {_SAFER}")
    if qualified not in placeholders:
        placeholders[qualified] = type(name.rsplit(".", 1)[-1], (InertObject,), {"qualified_name": qualified})
    return placeholders[qualified]


# --- bounded constructors: allow-listed callables that allocate in proportion to an argument -------------------------

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

    def charge(self, call: str, nbytes: int) -> None:
        if nbytes > self.left:
            raise CheckpointError(f"refused to load {self.path}: its pickle calls `{call}` to make about {nbytes} "
                                  f"bytes, past the limit of {self.limit} bytes that constructors may make while "
                                  f"loading it (64 MiB plus the file's size); nothing was allocated (a corrupt or "
                                  f"hostile file). {_SAFER}")
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
    """Stand-ins for the allow-listed callables that can allocate without bound: each charges ``budget`` first
    (ranges, which other calls would expand, are refused past MAX_RANGE_LEN)."""
    def bounded(name: str, make: Any, cost: Any) -> Any:
        hashes = name in _HASHING_MAKERS

        def call(*args: Any, **kwargs: Any) -> Any:
            budget.charge(name, cost(args, kwargs))
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


# --- the unpickler ----------------------------------------------------------------------------------------------------

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


class _AllowListUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler (the C one's opcodes cannot be overridden): globals come from the allow-list, and each
    opcode that changes an object (BUILD, SETITEM(S), APPEND(S), ADDITEMS) first checks its target: never an object
    ``find_class`` returned (tracked by identity), a class, a function or anything else ``_may_change`` refuses.
    ``_pickle_module`` makes one subclass per load with the class attributes below."""

    path: str
    budget: _Budget
    allowed: dict[str, Any]
    placeholders: dict[str, type]
    found: dict[int, tuple[str, Any]]  # id -> (the name the pickle used, object) for each find_class result, kept alive

    def find_class(self, module: str, name: str) -> Any:
        obj = _resolve_global(self.path, module, name, self.allowed, self.placeholders)
        self.found.setdefault(id(obj), (f"{module}.{name}", obj))
        return obj

    def _check(self, target: Any, op: str) -> None:
        if id(target) in self.found or not _may_change(target, op):
            name = self.found[id(target)][0] if id(target) in self.found else _describe(target)
            raise UnsafeCheckpointError(f"refused to load {self.path}: its pickle tried to modify `{name}` ({op}); "
                                        f"a loader changes only objects it made itself, and nothing was changed. "
                                        f"{_SAFER}")

    def _check_below_mark(self, op: str) -> None:  # SETITEMS, APPENDS, ADDITEMS change the object below their MARK
        if self.metastack and self.metastack[-1]:
            self._check(self.metastack[-1][-1], op)

    @property
    def persistent_load(self) -> Any:  # torch sets it on each unpickler; its ids are looked up in dicts
        def checked(pid: Any) -> Any:
            self.budget.check_keys([pid])
            return self._persistent_load(pid)
        return checked

    @persistent_load.setter
    def persistent_load(self, function: Any) -> None:
        self._persistent_load = function

    def _persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("unsupported persistent id encountered")

    def load_dict(self) -> None:
        self.budget.check_keys(self.stack[::2])
        super().load_dict()

    def load_frozenset(self) -> None:
        self.budget.check_keys(self.stack)
        super().load_frozenset()

    def load_build(self) -> None:
        if len(self.stack) >= 2:
            self._check(self.stack[-2], "BUILD")
        super().load_build()

    def load_setitem(self) -> None:
        if len(self.stack) >= 3:
            self._check(self.stack[-3], "SETITEM")
            self.budget.check_keys(self.stack[-2:-1])
        super().load_setitem()

    def load_setitems(self) -> None:
        self._check_below_mark("SETITEM")
        self.budget.check_keys(self.stack[::2])
        super().load_setitems()

    def load_append(self) -> None:
        if len(self.stack) >= 2:
            self._check(self.stack[-2], "APPEND")
        super().load_append()

    def load_appends(self) -> None:
        self._check_below_mark("APPEND")
        super().load_appends()

    def load_additems(self) -> None:
        self._check_below_mark("ADDITEMS")
        self.budget.check_keys(self.stack)
        super().load_additems()

    dispatch = {**pickle._Unpickler.dispatch,  # type: ignore[attr-defined]
                pickle.BUILD[0]: load_build, pickle.SETITEM[0]: load_setitem, pickle.SETITEMS[0]: load_setitems,
                pickle.APPEND[0]: load_append, pickle.APPENDS[0]: load_appends, pickle.ADDITEMS[0]: load_additems,
                pickle.DICT[0]: load_dict, pickle.FROZENSET[0]: load_frozenset}


def pickle_module(path: str, file_size: int) -> types.SimpleNamespace:
    """A module-like object for ``torch.load(pickle_module=...)``: its Unpickler resolves globals by the allow-list,
    with this load's own placeholders, bounded constructors and record of what ``find_class`` returned."""
    budget = _Budget(path, file_size)
    allowed = {**_ALLOWED, **_bounded_constructors(budget)}
    unpickler = type("AllowListUnpickler", (_AllowListUnpickler,),
                     {"path": path, "budget": budget, "allowed": allowed, "placeholders": {}, "found": {}})
    # torch.load subclasses .Unpickler; the legacy (non-zip) torch format also calls .load for its header records.
    return types.SimpleNamespace(__name__=__name__, Unpickler=unpickler,
                                 load=lambda file, **kwargs: unpickler(file, **kwargs).load())
