"""The append-only journal of sealed blobs: appends read back, rotation, torn tails, dead writers' segments."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aepacs.errors import StoreError
from aepacs.store.journal import BLOB, TOMBSTONE, Journal, orphaned_segments, records


def test_appends_read_back_and_replay_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    assert oct(os.stat(tmp_path / "j").st_mode & 0o777) == "0o700"
    blobs = [os.urandom(n) for n in (10, 70_000, 3)]
    entries = [journal.append(b, source_size=len(b) * 2) for b in blobs]
    journal.tombstone("orthanc.1.x")
    assert [journal.read(e) for e in entries] == blobs
    assert oct(os.stat(journal.segment).st_mode & 0o777) == "0o600"
    found = list(records(journal.segment))
    expected = [(BLOB, len(b) * 2, e) for b, e in zip(blobs, entries, strict=True)]
    assert found == [*expected, (TOMBSTONE, 0, "orthanc.1.x")]
    assert [journal.read(e) for _, _, e in found[:3]] == blobs
    old = journal.rotate()
    assert journal.segment != old and journal.read(entries[1]) == blobs[1]  # a rotated segment still reads
    journal.drop(old)
    assert not old.exists()
    with pytest.raises(StoreError, match="no longer holds"):
        journal.read(entries[0])
    journal.close()


def test_syncs_and_rotations_from_other_threads_lose_no_append(tmp_path: Path) -> None:
    # the storage area syncs (fdatasync of the segment) from the threads that append while the mover
    # rotates: every append lands whole in some segment, in order within it, and syncs never fail
    journal = Journal(tmp_path)
    segments: list[Path] = []
    errors: list[BaseException] = []

    def appender(n: int) -> None:
        try:
            for i in range(200):
                journal.append(f"{n}:{i}".encode(), 1)
                if i % 10 == 0:
                    journal.sync()
        except BaseException as exc:  # noqa: BLE001 -- reported below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        segments.append(journal.rotate())
    journal.sync()
    segments.append(journal.segment)
    assert not errors
    found = [journal.read(e).decode() for s in segments for kind, _, e in records(s) if kind == BLOB]
    for n in range(3):
        assert [f for f in found if f.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(200)]
    journal.close()


def test_a_torn_last_record_ends_the_replay(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(b"whole", 5)
    journal.append(b"torn" * 100, 400)
    journal.close()
    with journal.segment.open("r+b") as f:  # a crash in the middle of the second append
        f.truncate(journal.segment.stat().st_size - 50)
    ((kind, size, entry),) = records(journal.segment)
    assert kind == BLOB and size == 5 and journal.read(entry) == b"whole"


def test_a_failed_append_leaves_no_torn_record_before_the_next(tmp_path: Path) -> None:
    # a real failed write: a file-size limit that the second append crosses (written in part, then EFBIG)
    code = """
import resource, signal, sys
from aepacs.errors import StoreError
from aepacs.store.journal import Journal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
journal = Journal(sys.argv[1])
journal.append(b"first", 5)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    journal.append(b"x" * 10_000, 10_000)
    sys.exit("the append over the limit did not fail")
except StoreError:
    pass
journal.append(b"third", 5)
print(journal.segment)
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    segment = Path(out.stdout.strip())
    found = list(records(segment))
    assert [(kind, size) for kind, size, _ in found] == [(BLOB, 5), (BLOB, 5)]  # the third after the first
    reader = Journal(tmp_path / "reader")
    assert [reader.read(entry) for _, _, entry in found] == [b"first", b"third"]
    reader.close()


def test_only_segments_of_dead_processes_are_orphaned(tmp_path: Path) -> None:
    mine = Journal(tmp_path)
    mine.append(b"alive", 5)
    code = ("import sys; from aepacs.store.journal import Journal; "
            "Journal(sys.argv[1]).append(b'dead', 4)")  # exits without moving it: its segment stays
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    (orphan,) = orphaned_segments(tmp_path, mine.token)
    ((kind, size, entry),) = records(orphan)
    assert orphan != mine.segment and (kind, size) == (BLOB, 4) and mine.read(entry) == b"dead"
    # a process id used again (a container's Orthanc starts with the same one): its old segments are
    # another writer's, orphaned; the live writer's own are not
    reused = tmp_path / mine.segment.name.replace(f"-{mine.token}-", "-0badc0de-")
    reused.write_bytes(b"")
    assert set(orphaned_segments(tmp_path, mine.token)) == {orphan, reused}
    mine.close()
