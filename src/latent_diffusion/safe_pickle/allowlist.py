"""What a pickle may name: torch's weights-only allow-list plus plain data; classes outside it become inert
placeholders, anything that can run code is refused."""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import copyreg
import pathlib
import types
from typing import Any

import numpy
from torch._weights_only_unpickler import _get_allowed_globals  # private; torch is capped <2.14, see docs/index.md

from ..errors import UnsafeCheckpointError

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
