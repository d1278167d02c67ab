"""Read and write checkpoint files without running code from them.

``.safetensors`` layouts are validated before the library sees them. Pickle-based torch files have their zip members
checked against their CRC-32s (``zip_crc.py``) and go through the allow-list unpickler (``safe_pickle/``); their
extra entries are kept as plain data within budgets (``plain_data.py``). Writes are atomic (``fileio.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import struct
from typing import Any

import safetensors
import safetensors.torch
import torch
from safetensors import SafetensorError

from .errors import CheckpointError, UnsafeCheckpointError
from .fileio import OutputError, write_atomic
from .plain_data import MAX_EXTRA_NODES_TOTAL, NotPlain, PlainData
from .safe_pickle import InertObject, pickle_module
from .zip_crc import check_torch_zip

__all__ = ["InertObject", "read_state_dict", "read_pickle", "verify_checkpoint_file", "save_safetensors_atomic",
           "file_fingerprint", "file_sha256"]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # real headers are a few hundred KB; a bigger length field is garbage
_LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
_EXISTS = "{} already exists; refusing to overwrite it. Pass overwrite=True (--force on the command line) to replace it"


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


def read_pickle(path: str | os.PathLike, *, device: str | torch.device = "cpu", weights_only: bool = False) -> Any:
    """The whole object in a pickle-based torch file, loaded through the allow-list (placeholders included). A zip
    (torch's default format) has every member's CRC-32 checked first. ``weights_only=True``: any class the allow-list
    would load as a placeholder is refused instead, so a file that passes loads in ``torch.load(weights_only=True)``
    too (a resume file Lightning reads after us)."""
    path = os.fspath(path)
    size = _preflight(path)
    module = pickle_module(path, size)
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                check_torch_zip(path, f)
            f.seek(0)
            obj = torch.load(f, map_location=device, pickle_module=module, weights_only=False, mmap=False)
    except CheckpointError:
        raise
    except Exception as exc:  # torch/zip/pickle errors on corrupt or truncated files
        raise CheckpointError(f"could not read {path} as a torch checkpoint (corrupt, truncated or another format?): "
                              f"{type(exc).__name__}: {exc}") from exc
    if weights_only:
        _check_weights_only(path, sorted(module.Unpickler.placeholders))
    return obj


def _check_weights_only(path: str, inert: list[str]) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would refuse: classes our reader made placeholders of, and any
    other global outside torch's weights-only allow-list (our reader also loads paths, ``argparse.Namespace`` and
    numpy scalars as plain data; torch does not). Torch's own scan of the file names them without unpickling."""
    unsafe = list(inert)
    with contextlib.suppress(Exception):  # the scan reads zip files only; the legacy format has placeholders only
        unsafe += [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in unsafe]
    if unsafe:
        raise UnsafeCheckpointError(f"refused to load {path}: it holds objects of {', '.join(unsafe[:5])}, which a "
                                    f"weights-only load does not accept (a checkpoint written by this project holds "
                                    f"none); nothing from the file was executed")


def verify_checkpoint_file(path: str | os.PathLike) -> None:
    """Check a checkpoint file before another library loads it (e.g. a resume file Lightning will read): the usual
    broken-download checks; for pickle-based files every zip member's CRC-32 and a whole read through the allow-list
    (which is then dropped); for .safetensors its layout. Raises CheckpointError (UnsafeCheckpointError) if not."""
    path = os.fspath(path)
    if pathlib.Path(path).suffix.lower() in SAFETENSORS_SUFFIXES:
        read_state_dict(path)  # memory-mapped: validates the header and offsets, reads no data
    else:
        read_pickle(path, weights_only=True)


def _split_checkpoint(path: str, obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, extras) from a Lightning checkpoint ``{"state_dict": ..., "global_step": ...}`` or a state dict."""
    accepted = "accepted: a dict of tensors, or a dict with a 'state_dict' entry (Lightning)"
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict; {accepted}")
    extras: dict[str, Any] = {}
    skipped = []  # top-level entries that are not plain data (optimizer_states, callbacks, OmegaConf hparams, ...)
    plain = PlainData(MAX_EXTRA_NODES_TOTAL)  # or are too big or deep
    for key, value in obj.items() if state is not obj else ():
        if key != "state_dict":
            try:
                extras[str(key)] = plain.entry(value)
            except NotPlain:
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

    def write(tmp: pathlib.Path) -> None:
        mode = os.stat(tmp).st_mode & 0o777  # the umask's, as fileio created it
        safetensors.torch.save_file(prepared, tmp, metadata=metadata)
        os.chmod(tmp, mode)  # the library writes a fresh 0600 file: give it the mode of any file we write

    try:
        return write_atomic(path, write, overwrite=overwrite)
    except OutputError as exc:  # exists, no permission, a full disk, a file-size limit: the OS's reason
        raise CheckpointError(str(exc).replace("(pass --force / overwrite=True)",
                                               "(pass overwrite=True, --force on the command line)")) from exc
    except SafetensorError as exc:  # e.g. IoError(Os { code: 27, kind: FileTooLarge, message: "File too large" })
        found = re.search(r'message: "([^"]*)"', str(exc))
        raise CheckpointError(f"cannot write {path}: {found.group(1) if found else exc}") from None


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256 as 64 hex digits, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"cannot hash {os.fspath(path)}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> str:
    """First 10 hex digits of the file's sha256 (the short "Model hash" A1111 shows)."""
    return file_sha256(path)[:10]
