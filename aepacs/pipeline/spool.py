"""The ingest spool: received instances, sealed as they came, awaiting the archive.

The archive SCP acknowledges a C-STORE once the instance has been checked,
sealed (AES-256-GCM, the received bytes as they are) and written here. The
write is atomic, so it survives a crash of the process at once. A flusher
thread fsyncs new entries in groups every few milliseconds, which bounds
what a power cut can take. Worker processes (:mod:`aepacs.pipeline.workers`)
then archive each entry (index, route codec, blob store;
:func:`aepacs.pipeline.ingest.ingest`) and remove it. A restart archives
whatever is still here, so nothing acknowledged is lost.

An entry is a sealed object whose codec field is ``spool`` and whose payload
is the Part 10 stream exactly as received.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import open_sealed, seal
from aepacs.store.atomic import atomic_write, check_free, fsync_dir, private_dir, sweep_temporaries

log = logging.getLogger("aepacs.spool")

CODEC = "spool"
SUFFIX = ".aepx"
FLUSH_INTERVAL_S = 0.02
#: What an archived blob and its index row may take beyond the spool entry's size (manifest, key slot, row).
ENTRY_SLACK = 16_384


def seal_entry(data: bytes, sop_uid: str, study_uid: str, keyring: Keyring) -> bytearray:
    """Seal a received Part 10 stream as it is, bound to its UIDs."""
    return seal(data, object_uid=sop_uid, study_uid=study_uid, codec=CODEC, keyring=keyring)


def read_entry(path: Path, keyring: Keyring) -> tuple[str, bytes]:
    """Return (SOP Instance UID, the Part 10 stream as received) of a spool entry."""
    header, payload = open_sealed(path.read_bytes(), keyring, name=str(path))
    return header.object_uid, payload


class Spool:
    """A directory of sealed, not yet archived instances, with grouped fsync.

    Parameters
    ----------
    path : Path
        The spool directory (created mode 0700).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        private_dir(self.path)
        sweep_temporaries(self.path)
        self._pending: list[Path] = []
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        for entry in self.entries():
            try:
                self._sizes[entry.name] = entry.stat().st_size
            except FileNotFoundError:
                continue
        self._waiting_bytes = sum(self._sizes.values())
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def start(self) -> None:
        """Start the flusher thread."""
        self._flusher = threading.Thread(target=self._flush_loop, name="aepacs-spool-flush", daemon=True)
        self._flusher.start()

    def put(self, blob: bytes | bytearray, sop_uid: str) -> Path:
        """Write a sealed entry (atomically; fsync'ed by the flusher shortly after).

        The name orders entries by arrival and groups them by SOP Instance UID
        (hashed), so entries of one instance are archived in arrival order.
        """
        uid_tag = hashlib.sha256(sop_uid.encode()).hexdigest()[:16]
        path = self.path / f"{time.time_ns():020d}-{uid_tag}-{secrets.token_hex(4)}{SUFFIX}"
        atomic_write(path, blob, mode=0o600, sync=False)
        with self._lock:
            self._pending.append(path)
            self._sizes[path.name] = len(blob)
            self._waiting_bytes += len(blob)
        return path

    def release(self, path: Path) -> None:
        """Forget an entry that left the spool (archived, or kept in ``failed/``)."""
        with self._lock:
            self._waiting_bytes -= self._sizes.pop(path.name, 0)

    def admission_need(self, size: int) -> int:
        """Free bytes a new entry of `size` needs beyond the reserve: itself, its archived blob,
        and the blob of every entry still waiting.

        Archiving writes an entry's blob before it removes the entry, and a blob is
        never larger than its entry (plus :data:`ENTRY_SLACK`); admitting only what
        leaves room for all of them is what lets every acknowledged instance reach
        the archive while the disk stays at its reserve (``docs/CONFORMANCE.md``).
        """
        return 2 * (size + ENTRY_SLACK) + self._waiting_bytes + ENTRY_SLACK * len(self._sizes)

    def check_room(self, incoming: int, reserve: int) -> None:
        """Refuse a new entry of `incoming` bytes unless `reserve` bytes stay free on the spool's own
        disk (local to this node, whatever holds the blobs: an object store has no free-space figure).

        Raises
        ------
        StoreFullError
        """
        check_free(self.path, incoming + ENTRY_SLACK if incoming else 0, reserve)

    def entries(self) -> list[Path]:
        """Entries waiting to be archived, oldest first."""
        return sorted(p for p in self.path.glob(f"*{SUFFIX}"))

    def flush(self) -> None:
        """fsync every entry written since the last flush, then the directory."""
        with self._lock:
            pending, self._pending = self._pending, []
        for path in pending:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # already archived and removed
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if pending:
            fsync_dir(self.path)

    def close(self) -> None:
        """Stop the flusher after a last flush."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except OSError as exc:  # keep trying; the entries stay in the spool
                log.error("spool flush failed: %s", exc)
