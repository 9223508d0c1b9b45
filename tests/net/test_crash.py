"""The real ``aepacs serve`` process: clean SIGTERM shutdown, and SIGKILL at random moments."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from aepacs.config import load_config
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import open_sealed
from aepacs.net.client import retrieve
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.retrieve import fetch
from tests.net.conftest import free_port, start_serve
from tests.net.test_server import scu, tiny_ct


def stream(port: int, study: str, acked: list[str], stop: threading.Event, seed: int) -> None:
    """Send instances until the server goes away; record those acknowledged with success."""
    rng = np.random.default_rng(seed)
    assoc = scu().associate("127.0.0.1", port, ae_title="AEPACS")
    if not assoc.is_established:
        return
    series = generate_uid()
    i = 0
    while not stop.is_set():
        ds = tiny_ct(i, study, series, rng)
        try:
            rsp = assoc.send_c_store(ds)
        except Exception:
            break
        if rsp is None or "Status" not in rsp:
            break
        if int(rsp.Status) == 0:
            acked.append(str(ds.SOPInstanceUID))
        i += 1
    if assoc.is_established:
        assoc.abort()


def test_sigterm_shuts_down_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, port = tmp_path / "home", free_port()
    Keyring.create(home / "keyring.json")
    proc = start_serve(home, port, tmp_path / "serve.log")
    acked: list[str] = []
    stop = threading.Event()
    sender = threading.Thread(target=stream, args=(port, generate_uid(), acked, stop, 0))
    sender.start()
    deadline = time.monotonic() + 60  # a few acknowledgements, however slow the host (not a fixed time)
    while len(acked) < 5 and sender.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    sender.join(30)
    os.kill(proc.pid, signal.SIGTERM)
    # (a bound, beyond the server's own: 30 s for open associations, 60 s of draining, then the workers,
    # which on a fresh checkout may still be compiling their numba kernels)
    assert proc.wait(300) == 0, (tmp_path / "serve.log").read_text()
    assert "shutting down" in (tmp_path / "serve.log").read_text()
    assert list((home / "spool").glob("*.aepx")) == []  # what was acknowledged was archived before exit
    assert acked
    monkeypatch.setenv("AEPACS_HOME", str(home))
    with Archive(load_config()) as archive:
        assert archive.index.count() == len(acked)
        for uid in acked:
            fetch(archive, uid)


def test_sigkill_at_random_moments_never_loses_an_acknowledged_instance(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    home, port = tmp_path / "home", free_port()
    ring = Keyring.create(home / "keyring.json")
    log = tmp_path / "serve.log"
    study = generate_uid()
    acked: list[str] = []
    rnd = random.Random(11)
    for trial in range(10):
        proc = start_serve(home, port, log)
        stop = threading.Event()
        sender = threading.Thread(target=stream, args=(port, study, acked, stop, trial))
        sender.start()
        # a random moment after this trial's first few acknowledgements (not a fixed time: on a slow
        # host a fixed window may hold none, and the test would prove nothing)
        before, deadline = len(acked), time.monotonic() + 60
        while len(acked) < before + 6 and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rnd.uniform(0.0, 1.0))
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: server and its conversion workers
        proc.wait(30)
        stop.set()
        sender.join(30)
    assert len(acked) > 50

    # after restart: every acknowledged instance is retrievable over DICOM and opens
    proc = start_serve(home, port, log)
    try:
        monkeypatch.setenv("AEPACS_HOME", str(home))
        archive = Archive(load_config(), ring)
        deadline = time.time() + 120
        spool = home / "spool"
        while list(spool.glob("*.aepx")) and time.time() < deadline:  # the restart archives the spool
            time.sleep(0.2)
        assert list(spool.glob("*.aepx")) == [] and not (spool / "failed").exists()
        for uid in acked:
            fetch(archive, uid)
        rows = archive.index.find()
        blobs = set(archive.store.keys())
        for row in rows:
            assert row.blob_key in blobs
            open_sealed(archive.store.get(row.blob_key), ring, name=row.sop_uid)
        s = retrieve("127.0.0.1", port, "AEPACS", "CRASHTEST", "study", study, ring, tmp_path / "out")
        got = {p.stem for p in s.written}
        assert not s.failed and set(acked) <= got
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(300) == 0  # (a bound beyond the server's own stop: see test_sigterm_shuts_down_cleanly)
    # crash leftovers: blobs no row references; a sweep (age 0: nothing is in flight now) removes them
    referenced = set(archive.index.blob_keys())
    orphans = set(archive.store.keys()) - referenced
    assert archive.sweep_orphans(min_age_s=0) == len(orphans)
    assert set(archive.store.keys()) == referenced
    for uid in acked:
        fetch(archive, uid)


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _policies(pids: set[int]) -> set[int]:
    """The scheduling policies of those of `pids` still running."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            found.add(os.sched_getscheduler(pid))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_end_when_the_server_is_killed_alone(tmp_path: Path) -> None:
    """An OOM kill takes the server process only: its archiving workers must not live on.

    (On the way: the workers run under SCHED_IDLE.)
    """
    home, port = tmp_path / "home", free_port()
    Keyring.create(home / "keyring.json")
    proc = start_serve(home, port, tmp_path / "serve.log")
    try:
        assoc = scu().associate("127.0.0.1", port, ae_title="AEPACS")
        ds = tiny_ct(0, generate_uid(), generate_uid(), np.random.default_rng(0))
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.release()
        deadline = time.time() + 60
        while list((home / "spool").glob("*.aepx")) and time.time() < deadline:  # a worker archived it
            time.sleep(0.1)
        children = _children(proc.pid)
        assert children  # the worker pool (and its resource tracker)
        # archiving runs only on CPU time the network leaves, once a worker has warmed its codecs
        # (at normal priority: on a slow host that may end after the catch-up worker archived the entry)
        deadline = time.time() + 120
        while os.SCHED_IDLE not in _policies(children) and time.time() < deadline:
            time.sleep(0.2)
        assert os.SCHED_IDLE in _policies(children)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.time() + 15
        while any(_alive(c) for c in children) and time.time() < deadline:
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
