"""Write files so that nothing a user made is lost, swapped or half-written, even with several processes at once.

Every write goes to a temp file of its own in the target's folder (``.{name}.{pid}.{random}.tmp``, created with
``O_EXCL``), is flushed to disk (fsync), then takes the target's name in one step: ``os.link`` when the target must not
exist (atomic "create if absent": two writers can never both get a name), ``os.replace`` when overwriting. A temp
file left by a killed process (its pid no longer runs here, and it is an hour old: a writer on another machine
sharing the folder keeps its file) is removed by the next write into that folder.

Numbered outputs (``00000-<seed>.png``, ``00001-...``) pick the next free number and take it under a lock on the
folder, so concurrent runs into one folder get distinct numbers. A run that wants a folder of its own (``ldm demo``)
takes ``out``, ``out-2``, ``out-3``, ... by creating it (``os.mkdir``: of several processes, exactly one creates a
name).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import LDMError

try:  # POSIX; elsewhere numbers are taken by "create if absent" alone (distinct files, numbers may repeat)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["OutputError", "temp_path", "write_atomic", "write_numbered", "sweep_stale_temps", "check_output_dir",
           "claim_new_folder"]

STALE_SECONDS = 3600.0  # a dead writer's temp file is removed once it is this old
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


class OutputError(LDMError, OSError):
    """A file could not be written (folder missing or read-only, disk full, name taken, ...)."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def temp_path(path: Path) -> Path:
    """A fresh, unused temp name beside ``path`` (the file is created empty, ``O_EXCL``; its mode follows umask)."""
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # pragma: no cover - 2^32 names per pid
            continue


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike, name: str | None = None, *, min_age: float = STALE_SECONDS,
                      ) -> list[Path]:
    """Remove the temp files in ``folder`` whose writing process no longer runs here and that were last written
    ``min_age`` seconds ago or earlier (a pid of another machine sharing the folder does not run here either);
    optionally only those for the target ``name``. Only names of the form ``.{name}.{pid}.{8 hex}.tmp`` are
    touched; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or (name is not None and m["name"] != name) or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            if time.time() - entry.stat().st_mtime >= min_age:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):  # not possible everywhere (Windows); best effort
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give ``tmp``'s content the name ``path``: atomic replace, or atomic create-if-absent."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails with FileExistsError if the name is taken, whatever another process does
    except FileExistsError:
        raise
    except OSError as exc:  # no hard links here (FAT, some network shares): reserve the name, then replace
        no_links = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EINVAL)
        if exc.errno not in no_links and getattr(exc, "winerror", None) not in (1, 50):
            raise
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        reserved = os.fstat(fd)
        os.close(fd)
        try:
            os.replace(tmp, path)
        except OSError:  # leave no empty file under the user's name: remove our placeholder if it is still ours
            with contextlib.suppress(OSError):
                now = os.stat(path)
                if (now.st_ino, now.st_dev, now.st_size) == (reserved.st_ino, reserved.st_dev, 0):
                    os.unlink(path)
            raise
    else:
        os.unlink(tmp)


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Run ``write(temp_path)`` and give the result the name ``path`` atomically (see the module doc).

    Without ``overwrite`` an existing ``path`` is an ``OutputError`` and stays untouched. Any failure (including in
    ``write``) removes the temp file; OS errors become an ``OutputError`` naming the file and the reason.
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    if not overwrite and path.exists():
        raise OutputError(f"{path} already exists; refusing to overwrite it (pass --force / overwrite=True)")
    sweep_stale_temps(folder, path.name)
    try:
        with _written_temp(path, write) as tmp:
            _publish(tmp, path, overwrite)
        _fsync_dir(folder)
    except FileExistsError:
        raise OutputError(f"{path} already exists; refusing to overwrite it (pass --force / overwrite=True)") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from exc
    return path


@contextlib.contextmanager
def _written_temp(path: Path, write: Callable[[Path], None]) -> Iterator[Path]:
    """A fresh temp file beside ``path`` filled by ``write`` and fsynced; removed on leaving (gone already once
    published by a rename; after a link or an error, this removes it)."""
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (``flock`` on the directory itself: no lock file is left behind)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # NFS / some FUSE mounts: no flock on a folder; create-if-absent still keeps files apart
            if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_numbered(folder: str | os.PathLike, name: Callable[[int], str], write: Callable[[Path], None],
                   used: Callable[[Path], int | None]) -> Path:
    """Write a file named ``name(k)`` into ``folder`` for the smallest ``k`` above every number in use.

    ``used(file)`` returns the number a file in ``folder`` holds (None: not a numbered file). The content is written
    to a temp file first; the number is then chosen and taken under a lock on the folder, so concurrent writers get
    distinct numbers and never replace each other's files.
    """
    folder = Path(folder)
    sweep_stale_temps(folder)
    try:
        with _written_temp(folder / name(0), write) as tmp, _folder_lock(folder):
            k = max((n for f in folder.iterdir() if (n := used(f)) is not None), default=-1) + 1
            while True:
                path = folder / name(k)
                try:
                    _publish(tmp, path, overwrite=False)
                    break
                except FileExistsError:  # only without a lock (Windows, NFS): take the next number
                    k += 1
        _fsync_dir(folder)
        return path
    except OSError as exc:
        raise OutputError(f"cannot write into {folder}: {_reason(exc)}") from exc


def check_output_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it writable (a temp file is created and removed), so a run that cannot
    save its images fails before it computes them."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write images into {folder}: it is a file, not a folder; give a folder with --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temp_path(folder / "write-check").unlink()
    except OSError as exc:
        raise OutputError(f"cannot write images into {folder}: {_reason(exc)}") from None
    return folder


def claim_new_folder(folder: str | os.PathLike) -> Path:
    """Create and return ``folder``, or when that name exists (a folder or a file) the first of ``folder-2``,
    ``folder-3``, ... that does not. The name is taken by ``os.mkdir``, which only one of several processes racing
    for it can win, so concurrent callers never get the same folder. Its parents are created as needed."""
    base = Path(folder)
    if base.name in ("", ".", ".."):  # "." or "..": number the folder's real name
        base = base.resolve()
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder {base.parent}: {_reason(exc)}") from None
    k = 1
    while True:
        path = base if k == 1 else base.parent / f"{base.name}-{k}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            k += 1
        except OSError as exc:
            raise OutputError(f"cannot create the folder {path}: {_reason(exc)}") from None
