"""Key rotation over the whole archive (``aepacs rekey``).

Selects, in batches from the index, every object (the archive's instances, then the files other
programs keep in it: Orthanc's storage area) whose key slot is not
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

import functools
import logging
import time
from typing import Any

from aepacs.config import Config
from aepacs.errors import AepacsError
from aepacs.pipeline import batch
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.batch import Summary
from aepacs.pipeline.rekey_batch import run_batch, work
from aepacs.store.schema import OBJECT_TABLES

log = logging.getLogger("aepacs.rekey")

MODES = ("rewrap", "full")


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
    sealed_before = time.time() - config.rekey.full_after_days * 86400.0 if mode == "full" else None

    def plan(archive: Archive) -> batch.Plan:
        active = archive.keyring.active_version
        return batch.Plan(sum(archive.index.rekey_count(active, sealed_before=sealed_before, table=t.name)
                              for t in OBJECT_TABLES),
                          tuple(functools.partial(_candidates, archive, active, sealed_before, t.name)
                                for t in OBJECT_TABLES),
                          lambda jobs: work(archive, jobs, mode, verify))

    return batch.run_job(config, Summary(f"rekey {mode}"), plan, limit=limit, dry_run=dry_run, remote=run_batch,
                         args=(config, mode, verify), workers=workers, dask=dask, progress=progress)


def _candidates(archive: Archive, active: int, sealed_before: float | None, table: str, after: int,
                n: int) -> list[Any]:
    return archive.index.rekey_candidates(active, sealed_before=sealed_before, after_pk=after, limit=n, table=table)
