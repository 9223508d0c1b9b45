"""Where batch work runs: a local process pool or a Dask distributed cluster.

A :data:`Runner` is (submit, wait for the first finished, close): a job
(:mod:`aepacs.pipeline.batch` for rekey and reencode, :mod:`aepacs.eval.run`)
submits its units and collects what finishes, whichever runs them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from aepacs.errors import AepacsError

#: (submit(fn, *args) -> future, wait(futures) -> the finished ones, close())
Runner = tuple[Callable[..., Any], Callable[[set[Any]], set[Any]], Callable[[], None]]


def local_pool(workers: int) -> Runner:
    """(submit, wait for the first done, close) of a local process pool."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return (pool.submit, lambda fs: set(wait(fs, return_when=FIRST_COMPLETED).done),
            lambda: pool.shutdown(wait=True, cancel_futures=True))


def dask_cluster(address: str) -> Runner:
    """(submit, wait for the first done, close) on a Dask distributed scheduler."""
    try:
        from distributed import Client  # noqa: PLC0415 -- the dask extra, for --dask only
        from distributed import wait as dask_wait  # noqa: PLC0415 -- the dask extra
    except ImportError:
        raise AepacsError("--dask needs the 'distributed' package (pip install 'aepacs[dask]')") from None
    client = Client(address)
    return ((lambda fn, *a: client.submit(fn, *a, pure=False)),
            lambda fs: set(dask_wait(list(fs), return_when="FIRST_COMPLETED").done), client.close)


def completed(remote: Callable[..., Any], args: tuple[Any, ...], items: Iterable[Any], *, workers: int,
              dask: str | None, window: int) -> Iterator[Any]:
    """``remote(*args, item)`` for every item, on a local pool of `workers` processes or on the Dask
    scheduler at `dask`; the results as they finish, at most `window` items in flight.

    `remote` must be a module-level function (it is pickled). Closing the
    iterator early closes the pool or the client.
    """
    submit, first_done, close = dask_cluster(dask) if dask else local_pool(workers)
    try:
        inflight: set[Any] = set()
        for item in items:
            inflight.add(submit(remote, *args, item))
            finished = first_done(inflight) if len(inflight) >= window else {f for f in inflight if f.done()}
            inflight -= finished
            yield from (f.result() for f in finished)
        while inflight:
            finished = first_done(inflight)
            inflight -= finished
            yield from (f.result() for f in finished)
    finally:
        close()
