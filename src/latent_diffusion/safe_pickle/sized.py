"""Allow-listed classes that allocate by a size argument (torch tensors and storages, numpy arrays and scalars),
used as types too so never replaced: each call is checked against the load's budget instead."""

from __future__ import annotations

import copyreg
import operator
import pathlib
from typing import Any, Callable

import numpy
import torch
from torch._weights_only_unpickler import _get_allowed_globals  # private; torch is capped <2.14, see docs/index.md

from ..errors import CheckpointError
from .allowlist import _ALLOWED, _SAFER
from .budget import (_ELEMENT_BYTES, MAX_DIMS, MAX_PATH_CHARS, _BadSize, _Budget, _check_codec, _elements_made, _index,
                     _itemsize, _short)
from .changes import _check_change


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
