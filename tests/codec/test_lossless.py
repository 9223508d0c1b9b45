from __future__ import annotations

import numpy as np
import pytest

from aepacs.codec.lossless import HtJ2kCodec, JpegLsCodec, JpegXlCodec, RawCodec, ZstdCodec
from aepacs.dicom.pixels import PixelMeta, pixels_from_bytes, pixels_to_bytes
from aepacs.errors import CodecError


def meta_for(arr: np.ndarray, planar: int = 0, big_endian: bool = False) -> PixelMeta:
    frames, rows, cols, samples = arr.shape
    bits = arr.dtype.itemsize * 8
    return PixelMeta(rows=rows, columns=cols, frames=frames, samples=samples, bits_allocated=bits,
                     bits_stored=bits, signed=arr.dtype.kind == "i", planar=planar,
                     photometric="RGB" if samples == 3 else "MONOCHROME2", big_endian=big_endian)


def smooth(shape: tuple[int, ...], lo: int, hi: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f, r, c, s = shape
    y, x = np.mgrid[0:r, 0:c]
    base = (np.sin(x / 7.0) + np.cos(y / 11.0) + 2) / 4
    img = lo + base[None, :, :, None] * (hi - lo) + rng.normal(0, (hi - lo) / 2000, shape)
    return np.clip(img, lo, hi).astype(dtype)


CASES = [
    ("8-bit", (1, 64, 64, 1), 0, 255, "u1"),
    ("12-bit in 16", (1, 128, 96, 1), 0, 4095, "<u2"),
    ("16-bit full", (1, 64, 64, 1), 0, 65535, "<u2"),
    ("signed CT", (1, 65, 33, 1), -1024, 3071, "<i2"),
    ("signed full", (1, 31, 17, 1), -32768, 32767, "<i2"),
    ("signed 8", (1, 20, 20, 1), -128, 127, "i1"),
    ("odd multi-frame", (5, 37, 41, 1), 0, 1000, "<u2"),
    ("rgb", (2, 45, 31, 3), 0, 255, "u1"),
    ("5x7", (1, 5, 7, 1), 7, 9, "<u2"),
    ("constant", (1, 16, 16, 1), 0, 0, "<u2"),
]


@pytest.mark.parametrize("codec", [JpegLsCodec(), HtJ2kCodec()], ids=["jpegls", "htj2k"])
@pytest.mark.parametrize("name, shape, lo, hi, dtype", CASES, ids=[c[0] for c in CASES])
def test_plane_codecs_are_bit_exact(name: str, shape: tuple[int, ...], lo: int, hi: int, dtype: str,
                                    codec: JpegLsCodec | HtJ2kCodec) -> None:
    arr = smooth(shape, lo, hi, dtype)
    if arr.size > 2:
        arr.flat[0], arr.flat[-1] = lo, hi  # hit both ends of the range
    meta = meta_for(arr)
    stream = codec.encode(arr, meta)
    back = codec.decode(stream, meta)
    assert back.dtype.kind == arr.dtype.kind and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    if arr.size >= 4096:
        assert len(stream) < arr.nbytes / 1.5  # it actually compresses


@pytest.mark.parametrize("name, shape, lo, hi, dtype", CASES, ids=[c[0] for c in CASES])
def test_jpegxl_is_bit_exact(name: str, shape: tuple[int, ...], lo: int, hi: int, dtype: str) -> None:
    arr = smooth(shape, lo, hi, dtype, seed=1)
    if arr.size > 2:
        arr.flat[0], arr.flat[-1] = lo, hi
    meta = meta_for(arr)
    stream = JpegXlCodec().encode(arr, meta)
    back = JpegXlCodec().decode(stream, meta)
    assert back.dtype == arr.dtype.newbyteorder("=") and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    if arr.size >= 4096:
        assert len(stream) < arr.nbytes / 1.5


def test_jpegxl_beats_jpegls_on_real_colour_ultrasound() -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    rgb = dcmread(get_testdata_file("US1_UNCR.dcm")).pixel_array[None]
    meta = meta_for(rgb)
    jxl = JpegXlCodec().encode(rgb, meta)
    np.testing.assert_array_equal(JpegXlCodec().decode(jxl, meta), rgb)
    assert len(jxl) * 2 < len(JpegLsCodec().encode(rgb, meta))  # 10.2:1 against 3.5:1 here


def test_jpegxl_refuses_damage_and_what_it_cannot_code() -> None:
    arr = smooth((2, 32, 32, 1), 0, 4095, "<u2")
    meta = meta_for(arr)
    stream = JpegXlCodec().encode(arr, meta)
    for bad in (stream[:10], stream[:-9], stream + b"\0", stream[:30] + bytes(40) + stream[70:]):
        with pytest.raises(CodecError):
            JpegXlCodec().decode(bad, meta)
    with pytest.raises(CodecError):
        JpegXlCodec().decode(stream, meta_for(arr[:1]))  # another frame count
    with pytest.raises(CodecError):
        JpegXlCodec().encode(np.zeros((1, 4, 4, 1), np.float32), None)
    with pytest.raises(CodecError):
        JpegXlCodec().encode(np.zeros((1, 4, 4, 4), np.uint8), None)


def test_jpegls_big_endian_and_planar_bytes_round_trip() -> None:
    arr = smooth((2, 40, 30, 3), 0, 255, "u1")
    meta = meta_for(arr, planar=1)
    raw = pixels_to_bytes(arr, meta)
    assert raw[:1200] == arr[0, :, :, 0].tobytes()  # colour-by-plane layout
    assert pixels_to_bytes(pixels_from_bytes(raw, meta), meta) == raw
    be = smooth((1, 33, 35, 1), -2000, 2000, ">i2")
    meta_be = meta_for(be, big_endian=True)
    raw_be = be.tobytes()
    codec = JpegLsCodec()
    out = codec.decode(codec.encode(pixels_from_bytes(raw_be, meta_be), meta_be), meta_be)
    assert pixels_to_bytes(out, meta_be) == raw_be


def test_jpegls_refuses_what_it_cannot_code() -> None:
    codec = JpegLsCodec()
    with pytest.raises(CodecError):  # CharLS cannot code images under ~5x5: payload falls back to zstd
        codec.encode(np.zeros((1, 3, 3, 1), np.uint16), None)
    with pytest.raises(CodecError):
        codec.encode(np.zeros((1, 4, 4, 1), np.float32), None)
    wide = np.array([[[[0]], [[70000]]]], dtype=np.int32)
    with pytest.raises(CodecError):
        codec.encode(wide, None)


def test_corrupt_streams_raise_codec_error() -> None:
    arr = smooth((1, 32, 32, 1), 0, 4095, "<u2")
    meta = meta_for(arr)
    for codec in (JpegLsCodec(), HtJ2kCodec()):
        stream = bytearray(codec.encode(arr, meta))
        with pytest.raises(CodecError):
            codec.decode(bytes(stream[:10]), meta)
        with pytest.raises(CodecError):  # another frame count
            codec.decode(bytes(stream), meta_for(np.concatenate([arr, arr])))
    with pytest.raises(CodecError):  # one codec's stream is not another's
        HtJ2kCodec().decode(JpegLsCodec().encode(arr, meta), meta)
    with pytest.raises(CodecError):
        ZstdCodec().decode(b"not zstd at all", None)


def test_byte_codecs_round_trip() -> None:
    data = np.frombuffer(bytes(range(256)) * 100, np.uint8)
    for codec in (ZstdCodec(3), RawCodec()):
        assert codec.decode(codec.encode(data, None), None).tobytes() == data.tobytes()
