"""The pure-Python unpickler with checked opcodes, and ``pickle_module``: what ``torch.load(pickle_module=...)``
takes, one per load."""

from __future__ import annotations

import pickle
import types
from typing import Any


from .allowlist import _ALLOWED, _resolve_global
from .budget import _Budget, _bounded_constructors
from .changes import _check_change
from .sized import _check_call, _check_state, _checked_callers


class _AllowListUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler (the C one's opcodes cannot be overridden): globals come from the allow-list, and each
    opcode that changes an object (BUILD, SETITEM(S), APPEND(S), ADDITEMS) first checks its target: never an object
    ``find_class`` returned (tracked by identity), a class, a function or anything else ``_may_change`` refuses. Each
    call (REDUCE, NEWOBJ(_EX), OBJ, INST) of a sized class or rebuild function is charged first (``_check_call``).
    ``pickle_module`` makes one subclass per load with the class attributes below."""

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
