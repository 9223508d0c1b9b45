"""Archiving the spool: worker processes that run ingest on each acknowledged entry, oldest first.

An entry is archived (index, route codec, blob store;
:func:`aepacs.pipeline.ingest.ingest`) and then removed from the spool; what
cannot be archived as an instance is moved aside, never deleted. The pool runs
under SCHED_IDLE; a catch-up worker at normal priority bounds the lag
(:class:`SpoolWorker`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from aepacs.config import Config
from aepacs.errors import InputError, KeyringError, OpenError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.codecs import warm_up
from aepacs.pipeline.ingest import IngestResult, ingest
from aepacs.pipeline.spool import Spool, read_entry

log = logging.getLogger("aepacs.spool")

# -- archiving the spool, in worker processes ------------------------------------------------
_WORKER: tuple[Archive, Path] | None = None  # (archive, failed-entry directory) of this worker process


def _init_worker(config: Config, idle: bool) -> None:
    """Open the archive and warm the codecs at normal priority (a second of CPU, once), then step back.

    Warming up under SCHED_IDLE would leave a busy host's first learned-route
    instances waiting minutes for model loading and numba's compiled code.
    """
    global _WORKER
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), name="aepacs-parent-watch", daemon=True).start()
    _WORKER = (Archive(config), config.spool_path / "failed")
    warm_up(config)
    if idle:
        run_in_background()


def run_in_background() -> None:
    """Run this worker only on CPU time the network leaves: SCHED_IDLE where there is one, else nice 10.

    A received instance needs several thread wake-ups in the server (socket,
    DIMSE reactor, handler); under SCHED_IDLE each one preempts a worker at
    once, where nice 10 still leaves them waiting up to a scheduler slice.
    Under a load that keeps every core busy, archiving waits: the entries stay
    sealed in the spool, and the store's free-space reserve (0xA700) bounds it.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(10)


def exit_with_parent(parent: int) -> None:
    """End this worker once the server that started it is gone (killed, say, by the OOM killer).

    A pool worker holds both ends of its task queue, so it never sees the parent
    close it and would otherwise wait forever. Leaving mid-entry is safe: the
    entry stays in the spool and the restarted server archives it.
    """
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def archive_entry(archive: Archive, path: Path, failed_dir: Path) -> IngestResult:
    """Archive one spool entry (index, route codec, blob store), then remove it.

    An entry that can no longer be archived as an instance (it passed the checks
    when it was acknowledged, so this means a bug) is moved to `failed_dir`,
    never deleted.

    Returns
    -------
    IngestResult
        What :func:`~aepacs.pipeline.ingest.ingest` did (status added / same /
        conflict), or status ``failed``.
    """
    sop_uid, data = read_entry(path, archive.keyring)  # FileNotFoundError: a copy of this task finished first
    try:
        result = ingest(archive, data, expect_uid=sop_uid, acknowledged=True)
    except InputError as exc:
        failed_dir.mkdir(mode=0o700, exist_ok=True)
        os.replace(path, failed_dir / path.name)
        log.error("spool entry %s (%s) cannot be archived, kept in %s: %s", path.name, sop_uid, failed_dir, exc)
        return IngestResult(sop_uid, "failed")
    path.unlink(missing_ok=True)  # a copy of this task may have removed it already (SpoolWorker)
    return result


RETRY_AFTER_S = 30.0  #: the wait before an entry that failed is tried again
RETRY_AT_MOST_S = 3600.0  #: the longest wait, for an entry that fails the same way until someone acts


def retry_delay(exc: BaseException, failures: int) -> float:
    """Seconds before a spool entry whose archiving failed `failures` times in a row is tried again.

    A full store, a busy index or a worker's own fault pass: such an entry is
    tried again every 30 s. One that cannot be opened (tampered on disk, or
    sealed under a key the keyring no longer holds) fails the same way until an
    operator acts: its waits double up to an hour, so that the log names it once
    an hour rather than every 30 s. It stays in the spool (and in its depth)
    throughout, and is archived at its next try once the key is back.
    """
    if not isinstance(exc, (OpenError, KeyringError)):
        return RETRY_AFTER_S
    return min(RETRY_AFTER_S * 2.0 ** min(max(failures - 1, 0), 16), RETRY_AT_MOST_S)


def _started() -> None:
    """Nothing: submitted once per worker so that the pool starts them all at once."""


def _archive_in_worker(path: str) -> IngestResult:
    assert _WORKER is not None
    return archive_entry(_WORKER[0], Path(path), _WORKER[1])


class SpoolWorker:
    """Archives spool entries in a pool of worker processes, oldest first, with a bounded lag.

    The pool's workers run under SCHED_IDLE (else nice 10), so the network and the
    spool writes come first while they work. On a host that other work keeps busy
    they would get no CPU at all; so once the idle pool has held work for
    ``ingest.max_lag_s`` without finishing any, what it holds and what arrives go
    (as copies: whichever finishes first archives an entry) to one *catch-up*
    worker at normal priority, until the idle pool moves again. An acknowledged
    instance therefore becomes visible within about that bound plus its archiving
    time, whatever else runs; a burst, which keeps the idle pool moving, is left to it.

    Parameters
    ----------
    config : Config
        Workers open their own archive from it (keyring passphrase from the
        environment, as the server's).
    spool : Spool
        The spool to drain.
    workers : int
        Worker processes of the idle pool; 0 means one per CPU core.
    observer : callable, optional
        Called (in the worker thread) with each entry's :class:`IngestResult`, or
        ``None`` for an attempt that failed and will be retried.
    """

    CATCH_UP_QUEUE = 2  #: entries queued at once for the catch-up worker (so the lag is re-read often)

    def __init__(self, config: Config, spool: Spool, workers: int = 0,
                 observer: Callable[[IngestResult | None], None] | None = None) -> None:
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.max_lag = float(config.ingest.max_lag_s)
        self._observer = observer or (lambda result: None)
        self.spool = spool
        self._config = config
        self._pool: ProcessPoolExecutor | None = None
        self._catch_up: ProcessPoolExecutor | None = None
        self._inflight: dict[Future[IngestResult], tuple[Path, bool]] = {}  # future -> (entry, catch-up?)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._retry: dict[Path, tuple[float, int]] = {}  # entry -> (when to try again, failed tries in a row)
        self._doubled: set[Path] = set()  # entries of the stalled idle pool that the catch-up worker also took
        self._idle_progress = time.monotonic()  # when the idle pool last finished an entry (or got its first)
        self._was_stalled = False
        self.caught_up = 0  #: entries the catch-up worker archived (a busy host's count)
        self._thread = threading.Thread(target=self._run, name="aepacs-spool-worker", daemon=True)

    def start(self) -> None:
        self._pool = self._new_pool(self.workers, idle=True)
        if self.max_lag > 0:
            self._catch_up = self._new_pool(1, idle=False)
        self._thread.start()

    def _new_pool(self, workers: int, *, idle: bool) -> ProcessPoolExecutor:
        """A pool whose workers start now, not on the first instance received.

        A worker's start (imports, the archive opened, codecs warmed) costs about a
        second of CPU at normal priority, before an idle one turns itself to
        SCHED_IDLE: started lazily, it would compete with the first associations.
        """
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self._config, idle))
        for _ in range(workers):
            pool.submit(_started)
        return pool

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running (and not told to stop)."""
        return self._thread.is_alive() and not self._stop.is_set()

    def wake(self) -> None:
        """Tell the worker new entries are there."""
        self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the spool is empty (or only holds entries waiting for a retry)."""
        self.wake()
        return self._idle.wait(timeout)

    def stop(self) -> None:
        """Finish the entries under way and stop; the rest stays in the spool for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        for pool in (self._pool, self._catch_up):
            if pool is None:
                continue
            if not self._inflight:  # nothing under way: no need to wait for a worker still starting up
                for proc in list(getattr(pool, "_processes", {}).values()):  # (imports, codecs warmed)
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)

    def _next_batch(self, entries: list[Path], limit: int) -> list[Path]:
        """Oldest entries first, at most one per SOP Instance UID and none of an instance in flight
        (so entries of one instance are archived in arrival order, and keep-first keeps the first)."""
        now, batch = time.monotonic(), list[Path]()
        for gone in set(self._retry) - set(entries):  # archived by a copy, or adopted by another node
            del self._retry[gone]
        if limit <= 0:
            return batch
        seen = {p.name.split("-")[1] for p, _ in self._inflight.values()}
        for path in entries:
            uid_tag = path.name.split("-")[1]
            if uid_tag in seen:
                continue
            seen.add(uid_tag)
            if self._retry.get(path, (0.0, 0))[0] <= now:
                batch.append(path)
                if len(batch) >= limit:
                    break
        return batch

    def _submit(self, paths: list[Path], catch_up: bool) -> None:
        pool = self._catch_up if catch_up else self._pool
        assert pool is not None
        for path in paths:
            self._inflight[pool.submit(_archive_in_worker, str(path))] = (path, catch_up)

    def _replace_broken(self, exc: BaseException) -> None:
        """A worker died (or failed to start): new pools; what was in flight is tried again."""
        log.error("spool worker pool broken (%s); starting a new one", exc)
        for pool in (self._pool, self._catch_up):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._inflight.clear()
        self._pool = self._new_pool(self.workers, idle=True)
        if self._catch_up is not None:
            self._catch_up = self._new_pool(1, idle=False)
        self._stop.wait(1.0)

    def _stalled(self) -> bool:
        """Whether the idle pool has had work for ``max_lag`` seconds and finished none of it.

        A burst keeps the idle pool busy but moving (it finishes an entry every few
        tens of milliseconds): no catch-up then, which would only take CPU from the
        associations. Other work that keeps every core busy stops it altogether.
        """
        if self._catch_up is None or not any(not c for _, c in self._inflight.values()):
            return False
        return time.monotonic() - self._idle_progress > self.max_lag

    def _catch_up_work(self) -> None:
        """Copies of what waits in the stalled idle pool, oldest first, to the catch-up worker."""
        room = self.CATCH_UP_QUEUE - sum(1 for _, c in self._inflight.values() if c)
        waiting = sorted(p for p, c in self._inflight.values() if not c and p not in self._doubled)
        copies = waiting[:max(0, room)]
        self._doubled.update(copies)  # whichever copy finishes first archives it; the other finds it gone
        self._submit(copies, True)
        room -= len(copies)
        if room > 0:
            self._submit(self._next_batch(self.spool.entries(), room), True)

    def _refill(self) -> None:
        """Entries for the idle pool, once half of what it holds is done (the spool is listed that often)."""
        queued = sum(1 for _, c in self._inflight.values() if not c)
        if queued <= self.workers * 8:
            batch = self._next_batch(self.spool.entries(), self.workers * 16 - queued)
            if batch and not queued:
                self._idle_progress = time.monotonic()  # its clock starts with its first work
            self._submit(batch, False)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                stalled = self._stalled()
                if stalled != self._was_stalled:
                    self._was_stalled = stalled
                    log.info("spool: the idle workers %s", f"finished nothing in {self.max_lag:g} s; the catch-up "
                             "worker (normal priority) takes their entries" if stalled else "move again")
                if stalled:
                    self._catch_up_work()
                else:
                    self._refill()
            except BrokenProcessPool as exc:
                self._replace_broken(exc)
                continue
            if not self._inflight:
                self._idle.set()
                self._wake.wait(1.0 if self._retry else 5.0)
                continue
            done, _ = wait(list(self._inflight), timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                path, catch_up = self._inflight.pop(future)
                if future.cancelled():
                    continue
                if not catch_up and not isinstance(future.exception(), FileNotFoundError):
                    self._idle_progress = time.monotonic()  # the idle pool did some work (not: found it done)
                try:
                    result = future.result()
                except FileNotFoundError:  # its copy on the other pool archived it first
                    continue
                except BrokenProcessPool as exc:
                    if not self._stop.is_set():
                        self._replace_broken(exc)
                    break
                except Exception as exc:  # store full, index busy: retry later
                    if self._stop.is_set():
                        return
                    self._observer(None)
                    failures = self._retry.get(path, (0.0, 0))[1] + 1
                    delay = retry_delay(exc, failures)
                    log.error("spool entry %s: archiving failed, will retry in %.0f s: %s: %s",
                              path.name, delay, type(exc).__name__, exc)
                    self._retry[path] = (time.monotonic() + delay, failures)
                    continue
                self._retry.pop(path, None)
                self._doubled.discard(path)
                self.spool.release(path)
                self.caught_up += catch_up
                self._observer(result)


def adopt(archive: Archive, directory: Path, *, progress: bool = True) -> Counter[str]:
    """Archive the spool of another node (one that will not come back) into `archive`; see
    ``docs/SCALING.md``.

    Each entry, oldest first, goes the way the node's own workers would have
    sent it (:func:`archive_entry`, keep-first by arrival order) and leaves
    `directory`; an entry that cannot be archived as an instance is kept in
    ``failed/`` there. Entries the node archived meanwhile (it was alive after
    all) are simply found gone. The entries are sealed under the cluster's
    keyring, which this node holds too.

    Returns
    -------
    Counter
        Entries per outcome (added, same, conflict, failed, gone).
    """
    counts: Counter[str] = Counter()
    spool = Spool(directory)  # also sweeps the temporaries of a write the node never finished
    entries = spool.entries()
    for path in tqdm(entries, desc="adopting", unit="entry", disable=not progress):
        try:
            counts[archive_entry(archive, path, directory / "failed").status] += 1
        except FileNotFoundError:
            counts["gone"] += 1
    return counts
