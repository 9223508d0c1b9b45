from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aepacs.dicom.part10 import PIXEL_TAGS, file_meta_prefix, parse
from aepacs.errors import InputError
from tests.conftest import corpus_files


def test_split_reassembles_every_corpus_file_exactly() -> None:
    files = corpus_files()
    assert len(files) > 200
    kinds = {"native": 0, "encapsulated": 0, "whole": 0}
    for path in files:
        data = path.read_bytes()
        parts = parse(data)
        assert parts.prefix + parts.pixels + parts.suffix == data, path.name
        if parts.whole:
            kinds["whole"] += 1
        elif parts.encapsulated:
            kinds["encapsulated"] += 1
            assert parts.pixels[-8:-4] == b"\xfe\xff\xdd\xe0"  # ends with the sequence delimiter
        else:
            kinds["native"] += 1
            assert parts.pixel_tag in PIXEL_TAGS
    assert min(kinds.values()) > 0, kinds  # all three layouts are exercised


def test_native_ct_slice_is_described() -> None:
    from pydicom.data import get_testdata_file

    parts = parse(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    assert parts.meta is not None
    assert (parts.meta.rows, parts.meta.columns, parts.meta.bits_allocated, parts.meta.signed) == (128, 128, 16, True)
    assert len(parts.pixels) == parts.meta.nbytes


@pytest.mark.parametrize("data", [b"", b"hello", b"\0" * 200, b"\0" * 128 + b"DICM"])
def test_non_dicom_is_an_input_error(data: bytes) -> None:
    with pytest.raises(InputError):
        parse(data)


@pytest.mark.parametrize("instance_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.1234567890123456789012345"])
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                                    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.1.99"])
def test_file_meta_prefix_is_what_pynetdicom_writes(instance_uid: str, syntax: str) -> None:
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    sop_class = "1.2.840.10008.5.1.4.1.1.2"
    theirs = b"\x00" * 128 + b"DICM" + encode_file_meta(create_file_meta(
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(instance_uid), transfer_syntax=UID(syntax)))
    mine = file_meta_prefix(sop_class, instance_uid, syntax, PYNETDICOM_IMPLEMENTATION_UID,
                            PYNETDICOM_IMPLEMENTATION_VERSION)
    assert mine == theirs
    parsed = pydicom.dcmread(BytesIO(mine), force=True).file_meta
    assert parsed.MediaStorageSOPInstanceUID == instance_uid and parsed.TransferSyntaxUID == syntax
