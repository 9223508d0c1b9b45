"""The fuzzing harness: mutated real files, sent raw over real associations to a real ``aepacs serve``.

Every case takes a file of the real corpus, gives it a fresh SOP Instance UID
(same length, so its framing is untouched), mutates it (:mod:`tests.fuzz.mutate`:
byte flips, truncations, length fields, VR changes, nesting, UID shapes, pixel
data size lies, huge declared lengths) and sends its bytes as they are with
C-STORE. It asserts, per case:

- the status is one of ``docs/CONFORMANCE.md`` (0x0000, 0xA700, 0xA900, 0xC000);
- the server is alive and its RSS stays bounded;
- the structural scan and the full parse agree (the scan's nesting limit aside),
  and whatever the scan accepts, the archiving worker can archive;

and at the end: every acknowledged instance is archived, findable by C-FIND and
comes back by C-GET byte for byte as sent; nothing else is in the index or the
blob store, nothing is left in the spool or its ``failed/`` directory, and the
log holds no traceback.

``FUZZ_CASES`` sets the number of cases (CI: the default, about a minute;
``make fuzz``: thousands). The counts are printed at the end of the run.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aepacs.crypto.keyring import Keyring
from aepacs.dicom.part10 import parse
from aepacs.errors import AepacsError
from aepacs.net.client import query, retrieve
from aepacs.net.send import Storable, send_files, storable
from aepacs.pipeline.ingest import _parsed, check, check_received
from tests.conftest import TEST_SITE, corpus_files
from tests.fuzz.mutate import MUTATIONS, dataset_bytes, with_fresh_uid
from tests.net.conftest import free_port, start_serve

CASES = int(os.environ.get("FUZZ_CASES", "250"))
CONFORMANT = {0x0000, 0xA700, 0xA900, 0xC000}
RSS_LIMIT_MB = 1500

#: What the run saw, printed by tests/conftest.py's terminal summary.
STATS: Counter[str] = Counter()


def _sources() -> list[bytes]:
    """Corpus files a C-STORE can carry whose SOP Instance UID can be renewed in place, as bytes.

    Renewed in place: the file meta and the dataset name the same UID, in clear (not deflated).
    """
    import tempfile

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.dcm"
        for path in corpus_files():
            data = path.read_bytes()
            fresh, uid = with_fresh_uid(data, random.Random(0))
            probe.write_bytes(fresh)
            f = storable(probe)
            if uid and f is not None and f.sop_uid == uid:
                out.append(data)
    return out


SOURCES: list[bytes] = []


def sources() -> list[bytes]:
    if not SOURCES:
        SOURCES.extend(_sources())
    return SOURCES


def _verdict(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except AepacsError as exc:
        return type(exc).__name__, str(exc)
    except Exception as exc:  # what the archive must never let out
        return f"crash {type(exc).__name__}", str(exc)


case = st.tuples(st.integers(0, 10**6), st.sampled_from(sorted(MUTATIONS)), st.integers(0, 2**32 - 1))


@settings(max_examples=CASES * 4, deadline=None, database=None, derandomize=bool(os.environ.get("CI")))
@given(case)
def test_scan_and_parse_agree_on_mutated_files(c: tuple[int, str, int]) -> None:
    """One verdict: what the acknowledgement path accepts, the archiving worker archives."""
    index, kind, seed = c
    rng = random.Random(seed)
    files = sources()
    data = MUTATIONS[kind](files[index % len(files)], rng)
    fast = _verdict(lambda: check_received(data))
    full = _verdict(lambda: check(parse(data)))
    assert not fast[0].startswith("crash") and not full[0].startswith("crash"), (kind, fast, full)
    STATS["scan cases"] += 1
    if fast[0] == "DatasetMismatch" and "nested deeper" in fast[1]:
        STATS["scan: refused for nesting"] += 1
        return  # deliberately stricter than pydicom, which recurses
    assert fast[0] == full[0], (kind, fast, full)  # the same status (the messages may word it otherwise)
    if fast[0] == "ok":
        assert fast[1] == full[1], (kind, fast, full)
        archived = _verdict(lambda: _parsed(data, fast[1]["SOPInstanceUID"], True))
        assert archived[0] == "ok", (kind, archived)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int, Path, Path]]:
    home = tmp_path_factory.mktemp("fuzz-home")
    Keyring.create(home / "keyring.json")
    log = home.parent / "fuzz-serve.log"
    port = free_port()
    site = home.parent / "fuzz-site.yaml"  # (module-scoped: the tests' site, not a test's home, applies)
    site.write_text(TEST_SITE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AEPACS_CONFIG", str(site))
        proc = start_serve(home, port, log)
    yield proc, port, home, log
    proc.terminate()
    proc.wait(60)


def _send(port: int, f: Storable) -> int | None:
    """C-STORE the file's dataset bytes as they are, announced as its (unmutated) file meta says."""
    summary = send_files("127.0.0.1", port, "AEPACS", "FUZZER", [f], timeout=120)
    return summary.statuses.get(f.path)


def _spool_empty(home: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while list((home / "spool").glob("*.aepx")):
        assert time.monotonic() < deadline, "acknowledged instances not archived in time"
        time.sleep(0.5)


def test_fuzz_over_real_associations(serve: tuple[Any, int, Path, Path], tmp_path: Path) -> None:
    proc, port, home, log = serve
    acked: dict[str, bytes] = {}  # SOP Instance UID -> the dataset bytes sent
    statuses: Counter[str] = Counter()
    counter = itertools.count()  # a fresh UID per case, also when hypothesis replays one
    rss0 = _rss_mb(proc.pid)

    @settings(max_examples=CASES, deadline=None, database=None, derandomize=bool(os.environ.get("CI")),
              suppress_health_check=[HealthCheck.too_slow])
    @given(case)
    def one(c: tuple[int, str, int]) -> None:
        index, kind, seed = c
        rng = random.Random(seed)
        files = sources()
        fresh, uid = with_fresh_uid(files[index % len(files)], random.Random(f"{seed}-{next(counter)}"))
        path = tmp_path / "case.dcm"
        path.write_bytes(fresh)
        announced = storable(path)
        assert announced is not None and announced.sop_uid == uid
        data = MUTATIONS[kind](fresh, rng)
        path.write_bytes(data)
        status = _send(port, announced)
        STATS["sent" if status is not None else "not sendable (file meta unreadable)"] += 1
        if status is None:
            return
        statuses[f"0x{status:04X}"] += 1
        assert status in CONFORMANT, (kind, hex(status))
        assert proc.poll() is None, f"server died on a {kind} case"
        rss = _rss_mb(proc.pid)
        assert rss < RSS_LIMIT_MB and rss < rss0 + 800, f"server RSS {rss:.0f} MB after a {kind} case"
        if status == 0x0000:  # a UID acknowledged again (a case replayed) keeps the first: keep-first
            acked.setdefault(uid, dataset_bytes(data))

    one()
    STATS.update({f"status {k}": v for k, v in statuses.items()})
    STATS["acknowledged"] += len(acked)
    _spool_empty(home)
    assert not list((home / "spool" / "failed").glob("*")), "acknowledged instances kept out of the archive"

    found: dict[str, str] = {}  # SOP Instance UID -> its Study Instance UID, as the archive indexed it
    uids = sorted(acked)
    for i in range(0, len(uids), 50):
        found |= {str(ds.SOPInstanceUID): str(ds.get("StudyInstanceUID", "") or "")
                  for ds in query("127.0.0.1", port, "AEPACS", "FUZZER", "IMAGE",
                                  {"SOPInstanceUID": "\\".join(uids[i:i + 50]), "StudyInstanceUID": ""})}
    assert set(found) == set(acked)  # everything acknowledged is findable
    from aepacs.store.index import Index

    index = Index(f"sqlite:///{home / 'index.sqlite3'}")
    try:
        assert index.count() == len(acked)
    finally:
        index.close()
    blobs = [p for p in (home / "blobs").rglob("*") if p.is_file() and ".tmp" not in p.parts]
    assert len(blobs) == len(acked), "blobs without an index row"

    # each study by one C-GET (an instance indexed without a study, by its own); all of them come back as sent
    keyring, got = Keyring.load(home / "keyring.json"), list[bytes]()
    requests = {("study", study) for study in found.values() if study}
    requests |= {("instance", uid) for uid, study in found.items() if not study}
    for n, (level, value) in enumerate(sorted(requests)):
        summary = retrieve("127.0.0.1", port, "AEPACS", "FUZZER", level, value, keyring, tmp_path / "out" / str(n))
        assert not summary.failed and summary.written, (level, value, summary.failed)
        got += [dataset_bytes(path.read_bytes()) for path in summary.written]
    assert len(got) == len(acked)  # (each sent dataset holds its own UID: equal lists mean each came back as sent)
    assert sorted(got) == sorted(acked.values())
    STATS["archived and retrieved identical"] += len(got)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    assert proc.poll() is None
