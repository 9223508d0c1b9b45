"""Rate-distortion optimised quantization of the wavelet subbands (aepacs.codec.learned.wavelet.rdo)."""

from __future__ import annotations

import numpy as np
import pytest

from aepacs.codec.learned.wavelet import rdo, subband
from aepacs.codec.learned.wavelet.codec import WaveletCodec
from aepacs.codec.quality import psnr
from aepacs.errors import CodecError
from aepacs.training.wavelet_fit import Draft
from tests.conftest import ct_slices


def _draft(model, lam: int) -> Draft:  # type: ignore[no-untyped-def]
    t = model.tensors("wavelet.safetensors")
    hyper = model.manifest["hyper"]
    return Draft(int(hyper["channels"]), t["init"].astype(np.uint16), t["taps"], int(hyper["precision"]), lam)


def _laplace_subbands(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = np.round(rng.laplace(0, 900, size=(2, 64, 64))).astype(np.int64)
    steps = np.stack([np.full((4, 3), 256 * 700 + 77 * k, np.int64) for k in range(2)])
    return c, steps


def test_code_lengths_are_the_coders_own() -> None:
    assert rdo.COST[subband.ONE] == 0 and rdo.COST[subband.ONE // 2] == 256 and rdo.COST[subband.ONE // 4] == 512
    assert np.all(np.diff(rdo.COST[1:]) <= 0)


def test_indices_stay_beside_the_quantizer_and_the_low_band_is_kept() -> None:
    c, steps = _laplace_subbands(1)
    q = np.stack([subband.quantize(c[i], 3, steps[i]) for i in range(2)])
    out = rdo.optimise(c, q, 3, steps, subband.BIAS, 30, subband.uniform_init())
    assert not np.array_equal(out, q)  # it did choose differently somewhere
    assert np.array_equal(out[:, :8, :8], q[:, :8, :8])  # the low band (3 levels of 64: 8x8)
    f = (np.abs(c) * 256) // steps[0, 0, 0]
    f[1] = (np.abs(c[1]) * 256) // steps[1, 0, 0]
    assert np.all(np.abs(out) <= f + 1) and np.all((out == 0) | (np.sign(out) == np.sign(c)))
    assert np.array_equal(subband.decode(subband.encode(out, 3, subband.uniform_init()), out.shape, 3,
                                         subband.uniform_init()), out)


def test_without_a_rate_term_it_picks_the_nearest_reconstruction() -> None:
    c, steps = _laplace_subbands(2)
    q = np.stack([subband.quantize(c[i], 3, steps[i]) for i in range(2)])
    out = rdo.optimise(c, q, 3, steps, subband.BIAS, 0, subband.uniform_init())
    err = [np.abs(c[i] - subband.dequantize(x[i], 3, steps[i])) for x in (q, out) for i in range(2)]
    detail = np.ones((64, 64), bool)
    detail[:8, :8] = False
    for i in range(2):
        assert np.all(err[2 + i][detail] <= err[i][detail])
        assert err[2 + i][detail].sum() < err[i][detail].sum()  # the dead zone's rounding was not nearest


def test_it_buys_quality_at_equal_bytes_on_real_ct(shipped) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(2)
    if pixels.shape[1] >= 448:  # the shared series (CI); elsewhere pydicom's 128x128 CT_small as it is
        pixels = pixels[:, 64:448, 64:448]
    model = shipped.load("ct")
    curves = []
    for lam in (0, model.manifest["hyper"]["rdo"]):
        points = []
        for gain in range(14, 36, 3):
            codec = WaveletCodec(_draft(model, lam), "lossy", gain=gain)
            stream, recon = codec.encode_reconstruct(pixels)
            assert np.array_equal(codec.decode(stream), recon)
            points.append((np.log(len(stream)), psnr(pixels, recon)))
        curves.append(np.array(sorted(points)))
    lo = max(c[0, 0] for c in curves)
    hi = min(c[-1, 0] for c in curves)
    grid = np.linspace(lo, hi, 20)
    plain, optimised = (np.interp(grid, c[:, 0], c[:, 1]) for c in curves)
    assert (optimised - plain).mean() > 0.05  # dB at the same bytes (about +0.15 to +0.25 on held-out CT)


def test_a_model_names_a_sane_multiplier(shipped) -> None:  # type: ignore[no-untyped-def]
    model = shipped.load("ct")
    assert WaveletCodec(_draft(model, 30), "lossy").rdo == 30
    for bad in (-1, 5000):
        with pytest.raises(CodecError, match="rdo"):
            WaveletCodec(_draft(model, bad), "lossy")
