from __future__ import annotations

import hashlib

import numpy as np
import pytest

from aepacs.codec.learned.colour import inverse_rct, rct
from aepacs.codec.learned.wavelet import lifting, subband
from aepacs.codec.learned.wavelet.codec import GAINS, WaveletCodec, frame_gains, smallest_passing
from aepacs.codec.quality import psnr
from aepacs.errors import CodecError
from tests.codec.learned.test_factorized import _variants
from tests.conftest import ct_slices, decode_in_child


@pytest.mark.parametrize("name", list(_variants()))
def test_lossless_mode_is_bit_exact(ct_wavelet, name: str) -> None:  # type: ignore[no-untyped-def]
    pixels = _variants()[name]
    codec = WaveletCodec(ct_wavelet, "lossless")
    stream = codec.encode(pixels)
    back = codec.decode(stream)
    assert back.shape == pixels.shape and np.array_equal(back, pixels.astype(np.int64))
    assert len(stream) < pixels.nbytes or pixels.size < 64


def test_lossless_colour_is_bit_exact(shipped) -> None:  # type: ignore[no-untyped-def]
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    rgb = dcmread(get_testdata_file("US1_UNCR.dcm")).pixel_array[None, 100:261, 50:333]  # odd-sized crop
    codec = WaveletCodec(shipped.load("us"), "lossless")
    stream = codec.encode(rgb)
    assert np.array_equal(codec.decode(stream), rgb.astype(np.int64)) and len(stream) < rgb.nbytes / 2


def test_lifting_and_colour_transform_are_exactly_reversible_for_any_taps() -> None:
    rng = np.random.default_rng(3)
    for taps in (lifting.CDF97, rng.integers(-30000, 30000, size=(4, 2))):
        img = rng.integers(-40000, 70000, size=(64, 96)).astype(np.int64)
        work = img.copy()
        lifting.forward(work, 4, np.ascontiguousarray(taps, dtype=np.int64))
        assert not np.array_equal(work, img)
        lifting.inverse(work, 4, np.ascontiguousarray(taps, dtype=np.int64))
        assert np.array_equal(work, img)
    rgb = rng.integers(0, 256, size=(9, 7, 3))
    assert np.array_equal(inverse_rct(rct(rgb)), rgb)


def test_subband_coder_round_trips_and_rejects_damage() -> None:
    rng = np.random.default_rng(4)
    q = np.round(rng.laplace(0, 3, size=(2, 64, 64)) * (rng.random((2, 64, 64)) < 0.3)).astype(np.int64)
    q[0, 0, 0] = 1 << 30  # a large value takes the long path
    init = subband.uniform_init()
    data = subband.encode(q, 3, init)
    assert np.array_equal(subband.decode(data, q.shape, 3, init), q)
    with pytest.raises(ValueError):
        subband.decode(data + bytes(16), q.shape, 3, init)


def test_subband_streams_are_the_format_every_earlier_version_wrote() -> None:
    """Known answer: stored objects must keep decoding, so a fixed input codes to the same bytes.

    The digest is of the stream the first range coder (LZMA's carry cache) wrote for this input,
    before the encoder moved its carries into a pass after coding.
    """
    rng = np.random.default_rng(12)
    q = np.round(rng.laplace(0, 40, size=(3, 64, 96)) * (rng.random((3, 64, 96)) < 0.6)).astype(np.int64)
    q[1, 5, 7] = -(1 << 30)
    init = rng.integers(1, 1 << 15, subband.NCTX).astype(np.uint16)
    data = subband.encode(q, 3, init)
    assert hashlib.sha256(data).hexdigest() == "23b97abe39019dfd24e000b20e0fffd499afd9fbc5cd4a2f37d5ea4b74367469"
    assert np.array_equal(subband.decode(data, q.shape, 3, init), q)


def test_subband_coder_grows_its_buffer_for_incompressible_input() -> None:
    q = np.random.default_rng(5).integers(-(1 << 30), 1 << 30, (3, 64, 64))
    data = subband.encode(q, 2, subband.uniform_init())
    first_buffer = 2 * q.size + subband.MAX_BYTES_PER_COEFF * (64 + 4) + 1024
    assert len(data) > first_buffer  # it took the retry
    assert np.array_equal(subband.decode(data, q.shape, 2, subband.uniform_init()), q)
    assert hashlib.sha256(data).hexdigest() == "375bb8d02d3b6b68bc075ce916520feb3b72f0067e1e800f4cacd970f9c6c675"


def test_lossy_gains_trade_bytes_for_quality(ct_wavelet) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)
    sizes, quality = [], []
    for k in (0, GAINS // 2, GAINS - 1):
        codec = WaveletCodec(ct_wavelet, "lossy", gain=k)
        stream, rec = codec.encode_reconstruct(pixels)
        assert np.array_equal(codec.decode(stream), rec)
        sizes.append(len(stream))
        quality.append(psnr(pixels, rec))
    assert sizes == sorted(sizes) and quality == sorted(quality)
    assert sizes[0] < pixels.nbytes / 16


def test_target_psnr_picks_the_smallest_gain_reaching_it(ct_wavelet) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)
    codec = WaveletCodec(ct_wavelet, "lossy", target_psnr=55.0)
    stream = codec.encode(pixels)
    assert psnr(pixels, codec.decode(stream)) >= 55.0
    (k,) = frame_gains(stream)
    assert k > 0
    lower = WaveletCodec(ct_wavelet, "lossy", gain=k - 1)
    assert psnr(pixels, lower.decode(lower.encode(pixels))) < 55.0


def test_damaged_or_foreign_streams_are_refused(ct_wavelet) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)[:, :64, :64]
    codec = WaveletCodec(ct_wavelet, "lossless")
    stream = codec.encode(pixels)
    for bad in (stream[:-5], b"XXXX" + stream[4:], stream + b"\0"):
        with pytest.raises(CodecError):
            codec.decode(bad)
    with pytest.raises(CodecError, match="1-sample"):
        codec.encode(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(CodecError, match="integer"):
        codec.encode(np.zeros((1, 16, 16, 1), dtype=np.float32))


def test_gain_search_finds_the_smallest_passing_gain_from_any_start() -> None:
    for top in range(12):
        for answer in range(top + 2):  # top + 1: nothing passes
            for start in range(-1, top + 2):
                probes: list[int] = []

                def passes(g: int, answer: int = answer, probes: list[int] = probes) -> bool:
                    probes.append(g)
                    return g >= answer

                assert smallest_passing(passes, start, top) == (answer if answer <= top else None)
                if 0 <= start <= top and abs(answer - start) <= 1 and answer <= top:
                    assert len(probes) <= 3  # a good guess costs two or three probes


# -- the lossy fraction bits (hyper.precision, the @5 models) ------------------------------------


def _with_precision(model, precision: int):  # type: ignore[no-untyped-def]
    from aepacs.training.wavelet_fit import Draft

    t = model.tensors("wavelet.safetensors")
    return Draft(int(model.manifest["hyper"]["channels"]), t["init"].astype(np.uint16), t["taps"], precision)


def test_fraction_bits_remove_the_lifting_rounding_at_high_rates(shipped) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)
    model = shipped.load("ct@3")
    plain = WaveletCodec(_with_precision(model, 0), "lossy", gain=30)
    fine = WaveletCodec(_with_precision(model, 4), "lossy", gain=30)
    s0, r0 = plain.encode_reconstruct(pixels)
    s4, r4 = fine.encode_reconstruct(pixels)
    assert s0[:4] == b"AEW1" and s4[:4] == b"AEW2"
    assert np.array_equal(fine.decode(s4), r4) and np.array_equal(plain.decode(s4), r4)  # the stream says how
    # the same step: the integer lifting's rounding was most of the error at 8:1
    assert psnr(pixels, r4) > psnr(pixels, r0) + 1.0 and len(s4) < len(s0) * 1.02
    # lossless is the same exact transform whatever the precision
    s = WaveletCodec(_with_precision(model, 4), "lossless").encode(pixels)
    assert s[:4] == b"AEW1" and np.array_equal(fine.decode(s), pixels.astype(np.int64))


#: the ct@5 and ct@6 streams of pydicom's real CT_small slice at gain 26 (decoders must keep reading
#: them, and an encoder gives the same bytes everywhere; the file ships with pydicom, so the pins hold
#: with or without ../shared/data). ct@6 chooses its indices by rate-distortion optimisation.
PINNED = {"ct@5": "38c7ec405e97dda0dda28641c3c35a834c49103e668a630aaee29ca5741e1a42",
          "ct@6": "8eca4dfebf06a3b34c49610f3b5553e70e9c5e97edef7205884528dccaa70a94"}


@pytest.mark.parametrize("ref", sorted(PINNED))
def test_precision_models_are_promoted_and_their_streams_pinned(shipped, ref: str) -> None:  # type: ignore[no-untyped-def]
    for name in ("ct", "mr", "cr", "us"):
        assert shipped.load(name).manifest["hyper"].get("precision") == 4, name
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    pixels = dcmread(get_testdata_file("CT_small.dcm")).pixel_array[None, ..., None]
    codec = WaveletCodec(shipped.load(ref), "lossy", gain=26)
    stream, recon = codec.encode_reconstruct(pixels)
    assert hashlib.sha256(stream).hexdigest() == PINNED[ref]
    assert np.array_equal(codec.decode(stream), recon)


@pytest.mark.parametrize("name", list(_variants()))
def test_precision_lossy_codes_every_integer_form(ct_wavelet, name: str) -> None:  # type: ignore[no-untyped-def]
    pixels = _variants()[name]  # 8/12/16-bit, signed, odd-sized, multi-frame, 3x2
    codec = WaveletCodec(ct_wavelet, "lossy", gain=30)
    stream, recon = codec.encode_reconstruct(pixels)
    assert stream[:4] == b"AEW2" and recon.shape == pixels.shape
    assert np.array_equal(codec.decode(stream), recon)  # what the quality gate measured is what comes back
    assert recon.min() >= pixels.min() and recon.max() <= pixels.max()  # clipped to the frame's range
    if min(pixels.shape[1:3]) >= 16:
        assert psnr(pixels, recon) > 45


def test_precision_lossy_colour_odd_size(shipped) -> None:  # type: ignore[no-untyped-def]
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    rgb = dcmread(get_testdata_file("US1_UNCR.dcm")).pixel_array[None, 100:261, 50:333]
    codec = WaveletCodec(shipped.load("us@5"), "lossy", gain=16)
    stream, recon = codec.encode_reconstruct(rgb)
    assert np.array_equal(codec.decode(stream), recon) and recon.shape == rgb.shape
    assert psnr(rgb, recon) > 35 and len(stream) < rgb.nbytes / 4


def test_bad_precision_is_refused(shipped) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)[:, :64, :64]
    codec = WaveletCodec(shipped.load("ct@5"), "lossy", gain=20)
    stream = codec.encode(pixels)
    head = 4 + 1 + 1 + 12 + 1  # magic, mode, samples, frames/rows/columns, levels
    for bad in (0, 9, 255):
        with pytest.raises(CodecError, match="precision"):
            codec.decode(stream[:head] + bytes([bad]) + stream[head + 1:])
    with pytest.raises(CodecError, match="precision"):
        WaveletCodec(_with_precision(shipped.load("ct@3"), 9), "lossy")


_CHILD = """
import hashlib, json, sys
import numpy as np
from aepacs.codec.learned import codec_for
from aepacs.models.registry import SHIPPED, Registry
pixels = np.load(sys.argv[1])
codec = codec_for(Registry(SHIPPED).load("ct@6"), "lossy", gain=24)
stream = open(sys.argv[2], "rb").read()
print(json.dumps({"pixels": hashlib.sha256(codec.decode(stream).astype(np.int64).tobytes()).hexdigest(),
                  "stream": hashlib.sha256(codec.encode(pixels)).hexdigest()}))
"""


@pytest.mark.parametrize("cpu", ["host", "generic"])
def test_lossy_streams_decode_identically_in_another_process_and_cpu_target(shipped, tmp_path, cpu: str) -> None:  # type: ignore[no-untyped-def]
    pixels = ct_slices(1)[:, 100:420, 90:410]
    stream, recon = WaveletCodec(shipped.load("ct@6"), "lossy", gain=24).encode_reconstruct(pixels)
    got = decode_in_child(_CHILD, pixels, stream, tmp_path, cpu)
    assert got["pixels"] == hashlib.sha256(recon.astype(np.int64).tobytes()).hexdigest()
    assert got["stream"] == hashlib.sha256(stream).hexdigest()
