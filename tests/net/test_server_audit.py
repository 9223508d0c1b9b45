"""The archive server's audit records: stores, queries, start and stop; no pixel data, no key bytes."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind

from aepacs.audit import read, verify
from tests.conftest import ct_files
from tests.net.conftest import Running


def test_archive_activity_is_audited_without_pixels_or_keys(make_server: Callable[..., Running]) -> None:
    running = make_server()
    files = ct_files()[:3]
    ae = AE(ae_title="CTSCANNER")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", running.port, ae_title=running.aet)
    assert assoc.is_established
    for f in files:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    query = pydicom.Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
    assert [s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)][-1] == 0
    assoc.release()
    running.wait_archived()
    path = running.config.audit_path
    records = list(read(path))
    events = [r["event"] for r in records]
    assert events[0] == "application-start" and "store" in events and "query" in events
    store = next(r for r in records if r["event"] == "store")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    assert store["objects"] == 3 and store["studies"] == [study] and store["source"]["ae"] == "CTSCANNER"
    assert verify(path).ok
    raw = path.read_bytes()
    pixels = pydicom.dcmread(files[0]).PixelData[4096:4160]
    for key in (running.keyring.kek(v) for v in running.keyring.versions):
        for form in (key, key.hex().encode(), base64.b64encode(key), base64.urlsafe_b64encode(key)):
            assert form not in raw
    for form in (pixels, pixels.hex().encode(), base64.b64encode(pixels)):
        assert form not in raw
