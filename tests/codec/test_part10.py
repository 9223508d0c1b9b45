from __future__ import annotations

from pathlib import Path

import pytest

from aepacs.codec.part10 import PIXEL_TAGS, parse
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
