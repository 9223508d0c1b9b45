"""The structural scan must reach the same verdict as the full pydicom parse, on every real file."""

from __future__ import annotations

from pathlib import Path

import pytest

from aepacs.codec.part10 import parse
from aepacs.codec.scan import scan
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
