"""Integrity of torch zip checkpoints: every member's bytes against the CRC-32 the zip's directory records (torch.load
never checks them, so flipped bytes in a tensor load silently), and TorchScript archives (code) refused."""

from __future__ import annotations

import concurrent.futures
import os
import struct
import zipfile
import zlib
from typing import Any

from .errors import CheckpointError, UnsafeCheckpointError
from .safe_pickle import SAFER

__all__ = ["check_torch_zip"]

_CRC_CHUNK = 8 << 20
_CRC_THREADS = 8  # zip members are CRC-checked on up to this many threads (zlib.crc32 releases the GIL)
_CRC_THREAD_BYTES = 64 << 20  # ... one per this many bytes of members


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


def check_torch_zip(path: str, f: Any) -> None:
    """Refuse a TorchScript archive (code: torch.load would hand it to torch.jit.load), then check every member's
    CRC-32 against the zip's directory: torch.load itself never does, so flipped bytes in a tensor load silently.
    Members are shared out by size over a few threads; a recorded CRC of 0 means torch was told not to compute them
    (``torch.serialization.set_crc32_options(False)``): nothing to check."""
    zf = zipfile.ZipFile(f)
    if any(n.split("/", 1)[-1] == "constants.pkl" for n in zf.namelist()):
        raise UnsafeCheckpointError(f"refused to load {path}: it is a TorchScript archive (code). {SAFER}")
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
