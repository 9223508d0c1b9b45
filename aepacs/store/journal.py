"""An append-only journal of sealed blobs: where a storage area puts a file while its program waits.

A writer appends each sealed blob to its current segment file (one write; no content hash, no new
directory entry, no index row) and a removal as a tombstone; one ``fdatasync`` of the segment
(:meth:`Journal.sync`) then makes any number of appends durable (a segment's directory entry is
synced when it is created, and a segment is synced again as it is rotated). A mover later puts the
blobs into the blob store and indexes them, then drops the segment. Segments of a process that died
are replayed by the next one.

A segment is ``seg-HOST-PID-TOKEN-N.aepj`` in the journal directory (owner-only; one writer process
at a time per directory, which must not be shared between hosts), a sequence of records::

    0   4   magic b"AEJ1"
    4   1   kind: 1 a blob, 2 a tombstone
    5   4   n, the length of what follows
    9   n   kind 1: u64 size of the file the blob holds, then the sealed blob;
            kind 2: the object UID removed (ASCII)

Only the last record of a segment can be torn (a crash in the middle of an append): a replay stops
there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aepacs.errors import StoreError, StoreFullError
from aepacs.store.atomic import _HOST, fsync_dir, pid_alive, private_dir

_MAGIC = b"AEJ1"
_HEAD = struct.Struct(">4sBI")
_SIZE = struct.Struct(">Q")
BLOB, TOMBSTONE = 1, 2
SUFFIX = ".aepj"


@dataclass(frozen=True)
class Entry:
    """Where one blob is in the journal."""

    segment: Path
    offset: int  # of the sealed blob (after the record's head and size)
    length: int
    source_size: int = field(compare=False)


class Journal:
    """The appending side: this process's current segment, and reads of any of its segments.

    Parameters
    ----------
    directory : Path
        The journal directory (created owner-only).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(Path(directory))
        #: this writer's mark in its segments' names (a process id is reused, in a container at each start)
        self.token = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._number = 0
        self.segment = self._open_next()

    def _open_next(self) -> Path:
        """Create the next segment and append to it from now on (the caller closes the one before)."""
        number = self._number + 1
        path = self.directory / f"seg-{_HOST}-{os.getpid()}-{self.token}-{number}{SUFFIX}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create ({exc.strerror})") from None
        try:
            fsync_dir(self.directory)  # its entry durable once: a sync of the segment covers its appends
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise StoreError(f"{self.directory}: cannot sync ({exc.strerror})") from None
        self._number, self._fd, self._size, self._torn = number, fd, 0, False
        return path

    @property
    def size(self) -> int:
        """Bytes in the current segment."""
        return self._size

    def append(self, blob: bytes | bytearray, source_size: int) -> Entry:
        """Append a sealed blob (holding a file of `source_size` bytes); where it is.

        Raises
        ------
        StoreFullError
            The disk is full: nothing appended.
        StoreError
            Any other write failure.
        """
        head = _HEAD.pack(_MAGIC, BLOB, _SIZE.size + len(blob)) + _SIZE.pack(source_size)
        with self._lock:
            offset = self._write(head, blob)
            return Entry(self.segment, offset + len(head), len(blob), source_size)

    def tombstone(self, object_uid: str) -> None:
        """Record that the blob of `object_uid` was removed (so a replay does not bring it back)."""
        uid = object_uid.encode("ascii")
        with self._lock:
            self._write(_HEAD.pack(_MAGIC, TOMBSTONE, len(uid)), uid)

    def _write(self, head: bytes, body: bytes | bytearray) -> int:
        if self._torn:  # a failed append could not be cut back: not after it
            self._replace_segment()
        offset = self._size
        try:
            written = os.writev(self._fd, [head, body])
            while written < len(head) + len(body):  # a short write: the rest, in order
                rest = (head + bytes(body))[written:]
                written += os.write(self._fd, rest)
        except OSError as exc:
            self._cut(offset)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(f"{self.directory}: disk full, nothing kept") from None
            raise StoreError(f"{self.segment}: append failed ({exc.strerror})") from None
        self._size += len(head) + len(body)
        return offset

    def _cut(self, offset: int) -> None:
        """After a failed append: the segment back to `offset`, so that later records follow the last
        whole one (a replay stops at a torn record); if it cannot be cut, appends go to a new segment."""
        try:
            os.ftruncate(self._fd, offset)
        except OSError:
            self._torn = True
            with contextlib.suppress(StoreError):  # (else tried again at the next append)
                self._replace_segment()

    def _replace_segment(self) -> None:
        fd = self._fd
        self.segment = self._open_next()
        os.close(fd)

    def sync(self) -> None:
        """Make every append so far durable (one ``fdatasync`` of the current segment: the segments before
        it were synced as they were rotated).

        Raises
        ------
        StoreError
            The sync failed.
        """
        with self._lock:  # (a rotation meanwhile closes the segment: this syncs a duplicate of it)
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise StoreError(f"{self.directory}: cannot sync the journal ({exc.strerror})") from None
        finally:
            os.close(fd)

    def rotate(self) -> Path:
        """Start a new segment; the one appended to until now (synced, for the mover to drop once moved).

        Raises
        ------
        StoreError
            The segment could not be synced or a new one made: appends go on to the current one.
        """
        with self._lock:  # synced before a later sync() can only reach the new one
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise StoreError(f"{self.segment}: cannot sync ({exc.strerror})") from None
            old = self.segment
            self._replace_segment()
            return old

    def read(self, entry: Entry) -> bytes:
        """The sealed blob at `entry` (:func:`read_entry`)."""
        return read_entry(entry)

    def drop(self, segment: Path) -> None:
        """Remove a rotated segment whose blobs were all moved."""
        segment.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the current segment (the segments stay for a replay)."""
        with self._lock:
            os.close(self._fd)


def read_entry(entry: Entry, limit: int | None = None) -> bytes:
    """The sealed blob at `entry` (its first `limit` bytes, where given).

    Raises
    ------
    StoreError
        Its segment was dropped (the blob was moved meanwhile) or is unreadable.
    """
    try:  # opened for each read: a segment dropped meanwhile is simply gone
        fd = os.open(entry.segment, os.O_RDONLY)
    except OSError:
        raise StoreError(f"{entry.segment}: no longer holds the blob at {entry.offset}") from None
    try:
        length = entry.length if limit is None else min(limit, entry.length)
        data = os.pread(fd, length, entry.offset)
    except OSError as exc:
        raise StoreError(f"{entry.segment}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) != length:
        raise StoreError(f"{entry.segment}: short read at {entry.offset}")
    return data


def records(segment: Path) -> Iterator[tuple[int, int, Entry | str]]:
    """The records of a segment in order, read one at a time: ``(BLOB, file size, where the blob is)`` or
    ``(TOMBSTONE, 0, object UID)``; stops at a torn last record."""
    with segment.open("rb") as f:
        end = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + _HEAD.size <= end:
            f.seek(pos)
            magic, kind, length = _HEAD.unpack(f.read(_HEAD.size))
            body = pos + _HEAD.size
            if magic != _MAGIC or kind not in (BLOB, TOMBSTONE) or body + length > end:
                return  # torn (or not a record): nothing after it was ever acknowledged
            if kind == BLOB and length >= _SIZE.size:
                (size,) = _SIZE.unpack(f.read(_SIZE.size))
                yield BLOB, size, Entry(segment, body + _SIZE.size, length - _SIZE.size, size)
            elif kind == TOMBSTONE:
                yield TOMBSTONE, 0, f.read(length).decode("ascii", "replace")
            pos = body + length


def orphaned_segments(directory: Path, own_token: str) -> list[Path]:
    """Segments in `directory` of writers that are gone, oldest first: to replay. A writer is gone when
    it is not the caller (`own_token`) and its process is not alive on this host, or it named another
    host (a container's hostname changes at each start)."""
    found = []
    for path in Path(directory).glob(f"seg-*{SUFFIX}"):
        parts = path.name[len("seg-"):-len(SUFFIX)].split("-")
        if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit() or parts[2] == own_token:
            continue
        host, pid = parts[0], int(parts[1])
        if host == _HOST and pid != os.getpid() and pid_alive(pid):
            continue
        found.append((path.stat().st_mtime, int(parts[3]), path))
    return [path for _, _, path in sorted(found)]


__all__ = ["BLOB", "TOMBSTONE", "Entry", "Journal", "orphaned_segments", "read_entry", "records"]
