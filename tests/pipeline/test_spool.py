"""The ingest spool: entries, grouped fsync, archiving in worker processes, arrival order."""

from __future__ import annotations

import logging
import re
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from aepacs.config import Config
from aepacs.crypto.keyring import Keyring
from aepacs.errors import MissingKeyError, OpenError, StoreError, StoreFullError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.retrieve import fetch
from aepacs.pipeline.spool import Spool, read_entry, seal_entry
from aepacs.pipeline.workers import RETRY_AFTER_S, RETRY_AT_MOST_S, SpoolWorker, archive_entry, retry_delay
from tests.conftest import ct_files


def _entry(spool: Spool, data: bytes, keyring: Keyring) -> Path:
    ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
    return spool.put(seal_entry(data, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), keyring),
                     str(ds.SOPInstanceUID))


def _drain(config: Config, spool: Spool, workers: int = 1) -> None:
    """A spool worker (a server's, started and stopped) run until the spool holds nothing it can archive now."""
    worker = SpoolWorker(config, spool, workers=workers)
    worker.start()
    try:
        assert worker.wait_idle(120)
    finally:
        worker.stop()


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
    _drain(config, spool, workers=2)
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


def test_an_entry_that_cannot_be_opened_stays_and_breaks_nothing(config: Config, keyring: Keyring,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A tampered spool entry: its worker's error comes back whole (it once failed to unpickle and broke the
    pool, on every try), the others are archived, and it stays in the spool until it can be opened."""
    Archive(config, keyring).close()
    spool = Spool(config.spool_path)
    data = [p.read_bytes() for p in ct_files()[:3]]
    bad = _entry(spool, data[0], keyring)
    original = bad.read_bytes()
    bad.write_bytes(original[:-40] + bytes([original[-40] ^ 0x10]) + original[-39:])
    for d in data[1:]:
        _entry(spool, d, keyring)
    caplog.set_level(logging.INFO, logger="aepacs.spool")
    _drain(config, spool)
    assert spool.entries() == [bad] and not (config.spool_path / "failed").exists()
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "pool broken" in m], messages
    failed = [m for m in messages if "archiving failed" in m]  # more than once if the good ones took 30 s
    assert failed and all(bad.name in m and ": OpenError: " in m for m in failed), failed
    assert [int(re.search(r"will retry in (\d+) s", m).group(1)) for m in failed] == \
        [RETRY_AFTER_S * 2 ** n for n in range(len(failed))]  # waits that double
    with Archive(config, keyring) as archive:
        assert archive.index.count() == 2

    bad.write_bytes(original)  # put right (a backup restored): the next start archives it
    _drain(config, spool)
    assert spool.entries() == []
    with Archive(config, keyring) as archive:
        assert archive.index.count() == 3


def test_an_entry_that_fails_the_same_way_waits_longer_each_time() -> None:
    """Until someone acts, an entry that cannot be opened is logged once an hour, not every 30 s; a full store
    or a busy index passes, and is tried again every 30 s."""
    for exc in (OpenError("x.aepx", "tampered"), MissingKeyError(3)):
        waits = [retry_delay(exc, n) for n in range(1, 12)]
        assert waits[:4] == [RETRY_AFTER_S, 2 * RETRY_AFTER_S, 4 * RETRY_AFTER_S, 8 * RETRY_AFTER_S]
        assert waits == sorted(waits) and waits[-1] == RETRY_AT_MOST_S == 3600
    assert retry_delay(OpenError("x", "y"), 10_000) == RETRY_AT_MOST_S
    for exc in (StoreFullError("disk full"), StoreError("index busy"), OSError("no space")):
        assert {retry_delay(exc, n) for n in range(1, 12)} == {RETRY_AFTER_S}
