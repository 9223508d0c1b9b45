"""Atomic, durable file writes.

A file is written to a temporary name in its final directory, flushed and
fsync'ed, renamed over the final name, and the directory is fsync'ed, so a
reader sees either nothing or the whole file, and a crash right after the
call returns cannot lose it. A failed write removes its temporary file.

Temporary names carry the host and process id (``.tmp-HOST-PID-RANDOM``) so
that :func:`sweep_temporaries` can remove those left by a killed process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import socket
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from aepacs.errors import StoreError, StoreFullError

TMP_PREFIX = ".tmp-"
_HOST = socket.gethostname().replace("-", "_")


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or unlink inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def sync_filesystem(path: Path) -> None:
    """Make everything written to the file system holding `path` durable: every file's data, every
    directory entry (Linux ``syncfs``: one call, where a file's ``fsync`` and its directory's are two per
    file; elsewhere ``sync``).

    Raises
    ------
    StoreError
        `path` is gone, or the file system reports a write-back error (what was written may not be on
        disk).
    """
    if _LIBC is None:
        os.sync()
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StoreError(f"{path}: cannot sync its file system ({exc.strerror})") from None
    try:
        if _LIBC.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise StoreError(f"{path}: syncing its file system failed ({os.strerror(err)})")
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Create `path` and every missing parent with mode 0700 (never wider, whatever the umask).

    ``Path.mkdir(parents=True, mode=...)`` gives the mode to the last directory
    only; the parents it creates get the umask's default (often 0755). Existing
    directories are left as they are.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
    return path


def private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 unless it exists (a database its engine will then open)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def check_free(path: Path, incoming: int, reserve: int) -> None:
    """Refuse `incoming` more bytes on the file system of `path` unless `reserve` bytes stay free.

    Raises
    ------
    StoreFullError
        Naming the directory and how much is free.
    """
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free - incoming < reserve:
        raise StoreFullError(f"{path}: {free / 1e6:.0f} MB free, below the {reserve / 1e6:.0f} MB reserve; "
                             "refusing new data")


def temp_name(directory: Path) -> Path:
    """Return a fresh temporary path in `directory` naming this host and process."""
    return directory / f"{TMP_PREFIX}{_HOST}-{os.getpid()}-{secrets.token_hex(8)}"


def atomic_write(path: Path, data: bytes | bytearray, mode: int = 0o600, *, replace: bool = True,
                 tmp_dir: Path | None = None, sync: bool = True, owner: tuple[int, int] | None = None) -> None:
    """Write `data` to `path` atomically and durably.

    Parameters
    ----------
    path : Path
        Final location; its directory must exist.
    data : bytes
        The complete content.
    mode : int
        Permission bits of the new file (created with them, never wider).
    replace : bool
        When False, an existing `path` is left untouched and this is a no-op
        (content-addressed writes).
    tmp_dir : Path, optional
        Where the temporary file is written (same filesystem as `path`);
        default: `path`'s directory.
    sync : bool
        fsync the file and its directory before returning. Without it the
        write survives a crash of the process, not of the machine, until the
        caller syncs (the spool syncs in groups).
    owner : (uid, gid), optional
        Give the new file this owner before it becomes visible (root only):
        a file root rewrites for a service user stays that user's.

    Raises
    ------
    StoreFullError
        The disk is full; nothing is left behind.
    StoreError
        Any other I/O failure; nothing is left behind.
    """
    with _replacing(path, tmp_dir) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not replace and path.exists():
            tmp.unlink()
            return
        os.replace(tmp, path)
        if sync:
            fsync_dir(path.parent)


def atomic_lines(path: Path, lines: Iterable[str], mode: int = 0o600) -> int:
    """Write `lines` (each followed by a newline, UTF-8) to `path` atomically and durably, as they come.

    For files too large to hold in memory (a slot file of millions of objects): the lines go to a
    temporary file beside `path`, which replaces `path` only once the last one is written and synced.
    An exception raised while `lines` is consumed leaves `path` as it was and no temporary file.

    Returns
    -------
    int
        Lines written.

    Raises
    ------
    StoreFullError
        The disk is full; nothing is left behind.
    StoreError
        Any other I/O failure; nothing is left behind.
    """
    count = 0
    with _replacing(path) as tmp:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    return count


@contextlib.contextmanager
def _replacing(path: Path, tmp_dir: Path | None = None) -> Iterator[Path]:
    """A fresh temporary path to write `path`'s new content to (in `tmp_dir`, default `path`'s directory).

    Whatever fails in the block removes it; an OS error becomes :class:`StoreFullError` (disk full) or
    :class:`StoreError`, naming `path`.
    """
    tmp = temp_name(tmp_dir or path.parent)
    try:
        yield tmp
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(f"{path.parent}: disk full, nothing written") from None
            raise StoreError(f"{path}: write failed ({exc.strerror})") from None
        raise


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(directory: Path) -> int:
    """Remove temporary files in `directory` left by dead processes of this host.

    Returns
    -------
    int
        How many were removed.
    """
    removed = 0
    try:
        entries = list(directory.glob(f"{TMP_PREFIX}*"))
    except OSError:
        return 0
    for entry in entries:
        parts = entry.name[len(TMP_PREFIX):].split("-")
        if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit():
            continue
        if not pid_alive(int(parts[1])):
            try:
                entry.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed
