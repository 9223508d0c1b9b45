"""One batch of ``aepacs rekey``: rewrap or fully reseal its objects, crash-safely (see :mod:`.rekey`).

Runs in the process that submitted it, in a pool worker or on a Dask worker
(:func:`run_batch` opens the archive from the configuration). Pending blobs
of a process that died are cleared by :func:`recover`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol

from aepacs.config import Config
from aepacs.crypto.seal import SLOT_BYTES, header_span, open_sealed, rewrap_slot, seal, with_slot
from aepacs.errors import AepacsError, OpenError, StoreError
from aepacs.pipeline.archive import Archive
from aepacs.store.atomic import _HOST, pid_alive
from aepacs.store.blobs import blob_key

log = logging.getLogger("aepacs.rekey")

#: A pending blob of a process on another host is cleared after this long (its liveness is unknown).
STALE_S = 3600.0
_HEAD_READ = 512  # bytes read for a rewrap: the header and slot of any ordinary object


@dataclass(frozen=True)
class Job:
    """One object to rekey, as the index showed it when selected."""

    #: the object's name, which its blob is bound to: an instance's SOP Instance UID, an attachment's
    #: object UID
    sop_uid: str
    blob_key: str
    blob_size: int
    kek_version: int
    key_slot: bytes | None
    #: its index table: ``instances`` or ``attachments``
    table: str = "instances"


@dataclass(frozen=True)
class Outcome:
    """What happened to one object."""

    sop_uid: str
    status: str  # done | skipped | failed
    read: int = 0
    written: int = 0
    reason: str = ""


def owner_id() -> str:
    """This process, as pending entries name it: ``HOST:PID``."""
    return f"{_HOST}:{os.getpid()}"


def _owner_gone(owner: str, created: float, now: float) -> bool:
    host, _, pid = owner.rpartition(":")
    if host == _HOST and pid.isdigit():
        return int(pid) != os.getpid() and not pid_alive(int(pid))
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
    return archive.index.blob_of(job.sop_uid, job.table) != job.blob_key


def _failure(archive: Archive, job: Job, exc: AepacsError) -> Outcome:
    """A job that raised: skipped when another run switched the object meanwhile, else failed."""
    if isinstance(exc, StoreError) and _moved(archive, job):
        return Outcome(job.sop_uid, "skipped", reason="changed by another writer")
    return Outcome(job.sop_uid, "failed", reason=str(exc))


def _table(jobs: list[Job]) -> str:
    """The one index table of a batch's objects (a batch is selected from one table)."""
    tables = {job.table for job in jobs}
    if len(tables) != 1:
        raise StoreError(f"a rekey batch spans index tables {sorted(tables)}")
    return tables.pop()


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
    switched = archive.index.swap_slots(swaps, _table(jobs)) if swaps else set()
    for sop_uid, *_ in swaps:
        if sop_uid in switched:
            outcomes.append(Outcome(sop_uid, "done", read=sizes[sop_uid], written=SLOT_BYTES))
        else:
            outcomes.append(Outcome(sop_uid, "skipped", reason="changed by another writer"))
    return outcomes


class Recode(Protocol):
    """What a full batch does to each payload between opening and sealing again (``aepacs reencode``)."""

    def __call__(self, payload: bytes, sop_uid: str) -> tuple[bytes, str, bytes]:
        """The new payload, its codec id, and :meth:`digest` of the old one."""
        ...

    def digest(self, payload: bytes, sop_uid: str) -> bytes:
        """What must stay the same: the SHA-256 of the instance a payload holds."""
        ...


def full_batch(archive: Archive, jobs: list[Job], owner: str, recode: Recode | None = None) -> list[Outcome]:
    """Seal each object of `jobs` again under a fresh data key; see the module docstring for the order.

    With `recode`, each payload is coded again on the way (``aepacs reencode``);
    the new blob must open to a payload holding the same instance.

    The index writes and the durability barrier are made once per batch, not
    once per object: pending list, blob writes, one sync, check, one switch.
    """
    ring, store, index = archive.keyring, archive.store, archive.index
    outcomes: list[Outcome] = []
    fresh: list[tuple[Job, bytes, str, int, bytes, str]] = []  # job, new blob, its key, bytes read, digest, codec
    for job in jobs:
        try:
            blob = _current_blob(archive, job)
            header, payload = open_sealed(blob, ring, name=job.sop_uid, expect_uid=job.sop_uid)
            if recode is None:
                codec, digest = header.codec, hashlib.sha256(payload).digest()
            else:
                payload, codec, digest = recode(payload, job.sop_uid)
            new_blob = bytes(seal(payload, object_uid=header.object_uid, study_uid=header.study_uid,
                                  codec=codec, keyring=ring))
            fresh.append((job, new_blob, blob_key(new_blob), len(blob), digest, codec))
        except AepacsError as exc:
            outcomes.append(_failure(archive, job, exc))
    index.add_pending([(key, job.sop_uid) for job, _, key, *_ in fresh], owner)
    checked: list[tuple[Job, int, str, int, bytes, str]] = []
    for job, new_blob, key, read, digest, codec in fresh:
        try:
            store.put(new_blob, sync=False)
            checked.append((job, len(new_blob), key, read, digest, codec))
        except AepacsError as exc:
            _clear(archive, key)
            outcomes.append(Outcome(job.sop_uid, "failed", read=read, reason=f"new blob not written: {exc}"))
    store.sync()  # every new blob durable before any row points at it
    swaps = []
    del fresh
    for job, new_size, key, read, digest, codec in checked:
        try:  # the stored blob opens to the same plaintext (recoded: the same instance) as the old one
            _, plain = open_sealed(store.get(key), ring, name=job.sop_uid, expect_uid=job.sop_uid)
            same = (hashlib.sha256(plain).digest() if recode is None else recode.digest(plain, job.sop_uid))
            if same != digest:
                raise OpenError(job.sop_uid, "re-sealed object does not open to the same "
                                + ("plaintext" if recode is None else "instance"))
            swaps.append((job.sop_uid, job.blob_key, key, new_size, ring.active_version, codec))
        except AepacsError as exc:
            _clear(archive, key)
            outcomes.append(Outcome(job.sop_uid, "failed", read=read, reason=f"{exc}; old blob kept"))
    switched = index.swap_blobs(swaps, owner, _table(jobs)) if swaps else set()
    read_of = {job.sop_uid: read for job, _, _, read, *_ in checked}
    for sop_uid, old_key, new_key, size, *_ in swaps:
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


def worker_archive(config: Config) -> Archive:
    """One open archive per worker process and configuration."""
    key = f"{config.index_url}|{config.store_location}"
    archive = _OPEN.get(key)
    if archive is None:
        archive = _OPEN[key] = Archive(config)
    return archive


def work(archive: Archive, jobs: list[Job], mode: str, verify: bool) -> list[Outcome]:
    if mode == "rewrap":
        return rewrap_batch(archive, jobs, verify=verify)
    return full_batch(archive, jobs, owner_id())


def run_batch(config: Config, mode: str, verify: bool, jobs: list[Job]) -> list[Outcome]:
    """Rekey one batch in a worker process (the unit of work of the pool and of Dask)."""
    try:
        archive = worker_archive(config)
    except AepacsError as exc:
        return [Outcome(j.sop_uid, "failed", reason=f"worker cannot open the archive: {exc}") for j in jobs]
    return work(archive, jobs, mode, verify)
