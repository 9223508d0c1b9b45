"""Errors cross process boundaries whole: worker pools and Dask send them back pickled."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from aepacs.errors import AepacsError, MissingKeyError, OpenError, StoreFullError
from aepacs.models.registry import ModelError


def _raise(error: AepacsError) -> None:
    raise error


@pytest.mark.parametrize("error", [OpenError("1.2.3.aepx", "authentication failed: tampered or wrong key"),
                                   MissingKeyError(3), StoreFullError("disk full"), ModelError("ct@9: not found")],
                         ids=lambda e: type(e).__name__)
def test_errors_come_back_from_a_worker_process_as_raised(error: AepacsError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error)
    with ProcessPoolExecutor(1) as pool, pytest.raises(type(error)) as raised:
        pool.submit(_raise, error).result()
    assert str(raised.value) == str(error) and vars(raised.value) == vars(error)
