"""Where batch work runs: a local process pool or a Dask distributed cluster.

A :data:`Runner` is (submit, wait for the first finished, close): a job
(:mod:`aepacs.pipeline.batch` for rekey and reencode, :mod:`aepacs.eval.run`)
submits its units and collects what finishes, whichever runs them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
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
