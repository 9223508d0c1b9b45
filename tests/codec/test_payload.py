from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from aepacs.codec.payload import decode_object, encode_object, read_manifest
from aepacs.errors import CodecError


def test_codec_choice_by_kind_of_pixel_data() -> None:
    native = encode_object(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    assert native.codec == "jpegls"
    jpeg = encode_object(Path(get_testdata_file("JPEG2000.dcm")).read_bytes())
    assert jpeg.codec == "raw"                      # compressed pixel data kept as it came
    seg = encode_object(Path(get_testdata_file("SEG_3x3_3f.dcm") or get_testdata_file("liver.dcm")).read_bytes())
    assert seg.codec == "zstd"                      # 1-bit data goes through zstd
    zstd_only = encode_object(Path(get_testdata_file("CT_small.dcm")).read_bytes(), lossless="zstd")
    assert zstd_only.codec == "zstd"
    us = Path(get_testdata_file("US1_UNCR.dcm")).read_bytes()
    jxl = encode_object(us, lossless="jpegxl")
    assert jxl.codec == "jpegxl" and decode_object(jxl.payload) == us  # bit for bit, the whole file
    assert len(jxl.payload) * 2 < len(encode_object(us).payload)
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # signed 16-bit
    htj = encode_object(ct, lossless="htj2k")
    assert htj.codec == "htj2k" and decode_object(htj.payload) == ct


def test_manifest_records_source_hash_and_layout() -> None:
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    enc = encode_object(data)
    manifest, _ = read_manifest(enc.payload)
    assert manifest["size"] == len(data) and manifest["sha256"] == enc.source_sha256
    assert manifest["pixels"]["codec"] == "jpegls" and manifest["pixels"]["meta"]["rows"] == 64
    assert decode_object(enc.payload) == data


def test_damaged_payload_is_detected() -> None:
    enc = encode_object(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    manifest, start = read_manifest(enc.payload)
    bad = bytearray(enc.payload)
    bad[-5] ^= 0xFF  # inside the pixel stream
    with pytest.raises(CodecError):
        decode_object(bytes(bad))
    with pytest.raises(CodecError):
        decode_object(enc.payload[:start + 3])
