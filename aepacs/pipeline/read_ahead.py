"""Coded files decoded ahead of a program's reads: a series retrieval that finds its files ready.

A viewer fetches a series file after file; Orthanc reads them one at a time, in one thread. A file
coded by the learned codec costs a decode on each read (about 25 ms a CT slice on one core), where
a file sealed as it came costs a fraction of a millisecond. When the program reads a coded DICOM
file, :class:`ReadAhead` decodes the next files stored after it (files of a series arrive
together, so they follow one another in the index) on worker threads, on the cores the program's
thread leaves idle (the decoders release the GIL). The program's read of such a file then takes it
ready, waits for it if it is being decoded, or decodes it itself if no worker has started it yet.

Decoded files are held in memory, bounded, each taken once (the program keeps what it caches), and
keyed by the file's blob: a file coded, re-sealed or removed meanwhile is not taken (the reader opens
its row again). Plaintext stays in the memory of the process that holds the keyring; none is written.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("aepacs.storage_area")

#: Files decoded ahead of the reader, per worker.
DEPTH_PER_WORKER = 4


class ReadAhead:
    """Decodes coded files ahead of a program's reads (see the module).

    Parameters
    ----------
    decode : callable
        ``decode(row) -> bytes``: the file of an attachment row, opened and decoded (raises as the storage
        area's read does).
    following : callable
        ``following(pk, limit) -> rows``: the DICOM rows stored after row `pk`, in order.
    coded : callable
        ``coded(codec) -> bool``: whether a row's codec needs decoding (a file sealed as it came does not).
    workers : int
        Decoding threads (the cores the program's own threads leave idle).
    max_bytes : int
        At most this much decoded ahead and not yet taken (by the files' sizes as stored).
    """

    def __init__(self, decode: Callable[[Any], bytes], following: Callable[[int, int], list[Any]],
                 coded: Callable[[str], bool], *, workers: int, max_bytes: int = 256 << 20) -> None:
        self._decode, self._following, self._coded = decode, following, coded
        self.depth = max(1, workers) * DEPTH_PER_WORKER
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="aepacs-read-ahead")
        self._ahead: OrderedDict[str, tuple[str, int, Future[bytes]]] = OrderedDict()  # uid -> blob key, size, file
        self._bytes = 0
        self._lock = threading.Lock()
        self._closed = False
        #: reads that found their file decoded ahead (ready, or under way)
        self.taken = 0

    def take(self, uid: str, blob_key: str) -> bytes | None:
        """The decoded file `uid` if it was read ahead from blob `blob_key` (waiting for a decode under way);
        None when it was not, or its decode failed or had not started (the caller reads it itself)."""
        with self._lock:
            held = self._ahead.pop(uid, None)
            if held is None:
                return None
            self._bytes -= held[1]
        key, _, future = held
        if key != blob_key or future.cancel():  # switched meanwhile, or queued: the reader is as quick
            return None
        try:
            data = future.result()
        except (CancelledError, Exception) as exc:  # noqa: BLE001 -- the reader's own read names the failure
            log.debug("read ahead of %s failed: %s", uid, exc)
            return None
        self.taken += 1
        return data

    def under_way(self, uid: str) -> bool:
        """Whether file `uid` is decoded, or being decoded, ahead (not merely queued)."""
        with self._lock:
            held = self._ahead.get(uid)
        return held is not None and (held[2].running() or held[2].done())

    def after(self, pk: int) -> None:
        """The program read coded file row `pk`: decode the files stored after it that are not under way."""
        if self._closed:
            return
        rows = self._following(pk, self.depth)
        with self._lock:
            for row in rows:
                if row.object_uid in self._ahead or not self._coded(row.codec):
                    continue
                while self._ahead and self._bytes + row.source_size > self.max_bytes:  # the oldest: never read
                    _, size, stale = self._ahead.popitem(last=False)[1]
                    self._bytes -= size
                    stale.cancel()
                self._ahead[row.object_uid] = (row.blob_key, row.source_size, self._pool.submit(self._decode, row))
                self._bytes += row.source_size

    def forget(self, uid: str) -> None:
        """Drop what was read ahead of file `uid` (removed)."""
        with self._lock:
            held = self._ahead.pop(uid, None)
            if held is not None:
                self._bytes -= held[1]
                held[2].cancel()

    def close(self) -> None:
        """Stop decoding ahead (the decodes under way are let finish) and drop what was decoded."""
        self._closed = True
        with self._lock:
            for _, _, future in self._ahead.values():
                future.cancel()
            self._ahead.clear()
            self._bytes = 0
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["ReadAhead"]
