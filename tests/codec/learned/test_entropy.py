from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from aepacs.codec.learned.factorized import entropy
from aepacs.errors import CodecError


def test_round_trip_with_mixed_tables_and_escapes() -> None:
    rng = np.random.default_rng(1)
    values = np.round(rng.laplace(0, 30, size=20000)).astype(np.int64)
    values[::997] = rng.integers(-2**30, 2**30, size=values[::997].size)  # far outside the tables
    tables = rng.integers(0, entropy.SCALES, size=values.size)
    stream = entropy.encode(values, tables)
    assert np.array_equal(entropy.decode(stream, tables), values)


def test_matching_table_codes_near_the_entropy() -> None:
    rng = np.random.default_rng(2)
    values = np.round(rng.laplace(0, 8, size=50000)).astype(np.int64)
    good = int(entropy.index_for_scales(np.array([8.0]))[0])
    size_good = len(entropy.encode(values, good))
    size_bad = len(entropy.encode(values, entropy.SCALES - 1))
    ideal = entropy.bits(values, good) / 8
    assert size_good < 1.01 * ideal + 16
    assert size_bad > 1.3 * size_good


def test_tables_are_integers_and_the_same_in_another_process() -> None:
    here = [entropy.frequencies(i) for i in (0, 17, 63)]
    assert all(np.array_equal(t, np.round(t)) and t.min() >= 1 for t in here)
    code = ("import hashlib; from aepacs.codec.learned.factorized import entropy; "
            "print(hashlib.sha256(b''.join(entropy.frequencies(i).tobytes() for i in (0, 17, 63))).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import hashlib

    assert out == hashlib.sha256(b"".join(t.tobytes() for t in here)).hexdigest()


def test_damaged_streams_fail_cleanly() -> None:
    values = np.arange(-50, 50)
    stream = entropy.encode(values, 10)
    with pytest.raises(CodecError):
        entropy.decode(stream[:-3], np.full(values.size, 10))
    with pytest.raises(CodecError):
        entropy.encode(values, 99)
