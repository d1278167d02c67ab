"""The allow-list unpickler behind ``read_pickle``: what a pickle-based torch file may ask for, and what it may do.

Tensors, containers and numpy scalars load for real; other classes (Lightning callbacks, OmegaConf) become inert
``InertObject`` placeholders that never import their module; anything that can run code is refused before it runs.
A pickle may not change any object it did not make (a class, a function, a shared singleton); constructors may not
allocate without bound (``bytearray(10**11)``, ``set(range(10**10))``, ``torch.FloatTensor(2**33)``,
``numpy.ndarray((2**33,))``, a storage whose persistent id claims 2**33 elements) nor keys take ages to hash (nested
shared tuples); codecs other than latin-1, ASCII and UTF-8 are refused. ``pickle_module(path, size)`` is what
``torch.load(pickle_module=...)`` takes, one per load.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import copyreg
import operator
import pathlib
import pickle
import sys
import types
from typing import Any, Callable

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
MAX_PATH_CHARS = 1 << 16  # a path a pickle makes longer than this is refused (real ones: PATH_MAX is 4096)
MAX_DIMS = 64  # a shape (or nesting of data) with more dimensions than this, given to a sized constructor, is refused
_CODECS = frozenset({"latin1", "latin-1", "iso-8859-1", "ascii", "utf-8", "utf8"})  # any other imports encodings.*
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


# --- sized classes: allow-listed classes (used as types too, so never replaced) whose calls are checked instead ------

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


def _numpy_itemsize(dtype: Any) -> int:
    """Bytes per element of what numpy makes of ``dtype`` (None: float64; ``'V2147483647'``: 2 GiB); 0 if numpy
    refuses it (the call then fails too)."""
    try:
        return numpy.dtype(dtype).itemsize
    except Exception:
        return 0


def _shape_elements(shape: Any) -> int:
    """Elements in an array of ``shape`` (an int or a sequence of ints); 0 for what is no shape (the call fails)."""
    size = _index(shape)
    if size is not None:
        return size
    if isinstance(shape, (str, bytes)):
        return 0
    try:
        dims = len(shape)
    except Exception:
        return 0
    if dims > MAX_DIMS:
        raise _BadSize(f"a shape of {dims} dimensions (the limit is {MAX_DIMS})")
    total = 1
    for dim in shape:
        total *= _index(dim) or 0
    return total


def _data_elements(data: Any) -> int:
    """Elements torch makes from (nested) data: the product of the lengths down the first items, as torch infers a
    shape; a tensor, array or storage counts its own elements."""
    total, item = 1, data
    for _ in range(MAX_DIMS + 1):
        if isinstance(item, str):
            return total
        try:
            length = len(item)
        except Exception:
            return total
        total *= length
        if not length:
            return 0
        try:
            item = item[0]
        except Exception:
            return total
    raise _BadSize(f"data nested more than {MAX_DIMS} deep (the limit)")


def _torch_elements(args: tuple) -> int:
    """Elements a legacy tensor or storage constructor makes: ``(*sizes)``, ``(torch.Size)`` or ``(data)``; 0 when
    no argument gives a size (``FloatTensor()``, ``UntypedStorage(device=...)``)."""
    if len(args) > MAX_DIMS:
        raise _BadSize(f"{len(args)} sizes (the limit is {MAX_DIMS})")
    total, sized = 1, False
    for arg in args:
        if arg is None or isinstance(arg, (str, torch.device, torch.dtype)):
            continue
        size = _index(arg)
        total *= size if size is not None else \
            _shape_elements(arg) if isinstance(arg, torch.Size) else _data_elements(arg)
        sized = True
    return total if sized else 0


def _past_storage(storage: Any, offset: Any, size: Any, stride: Any, itemsize: int) -> int:
    """Bytes by which a tensor view ``(offset, size, stride)`` reaches past the end of ``storage``: what
    ``Tensor.set_`` grows a resizable storage by (legacy files, storages made by constructors). 0 for what is not a
    storage or a view (torch then fails the call)."""
    try:  # TypedStorage's own methods warn that TypedStorage is deprecated
        untyped = storage if type(storage) is torch.UntypedStorage else storage._untyped_storage
        if not untyped.resizable():  # a zip file's storages (torch then refuses the view): fast
            return 0
    except AttributeError:  # not a storage, or a TypedStorage made by __new__ alone: torch fails on it
        return 0
    start, dims, steps = _index(offset), _dims(size), _dims(stride)
    if start is None or dims is None or steps is None or len(dims) != len(steps) or 0 in dims:
        return 0
    end = start + 1  # one past the last element the view reaches
    for dim, step in zip(dims, steps):
        end += (dim - 1) * step
    return max(end * itemsize - untyped.nbytes(), 0)


def _dims(value: Any) -> tuple[int, ...] | None:
    """A tensor size or stride as a tuple of ints (torch takes one int too); None if it is not one. A negative one
    raises _BadSize."""
    if type(value) is tuple:  # what torch.save writes: fast
        for dim in value:
            if type(dim) is not int or dim < 0:
                break
        else:
            return value
    try:
        dims = tuple(map(operator.index, value)) if isinstance(value, (tuple, list)) else (operator.index(value),)
    except TypeError:
        try:
            dims = tuple(map(operator.index, value))
        except Exception:
            return None
    except Exception:  # a tensor of several elements
        return None
    if dims and min(dims) < 0:
        raise _BadSize(f"a negative size ({min(dims)})")
    return dims


_Check = Callable[["_Budget", str, tuple, dict], None]  # (budget, name, args, kwargs): charges it, or raises


def _charging(cost: Callable[[tuple, dict], int]) -> _Check:
    def check(budget: _Budget, name: str, args: tuple, kwargs: dict) -> None:
        budget.charge(f"calls `{name}`", cost(args, kwargs))
    return check


def _torch_constructor(cls: Any) -> _Check:
    """The check for a legacy tensor type (``torch.FloatTensor``, ``torch.Tensor``) or a storage class: elements x
    its element size (``torch.Tensor`` and ``TypedStorage``: the default dtype, or TypedStorage's ``dtype=``)."""
    def cost(args: tuple, kwargs: dict) -> int:
        if cls is torch.UntypedStorage:
            dtype: Any = torch.uint8
        elif cls is torch.Tensor or cls is torch.storage.TypedStorage:
            dtype = kwargs.get("dtype") or torch.get_default_dtype()
        else:
            dtype = cls.dtype
        return _torch_elements(args) * _itemsize(dtype)
    return _charging(cost)


def _is_sized_torch_class(obj: Any) -> bool:
    storages = (torch.UntypedStorage, torch.storage.TypedStorage)
    return obj is torch.Tensor or obj in torch._tensor_classes or (isinstance(obj, type) and issubclass(obj, storages))


def _ndarray_bytes(args: tuple, kwargs: dict) -> int:  # numpy.ndarray(shape, dtype=float, buffer, offset, strides)
    shape = args[0] if args else kwargs.get("shape")
    return _shape_elements(shape) * _numpy_itemsize(args[1] if len(args) > 1 else kwargs.get("dtype"))


def _reconstruct_bytes(args: tuple, kwargs: dict) -> int:  # numpy's _reconstruct(subtype, shape, dtype)
    return _shape_elements(args[1]) * _numpy_itemsize(args[2]) if len(args) >= 3 else 0


def _scalar_bytes(args: tuple, kwargs: dict) -> int:  # numpy's scalar(dtype, data=None): a zeroed itemsize if no data
    return _itemsize(args[0], 0) if args else 0


def _converted_bytes(args: tuple, kwargs: dict) -> int:
    """What ``_rebuild_device_tensor_from_cpu_tensor`` / ``_from_numpy(data, dtype, ...)`` copy: the data at dtype."""
    if len(args) < 2:
        return 0
    data = args[0]
    count = data.numel() if isinstance(data, torch.Tensor) else data.size if isinstance(data, numpy.ndarray) else 0
    return count * _itemsize(args[1])


def _check_path(budget: _Budget, name: str, args: tuple, kwargs: dict) -> None:
    """``PurePosixPath(*parts)`` joins its parts' text (a shared path passed twice doubles at each call) and splits it
    into a list of parts, slowly: refuse a path past MAX_PATH_CHARS, charge the rest."""
    chars = sum(len(str(arg)) for arg in args if isinstance(arg, (str, pathlib.PurePath))) + len(args)
    if chars > MAX_PATH_CHARS:
        raise CheckpointError(f"refused to load {budget.path}: its pickle calls `{name}` to make a path of more than "
                              f"{MAX_PATH_CHARS} characters (the limit), {chars}; nothing was made (a corrupt or "
                              f"hostile file). {_SAFER}")
    budget.charge(f"calls `{name}`", chars * (1 + _ELEMENT_BYTES))  # the text, and at most a part per character


def _view_check(dtype_at: int | None) -> _Check:
    """The check for ``_rebuild_tensor(_v2, _v3)(storage, offset, size, stride, ...)``: a view past the storage's end
    grows the storage (``dtype_at``: where v3 passes the dtype; the others use the storage's)."""
    def check(budget: _Budget, name: str, args: tuple, kwargs: dict) -> None:
        if len(args) >= 4:
            dtype = args[dtype_at] if dtype_at is not None and len(args) > dtype_at else getattr(args[0], "dtype", 0)
            if nbytes := _past_storage(*args[:4], _itemsize(dtype, 1)):
                budget.charge(f"calls `{name}`", nbytes)
    return check


def _check_qtensor(budget: _Budget, name: str, args: tuple, kwargs: dict) -> None:
    """``_rebuild_qtensor(storage, offset, size, stride, ...)`` allocates a tensor of ``size`` first, then sets the
    view."""
    if len(args) >= 4:
        itemsize = _itemsize(getattr(args[0], "dtype", 0), 1)
        budget.charge(f"calls `{name}`", _shape_elements(args[2]) * itemsize + _past_storage(*args[:4], itemsize))


def _check_codec(budget: _Budget, name: str, args: tuple, kwargs: dict) -> None:
    """Refuse a codec other than latin-1, ASCII or UTF-8 (what pickles use) in ``_codecs.encode(obj, encoding)``,
    ``bytes(text, encoding)`` or ``str(data, encoding)``: any other name imports an ``encodings`` module."""
    encoding = args[1] if len(args) > 1 else kwargs.get("encoding")
    if encoding is None or (isinstance(encoding, str) and encoding.lower().replace("_", "-") in _CODECS):
        return
    raise UnsafeCheckpointError(f"refused to load {budget.path}: its pickle calls `{name}` with the codec "
                                f"{_short(encoding)}; only {', '.join(sorted(_CODECS))} are allowed (others import "
                                f"an `encodings` module); nothing was run. {_SAFER}")


_PLAIN_TEXT = (str, bytes, bytearray, int, float, complex, type(None), numpy.number, numpy.bool_, torch.dtype,
               torch.device, pathlib.PurePath, range)  # what str() may write out: its text is about its own size


def _check_str(budget: _Budget, name: str, args: tuple, kwargs: dict) -> None:
    """``str(obj)`` writes out obj's whole repr: refuse containers (shared ones expand exponentially, ``x = [x, x]``);
    charge bytes (decoded, or escaped at up to 4 characters a byte); check the codec."""
    source = args[0] if args else kwargs.get("object", "")
    if not isinstance(source, _PLAIN_TEXT):
        raise CheckpointError(f"refused to load {budget.path}: its pickle calls `{name}` on {_short(source)}; only "
                              f"strings, bytes, numbers and paths are allowed (the text of a container can be huge); "
                              f"nothing was made (a corrupt or hostile file). {_SAFER}")
    _check_codec(budget, name, args, kwargs)
    if isinstance(source, (str, bytes, bytearray)):
        budget.charge(f"calls `{name}`", 4 * len(source))


def _call_checks() -> dict[int, tuple[Any, str, _Check]]:
    """id -> (object, name, check) for each allow-listed callable whose calls are checked: sized classes (legacy
    tensor types, storages, ``torch.Size``, ``numpy.ndarray``, paths, ``str``) and torch/numpy rebuild functions."""
    checks: dict[str, _Check] = {name: _torch_constructor(obj) for name, obj in _get_allowed_globals().items()
                                 if _is_sized_torch_class(obj)}
    checks.update({
        "torch.Size": _charging(_elements_made),
        "torch._utils._rebuild_tensor": _view_check(None), "torch._utils._rebuild_tensor_v2": _view_check(None),
        "torch._utils._rebuild_tensor_v3": _view_check(6), "torch._utils._rebuild_qtensor": _check_qtensor,
        "torch._utils._rebuild_device_tensor_from_cpu_tensor": _charging(_converted_bytes),
        "torch._utils._rebuild_device_tensor_from_numpy": _charging(_converted_bytes),
        "numpy.ndarray": _charging(_ndarray_bytes),
        "numpy._core.multiarray._reconstruct": _charging(_reconstruct_bytes),
        "numpy._core.multiarray.scalar": _charging(_scalar_bytes),
        "pathlib.PurePosixPath": _check_path, "pathlib.PureWindowsPath": _check_path,
        "builtins.str": _check_str,
    })
    return {id(_ALLOWED[name]): (_ALLOWED[name], name, check) for name, check in checks.items() if name in _ALLOWED}


_CALL_CHECKS = _call_checks()


def _check_call(budget: _Budget, func: Any, args: tuple, kwargs: dict) -> None:
    """Charge (or refuse) ``func(*args, **kwargs)`` before a pickle makes it, when ``func`` is in _CALL_CHECKS;
    every other call passes unchanged."""
    entry = _CALL_CHECKS.get(id(func))
    if entry is None or entry[0] is not func:
        return
    _, name, check = entry
    try:
        check(budget, name, args, kwargs)
    except _BadSize as exc:
        raise budget.bad_size(f"calls `{name}`", str(exc)) from None


def _check_state(budget: _Budget, target: Any, state: Any) -> None:
    """Charge what ``target.__setstate__(state)`` makes (BUILD): an ndarray copies its data when byte-swapped or of
    objects, so a shared one BUILT again and again would multiply; a tensor's 4-tuple is ``set_(storage, offset,
    size, stride)``, which grows the storage to fit."""
    if not isinstance(state, tuple):
        return
    try:
        if isinstance(target, numpy.ndarray) and len(state) in (4, 5):  # ([version,] shape, dtype, fortran, data)
            nbytes = _shape_elements(state[-4]) * _numpy_itemsize(state[-3])
            budget.charge("sets the state of a `numpy.ndarray`", nbytes)
        elif isinstance(target, torch.Tensor) and len(state) == 4 and (
                nbytes := _past_storage(*state, target.element_size())):
            budget.charge("sets the state of a tensor", nbytes)
    except _BadSize as exc:
        raise budget.bad_size("sets the state of an array or tensor", str(exc)) from None


def _checked_callers(budget: _Budget, found: dict[int, tuple[str, Any]]) -> dict[str, Any]:
    """Stand-ins for the allow-listed functions that call a class or function the pickle passes them (copyreg's
    reconstructors, torch's ``_rebuild_from_type_v2``): each checks that call as REDUCE does, so a sized class
    cannot be reached around the checks."""
    def reconstructor(cls: Any, base: Any, state: Any) -> Any:  # base.__new__(cls, state); base.__init__(obj, state)
        if base is not object:
            _check_call(budget, base, (state,), {})
            if cls is not base:  # base.__new__(cls, ...) may allocate as cls would
                _check_call(budget, cls, (state,), {})
        return copyreg._reconstructor(cls, base, state)

    def newobj(cls: Any, *args: Any) -> Any:
        _check_call(budget, cls, args, {})
        return copyreg.__newobj__(cls, *args)  # type: ignore[attr-defined]

    def newobj_ex(cls: Any, args: Any, kwargs: Any) -> Any:
        args = tuple(args)
        _check_call(budget, cls, args, kwargs if isinstance(kwargs, dict) else {})
        return copyreg.__newobj_ex__(cls, args, kwargs)  # type: ignore[attr-defined]

    def rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
        def made(*call_args: Any) -> Any:  # torch then sets ``state`` on what func made: checked as BUILD is
            _check_call(budget, func, call_args, {})
            obj = func(*call_args)
            _check_change(budget.path, found, obj, "BUILD")
            _check_state(budget, obj, state)
            return obj
        return torch._tensor._rebuild_from_type_v2(made, new_type, args, state)

    return {"copyreg._reconstructor": reconstructor, "copyreg.__newobj__": newobj, "copyreg.__newobj_ex__": newobj_ex,
            "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2}


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


def _check_change(path: str, found: dict[int, tuple[str, Any]], target: Any, op: str) -> None:
    """Refuse opcode ``op`` changing ``target``: an object ``find_class`` returned, or one ``_may_change`` refuses."""
    if id(target) in found or not _may_change(target, op):
        name = found[id(target)][0] if id(target) in found else _describe(target)
        raise UnsafeCheckpointError(f"refused to load {path}: its pickle tried to modify `{name}` ({op}); a loader "
                                    f"changes only objects it made itself, and nothing was changed. {_SAFER}")


class _AllowListUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler (the C one's opcodes cannot be overridden): globals come from the allow-list, and each
    opcode that changes an object (BUILD, SETITEM(S), APPEND(S), ADDITEMS) first checks its target: never an object
    ``find_class`` returned (tracked by identity), a class, a function or anything else ``_may_change`` refuses. Each
    call (REDUCE, NEWOBJ(_EX), OBJ, INST) of a sized class or rebuild function is charged first (``_check_call``).
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
        _check_change(self.path, self.found, target, op)

    def _check_below_mark(self, op: str) -> None:  # SETITEMS, APPENDS, ADDITEMS change the object below their MARK
        if self.metastack and self.metastack[-1]:
            self._check(self.metastack[-1][-1], op)

    @property
    def persistent_load(self) -> Any:  # torch sets it on each unpickler; its ids are looked up in dicts
        def checked(pid: Any) -> Any:
            self.budget.check_keys([pid])
            self.budget.charge_storage(pid)
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
            _check_state(self.budget, self.stack[-2], self.stack[-1])
        super().load_build()

    def load_reduce(self) -> None:  # as pickle's, with the call checked first
        stack = self.stack
        args = tuple(stack.pop())
        _check_call(self.budget, stack[-1], args, {})
        stack[-1] = stack[-1](*args)

    def load_newobj(self) -> None:
        args = tuple(self.stack.pop())
        cls = self.stack.pop()
        _check_call(self.budget, cls, args, {})
        self.append(cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = tuple(self.stack.pop())
        cls = self.stack.pop()
        _check_call(self.budget, cls, args, kwargs if isinstance(kwargs, dict) else {})
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: list) -> None:  # OBJ and INST call klass(*args)
        _check_call(self.budget, klass, tuple(args), {})
        super()._instantiate(klass, args)

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
                pickle.DICT[0]: load_dict, pickle.FROZENSET[0]: load_frozenset, pickle.REDUCE[0]: load_reduce,
                pickle.NEWOBJ[0]: load_newobj, pickle.NEWOBJ_EX[0]: load_newobj_ex}


def pickle_module(path: str, file_size: int) -> types.SimpleNamespace:
    """A module-like object for ``torch.load(pickle_module=...)``: its Unpickler resolves globals by the allow-list,
    with this load's own placeholders, bounded constructors, checked callers and record of what ``find_class``
    returned."""
    budget, found = _Budget(path, file_size), {}  # type: ignore[var-annotated]
    allowed = {**_ALLOWED, **_bounded_constructors(budget), **_checked_callers(budget, found)}
    unpickler = type("AllowListUnpickler", (_AllowListUnpickler,),
                     {"path": path, "budget": budget, "allowed": allowed, "placeholders": {}, "found": found})
    # torch.load subclasses .Unpickler; the legacy (non-zip) torch format also calls .load for its header records.
    return types.SimpleNamespace(__name__=__name__, Unpickler=unpickler,
                                 load=lambda file, **kwargs: unpickler(file, **kwargs).load())
