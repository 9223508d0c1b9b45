"""WADO-RS pixel resources as pure functions: Accept negotiation and lossless transcoding of frames."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, JPEG2000Lossless, JPEGLSLossless

from aepacs.web import pixels

DECODERS = {JPEGLSLossless: imagecodecs.jpegls_decode, JPEG2000Lossless: imagecodecs.jpeg2k_decode,
            HTJ2KLossless: imagecodecs.htj2k_decode}


def test_accept_header_order_and_q_values() -> None:
    header = ('multipart/related; type="image/jp2"; q=0.5, multipart/related; type="image/jls"; '
              'transfer-syntax=1.2.840.10008.1.2.4.80, application/octet-stream; q=0')
    assert pixels.accepted(header) == [("image/jls", JPEGLSLossless), ("image/jp2", None)]
    assert pixels.accepted("") == [("*/*", None)]
    assert pixels.accepted('multipart/related; type="application/octet-stream"; transfer-syntax=*') == \
        [("application/octet-stream", "*")]


@pytest.mark.parametrize("name", ["CT_small.dcm", "emri_small.dcm"])  # signed 16-bit; unsigned 12 of 16, 10 frames
@pytest.mark.parametrize("kind", ["image/jls", "image/jp2", "image/jphc"])
def test_monochrome_frames_transcode_losslessly(name: str, kind: str) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    count = int(ds.get("NumberOfFrames", 1) or 1)
    numbers = [count, 1]
    data, media, syntax = pixels.frames(ds, numbers, f'multipart/related; type="{kind}"')
    assert media == kind and syntax == pixels.MEDIA[kind]
    want = ds.pixel_array.reshape(count, ds.Rows, ds.Columns)
    for frame, n in zip(data, numbers, strict=True):
        got = np.asarray(DECODERS[syntax](frame))
        assert got.shape == want[n - 1].shape
        assert np.array_equal(got.view(want.dtype), want[n - 1])  # JPEG-LS: the signed samples' bits
        assert len(frame) < want[n - 1].nbytes  # compressed, not wrapped


def test_frames_as_stored_native_or_not_acceptable() -> None:
    j2k = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))  # stored as JPEG 2000 (lossy syntax .91)
    (stored,), media, syntax = pixels.frames(j2k, [1], 'multipart/related; type="application/octet-stream"; '
                                                      "transfer-syntax=*")
    assert stored == next(generate_frames(j2k.PixelData, number_of_frames=1))
    assert syntax == j2k.file_meta.TransferSyntaxUID
    (native,), media, syntax = pixels.frames(j2k, [1], "multipart/related; type=application/octet-stream")
    assert (media, syntax) == (pixels.OCTET, ExplicitVRLittleEndian)
    assert np.array_equal(np.frombuffer(native, "<i2").reshape(j2k.Rows, j2k.Columns), j2k.pixel_array)
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    with pytest.raises(pixels.NotAcceptable, match="monochrome"):  # colour is not transcoded
        pixels.frames(rgb, [1], 'multipart/related; type="image/jls"')
    with pytest.raises(pixels.NotAcceptable):  # a syntax the media type does not carry here
        pixels.frames(j2k, [1], 'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.81')
    (fallback,), media, _ = pixels.frames(rgb, [1], 'multipart/related; type="image/jls", application/octet-stream')
    assert media == pixels.OCTET and fallback == rgb.PixelData  # the next acceptable form
