"""A program's storage area on aepacs (what the Orthanc plugin registers), on real files, keys and codecs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections import Counter
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from aepacs.audit import read
from aepacs.config import Config
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import header_span
from aepacs.errors import AepacsError, InputError, OpenError, StoreError, StoreFullError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.area_jobs import compress_pending, follow, sweep_unknown
from aepacs.pipeline.rekey import rekey
from aepacs.pipeline.storage_area import DICOM, FILE, KEPT, ZSTD_FILE, StorageArea, attachment_uid
from aepacs.store.blobs import BlobStore
from aepacs.store.schema import attachments
from tests.conftest import BACKENDS, ct_files, run_cli, tamper

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.parametrize("backend", BACKENDS, indirect=True)]

JSON = 2  # Orthanc's content type of its JSON summary of an instance


def _id() -> str:
    return str(uuidlib.uuid4())


def _pixel_runs(data: bytes, haystack: bytes, run: int = 64) -> int:
    """How many of `data`'s pixel bytes, taken `run` at a time at 32 places, occur in `haystack`."""
    pixels = pydicom.dcmread(BytesIO(data)).PixelData
    step = max(1, (len(pixels) - run) // 32)
    return sum(pixels[i:i + run] in haystack for i in range(0, len(pixels) - run, step))


def _blobs(archive: Archive) -> bytes:
    return b"".join(map(archive.store.get, archive.store.keys()))


def test_files_come_back_exactly_sealed_then_coded(archive: Archive) -> None:
    area = StorageArea(archive)
    files = {_id(): f.read_bytes() for f in ct_files()[:4]}
    summary = json.dumps({"MainDicomTags": {"PatientName": "DOE^JANE"}}).encode()
    summary_id = _id()
    for uuid, data in files.items():
        area.create(uuid, DICOM, data)
    area.create(summary_id, JSON, summary)
    for uuid, data in files.items():  # sealed as they came: the same bytes, no pixel run on the store
        assert area.read(uuid, DICOM) == data
    stored = _blobs(archive)
    assert all(_pixel_runs(data, stored) == 0 for data in files.values())
    assert b"DICM" not in stored and b"DOE^JANE" not in stored
    assert area.rows.count(FILE) == 4 and area.rows.count(ZSTD_FILE) == 1  # the summary compressed at once

    counts = compress_pending(area)
    assert counts == {"coded": 4}  # the JSON summary is not an image: left as it was sealed
    for uuid, data in files.items():
        assert area.read(uuid, DICOM) == data
        row = area.rows.get(attachment_uid(uuid, DICOM))
        assert row.codec != FILE and row.blob_size < row.source_size / 1.5  # coded losslessly, smaller
    assert area.read(summary_id, JSON) == summary
    assert compress_pending(area) == {}  # nothing left to code
    assert len(list(archive.store.keys())) == 5  # the old blobs went
    stored = _blobs(archive)
    assert all(_pixel_runs(data, stored) == 0 for data in files.values()) and b"DICM" not in stored


def test_without_sync_files_are_written_through_and_flushed(archive: Archive, config: Config) -> None:
    # Orthanc's SyncStorageArea false: no sync per file, but each file is in the store and the index when
    # create returns (another process reads it at once; a crash of this one loses nothing), flushed behind
    area = StorageArea(archive, sync=False, flush_s=0.05)
    files = {_id(): f.read_bytes() for f in ct_files()[:3]}
    for uuid, data in files.items():
        area.create(uuid, DICOM, data)
    assert area._written.is_set()
    with Archive(config) as other:
        for uuid, data in files.items():
            assert StorageArea(other).read(uuid, DICOM) == data
    deadline = time.time() + 10
    while area._written.is_set():  # the flusher took them
        assert time.time() < deadline, "no flush"
        time.sleep(0.01)
    area.create(_id(), JSON, b"{}")
    area.close()  # a last flush, the flusher stopped
    assert not area._written.is_set() and area._flusher is not None and not area._flusher.is_alive()
    assert compress_pending(area) == {"coded": 3}
    for uuid, data in files.items():
        assert area.read(uuid, DICOM) == data


def test_a_failed_flush_refuses_new_files_until_one_succeeds(archive: Archive, tmp_path: Path) -> None:
    if not isinstance(archive.store, BlobStore):
        pytest.skip("an object store's puts are durable: nothing to flush")
    area = StorageArea(archive, sync=False, flush_s=3600)
    first, data = _id(), ct_files()[0].read_bytes()
    area.create(first, DICOM, data)
    root, away = archive.store.root, tmp_path / "unmounted"
    root.rename(away)  # the store's file system gone from under it (unmounted)
    try:
        with pytest.raises(StoreError, match="cannot sync"):
            area.flush()
        with pytest.raises(StoreError, match="cannot sync"):  # not one more file on top of unsynced ones
            area.create(_id(), DICOM, data)
    finally:
        away.rename(root)
    second = _id()
    area.create(second, DICOM, data)  # synced again first, then stored
    area.flush()
    assert area.read(first, DICOM) == data and area.read(second, DICOM) == data
    assert area.rows.count() == 2
    area.close()


def _moved(area: StorageArea, timeout: float = 30.0) -> None:
    """Until the journal's mover has moved everything (it waits for the program to be quiet first)."""
    assert area.pending is not None
    deadline = time.time() + timeout
    while len(area.pending):
        assert time.time() < deadline, "the journal was not moved"
        time.sleep(0.05)


def test_a_journal_takes_files_at_once_and_moves_them_behind(archive: Archive, tmp_path: Path) -> None:
    area = StorageArea(archive, sync=False, journal=tmp_path / "journal")
    files = {_id(): f.read_bytes() for f in ct_files()[:3]}
    summary_id, removed = _id(), _id()
    for uuid, data in files.items():
        area.create(uuid, DICOM, data)
    area.create(summary_id, JSON, b'{"a": 1}')
    area.create(removed, DICOM, ct_files()[3].read_bytes())
    area.remove(removed, DICOM)  # gone at once, wherever it was
    for uuid, data in files.items():  # read back from the journal, or from the store once moved
        assert area.read(uuid, DICOM) == data
    with pytest.raises(OpenError, match="not in the storage area"):
        area.read(removed, DICOM)
    _moved(area)
    assert area.rows.count() == 4 and area.rows.get(attachment_uid(removed, DICOM)) is None
    assert area.read(summary_id, JSON) == b'{"a": 1}'
    assert list((tmp_path / "journal").iterdir()) != []  # the current (empty) segment
    assert compress_pending(area) == {"coded": 3}  # moved rows are the compressor's like any
    for uuid, data in files.items():
        assert area.read(uuid, DICOM) == data
    stored = _blobs(archive) + b"".join(p.read_bytes() for p in (tmp_path / "journal").iterdir())
    assert all(_pixel_runs(data, stored) == 0 for data in files.values()) and b"DICM" not in stored
    area.close()
    assert list((tmp_path / "journal").iterdir()) == []  # a clean stop leaves no journal


def _killed_writer(journal: Path, ids: list[str], files: list[Path]) -> None:
    """A process that stores `files` as `ids` through a journal, removes the first, and is SIGKILLed before
    its mover ran: everything is left in the journal."""
    code = f"""
import os, signal, sys
from pathlib import Path
from aepacs.config import load_config
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.storage_area import StorageArea
area = StorageArea(Archive(load_config()), sync=False, journal=Path({str(journal)!r}))
for uuid, path in zip({ids!r}, {[str(f) for f in files]!r}):
    area.create(uuid, 1, Path(path).read_bytes())
area.remove({ids[0]!r}, 1)
area.flush()
os.kill(os.getpid(), signal.SIGKILL)  # before its mover ran: everything is still in the journal
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_killed_writers_journal_is_replayed(archive: Archive, tmp_path: Path) -> None:
    journal, datas = tmp_path / "journal", [f.read_bytes() for f in ct_files()[:3]]
    ids = [_id() for _ in datas]
    _killed_writer(journal, ids, ct_files()[:3])
    assert area_rows(archive) == 0 and len(list(journal.iterdir())) == 1
    area = StorageArea(archive, sync=False, journal=journal)
    assert area.replay() == 2  # the third was removed before the kill: its tombstone holds
    assert [area.read(u, DICOM) for u in ids[1:]] == datas[1:]
    with pytest.raises(OpenError, match="not in the storage area"):
        area.read(ids[0], DICOM)
    assert area_rows(archive) == 2 and area.replay() == 0
    assert [p.name for p in journal.iterdir()] == [area.pending.journal.segment.name]  # replayed, dropped
    area.close()


def test_a_key_is_not_retired_while_a_killed_writers_journal_needs_it(archive: Archive, env: dict[str, str]) -> None:
    """What a killed Orthanc left in its journal (sealed under the old KEK) keeps ``keys retire`` from
    destroying that key until Orthanc's next start moved it and a rekey re-sealed it."""
    journal, files = archive.config.journal_path, ct_files()[:3]
    ids = [_id() for _ in files]
    _killed_writer(journal, ids, files)
    assert run_cli("keys", "rotate", env=env).returncode == 0
    refused = run_cli("keys", "retire", "1", "--yes", env=env)
    assert refused.returncode != 0 and f"still opens 2 files in Orthanc's storage area journal ({journal})" \
        in refused.stderr, refused.stderr
    assert 1 in Keyring.load(archive.config.keyring_path).versions  # nothing was changed
    area = StorageArea(Archive(archive.config), sync=False, journal=journal)  # Orthanc's next start
    assert area.replay() == 2
    area.close()
    assert "still opens 2 archived objects" in run_cli("keys", "retire", "1", "--yes", env=env).stderr
    assert run_cli("rekey", "--quiet", env=env).returncode == 0
    assert run_cli("keys", "retire", "1", "--yes", env=env).returncode == 0
    with Archive(archive.config) as after:
        area = StorageArea(after)
        assert [area.read(u, DICOM) for u in ids[1:]] == [f.read_bytes() for f in files[1:]]


def area_rows(archive: Archive) -> int:
    return StorageArea(archive).rows.count()


def test_new_files_wait_until_they_are_old_enough_to_code(archive: Archive) -> None:
    area = StorageArea(archive)
    uuid, data = _id(), ct_files()[0].read_bytes()
    area.create(uuid, DICOM, data)
    assert compress_pending(area, age_s=3600) == {}  # new: left as it came (reads back fastest)
    assert area.rows.get(attachment_uid(uuid, DICOM)).codec == FILE
    with archive.index.engine.begin() as conn:  # stored two hours ago
        conn.execute(attachments.update().values(stored_at=time.time() - 7200))
    assert compress_pending(area, age_s=3600) == {"coded": 1}
    row = area.rows.get(attachment_uid(uuid, DICOM))
    assert row.codec != FILE and row.source_sha256 == hashlib.sha256(data).hexdigest()
    assert area.read(uuid, DICOM) == data


def test_remove_deletes_blob_and_row_and_is_audited(archive: Archive) -> None:
    area = StorageArea(archive)
    uuid = _id()
    area.create(uuid, DICOM, ct_files()[0].read_bytes())
    compress_pending(area)
    area.remove(uuid, DICOM)
    assert list(archive.store.keys()) == [] and area.rows.count() == 0
    with pytest.raises(OpenError, match=f"orthanc.1.{uuid}.*not in the storage area"):
        area.read(uuid, DICOM)
    area.remove(uuid, DICOM)  # again: logged, not an error
    (record,) = [r for r in read(archive.config.audit_path) if r["event"] == "remove"]
    assert record["action"] == "D" and uuid in record["detail"]


def test_a_tampered_or_swapped_blob_names_the_file(archive: Archive) -> None:
    area = StorageArea(archive)
    one, two = _id(), _id()
    area.create(one, DICOM, ct_files()[0].read_bytes())
    area.create(two, DICOM, ct_files()[1].read_bytes())
    row_one, row_two = (area.rows.get(attachment_uid(u, DICOM)) for u in (one, two))
    # the index pointing one file at another's blob: bound to the other id, refused
    with archive.index.engine.begin() as conn:
        conn.execute(attachments.update().where(attachments.c.pk == row_one.pk).values(blob_key=row_two.blob_key))
    with pytest.raises(OpenError, match=f"orthanc.1.{one}.*belongs to object orthanc.1.{two}"):
        area.read(one, DICOM)
    tamper(archive.store, row_two.blob_key, row_two.blob_size - 40)
    with pytest.raises(OpenError, match=f"orthanc.1.{two}.*altered"):
        area.read(two, DICOM)


@pytest.mark.parametrize("where", ["header", "key slot", "ciphertext"])
def test_a_file_read_before_still_fails_when_its_blob_is_altered(archive: Archive, where: str) -> None:
    # a read remembers what opened a blob (no index look-up, no key unwrap the next time): a change to any
    # part of the blob as stored still fails the read, naming the file
    area = StorageArea(archive)
    uuid, data = _id(), ct_files()[0].read_bytes()
    area.create(uuid, DICOM, data)
    assert area.read(uuid, DICOM) == data and area.read(uuid, DICOM) == data
    row = area.rows.get(attachment_uid(uuid, DICOM))
    span = header_span(archive.store.read_prefix(row.blob_key, 10))
    offset = {"header": span - 20, "key slot": span + 30, "ciphertext": row.blob_size - 100}[where]
    tamper(archive.store, row.blob_key, offset)
    with pytest.raises(OpenError, match=f"orthanc.1.{uuid}"):
        area.read(uuid, DICOM)


def test_ids_that_could_reach_another_object_are_refused(archive: Archive) -> None:
    area = StorageArea(archive)
    for bad in ("../../etc/passwd", "ABCDEF00-0000-0000-0000-000000000000", "", "x" * 36):
        with pytest.raises(InputError, match="not a file id"):
            area.create(bad, DICOM, b"data")
    with pytest.raises(InputError, match="content type"):
        area.create(_id(), -1, b"data")
    assert area.rows.count() == 0 and list(archive.store.keys()) == []


def test_reads_follow_blobs_another_process_switched(archive: Archive, config: Config) -> None:
    # a read remembers where a file's blob is; the compressor and a rekey (other processes) switch it
    area = StorageArea(archive)
    uuid, data = _id(), ct_files()[0].read_bytes()
    area.create(uuid, DICOM, data)
    assert area.read(uuid, DICOM) == data
    with Archive(config) as other:
        assert compress_pending(StorageArea(other)) == {"coded": 1}  # the blob it remembered is gone
    assert area.read(uuid, DICOM) == data
    archive.keyring.rotate()
    assert rekey(config, mode="rewrap", workers=1, progress=False).failed == 0  # same blob, a new key slot
    archive.keyring.retire(1)  # the key slot it remembered no longer opens
    assert area.read(uuid, DICOM) == data
    area.remove(uuid, DICOM)
    with pytest.raises(OpenError, match="not in the storage area"):
        area.read(uuid, DICOM)


def test_coded_files_are_decoded_ahead_of_a_series_read(archive: Archive, config: Config) -> None:
    # a viewer reads a series file after file: once a coded file is read, the files stored after it are
    # decoded on other threads; each read takes its own file, exact, whatever happened to it meanwhile
    writer = StorageArea(archive)
    ids, datas = [_id() for _ in range(8)], [f.read_bytes() for f in ct_files()[:8]]
    for uuid, data in zip(ids, datas, strict=True):
        writer.create(uuid, DICOM, data)
        writer.create(uuid, JSON, b"{}")  # (Orthanc's other files in between: not decoded ahead)
    assert compress_pending(writer) == {"coded": 8}
    area = StorageArea(archive, read_ahead=2)
    assert area.ahead is not None
    assert area.read(ids[0], DICOM) == datas[0]  # read itself; the next ones decoded ahead
    deadline = time.time() + 60
    while not area.ahead.under_way(attachment_uid(ids[1], DICOM)):  # a worker took the next file
        assert time.time() < deadline, "nothing decoded ahead"
        time.sleep(0.01)
    assert [area.read(u, DICOM) for u in ids[1:4]] == datas[1:4]
    assert 1 <= area.ahead.taken <= 3
    # meanwhile: file 5 removed, file 6's blob re-sealed by a full rekey in another process
    area.remove(ids[5], DICOM)
    with Archive(config) as other:
        other.keyring.rotate()
    assert rekey(config, mode="full", workers=1, progress=False).failed == 0
    assert area.read(ids[4], DICOM) == datas[4]
    with pytest.raises(OpenError, match="not in the storage area"):
        area.read(ids[5], DICOM)
    assert [area.read(u, DICOM) for u in ids[6:]] == datas[6:]
    area.close()
    assert area.read(ids[7], DICOM) == datas[7]  # closed: read as without it


def test_rekey_retire_and_the_sweep_cover_the_files(archive: Archive, config: Config) -> None:
    area = StorageArea(archive)
    ids = [_id() for _ in range(3)]
    datas = [f.read_bytes() for f in ct_files()[:3]]
    for uuid, data in zip(ids, datas, strict=True):
        area.create(uuid, DICOM, data)
    area.create(ids[0], JSON, b'{"a": 1}')
    assert compress_pending(area, limit=1) == {"coded": 1}  # one coded, two still as they came
    assert archive.sweep_orphans(min_age_s=0) == 0  # every blob is referenced by a file
    assert archive.index.kek_versions() == {1: 4}
    archive.keyring.rotate()
    rewrap = rekey(config, mode="rewrap", workers=1, progress=False)
    assert (rewrap.done, rewrap.failed) == (4, 0) and archive.index.kek_versions() == {2: 4}
    full = rekey(dataclasses.replace(config, rekey=dataclasses.replace(config.rekey, full_after_days=0)),
                 mode="full", workers=1, progress=False)
    assert (full.done, full.failed) == (4, 0)
    archive.keyring.retire(1)
    for uuid, data in zip(ids, datas, strict=True):  # under key 2 alone, the same bytes
        assert area.read(uuid, DICOM) == data
    assert area.read(ids[0], JSON) == b'{"a": 1}'
    assert compress_pending(area) == {"coded": 2}  # coding goes on after a rekey
    assert all(area.read(uuid, DICOM) == data for uuid, data in zip(ids, datas, strict=True))
    assert len(list(archive.store.keys())) == 4


def test_a_full_store_refuses_and_keeps_nothing(config: Config, keyring: Keyring, backend: str) -> None:
    if backend != "local":
        pytest.skip("object storage has no disk of its own to fill")
    full = dataclasses.replace(config, store=dataclasses.replace(config.store, min_free_mb=10 ** 9))
    with Archive(full, keyring) as archive:  # a reserve larger than any disk here
        area = StorageArea(archive)
        with pytest.raises(StoreFullError):
            area.create(_id(), DICOM, ct_files()[0].read_bytes())
        assert area.rows.count() == 0 and list(archive.store.keys()) == []



def test_the_sweep_removes_only_old_files_the_program_never_committed(archive: Archive) -> None:
    area = StorageArea(archive)
    committed, orphans = [_id() for _ in range(20)], [_id() for _ in range(2)]
    for uuid in committed + orphans:
        area.create(uuid, JSON, b"{}")
    known = [(u, JSON) for u in committed]
    assert sweep_unknown(area, known, min_age_s=3600) == 0  # too young: a create may still be committing
    assert sweep_unknown(area, known, min_age_s=0) == 2
    assert area.rows.count() == 20 and len(list(archive.store.keys())) == 20
    with pytest.raises(AepacsError, match="unknown to Orthanc.*Nothing removed"):
        sweep_unknown(area, [], min_age_s=0)  # the wrong Orthanc: it knows none of them
    assert area.rows.count() == 20
    assert sweep_unknown(area, known[:5], min_age_s=0, force=True) == 15
    assert sum(r["event"] == "remove" for r in read(archive.config.audit_path)) == 17


def test_a_file_coding_cannot_shrink_is_passed_by_once_and_for_all(archive: Archive) -> None:
    """Orthanc's DICOM content type holding what the routes cannot code: kept as it came, recorded so, and
    the compressor following Orthanc looks at it once, not on every pass."""
    area = StorageArea(archive)
    odd, image = _id(), _id()
    area.create(odd, DICOM, b"not a DICOM stream at all")
    area.create(image, DICOM, ct_files()[0].read_bytes())
    stop = threading.Event()
    seen: list[Counter[str]] = []
    follower = threading.Thread(target=lambda: seen.append(follow(area, interval=0.05, stop=stop)))
    follower.start()
    deadline = time.time() + 120
    while area.rows.coded_by(FILE, DICOM, limit=1):  # until both are dealt with
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # passes the follower would make over the kept file, were it still waiting
    stop.set()
    follower.join(60)
    assert seen == [Counter({"coded": 1, "kept": 1})]
    assert area.rows.get(attachment_uid(odd, DICOM)).codec == KEPT and compress_pending(area) == {}
    assert area.read(odd, DICOM) == b"not a DICOM stream at all"
