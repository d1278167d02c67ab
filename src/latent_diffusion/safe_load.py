"""Read and write checkpoint files without running code from them.

``.safetensors`` layouts are validated before the library sees them. Pickle-based torch files go through an allow-list
unpickler: tensors, containers and numpy scalars load for real; other classes (Lightning callbacks, OmegaConf) become
inert ``InertObject`` placeholders that never import their module; anything that can run code is refused before it runs.
A pickle may not change any object it did not make (a class, a function, a shared singleton); constructors may not
allocate without bound (``bytearray(10**11)``, ``set(range(10**10))``) nor keys take ages to hash (nested shared
tuples); a torch zip's members are checked against their CRC-32 before loading.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import concurrent.futures
import copyreg
import hashlib
import json
import os
import pathlib
import pickle
import secrets
import struct
import sys
import types
import zipfile
import zlib
from typing import Any

import numpy
import safetensors
import safetensors.torch
import torch
from torch._weights_only_unpickler import _get_allowed_globals  # private, but torch is pinned

from .errors import CheckpointError, UnsafeCheckpointError

__all__ = ["InertObject", "read_state_dict", "read_pickle", "verify_checkpoint_file", "save_safetensors_atomic",
           "file_fingerprint"]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # real headers are a few hundred KB; a bigger length field is garbage
MAX_MADE_BYTES = 64 << 20  # what constructors may make in one load, beyond the file's own size (bytes; elements x16)
MAX_RANGE_LEN = 1 << 20  # a pickled range longer than this is refused: allowed callables would expand it
MAX_KEY_ITEMS = 10_000  # nested tuple items in one dict key or set element (tuples hash all of them, every time)
MAX_KEY_ITEMS_TOTAL = 1 << 20  # ... in all such keys of one load together
MAX_EXTRA_NODES = 100_000  # values in one plain top-level entry of a checkpoint; a bigger one is skipped
MAX_EXTRA_NODES_TOTAL = 1_000_000  # ... and in all of them together
MAX_EXTRA_DEPTH = 100  # nesting of one plain entry; deeper (or self-containing) ones are skipped
_ELEMENT_BYTES = 16  # what one element of a container made by a constructor counts against MAX_MADE_BYTES
_CRC_CHUNK = 8 << 20
_CRC_THREADS = 8  # zip members are CRC-checked on up to this many threads (zlib.crc32 releases the GIL)
_CRC_THREAD_BYTES = 64 << 20  # ... one per this many bytes of members
_LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
_SAFER = "Load checkpoints only from trusted sources; prefer a .safetensors copy (or convert on a trusted machine)."
_EXISTS = "{} already exists; refusing to overwrite it. Pass overwrite=True (--force on the command line) to replace it"

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


def _pickle_module(path: str, file_size: int) -> types.SimpleNamespace:
    """A module-like object for ``torch.load(pickle_module=...)``: its Unpickler resolves globals by the allow-list,
    with this load's own placeholders, bounded constructors and record of what ``find_class`` returned."""
    budget = _Budget(path, file_size)
    allowed = {**_ALLOWED, **_bounded_constructors(budget)}
    unpickler = type("AllowListUnpickler", (_AllowListUnpickler,),
                     {"path": path, "budget": budget, "allowed": allowed, "placeholders": {}, "found": {}})
    # torch.load subclasses .Unpickler; the legacy (non-zip) torch format also calls .load for its header records.
    return types.SimpleNamespace(__name__=__name__, Unpickler=unpickler,
                                 load=lambda file, **kwargs: unpickler(file, **kwargs).load())


def _preflight(path: str) -> int:
    """Clear errors for the usual broken downloads; returns the file size."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}" if not os.path.exists(path) else f"{path} is not a file")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); the download or copy failed, fetch it again")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_LFS_MAGIC):
        raise CheckpointError(f"{path} is a Git LFS pointer, not the checkpoint: run `git lfs pull` in its repository")
    return size


def _check_safetensors(path: str, size: int) -> dict[str, str]:
    """Validate a .safetensors layout (u64 header length, JSON header, data) and return its ``__metadata__``."""
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))[0]  # u64 little-endian; files < 8 bytes fail below
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise CheckpointError(f"{path} has a huge header: its length field says {header_len} bytes, the file has "
                                  f"{size} (limit {MAX_HEADER_BYTES}); corrupt, cut short, or not .safetensors")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        if not isinstance(header, dict):
            raise ValueError(f"a JSON {type(header).__name__}, expected an object")
    except ValueError as exc:
        raise CheckpointError(f"{path}: the header is not valid JSON ({exc}); corrupt, or not .safetensors") from None
    metadata = header.pop("__metadata__", None) or {}  # its str -> str shape is checked by the library
    data_end = 0
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
        data_end = max(data_end, offsets[1])
    if 8 + header_len + data_end > size:
        raise CheckpointError(f"{path} is truncated: its header needs {8 + header_len + data_end} bytes but the file "
                              f"has {size} (an interrupted download?); download it again")
    return metadata


def _member_crc(f: Any, info: zipfile.ZipInfo, zf: zipfile.ZipFile, buffer: memoryview) -> int | None:
    """CRC-32 of one zip member's bytes, read in chunks; None when its local header is gone or it fails to inflate."""
    if info.compress_type != zipfile.ZIP_STORED:  # torch stores members uncompressed; zipfile inflates any other
        try:
            with zf.open(info) as member:
                crc = 0
                while chunk := member.read(len(buffer)):
                    crc = zlib.crc32(chunk, crc)
                return crc
        except (zipfile.BadZipFile, zlib.error, EOFError):
            return None
    f.seek(info.header_offset)
    header = f.read(30)  # the local file header: signature ... name length (u16), extra length (u16)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        return None
    f.seek(info.header_offset + 30 + sum(struct.unpack("<HH", header[26:30])))
    crc, left = 0, info.compress_size
    while left:
        n = f.readinto(buffer[:min(left, len(buffer))])
        if not n:
            return None
        crc, left = zlib.crc32(buffer[:n], crc), left - n
    return crc


def _first_bad_member(path: str, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> str | None:
    """The name of the first of ``infos`` whose bytes fail their CRC-32, read through a file handle of its own."""
    buffer = memoryview(bytearray(_CRC_CHUNK))
    with open(path, "rb") as f:
        for info in sorted(infos, key=lambda i: i.header_offset):
            if _member_crc(f, info, zf, buffer) != info.CRC:
                return info.filename
    return None


def _check_torch_zip(path: str, f: Any) -> None:
    """Refuse a TorchScript archive (code: torch.load would hand it to torch.jit.load), then check every member's
    CRC-32 against the zip's directory: torch.load itself never does, so flipped bytes in a tensor load silently.
    Members are shared out by size over a few threads; a recorded CRC of 0 means torch was told not to compute them
    (``torch.serialization.set_crc32_options(False)``): nothing to check."""
    zf = zipfile.ZipFile(f)
    if any(n.split("/", 1)[-1] == "constants.pkl" for n in zf.namelist()):
        raise UnsafeCheckpointError(f"refused to load {path}: it is a TorchScript archive (code). {_SAFER}")
    infos = [info for info in zf.infolist() if info.CRC]
    threads = max(1, min(_CRC_THREADS, os.cpu_count() or 1, sum(i.compress_size for i in infos) // _CRC_THREAD_BYTES))
    parts: list[list[zipfile.ZipInfo]] = [[] for _ in range(threads)]
    loads = [0] * threads
    for info in sorted(infos, key=lambda i: i.compress_size, reverse=True):  # largest first, to the least loaded
        k = loads.index(min(loads))
        parts[k].append(info)
        loads[k] += info.compress_size
    if threads == 1:
        bad = [_first_bad_member(path, zf, infos)]
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            bad = list(pool.map(lambda part: _first_bad_member(path, zf, part), parts))
    bad = [name for name in bad if name]
    if bad:
        raise CheckpointError(f"{path}: its member {bad[0]} fails its CRC check: the file is corrupted (a bad copy or "
                              f"disk?); copy or download it again")


def read_pickle(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Any:
    """The whole object in a pickle-based torch file, loaded through the allow-list (placeholders included). A zip
    (torch's default format) has every member's CRC-32 checked first."""
    path = os.fspath(path)
    size = _preflight(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                _check_torch_zip(path, f)
            f.seek(0)
            return torch.load(f, map_location=device, pickle_module=_pickle_module(path, size), weights_only=False,
                              mmap=False)
    except CheckpointError:
        raise
    except Exception as exc:  # torch/zip/pickle errors on corrupt or truncated files
        raise CheckpointError(f"could not read {path} as a torch checkpoint (corrupt, truncated or another format?): "
                              f"{type(exc).__name__}: {exc}") from exc


def verify_checkpoint_file(path: str | os.PathLike) -> None:
    """Check a checkpoint file before another library loads it (e.g. a resume file Lightning will read): the usual
    broken-download checks; for pickle-based files every zip member's CRC-32 and a whole read through the allow-list
    (which is then dropped); for .safetensors its layout. Raises CheckpointError (UnsafeCheckpointError) if not."""
    path = os.fspath(path)
    if pathlib.Path(path).suffix.lower() in SAFETENSORS_SUFFIXES:
        read_state_dict(path)  # memory-mapped: validates the header and offsets, reads no data
    else:
        read_pickle(path)


class _NotPlain(Exception):
    """A value that is not plain data, or is too big or too deep to convert (a self-referencing expansion bomb)."""


def _plain_key(key: Any) -> str:
    """A dict key as JSON writes it: str as is; None, bool, int, float as their JSON text (``1`` -> ``"1"``)."""
    if isinstance(key, str):
        return str(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise _NotPlain


_PLAIN_TYPES = frozenset((bool, int, float, str))
_BUSY = object()  # marks a container being converted: meeting it again means it contains itself


class _PlainData:
    """Converts checkpoint entries to JSON-like data (dict with str keys, list, str, int, float, bool, None; tuples
    become lists, numpy scalars and 0-d arrays their Python value) within budgets: MAX_EXTRA_NODES values per entry
    and ``total`` for all entries, counted as if shared values were copied, and MAX_EXTRA_DEPTH levels. A value the
    pickle shares is converted once and stays shared, so a structure that doubles at each level (2**40 values in a
    few KB) costs its few distinct containers in time and is refused by its counted size."""

    def __init__(self, total: int) -> None:
        self.total, self.left = total, 0
        self.done: dict[int, tuple[Any, int, int, Any]] = {}  # id -> (converted, values, height, the original)

    def entry(self, value: Any) -> Any:
        """One top-level entry converted; raises _NotPlain if it is not plain data or over a budget."""
        self.left = start = min(MAX_EXTRA_NODES, self.total)
        try:
            return self._convert(value, 0)[0]
        finally:
            self.total -= start - max(self.left, 0)

    def _convert(self, value: Any, depth: int) -> tuple[Any, int]:
        """(converted value, its height)."""
        self.left -= 1
        if self.left < 0 or depth > MAX_EXTRA_DEPTH:
            raise _NotPlain
        if value is None or type(value) in _PLAIN_TYPES:
            return value, 0
        if isinstance(value, (str, int, float)):  # subclasses (numpy.float64, numpy.str_): the plain value
            return (str if isinstance(value, str) else int if isinstance(value, int) else float)(value), 0
        if isinstance(value, numpy.generic) or (isinstance(value, numpy.ndarray) and value.ndim == 0):
            return self._convert(value.item(), depth + 1)  # an object array may hold itself
        if not isinstance(value, (dict, list, tuple)):
            raise _NotPlain
        if id(value) in self.done:
            converted, size, height, _ = self.done[id(value)]
            self.left -= size - 1
            if converted is _BUSY or self.left < 0 or depth + height > MAX_EXTRA_DEPTH:
                raise _NotPlain
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
        except _NotPlain:
            del self.done[id(value)]
            raise
        self.done[id(value)] = (converted, before - self.left, height + 1, value)
        return converted, height + 1


def _split_checkpoint(path: str, obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, extras) from a Lightning checkpoint ``{"state_dict": ..., "global_step": ...}`` or a state dict."""
    accepted = "accepted: a dict of tensors, or a dict with a 'state_dict' entry (Lightning)"
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict; {accepted}")
    extras: dict[str, Any] = {}
    skipped = []  # top-level entries that are not plain data (optimizer_states, callbacks, OmegaConf hparams, ...)
    plain = _PlainData(MAX_EXTRA_NODES_TOTAL)  # or are too big or deep
    for key, value in obj.items() if state is not obj else ():
        if key != "state_dict":
            try:
                extras[str(key)] = plain.entry(value)
            except _NotPlain:
                skipped.append(str(key))
    if skipped:
        extras["skipped_entries"] = skipped
    tensors = {k: v.detach() for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if dropped := [str(k) for k in state if k not in tensors]:
        extras["dropped_keys"] = dropped
    if not tensors:
        raise CheckpointError(f"{path} contains no tensors (keys: {list(state)[:8]}); {accepted}")
    return tensors, extras


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                       "F8_E5M2": torch.float8_e5m2}


def _read_safetensors_in_memory(path: str, cast: dict[str, torch.dtype] | None = None,
                                skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Each tensor in its own freshly allocated CPU storage, filled by plain reads — no memory map.

    The library validates the layout first (dtypes, shapes against offsets, overlaps); its header is then walked
    here. A memory-mapped file stays mapped, and its touched pages count in the process's RSS, as long as any one
    of its tensors lives — so weights later replaced by a converted copy (a dtype cast, a channels_last layout)
    would be held twice. Read this way, a replaced tensor's memory is simply freed. ``cast``: a dtype for some
    tensor names, applied as each is read (the file's copy is freed at once); names starting with one of
    ``skip`` are not read.
    """
    with safetensors.safe_open(path, framework="pt") as f:
        names = [k for k in f.keys() if not k.startswith(skip)] if skip else list(f.keys())
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header, base = json.loads(fh.read(header_len)), 8 + header_len
        for name in names:
            info = header[name]
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {info['dtype']!r}; readable dtypes: "
                                      f"{', '.join(_SAFETENSORS_DTYPES)}")
            tensor = torch.empty(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            if end > begin:
                fh.seek(base + begin)
                view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())  # the tensor's own bytes
                if fh.readinto(view) != end - begin:
                    raise CheckpointError(f"{path}: tensor {name!r} is cut short; the file is truncated")
            out[name] = tensor if cast is None or name not in cast else tensor.to(cast[name])
    return out


def read_state_dict(path: str | os.PathLike, *, device: str | torch.device = "cpu", mmap: bool = True,
                    cast: dict[str, torch.dtype] | None = None, skip: tuple[str, ...] = (),
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint as ``(flat tensor state dict, extras)``.

    ``.safetensors``: extras is the header's ``__metadata__`` (str -> str). ``.ckpt``/``.pt``/``.pth``/``.bin``:
    extras holds the plain top-level entries of a Lightning checkpoint (``global_step``, ``epoch``, ...), plus
    ``skipped_entries`` (top-level entries that are not plain data) and ``dropped_keys`` (state-dict entries that are
    not tensors) when there are any.

    ``mmap`` (.safetensors): True maps the file (lazy, cheap when only some tensors or only shapes are needed);
    False reads every tensor into its own memory, the better choice for building a whole model from the file.
    ``cast``: a dtype for some tensor names; with ``mmap=False`` each is converted as it is read, so the file's
    copy of one tensor at a time is held, not the whole file's (otherwise after reading). ``skip``: key prefixes
    left out (with ``mmap=False`` never read from a .safetensors file).
    """
    path = os.fspath(path)
    suffix = pathlib.Path(path).suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        raise CheckpointError(f"cannot read {path}: unknown extension {suffix or '(none)'!r}; accepted: "
                              f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}")
    if suffix in PICKLE_SUFFIXES:
        return _cast(*_split_checkpoint(path, read_pickle(path, device=device)), cast, skip)
    metadata = _check_safetensors(path, _preflight(path))
    try:
        if not mmap:
            return ({k: v.to(device) for k, v in _read_safetensors_in_memory(path, cast, skip).items()},
                    dict(metadata))
        return _cast(safetensors.torch.load_file(path, device=str(device)), dict(metadata), cast, skip)
    except CheckpointError:
        raise
    except Exception as exc:  # the library's own checks (dtype/shape vs offsets, overlaps, ...)
        raise CheckpointError(f"could not read {path} as .safetensors: {exc}") from exc


def _cast(sd: dict[str, torch.Tensor], extras: dict[str, Any], cast: dict[str, torch.dtype] | None,
          skip: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``read_state_dict``'s ``cast`` and ``skip`` applied after reading (files read whole or memory-mapped)."""
    if skip:
        sd = {k: v for k, v in sd.items() if not k.startswith(skip)}
    for name, dtype in (cast or {}).items():
        if name in sd:
            sd[name] = sd[name].to(dtype)
    return sd, extras


def _prepare_for_save(tensors: dict[str, torch.Tensor], path: pathlib.Path) -> dict[str, torch.Tensor]:
    """Detached, contiguous tensors, each on its own storage (safetensors refuses shared or strided memory)."""
    prepared, seen = {}, set()
    for key, tensor in (tensors.items() if isinstance(tensors, dict) else [("(the argument)", tensors)]):
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"cannot write {path}: {key!r} is a {type(tensor).__name__}; accepted: a dict of "
                                  f"str -> torch.Tensor")
        tensor = tensor.detach().contiguous()  # the caller's tensor is never modified
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        prepared[key] = tensor.clone() if storage[1] != 0 and storage in seen else tensor
        seen.add(storage)
    return prepared


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike, *,
                            metadata: dict[str, str] | None = None, overwrite: bool = False) -> pathlib.Path:
    """Write ``tensors`` to ``path`` as .safetensors atomically: a temp file in the same folder, fsync, rename.

    An existing file is only replaced with ``overwrite=True``; on any error the temp file is removed and the
    original file is untouched. Shared or non-contiguous tensors are copied; the caller's tensors are not modified.
    """
    path = pathlib.Path(path)
    if path.is_dir() or not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a folder, or its folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise CheckpointError(_EXISTS.format(path))
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise CheckpointError(f"cannot write {path}: metadata must be a dict of str -> str, got {metadata!r:.200}")
    prepared = _prepare_for_save(tensors, path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # reserve the name; mode follows umask
        mode = os.fstat(fd).st_mode & 0o777
        os.close(fd)
        safetensors.torch.save_file(prepared, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the library writes a fresh 0600 file: give it the umask's mode, as any file we write
        if path.exists() and not overwrite:  # checked again: another process may have written it meanwhile
            raise CheckpointError(_EXISTS.format(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # already gone after os.replace; the debris after an error
    return path


def file_fingerprint(path: str | os.PathLike) -> str:
    """First 10 hex digits of the file's sha256 (the short "Model hash" A1111 shows); read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"cannot hash {os.fspath(path)}: {exc.strerror or exc}") from exc
    return digest.hexdigest()[:10]
