"""One path looked at by several file-kind recognisers (``inspect_file``): the ``Probe`` that reads it at most once,
the ``FileKind`` a recogniser is registered as, and the small helpers recognisers share.

Nothing runs code from a file: tensor files go through ``safe_load.read_state_dict`` (``.safetensors`` validated
and memory-mapped, pickles through the allow-list unpickler) and JSON indexes are read as data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .data.latents import INDEX
from .errors import CheckpointError, UnsafeCheckpointError
from .safe_load import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, read_state_dict

Rows = list[tuple[str, Any]]
_MAX_INDEX_BYTES = 256 << 20  # a latents / shards index.json; a bigger .json is not one of ours
_BN_STATS = (".running_mean", ".running_var", ".num_batches_tracked")


class Probe:
    """One path being inspected. Its tensors (``tensors()``) and JSON index (``index()``) are read at most once,
    when a kind first asks; kinds that give up with a reason leave it in ``why_not`` for the refusal."""

    def __init__(self, path: str | os.PathLike, config: Any = None) -> None:
        self.path, self.source, self.config = Path(path), os.fspath(path), config
        self.suffix = self.path.suffix.lower()
        self.why_not: list[str] = []
        self._tensors: Any = ...
        self._index: Any = ...

    @cached_property
    def head(self) -> bytes:
        """The first bytes of a file (b"" for a folder)."""
        if not self.path.is_file():
            return b""
        try:
            with open(self.path, "rb") as f:
                return f.read(16)
        except OSError as exc:
            self.why_not.append(f"it cannot be opened ({exc.strerror or exc})")
            return b""

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(state dict, extras) as ``read_state_dict`` gives them; None for a file of another extension or one that
        cannot be read as a tensor file (the reason goes to ``why_not``). An unsafe pickle is refused at once."""
        if self._tensors is ...:
            self._tensors = None
            if self.path.is_file() and self.suffix in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
                try:
                    self._tensors = read_state_dict(self.path)
                except UnsafeCheckpointError:
                    raise
                except (CheckpointError, OSError) as exc:
                    self.why_not.append(one_line(exc).replace(self.source, "it"))
        return self._tensors

    def index(self) -> dict[str, Any]:
        """The JSON object of a latents / shards index: the folder's ``index.json``, or the ``.json`` file itself
        ({} when there is none, or it is not a JSON object)."""
        if self._index is ...:
            self._index = {}
            file = self.path / INDEX if self.path.is_dir() else self.path
            if file.is_file() and file.suffix.lower() == ".json" and file.stat().st_size <= _MAX_INDEX_BYTES:
                try:
                    data = json.loads(file.read_text())
                except (OSError, UnicodeDecodeError, ValueError) as exc:
                    self.why_not.append(f"{file.name} is not readable JSON ({one_line(exc)})")
                else:
                    self._index = data if isinstance(data, dict) else {}
        return self._index


@dataclass(frozen=True)
class FileKind:
    """A kind of file: ``recognise(probe)`` returns its description (``kind``, ``what`` and fields) or None when
    the path is not one; ``rows(info)`` are the (label, value) lines ``format_report`` prints after kind / what."""

    name: str
    accepted: str  # how the refusal lists it
    recognise: Callable[[Probe], dict[str, Any] | None]
    rows: Callable[[dict[str, Any]], Rows]


# -- helpers ------------------------------------------------------------------------------------------------------
def one_line(exc: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def human_count(n: int) -> str:
    """A parameter count for a sentence: 165 k, 1.2 M, 3.4 B."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return str(n)


def parameter_count(sd: dict[str, torch.Tensor], prefix: str = "") -> int:
    """Floating-point values under ``prefix`` (BatchNorm running statistics are state, not parameters)."""
    return sum(v.numel() for k, v in sd.items()
               if k.startswith(prefix) and v.is_floating_point() and not k.endswith(_BN_STATS))


def dtypes_of(sd: dict[str, torch.Tensor]) -> list[str]:
    return sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})


def json_entry(meta: dict[str, Any], key: str) -> Any:
    """``meta[key]`` decoded from JSON (None when absent or not JSON)."""
    try:
        return json.loads(meta[key])
    except (KeyError, TypeError, ValueError, RecursionError):
        return None


def number(value: Any, kind: type = float) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        return None


def trained_steps(extras: dict[str, Any]) -> int | None:
    """Training steps a model file records: our exports' ``train_step`` metadata, a Lightning ``global_step``."""
    for key in ("train_step", "global_step"):
        if (n := number(extras.get(key), int)) is not None:
            return n
    return None


def _show(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return value


def field_rows(*pairs: tuple[Any, ...]) -> Callable[[dict[str, Any]], Rows]:
    """Rows from (label, key) or (label, key, format) tuples: the values present (not None, not empty), shown by
    ``format`` or as ints with thousands separators, yes / no, lists joined with commas."""
    def rows(info: dict[str, Any]) -> Rows:
        return [(label, (show[0] if show else _show)(info[key])) for label, key, *show in pairs
                if info.get(key) not in (None, "", [], {})]
    return rows


def shape_text(shape: list[int]) -> str:
    """[4, 8, 8] -> 4x8x8"""
    return "x".join(str(s) for s in shape)


def name_list(names: list[str], show: int = 20) -> str:
    return f"{len(names)}: " + ", ".join(names[:show]) + (" ..." if len(names) > show else "")

