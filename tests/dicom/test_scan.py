"""The structural scan must reach the same verdict as the full pydicom parse, on every real file."""

from __future__ import annotations

from pathlib import Path

import pytest

from aepacs.dicom.part10 import parse
from aepacs.dicom.scan import scan
from aepacs.errors import AepacsError
from aepacs.pipeline.ingest import check, check_received
from tests.conftest import corpus_files, ct_files


def _verdict(fn, data: bytes) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    try:
        return "ok", fn(data)
    except AepacsError as exc:
        return type(exc).__name__, None


def test_scan_agrees_with_the_full_parse_on_every_corpus_file() -> None:
    files = corpus_files() + ct_files()[:5]
    scanned = 0
    for path in files:
        data = path.read_bytes()
        full = _verdict(lambda d: check(parse(d)), data)
        fast = _verdict(check_received, data)
        assert fast == full, path.name
        scanned += scan(data) is not None
    assert scanned > 0.9 * len(files)  # the fast path is the common path


@pytest.mark.parametrize("cut", [200, 1000, 5000])
def test_truncated_streams(cut: int) -> None:
    data = ct_files()[0].read_bytes()[:-cut]
    assert _verdict(check_received, data) == _verdict(lambda d: check(parse(d)), data)
    assert _verdict(check_received, data)[0] == "DatasetMismatch"


def test_announced_uid_must_match() -> None:
    data = Path(ct_files()[0]).read_bytes()
    uid = check_received(data)["SOPInstanceUID"]
    assert check_received(data, uid)["SOPInstanceUID"] == uid
    assert _verdict(lambda d: check_received(d, "1.2.3"), data)[0] == "DatasetMismatch"


def _ct_small() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


@pytest.mark.parametrize("undefined", [True, False])
@pytest.mark.parametrize("depth", [200, 2_000, 20_000])
def test_deep_nesting_is_refused_by_the_scan_without_recursion(depth: int, undefined: bool) -> None:
    """Defects 2 and 3 of issue 14: 200 levels passed the scan and failed the worker's parse
    (RecursionError after the acknowledgement); 2,000 levels made the scan itself recurse."""
    from tests.fuzz.mutate import nested_sequence, with_element

    data = with_element(_ct_small(), nested_sequence(depth, undefined=undefined))
    with pytest.raises(AepacsError, match="nested deeper than 32"):
        check_received(data)


@pytest.mark.parametrize("undefined", [True, False])
def test_nesting_up_to_the_limit_is_accepted_and_parses(undefined: bool) -> None:
    from tests.fuzz.mutate import nested_sequence, with_element

    data = with_element(_ct_small(), nested_sequence(32, undefined=undefined))
    uids = check_received(data)
    assert check(parse(data))["SOPInstanceUID"] == uids["SOPInstanceUID"]
    with pytest.raises(AepacsError, match="nested deeper than 31"):
        check_received(data, max_depth=31)


@pytest.mark.parametrize("uid", ["../../../../tmp/x/y", "/tmp/x/abs10", "1.2.03", "1..2", "1" * 65, "1.2.3.\u00e9"])
def test_uids_that_are_not_uids_are_refused_by_scan_and_parse(uid: str) -> None:
    import pydicom
    from pydicom.filebase import DicomBytesIO

    ds = pydicom.dcmread(DicomBytesIO(_ct_small()))
    ds.SOPInstanceUID = uid
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert _verdict(check_received, data)[0] == "DatasetMismatch"
    assert _verdict(lambda d: check(parse(d)), data)[0] == "DatasetMismatch"
