"""aepacs rekey: key rotation over a real archive, killed, corrupted, concurrent, and on Dask.

Every test runs twice: on SQLite and local files, and on PostgreSQL and S3 (:func:`tests.conftest.home`).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from aepacs.config import Config, load_config
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.seal import read_header
from aepacs.errors import OpenError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import ingest
from aepacs.pipeline.rekey import rekey
from aepacs.pipeline.retrieve import fetch, fetch_blob
from aepacs.store.blobs import BlobStore, FsspecBlobStore
from tests.conftest import BACKENDS, run_cli, tamper

_TEMPLATE = pydicom.dcmread(get_testdata_file("CT_small.dcm"))

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


def tiny(i: int, study: str, series: str, rng: np.random.Generator, size: int = 8) -> bytes:
    """A complete CT instance of `size` x `size` pixels with fresh UIDs, as Part 10 bytes."""
    ds = _TEMPLATE.copy()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = i
    ds.Rows = ds.Columns = size
    ds.PixelData = rng.integers(0, 2000, (size, size), dtype=np.int16).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def fill(archive: Archive, n: int, seed: int = 0) -> dict[str, str]:
    """Ingest `n` tiny instances; return SOP Instance UID -> SHA-256 of the original bytes."""
    rng, study, series, out = np.random.default_rng(seed), generate_uid(), generate_uid(), {}
    for i in range(n):
        data = tiny(i, study, series, rng)
        uid = str(pydicom.dcmread(BytesIO(data)).SOPInstanceUID)
        assert ingest(archive, data).status == "added"
        out[uid] = hashlib.sha256(data).hexdigest()
    return out


def assert_consistent(config: Config, originals: dict[str, str]) -> None:
    """Every object opens to its original bytes under the active key; index and store agree."""
    with Archive(config) as archive:  # opening sweeps the temporaries of killed writers
        active = archive.keyring.active_version
        assert archive.index.kek_versions() == {active: len(originals)}
        assert archive.index.pending() == []
        assert set(archive.store.keys()) == set(archive.index.blob_keys()), "orphan or missing blobs"
        if isinstance(archive.store, BlobStore):
            assert not any(archive.store.tmp.iterdir())
        for uid, digest in originals.items():
            assert hashlib.sha256(fetch(archive, uid)).hexdigest() == digest


def blob_files(config: Config) -> dict[str, bytes]:
    """Every stored blob by key (local files or object storage)."""
    with Archive(config) as archive:
        store = archive.store
        return {key: store.get(key) for key in list(store.keys())}


# -- the acceptance run --------------------------------------------------------------------

def test_2000_objects_full_rekey_then_retire(config: Config, archive: Archive, backend: str) -> None:
    # on S3, 300: each object is half a dozen requests to moto, a Python server on the same 2 cores
    n = 2000 if backend == "local" else 300
    originals = fill(archive, n)
    old_files = set(blob_files(config))
    run_cli("keys", "rotate", check=True)
    proc = run_cli("rekey", "--mode", "full", "-q", check=True)
    assert f"{n} done, 0 skipped, 0 failed" in proc.stdout
    assert_consistent(config, originals)
    files = blob_files(config)
    assert not old_files & set(files), "a blob under an old data key remains"
    assert {read_header(b).sealed_kek_version for b in files.values()} == {2}
    assert {read_header(b).kek_version for b in files.values()} == {2}
    unconfirmed = run_cli("keys", "retire", "1")  # says what it strands, and changes nothing without --yes
    assert unconfirmed.returncode == 2 and "transport objects already delivered" in unconfirmed.stderr
    assert Keyring.load(config.keyring_path).versions == [1, 2]
    proc = run_cli("keys", "retire", "1", "--yes", check=True)
    assert "retired key version 1" in proc.stdout
    assert Keyring.load(config.keyring_path).versions == [2]
    assert_consistent(config, originals)


# -- rewrap --------------------------------------------------------------------------------

def test_rewrap_changes_only_the_key_slot(config: Config, archive: Archive) -> None:
    originals = fill(archive, 40)
    before = blob_files(config)
    refused = run_cli("keys", "retire", "1")
    assert refused.returncode != 0 and "still opens 40 archived objects" in refused.stderr
    run_cli("keys", "rotate", check=True)
    summary = rekey(config, mode="rewrap", workers=1, progress=False)
    assert (summary.done, summary.failed) == (40, 0)
    assert blob_files(config) == before, "rewrap rewrote blob files"
    run_cli("keys", "retire", "1", "--yes", check=True)
    assert_consistent(config, originals)
    with Archive(config) as a:  # the sealed transport object carries the current slot
        uid = next(iter(originals))
        _, blob = fetch_blob(a, uid)
        assert read_header(blob).kek_version == 2
    assert rekey(config, mode="rewrap", workers=1, progress=False).done == 0  # idempotent


def test_rewrap_verify_and_pool(config: Config, archive: Archive) -> None:
    originals = fill(archive, 30)
    Keyring.load(config.keyring_path).rotate()
    summary = rekey(config, mode="rewrap", workers=2, verify=True, progress=False)
    assert (summary.done, summary.failed) == (30, 0)
    assert summary.bytes_read >= sum(r.blob_size for r in archive.index.find())
    assert_consistent(config, originals)


def test_dry_run_and_limit(config: Config, archive: Archive) -> None:
    fill(archive, 12)
    Keyring.load(config.keyring_path).rotate()
    proc = run_cli("rekey", "--dry-run", check=True)
    assert "12 objects would be rekeyed" in proc.stdout
    assert archive.index.kek_versions() == {1: 12}
    assert rekey(config, mode="full", workers=1, limit=5, progress=False).done == 5
    assert archive.index.kek_versions() == {1: 7, 2: 5}


def test_full_mode_reseals_old_data_keys_under_the_active_kek(config: Config, archive: Archive,
                                                              home: Path) -> None:
    originals = fill(archive, 6)
    aged = load_config(overrides={"rekey": {"full_after_days": 0}})
    before = set(blob_files(config))
    assert rekey(aged, mode="rewrap", workers=1, progress=False).done == 0  # nothing under an old KEK
    assert rekey(aged, mode="full", workers=1, progress=False).done == 6  # but every data key is old
    assert not before & set(blob_files(config))
    assert_consistent(config, originals)


# -- failures ------------------------------------------------------------------------------

def test_corrupt_object_fails_alone_and_is_left_untouched(config: Config, archive: Archive) -> None:
    originals = fill(archive, 20)
    victim = sorted(originals)[7]
    row = archive.index.get(victim)
    tamper(archive.store, row.blob_key, -40, 0x01)
    damaged = archive.store.get(row.blob_key)
    run_cli("keys", "rotate", check=True)
    proc = run_cli("rekey", "--mode", "full", "-q")
    assert proc.returncode == 1
    assert "19 done, 0 skipped, 1 failed" in proc.stdout
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and victim in failed[0]
    assert archive.store.get(row.blob_key) == damaged
    after = archive.index.get(victim)
    assert (after.blob_key, after.kek_version) == (row.blob_key, 1)
    assert archive.index.kek_versions() == {1: 1, 2: 19}
    with pytest.raises(OpenError, match=victim):
        fetch(archive, victim)


def test_missing_key_is_reported_per_object(config: Config, archive: Archive) -> None:
    fill(archive, 3)
    ring = Keyring.load(config.keyring_path)
    ring.rotate()
    ring.rotate()
    ring.retire(1)  # destroyed behind the archive's back (keys retire would have refused)
    summary = rekey(config, mode="rewrap", workers=1, progress=False)
    assert summary.failed == 3 and all("key version 1" in why for _, why in summary.failures)


# -- crashes -------------------------------------------------------------------------------

def test_kill_9_at_random_points_then_rerun(config: Config, archive: Archive, backend: str) -> None:
    # on S3 fewer objects and kills: every check reads each object back from moto (a Python server)
    objects, trials = (150, 20) if backend == "local" else (40, 10)
    originals = fill(archive, objects)
    rng = random.Random(20261124)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    partial = 0
    for trial in range(trials):
        Keyring.load(config.keyring_path).rotate()
        mode = "full" if trial % 4 else "rewrap"
        proc = subprocess.Popen([sys.executable, "-m", "aepacs", "rekey", "--mode", mode, "--workers", "1", "-q"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if mode == "full":  # once it has begun its first batch, at a random instant of the rest
            with Archive(config) as a:
                deadline = time.monotonic() + 30
                while proc.poll() is None and not a.index.pending() and time.monotonic() < deadline:
                    time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.06))
        else:  # one transaction: before, during or after it
            time.sleep(rng.uniform(0.3, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Archive(config) as a:  # what the dead run left half-done
            partial += bool(a.index.pending()) or len(a.index.kek_versions()) > 1
        summary = rekey(config, mode=mode, workers=1, progress=False)
        assert summary.failed == 0, summary.failures
        assert_consistent(config, originals)
    print(f"{partial} of {trials} kills landed in the middle of a run")
    assert partial >= trials // 4, f"only {partial} of {trials} kills landed in the middle of a run"


# -- concurrency ---------------------------------------------------------------------------

def test_two_runs_at_once_and_retrievals_meanwhile(config: Config, archive: Archive) -> None:
    originals = fill(archive, 120)
    Keyring.load(config.keyring_path).rotate()
    errors: list[str] = []
    stop = threading.Event()
    added: dict[str, str] = {}

    def reader() -> None:
        with Archive(config) as a:
            uids = sorted(originals)
            while not stop.is_set():
                uid = random.choice(uids)
                try:
                    if hashlib.sha256(fetch(a, uid)).hexdigest() != originals[uid]:
                        errors.append(f"{uid}: wrong bytes")
                except Exception as exc:  # noqa: BLE001 - every failure is a finding here
                    errors.append(f"{uid}: {exc}")

    def writer() -> None:  # new objects keep arriving, sealed under the active key
        with Archive(config) as a:
            added.update(fill(a, 30, seed=9))

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    second = subprocess.Popen([sys.executable, "-m", "aepacs", "rekey", "--mode", "full", "--workers", "1", "-q"],
                              stdout=subprocess.PIPE, text=True)
    mine = rekey(config, mode="full", workers=1, progress=False)
    out, _ = second.communicate(timeout=300)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert mine.failed == 0 and "0 failed" in out
    theirs = int(out.split(" done")[0].rsplit(" ", 1)[-1])
    assert mine.done + theirs == 120, "an object was rekeyed twice or not at all"
    assert_consistent(config, {**originals, **added})


def test_dask_local_cluster_gives_the_same_end_state(config: Config, archive: Archive) -> None:
    distributed = pytest.importorskip("distributed")
    originals = fill(archive, 60)
    run_cli("keys", "rotate", check=True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = rekey(config, mode="full", dask=cluster.scheduler_address, progress=False)
    assert (summary.done, summary.failed) == (60, 0)
    assert_consistent(config, originals)
    run_cli("keys", "retire", "1", "--yes", check=True)
    assert_consistent(config, originals)


# -- object storage through fsspec ---------------------------------------------------------

def test_fsspec_store_end_to_end(home: Path, backend: str) -> None:
    """Any fsspec file system holds the blobs (here fsspec's in-process memory://; S3: every test's
    ``postgresql+s3`` run)."""
    if backend != "local":
        pytest.skip("memory:// with the backend's index: the local run covers it")
    config = load_config(overrides={"store": {"path": f"memory://aepacs-{generate_uid()}/blobs"}})
    Keyring.create(config.keyring_path)
    with Archive(config) as archive:
        assert isinstance(archive.store, FsspecBlobStore)
        originals = fill(archive, 8)
        Keyring.load(config.keyring_path).rotate()
        assert rekey(config, mode="full", workers=1, progress=False).done == 8  # memory:// is one process's
    with Archive(config) as archive:
        assert set(archive.store.keys()) == set(archive.index.blob_keys())
        assert archive.index.kek_versions() == {2: 8} and archive.index.pending() == []
        for uid, digest in originals.items():
            assert hashlib.sha256(fetch(archive, uid)).hexdigest() == digest


def test_a_run_sweeps_old_unreferenced_blobs(config: Config, archive: Archive, backend: str) -> None:
    if backend != "local":
        pytest.skip("an object store sets a blob's time itself: keys(older_than=) on S3 is tested in tests/store")
    fill(archive, 3)
    stray = archive.store.put(b"left by an ingest killed between blob and index row")
    young = archive.store.put(b"an ingest still on its way to the index")
    os.utime(archive.store.path_for(stray), (time.time() - 7200, time.time() - 7200))
    summary = rekey(config, mode="rewrap", workers=1, progress=False)
    assert summary.swept == 1
    assert not archive.store.exists(stray) and archive.store.exists(young)
    assert "removed 1 unreferenced blobs" in "\n".join(summary.lines())
