from __future__ import annotations

import numpy as np
import pytest

from aepacs.codec.learned.factorized import latent
from aepacs.errors import CodecError


@pytest.mark.parametrize("shape", [(16, 128, 96), (16, 13, 17), (48, 7, 3), (16, 1, 1), (32, 2, 5)])
def test_latent_round_trip(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    q = np.round(rng.laplace(0, 6, size=shape)).astype(np.int64)
    for c in range(0, shape[0], 16):  # lead planes: smooth, wide-ranging, like a small image
        q[c] = np.cumsum(np.cumsum(rng.integers(-9, 10, size=shape[1:]), 0), 1) + 5000
    assert np.array_equal(latent.decode(latent.encode(q), shape), q)


def test_haar_is_exact_and_compacts_smooth_planes() -> None:
    rng = np.random.default_rng(0)
    for shape in [(13, 17), (64, 64), (1, 9), (2, 2)]:
        p = rng.integers(-30000, 30000, size=shape)
        assert np.array_equal(latent.inverse_haar(latent.haar(p)), p)
    y, x = np.mgrid[:64, :64]
    smooth = (1000 + 3 * x + 2 * y).astype(np.int64)
    coeffs = latent.haar(smooth)
    assert np.abs(coeffs).mean() < np.abs(smooth).mean() / 20


def test_damaged_latent_streams_fail() -> None:
    q = np.zeros((16, 8, 8), dtype=np.int64)
    data = latent.encode(q)
    with pytest.raises(CodecError):
        latent.decode(data[:-1], (16, 8, 8))
    with pytest.raises(CodecError):
        latent.encode(np.zeros((10, 4, 4), dtype=np.int64))
