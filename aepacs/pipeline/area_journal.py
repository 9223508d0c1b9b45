"""Files of a storage area still in its journal: appended while the program waits, moved behind it.

Where a file's create would cost a content hash, a new blob file and an index row before the program
hears back, :class:`PendingFiles` appends the sealed blob to the journal (:mod:`aepacs.store.journal`)
and keeps where it is in memory; reads and removals look here first. A mover thread then, when the
program is quiet for a moment or the segment is large: rotates the segment → puts each blob into
the blob store → syncs → indexes them all in one transaction → forgets them → drops the segment. A
crash anywhere leaves the segment, which the next process replays (:meth:`PendingFiles.replay`)
before it serves: blobs put again (the same content keys), rows already there kept, tombstones
applied.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aepacs.crypto.seal import HEAD_BYTES, SealedHeader, read_header
from aepacs.errors import AepacsError, StoreError
from aepacs.pipeline.archive import Archive
from aepacs.store.attachments import Attachments
from aepacs.store.index import BlobRef
from aepacs.store.journal import BLOB, Entry, Journal, orphaned_segments, read_entry, records

log = logging.getLogger("aepacs.storage_area")

#: Move the journal once the program has stored nothing for this long ...
IDLE_S = 0.5
#: ... or once its segment holds this much.
MAX_SEGMENT = 512 << 20


def _content_type(object_uid: str) -> int:
    return int(object_uid.split(".", 2)[1])


class PendingFiles:
    """The files of a storage area in its journal.

    Parameters
    ----------
    archive : Archive
        Where they move to: blob store and index.
    rows : Attachments
        The storage area's rows.
    directory : Path
        The journal directory.
    forget : callable
        ``forget(object_uid)``: remove an indexed file (its row, its blob), for one removed while it
        was being moved.
    indexed : callable, optional
        ``indexed(object_uid, blob_key)``: told of each file moved (where reads will find it).
    """

    def __init__(self, archive: Archive, rows: Attachments, directory: Path,
                 forget: Callable[[str], None], indexed: Callable[[str, str], None] | None = None) -> None:
        self.archive, self.rows, self.forget, self.indexed = archive, rows, forget, indexed
        self.journal = Journal(directory)
        self._entries: dict[str, Entry] = {}
        self._moving: set[str] = set()
        self._removed_while_moving: set[str] = set()
        self._lock = threading.Lock()
        self._moves = threading.Lock()  # one move at a time
        self._last = time.monotonic()
        self._closed = threading.Event()
        self._mover = threading.Thread(target=self._move_loop, name="aepacs-journal", daemon=True)
        self._mover.start()

    # -- the storage area's calls ----------------------------------------------------------
    def add(self, object_uid: str, blob: bytes | bytearray, source_size: int) -> None:
        """Append the sealed blob of a new file (durable at the storage area's next sync)."""
        entry = self.journal.append(blob, source_size)
        with self._lock:
            self._entries[object_uid] = entry
            self._last = time.monotonic()

    def sync(self) -> None:
        """Make every file added so far durable (raises :class:`~aepacs.errors.StoreError` as
        :meth:`~aepacs.store.journal.Journal.sync`)."""
        self.journal.sync()

    def read(self, object_uid: str) -> bytes | None:
        """The sealed blob of a file still in the journal; None when it is not (any more): read its row."""
        with self._lock:
            entry = self._entries.get(object_uid)
        if entry is None:
            return None
        try:
            return self.journal.read(entry)
        except StoreError:  # moved and dropped meanwhile: its row is there
            return None

    def remove(self, object_uid: str) -> bool:
        """Forget a file still in the journal (a tombstone keeps a replay from bringing it back); False
        when it is not there (its row is the caller's to remove)."""
        with self._lock:
            if self._entries.pop(object_uid, None) is None:
                return False
            if object_uid in self._moving:  # its row is being written: removed once the move is done
                self._removed_while_moving.add(object_uid)
        self.journal.tombstone(object_uid)
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- moving ---------------------------------------------------------------------------
    def _move_loop(self) -> None:
        while not self._closed.wait(0.1):
            with self._lock:
                waiting = bool(self._entries)
                idle = time.monotonic() - self._last >= IDLE_S
            if waiting and (idle or self.journal.size >= MAX_SEGMENT):
                try:
                    self.move()
                except AepacsError as exc:  # kept in the journal; tried again on the next round
                    log.error("storage area: journal not moved yet: %s", exc)

    def move(self) -> int:
        """Move every file of the journal's earlier segments into the blob store and the index (the
        current one rotated first); how many."""
        with self._moves:
            rotated = self.journal.rotate()
            current = self.journal.segment
            with self._lock:
                batch = {uid: e for uid, e in self._entries.items() if e.segment != current}
                self._moving = set(batch)
            try:
                keys = self._index(batch)
            except BaseException:
                with self._lock:
                    self._moving = set()
                raise
            if self.indexed is not None:
                for uid, key in keys.items():
                    self.indexed(uid, key)
            with self._lock:
                for uid, entry in batch.items():
                    if self._entries.get(uid) == entry:
                        del self._entries[uid]
                removed, self._removed_while_moving, self._moving = self._removed_while_moving, set(), set()
            for segment in {e.segment for e in batch.values()} | {rotated}:
                self.journal.drop(segment)
        for uid in removed:
            self.forget(uid)
        return len(batch)

    def _index(self, entries: dict[str, Entry]) -> dict[str, str]:
        """Put the blobs of `entries` (object UID -> where in the journal) into the store, read one at a
        time (a segment may hold hundreds of megabytes), sync, then index them all; their content keys."""
        store, refs = self.archive.store, []
        for uid, entry in entries.items():
            blob = self.journal.read(entry)
            header = read_header(blob, uid)
            key = store.put(blob, sync=False)
            refs.append((uid, _content_type(uid),
                         BlobRef(header.codec, header.kek_version, key, len(blob), entry.source_size, "")))
        if refs:
            store.sync()  # every blob durable before a row points at it
            self.rows.add_many(refs)
        return {uid: ref.blob_key for uid, _, ref in refs}

    def replay(self) -> int:
        """Move what dead processes left in the journal directory (before serving); how many files."""
        moved = 0
        for segment in orphaned_segments(self.journal.directory, self.journal.token):
            live, gone = segment_files(segment)
            files = {uid: entry for uid, (entry, _) in live.items()}
            self._index(files)
            for uid in gone:
                if self.rows.get(uid) is not None:  # moved before its removal was: remove it now
                    self.forget(uid)
            segment.unlink()
            moved += len(files)
            log.warning("storage area: replayed %d files from %s", len(files), segment.name)
        return moved

    def close(self) -> None:
        """Stop the mover after moving everything (a clean stop leaves no journal; what cannot be moved
        now stays there for the next start to replay)."""
        self._closed.set()
        self._mover.join()
        try:
            self.move()
        except AepacsError as exc:
            log.error("storage area: journal left for the next start: %s", exc)
        self.journal.close()
        if not len(self):
            self.journal.segment.unlink(missing_ok=True)


def segment_files(segment: Path) -> tuple[dict[str, tuple[Entry, SealedHeader]], list[str]]:
    """What a journal segment holds once its tombstones are applied: object UID -> where its blob is and
    its clear header (the blob's first bytes read alone: the whole blob is read once, when moved), and the
    UIDs its tombstones remove.

    Raises
    ------
    OpenError
        A blob's header is malformed or does not match its record's length.
    StoreError
        The segment cannot be read.
    """
    files: dict[str, tuple[Entry, SealedHeader]] = {}
    gone: list[str] = []
    for kind, _, where in records(segment):
        if kind == BLOB:
            assert isinstance(where, Entry)
            header = read_header(read_entry(where, HEAD_BYTES), str(segment), total=where.length)
            files[header.object_uid] = (where, header)
        else:
            assert isinstance(where, str)
            files.pop(where, None)
            gone.append(where)
    return files, gone


__all__ = ["PendingFiles", "segment_files"]
