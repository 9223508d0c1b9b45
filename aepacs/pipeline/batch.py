"""The driver of the archive's batch jobs (``aepacs rekey``, ``aepacs reencode``): select, run, count.

A job selects its objects from the index in batches (:func:`batches`), runs
each batch in this process, on a local process pool or on a Dask cluster
(:func:`run`, with :mod:`aepacs.runners`), and adds what happened to each object
to a :class:`Summary`. The per-object work is the job's own
(:mod:`.rekey_batch`, :mod:`.reencode`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from aepacs.config import Config
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.rekey_batch import Job, Outcome, recover
from aepacs.runners import completed

#: Objects selected from the index per query.
BATCH = 256
#: A batch that seals again holds its new blobs in memory until they are synced: at most this many bytes.
BATCH_BYTES = 64 * 1024 * 1024


@dataclass
class Summary:
    """Totals of one run."""

    job: str  # what ran, as the report names it: "rekey full", "reencode ae:ct@3 -> htj2k"
    done: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    swept: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
        out = [f"{self.job}: {self.done} done, {self.skipped} skipped, {self.failed} failed "
               f"in {self.seconds:.1f} s ({self.objects_per_s:.0f} objects/s)",
               f"read {mb_r:.1f} MB, wrote {mb_w:.1f} MB ({rate:.1f} MB/s); "
               f"removed {self.swept} unreferenced blobs", *self.notes]
        out += [f"FAILED {uid}: {reason}" for uid, reason in self.failures]
        return out


def batches(selects: Sequence[Callable[[int, int], list[Any]]], limit: int | None) -> Iterator[list[Job]]:
    """The objects each ``select(after_pk, n)`` gives, one select after the other (an index table
    each), in batches of at most :data:`BATCH_BYTES` (by primary key: each seen once per run)."""
    left = limit
    for select in selects:
        after = 0
        while left is None or left > 0:
            rows = select(after, BATCH if left is None else min(BATCH, left))
            if not rows:
                break
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
                                 bytes(r.key_slot) if r.key_slot is not None else None, r.kind))
                nbytes += r.blob_size
            yield batch


def run(jobs: Iterator[list[Job]], summary: Summary, *, total: int, here: Callable[[list[Job]], list[Outcome]],
        remote: Callable[..., list[Outcome]], args: tuple[Any, ...], workers: int, dask: str | None,
        progress: bool) -> None:
    """Run every batch of `jobs` and add its outcomes to `summary`.

    With one worker and no Dask address, ``here(batch)`` runs each batch in
    this process; otherwise ``remote(*args, batch)`` (a module-level function:
    it is pickled) runs on a local pool of `workers` processes or on the Dask
    scheduler at `dask`, at most two batches a worker in flight.
    """
    with tqdm(total=total, desc=summary.job, unit="obj", disable=not progress) as bar:
        done = map(here, jobs) if dask is None and workers == 1 else \
            completed(remote, args, jobs, workers=workers, dask=dask, window=2 * workers)
        for outcomes in done:
            for outcome in outcomes:
                summary.add(outcome)
            bar.update(len(outcomes))


@dataclass(frozen=True)
class Plan:
    """What a job selects, once the archive is open: how many objects, how to page through them
    (``select(after_pk, n)``, one for each index table it covers), and the work on one batch in this
    process."""

    total: int
    selects: tuple[Callable[[int, int], list[Any]], ...]
    here: Callable[[list[Job]], list[Outcome]]


def run_job(config: Config, summary: Summary, plan: Callable[[Archive], Plan], *, limit: int | None,
            dry_run: bool, remote: Callable[..., list[Outcome]], args: tuple[Any, ...], workers: int | None,
            dask: str | None, progress: bool) -> Summary:
    """A whole batch job: clear what dead runs left pending, plan, run every batch (:func:`run`; one
    worker per core unless told), clear again, sweep unreferenced blobs; `summary` filled in."""
    archive = Archive(config)
    started = time.perf_counter()
    try:
        recover(archive)
        planned = plan(archive)
        total = min(planned.total, limit) if limit is not None else planned.total
        if dry_run:
            summary.skipped = total
            return summary
        run(batches(planned.selects, limit), summary, total=total, here=planned.here, remote=remote, args=args,
            workers=workers or os.cpu_count() or 1, dask=dask, progress=progress)
        recover(archive)
        # blobs no row references (a crash between an ingest's blob write and its index row),
        # once old enough that no write can still be on its way to the index
        summary.swept = archive.sweep_orphans()
    finally:
        summary.seconds = time.perf_counter() - started
        archive.close()
    return summary
