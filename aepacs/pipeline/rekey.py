"""Key rotation over the whole archive (``aepacs rekey``).

Selects, in batches from the index, every object whose key slot is not
under the active KEK (``--mode full``: also every object whose data key is
older than ``rekey.full_after_days``) and brings it under the active KEK:

``rewrap``
    read the blob's clear header, unwrap the data key with the old KEK and
    wrap it with the active one, then switch the index row's key slot
    (compare-and-swap, a batch per transaction). The blob file is not
    touched: its header, ciphertext, tag and content key stay; the current
    slot lives in the index row and every read applies it
    (:func:`aepacs.pipeline.retrieve.fetch_blob`).
``full``
    open the object, seal its plaintext again under a fresh data key and
    nonce, so nothing encrypted under the old data key remains.

Order of effects for one ``full`` object, so that a crash at any instant
leaves every object openable from what the index points to::

    record new blob as pending -> write new blob -> open it, compare plaintext hashes
      -> switch the row (CAS on the old blob key; same transaction: new blob leaves
         the pending list, old blob joins it) -> delete old blob -> forget it

Pending entries of a process that died are cleared by the next run
(:func:`recover`): a pending blob no row references is deleted. Each run
ends with the archive's orphan sweep (unreferenced blobs older than an
hour, such as those of an ingest killed between blob and index row). Two runs at
once, or a run next to ``aepacs serve``, meet only at the compare-and-swap:
the loser's work is discarded, never applied twice. A retrieval that reads a
row just before its switch finds the old blob gone and reads the row again.

The work runs in-process (``--workers 1``), on a local process pool
(default), or on a Dask distributed cluster (``--dask ADDRESS``); each
worker opens the archive from the same configuration.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from aepacs.config import Config
from aepacs.errors import AepacsError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.rekey_batch import Job, Outcome, recover, run_batch, work
from aepacs.pipeline.runners import dask_cluster, local_pool

log = logging.getLogger("aepacs.rekey")

MODES = ("rewrap", "full")
BATCH = 256
#: A ``full`` batch holds its new blobs in memory until they are synced: at most this many bytes.
BATCH_BYTES = 64 * 1024 * 1024


@dataclass
class Summary:
    """Totals of one run."""

    mode: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    swept: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        self.bytes_read += outcome.read
        self.bytes_written += outcome.written
        if outcome.status == "failed":
            self.failures.append((outcome.sop_uid, outcome.reason))

    @property
    def objects_per_s(self) -> float:
        return (self.done + self.skipped + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """The report printed at the end of a run."""
        mb_r, mb_w = self.bytes_read / 1e6, self.bytes_written / 1e6
        rate = (mb_r + mb_w) / self.seconds if self.seconds > 0 else 0.0
        out = [f"rekey {self.mode}: {self.done} done, {self.skipped} skipped, {self.failed} failed "
               f"in {self.seconds:.1f} s ({self.objects_per_s:.0f} objects/s)",
               f"read {mb_r:.1f} MB, wrote {mb_w:.1f} MB ({rate:.1f} MB/s); "
               f"removed {self.swept} unreferenced blobs"]
        out += [f"FAILED {uid}: {reason}" for uid, reason in self.failures]
        return out


def _batches(archive: Archive, *, sealed_before: float | None, limit: int | None) -> Iterator[list[Job]]:
    """The selected objects in batches, by primary key (each seen once per run)."""
    after, left = 0, limit
    active = archive.keyring.active_version
    while left is None or left > 0:
        rows = archive.index.rekey_candidates(active, sealed_before=sealed_before, after_pk=after,
                                              limit=BATCH if left is None else min(BATCH, left))
        if not rows:
            return
        after = rows[-1].pk
        if left is not None:
            left -= len(rows)
        batch: list[Job] = []
        nbytes = 0
        for r in rows:
            if batch and nbytes + r.blob_size > BATCH_BYTES:
                yield batch
                batch, nbytes = [], 0
            batch.append(Job(r.sop_uid, r.blob_key, r.blob_size, r.kek_version,
                             bytes(r.key_slot) if r.key_slot is not None else None))
            nbytes += r.blob_size
        yield batch


def _collect(finished: set[Any], summary: Summary, bar: Any) -> None:
    for fut in finished:
        outcomes = fut.result()
        for outcome in outcomes:
            summary.add(outcome)
        bar.update(len(outcomes))


def rekey(config: Config, *, mode: str = "rewrap", workers: int | None = None, dask: str | None = None,
          limit: int | None = None, dry_run: bool = False, verify: bool = False, progress: bool = True) -> Summary:
    """Bring every selected object under the active KEK; see the module docstring.

    Parameters
    ----------
    config : Config
        The archive's configuration (workers open the archive from it).
    mode : {"rewrap", "full"}
    workers : int, optional
        Local processes; 1 works in this process; default: the CPU count.
    dask : str, optional
        Address of a Dask scheduler (``tcp://host:8786``) to run the batches on.
    limit : int, optional
        Rekey at most this many objects.
    dry_run : bool
        Count what would be done; change nothing.
    verify : bool
        ``rewrap``: also authenticate each whole object under its new slot.

    Returns
    -------
    Summary
        One failure never stops the others; they are listed in the summary.
    """
    if mode not in MODES:
        raise AepacsError(f"unknown rekey mode {mode!r} (choose {', '.join(MODES)})")
    archive = Archive(config)
    summary = Summary(mode)
    started = time.perf_counter()
    try:
        recover(archive)
        sealed_before = None
        if mode == "full":
            sealed_before = time.time() - config.rekey.full_after_days * 86400.0
        total = archive.index.rekey_count(archive.keyring.active_version, sealed_before=sealed_before)
        total = min(total, limit) if limit is not None else total
        if dry_run:
            summary.skipped = total
            return summary
        batches = _batches(archive, sealed_before=sealed_before, limit=limit)
        workers = workers or os.cpu_count() or 1
        with tqdm(total=total, desc=f"rekey {mode}", unit="obj", disable=not progress) as bar:
            if dask is None and workers == 1:
                for jobs in batches:
                    for outcome in work(archive, jobs, mode, verify):
                        summary.add(outcome)
                    bar.update(len(jobs))
            else:
                submit, first_done, close = dask_cluster(dask) if dask else local_pool(workers)
                try:
                    inflight: set[Any] = set()
                    for jobs in batches:
                        inflight.add(submit(run_batch, config, jobs, mode, verify))
                        finished = first_done(inflight) if len(inflight) >= 2 * workers else \
                            {f for f in inflight if f.done()}
                        _collect(finished, summary, bar)
                        inflight -= finished
                    while inflight:
                        finished = first_done(inflight)
                        _collect(finished, summary, bar)
                        inflight -= finished
                finally:
                    close()
        recover(archive)
        # blobs no row references (a crash between an ingest's blob write and its index row),
        # once old enough that no write can still be on its way to the index
        summary.swept = archive.sweep_orphans()
    finally:
        summary.seconds = time.perf_counter() - started
        archive.close()
    return summary

