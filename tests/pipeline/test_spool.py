"""The ingest spool: entries, grouped fsync, archiving in worker processes, arrival order."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom

from aepacs.config import Config
from aepacs.crypto.keyring import Keyring
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.retrieve import fetch
from aepacs.pipeline.spool import Spool, read_entry, seal_entry
from aepacs.pipeline.workers import SpoolWorker, archive_entry
from tests.conftest import ct_files


def _entry(spool: Spool, data: bytes, keyring: Keyring) -> Path:
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    return spool.put(seal_entry(data, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), keyring),
                     str(ds.SOPInstanceUID))


def test_entries_are_sealed_ordered_and_flushed(config: Config, keyring: Keyring) -> None:
    spool = Spool(config.spool_path)
    data = [p.read_bytes() for p in ct_files()[:3]]
    paths = [_entry(spool, d, keyring) for d in data]
    assert spool.entries() == paths                     # arrival order
    for path, d in zip(paths, data, strict=False):
        assert d not in path.read_bytes()                # sealed, not plaintext
        assert read_entry(path, keyring)[1] == d
    spool.flush()
    assert spool._pending == []


def test_an_entry_that_cannot_be_archived_is_kept_aside(archive: Archive, keyring: Keyring) -> None:
    spool = Spool(archive.config.spool_path)
    bad = spool.put(seal_entry(b"not DICOM at all", "1.2.3.4", "", keyring), "1.2.3.4")
    failed = archive.config.spool_path / "failed"
    assert archive_entry(archive, bad, failed).status == "failed"
    assert not bad.exists() and (failed / bad.name).exists()   # never deleted
    good = _entry(spool, ct_files()[0].read_bytes(), keyring)
    assert archive_entry(archive, good, failed).status == "added" and not good.exists()


def test_worker_archives_in_arrival_order_per_instance(config: Config, keyring: Keyring) -> None:
    """Two different objects under one SOP Instance UID: keep-first keeps the first that arrived."""
    first = ct_files()[0].read_bytes()
    ds = pydicom.dcmread(BytesIO(first))
    ds.PatientName = "Second^Arrival"
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    second = buf.getvalue()
    spool = Spool(config.spool_path)
    for data in (first, second, *[p.read_bytes() for p in ct_files()[1:6]]):
        _entry(spool, data, keyring)
    worker = SpoolWorker(config, spool, workers=2)
    worker.start()
    try:
        assert worker.wait_idle(120)
    finally:
        worker.stop()
    assert spool.entries() == []
    with Archive(config, keyring) as archive:
        assert archive.index.count() == 6
        assert fetch(archive, str(ds.SOPInstanceUID)) == first


def test_worker_replaces_a_broken_pool(config: Config, keyring: Keyring) -> None:
    """Worker processes killed from outside: archiving goes on with a new pool."""
    import os
    import signal
    import time

    Archive(config, keyring).close()  # the index exists, as under a running server
    spool = Spool(config.spool_path)
    files = ct_files()[:4]
    _entry(spool, files[0].read_bytes(), keyring)
    worker = SpoolWorker(config, spool, workers=1)
    worker.start()
    try:
        assert worker.wait_idle(120) and spool.entries() == []
        for pid in list(worker._pool._processes):  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        for f in files[1:]:
            _entry(spool, f.read_bytes(), keyring)
        assert worker.wait_idle(120) and spool.entries() == []
    finally:
        worker.stop()
    with Archive(config, keyring) as archive:
        assert archive.index.count() == 4
