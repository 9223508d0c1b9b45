"""Convert spooled objects to their route's final codec: fetch → open → encode → seal → swap.

The archive SCP acknowledges an instance once it is sealed in the fast spool
form and durable (:data:`aepacs.pipeline.ingest.SPOOL`). :func:`convert`
then re-encodes it with the route's codec. The new blob is written beside the
old, the index row is switched by compare-and-swap, and the old blob is
removed, in that order. A crash at any instant therefore leaves the row
pointing at a whole blob that opens: at worst one unreferenced blob remains.

:class:`SpoolConverter` runs conversions in worker processes (no contention
with the server's threads for the GIL) and resumes whatever is still spooled
when it starts, so a restart finishes the work.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor

from aepacs.config import Config
from aepacs.errors import AepacsError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import seal_bytes
from aepacs.pipeline.retrieve import fetch
from aepacs.store.index import FINAL, SPOOLED, BlobRef, Index

log = logging.getLogger("aepacs.convert")


def convert(archive: Archive, sop_uid: str) -> bool:
    """Re-encode one spooled instance with its route's codec.

    Returns
    -------
    bool
        True when converted; False when it was not (or no longer) spooled.
    """
    row = archive.index.get(sop_uid)
    if row is None or row.state != SPOOLED:
        return False
    data = fetch(archive, sop_uid)
    encoded, blob = seal_bytes(data, archive.keyring, archive.config)
    key = archive.store.put(blob)
    ref = BlobRef(codec=encoded.codec, kek_version=archive.keyring.active_version, blob_key=key,
                  blob_size=len(blob), source_size=row.source_size, source_sha256=row.source_sha256)
    if archive.index.swap_blob(sop_uid, row.blob_key, ref, FINAL):
        archive.store.delete(row.blob_key)
        return True
    archive.store.delete(key)  # another converter won
    return False


_WORKER_ARCHIVE: Archive | None = None


def _init_worker(config: Config) -> None:
    global _WORKER_ARCHIVE
    os.nice(10)  # conversion is background work: the network and the spool writes come first
    _WORKER_ARCHIVE = Archive(config)


def _convert_in_worker(sop_uid: str) -> bool:
    assert _WORKER_ARCHIVE is not None
    return convert(_WORKER_ARCHIVE, sop_uid)


class SpoolConverter:
    """Background conversion of spooled instances by a pool of worker processes.

    Parameters
    ----------
    config : Config
        Workers open their own archive from it (keyring passphrase from the
        environment, as the server's).
    workers : int
        Worker processes; 0 means one per CPU core but one, which is left to
        the network and the spool writes.
    """

    def __init__(self, config: Config, workers: int = 0) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 1) - 1)
        self.index = Index(config.index_url)
        self._config = config
        self._pool: ProcessPoolExecutor | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._failed: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="aepacs-convert", daemon=True)
        self.converted = 0

    def start(self) -> None:
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(self._config,))
        self._thread.start()

    def wake(self) -> None:
        """Tell the converter new spooled work is there."""
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing convertible is spooled; True unless `timeout` ran out."""
        self.wake()
        return self._idle.wait(timeout)

    def stop(self) -> None:
        """Finish the conversions under way and stop; what is still spooled stays spooled."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        assert self._pool is not None
        while not self._stop.is_set():
            self._wake.clear()
            uids = [u for u in self.index.spooled(limit=self.workers * 16 + len(self._failed))
                    if u not in self._failed]
            if not uids:
                self._idle.set()
                self._wake.wait(5.0)
                continue
            futures = {self._pool.submit(_convert_in_worker, uid): uid for uid in uids}
            for future, uid in futures.items():
                try:
                    if future.result():
                        self.converted += 1
                except (AepacsError, OSError) as exc:
                    log.error("instance %s: conversion failed, stays in spool form: %s", uid, exc)
                    self._failed.add(uid)
                except Exception as exc:  # a worker died, or the pool is shutting down
                    if self._stop.is_set():
                        return
                    log.error("instance %s: conversion failed, stays in spool form: %s: %s",
                              uid, type(exc).__name__, exc)
                    self._failed.add(uid)
