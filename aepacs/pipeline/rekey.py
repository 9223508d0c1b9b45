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

import hashlib
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from tqdm import tqdm

from aepacs.config import Config
from aepacs.crypto.seal import SLOT_BYTES, header_span, open_sealed, rewrap_slot, seal, with_slot
from aepacs.errors import AepacsError, OpenError, StoreError
from aepacs.pipeline.archive import Archive
from aepacs.store.atomic import _HOST, _pid_alive
from aepacs.store.blobs import blob_key

log = logging.getLogger("aepacs.rekey")

MODES = ("rewrap", "full")
BATCH = 256
#: A ``full`` batch holds its new blobs in memory until they are synced: at most this many bytes.
BATCH_BYTES = 64 * 1024 * 1024
#: A pending blob of a process on another host is cleared after this long (its liveness is unknown).
STALE_S = 3600.0
_HEAD_READ = 512  # bytes read for a rewrap: the header and slot of any ordinary object


@dataclass(frozen=True)
class Job:
    """One object to rekey, as the index showed it when selected."""

    sop_uid: str
    blob_key: str
    blob_size: int
    kek_version: int
    key_slot: bytes | None


@dataclass(frozen=True)
class Outcome:
    """What happened to one object."""

    sop_uid: str
    status: str  # done | skipped | failed
    read: int = 0
    written: int = 0
    reason: str = ""


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


def owner_id() -> str:
    """This process, as pending entries name it: ``HOST:PID``."""
    return f"{_HOST}:{os.getpid()}"


def _owner_gone(owner: str, created: float, now: float) -> bool:
    host, _, pid = owner.rpartition(":")
    if host == _HOST and pid.isdigit():
        return int(pid) != os.getpid() and not _pid_alive(int(pid))
    return now - created > STALE_S


def _clear(archive: Archive, key: str) -> None:
    """Delete a pending blob unless a row references it; then forget it (in that order)."""
    if not archive.index.referenced(key):
        archive.store.delete(key)
    archive.index.drop_pending(key)


def recover(archive: Archive) -> int:
    """Clear the pending blobs of rekey processes that died; return how many."""
    now, cleared = time.time(), 0
    for row in archive.index.pending():
        if _owner_gone(row.owner, row.created, now):
            _clear(archive, row.blob_key)
            cleared += 1
    if cleared:
        log.info("cleared %d blobs left pending by an interrupted rekey", cleared)
    return cleared


# -- per object ------------------------------------------------------------------------------

def _header_and_slot(archive: Archive, job: Job) -> tuple[bytes, bytes]:
    """The object's authenticated header and its current key slot (a header read only)."""
    head = archive.store.read_prefix(job.blob_key, _HEAD_READ)
    span = header_span(head, job.sop_uid)
    if len(head) < span + SLOT_BYTES:
        head = archive.store.read_prefix(job.blob_key, span + SLOT_BYTES)
    if len(head) < span + SLOT_BYTES:
        raise OpenError(job.sop_uid, "truncated sealed object")
    slot = job.key_slot if job.key_slot is not None else head[span:span + SLOT_BYTES]
    return head[:span], bytes(slot)


def _current_blob(archive: Archive, job: Job) -> bytes:
    """The sealed object with its current key slot.

    No content-key check: opening it authenticates every byte (GCM over the
    header and ciphertext, the wrap over the slot).
    """
    blob = archive.store.get(job.blob_key)
    return with_slot(blob, job.key_slot, job.sop_uid) if job.key_slot is not None else blob


def _moved(archive: Archive, job: Job) -> bool:
    """Whether the object's row no longer points at the blob this job was selected with."""
    row = archive.index.get(job.sop_uid)
    return row is None or row.blob_key != job.blob_key


def _failure(archive: Archive, job: Job, exc: AepacsError) -> Outcome:
    """A job that raised: skipped when another run switched the object meanwhile, else failed."""
    if isinstance(exc, StoreError) and _moved(archive, job):
        return Outcome(job.sop_uid, "skipped", reason="changed by another writer")
    return Outcome(job.sop_uid, "failed", reason=str(exc))


def rewrap_batch(archive: Archive, jobs: list[Job], *, verify: bool = False) -> list[Outcome]:
    """Rewrap the data keys of `jobs` and switch their slots in one index transaction."""
    ring = archive.keyring
    ring.refresh()  # rotated since the last batch: wrap under the newest key
    active = ring.active_version
    swaps, outcomes, sizes = [], [], {}
    for job in jobs:
        try:
            if verify:  # authenticate the whole object under its new slot before switching
                blob = _current_blob(archive, job)
                header, _ = open_sealed(blob, ring, name=job.sop_uid, expect_uid=job.sop_uid)
                aad, slot, read = header.aad, header.slot.pack(), len(blob)
            else:
                aad, slot = _header_and_slot(archive, job)
                read = len(aad) + SLOT_BYTES
            new = rewrap_slot(aad, slot, ring, name=job.sop_uid)
            if verify:
                open_sealed(with_slot(blob, new, job.sop_uid), ring, name=job.sop_uid)
            swaps.append((job.sop_uid, job.blob_key, job.kek_version, new, active))
            sizes[job.sop_uid] = read
        except AepacsError as exc:
            outcomes.append(_failure(archive, job, exc))
    switched = archive.index.swap_slots(swaps) if swaps else set()
    for sop_uid, *_ in swaps:
        if sop_uid in switched:
            outcomes.append(Outcome(sop_uid, "done", read=sizes[sop_uid], written=SLOT_BYTES))
        else:
            outcomes.append(Outcome(sop_uid, "skipped", reason="changed by another writer"))
    return outcomes


def full_batch(archive: Archive, jobs: list[Job], owner: str) -> list[Outcome]:
    """Seal each object of `jobs` again under a fresh data key; see the module docstring for the order.

    The index writes and the durability barrier are made once per batch, not
    once per object: pending list, blob writes, one sync, check, one switch.
    """
    ring, store, index = archive.keyring, archive.store, archive.index
    outcomes: list[Outcome] = []
    fresh: list[tuple[Job, bytes, str, int, bytes]] = []  # job, new blob, its key, bytes read, plaintext hash
    for job in jobs:
        try:
            blob = _current_blob(archive, job)
            header, payload = open_sealed(blob, ring, name=job.sop_uid, expect_uid=job.sop_uid)
            new_blob = bytes(seal(payload, object_uid=header.object_uid, study_uid=header.study_uid,
                                  codec=header.codec, keyring=ring))
            fresh.append((job, new_blob, blob_key(new_blob), len(blob), hashlib.sha256(payload).digest()))
        except AepacsError as exc:
            outcomes.append(_failure(archive, job, exc))
    index.add_pending([(key, job.sop_uid) for job, _, key, _, _ in fresh], owner)
    checked: list[tuple[Job, int, str, int, bytes]] = []
    for job, new_blob, key, read, digest in fresh:
        try:
            store.put(new_blob, sync=False)
            checked.append((job, len(new_blob), key, read, digest))
        except AepacsError as exc:
            _clear(archive, key)
            outcomes.append(Outcome(job.sop_uid, "failed", read=read, reason=f"new blob not written: {exc}"))
    store.sync()  # every new blob durable before any row points at it
    swaps = []
    del fresh
    for job, new_size, key, read, digest in checked:
        try:  # the stored blob opens to the same plaintext as the old one
            _, plain = open_sealed(store.get(key), ring, name=job.sop_uid, expect_uid=job.sop_uid)
            if hashlib.sha256(plain).digest() != digest:
                raise OpenError(job.sop_uid, "re-sealed object does not open to the same plaintext")
            swaps.append((job.sop_uid, job.blob_key, key, new_size, ring.active_version))
        except AepacsError as exc:
            _clear(archive, key)
            outcomes.append(Outcome(job.sop_uid, "failed", read=read, reason=f"{exc}; old blob kept"))
    switched = index.swap_blobs(swaps, owner) if swaps else set()
    read_of = {job.sop_uid: read for job, _, _, read, _ in checked}
    for sop_uid, old_key, new_key, size, _ in swaps:
        read = read_of[sop_uid]
        if sop_uid in switched:
            store.delete(old_key)
            outcomes.append(Outcome(sop_uid, "done", read=read, written=size))
        else:
            _clear(archive, new_key)
            outcomes.append(Outcome(sop_uid, "skipped", read=read, reason="changed by another writer"))
    index.drop_pending(*[old for uid, old, *_ in swaps if uid in switched])
    return outcomes


# -- workers ---------------------------------------------------------------------------------

_OPEN: dict[str, Archive] = {}


def _archive(config: Config) -> Archive:
    """One open archive per worker process and configuration."""
    key = f"{config.index_url}|{config.store_location}"
    archive = _OPEN.get(key)
    if archive is None:
        archive = _OPEN[key] = Archive(config)
    return archive


def _work(archive: Archive, jobs: list[Job], mode: str, verify: bool) -> list[Outcome]:
    if mode == "rewrap":
        return rewrap_batch(archive, jobs, verify=verify)
    return full_batch(archive, jobs, owner_id())


def run_batch(config: Config, jobs: list[Job], mode: str, verify: bool) -> list[Outcome]:
    """Rekey one batch in a worker process (the unit of work of the pool and of Dask)."""
    try:
        archive = _archive(config)
    except AepacsError as exc:
        return [Outcome(j.sop_uid, "failed", reason=f"worker cannot open the archive: {exc}") for j in jobs]
    return _work(archive, jobs, mode, verify)


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


_Runner = tuple[Callable[..., Any], Callable[[set[Any]], set[Any]], Callable[[], None]]


def _pool(workers: int) -> _Runner:
    """(submit, wait for the first done, close) of a local process pool."""
    import multiprocessing

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return (pool.submit, lambda fs: set(wait(fs, return_when=FIRST_COMPLETED).done),
            lambda: pool.shutdown(wait=True, cancel_futures=True))


def _dask(address: str) -> _Runner:
    """(submit, wait for the first done, close) on a Dask distributed scheduler."""
    try:
        from distributed import Client
        from distributed import wait as dask_wait
    except ImportError:
        raise AepacsError("--dask needs the 'distributed' package (pip install 'aepacs[dask]')") from None
    client = Client(address)
    return ((lambda fn, *a: client.submit(fn, *a, pure=False)),
            lambda fs: set(dask_wait(list(fs), return_when="FIRST_COMPLETED").done), client.close)


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
                    for outcome in _work(archive, jobs, mode, verify):
                        summary.add(outcome)
                    bar.update(len(jobs))
            else:
                submit, first_done, close = _dask(dask) if dask else _pool(workers)
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

