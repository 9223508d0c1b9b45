"""aepacs reencode: real CT slices moved from one codec to another, killed and rerun, and on Dask."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from aepacs.audit import read
from aepacs.config import Config, load_config
from aepacs.crypto.keyring import Keyring
from aepacs.errors import ConfigError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import ingest
from aepacs.pipeline.reencode import reencode
from aepacs.pipeline.retrieve import fetch
from tests.conftest import ct_files, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def site(home: Path, monkeypatch: pytest.MonkeyPatch, text: str = "") -> Config:
    """An archive in `home` with a site configuration there; AEPACS_HOME and AEPACS_CONFIG point at
    them, so child processes use them too."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "site.yaml"
    path.write_text(text)
    monkeypatch.setenv("AEPACS_HOME", str(home))
    monkeypatch.setenv("AEPACS_CONFIG", str(path))
    config = load_config(path)
    Keyring.create(config.keyring_path)
    return config


def slices(n: int) -> list[bytes]:
    """`n` real CT slices, evenly spaced through the series."""
    files = ct_files()
    return [files[i * len(files) // n].read_bytes() for i in range(n)]


def fill(config: Config, data: list[bytes], route: str) -> dict[str, str]:
    """Archive `data` with CT on `route`; SOP Instance UID -> SHA-256 of the bytes sent."""
    routed = load_config(os.environ["AEPACS_CONFIG"], overrides={"routes": {"CT": route}})
    out = {}
    with Archive(routed) as archive:
        for blob in data:
            assert ingest(archive, blob).status == "added"
            uid = str(pydicom.dcmread(BytesIO(blob), stop_before_pixels=True).SOPInstanceUID)
            out[uid] = hashlib.sha256(blob).hexdigest()
    return out


def state(config: Config) -> dict[str, tuple[str, int, str]]:
    """What a re-encode must leave alike, whoever ran it: per instance, its codec, key version and the
    SHA-256 of what it opens to. Also checks index and store agree."""
    with Archive(config) as archive:
        assert archive.index.pending() == []
        assert set(archive.store.keys()) == set(archive.index.blob_keys()), "orphan or missing blobs"
        return {r.sop_uid: (r.codec, r.kek_version, hashlib.sha256(fetch(archive, r.sop_uid)).hexdigest())
                for r in archive.index.find()}


@pytest.fixture
def local(home: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """An archive on SQLite and local files."""
    return site(home, monkeypatch)


def test_reencode_between_models_and_standard_codecs_keeps_every_byte(local: Config) -> None:
    data = slices(8)
    originals = fill(local, data[:6], "ct@3:lossless")
    lossy = fill(local, data[6:], "ct@3:lossy")  # stored lossy: left alone
    proc = run_cli("reencode", "--from", "ct@3", "--to", "htj2k", "--dry-run", check=True)
    assert "6 objects would be re-encoded" in proc.stdout and "left alone: 2 objects stored lossy" in proc.stdout
    before = state(local)
    proc = run_cli("reencode", "--from", "ct@3", "--to", "htj2k", "-q", "--workers", "1", check=True)
    assert "reencode ae:ct@3 -> htj2k: 6 done, 0 skipped, 0 failed" in proc.stdout, proc.stdout
    after = state(local)
    for uid, digest in originals.items():
        assert after[uid] == ("htj2k", 1, digest)  # every byte as sent, now coded by HTJ2K
    for uid in lossy:
        assert after[uid] == before[uid] and after[uid][0] == "ae:ct@3"
    assert run_cli("reencode", "--from", "ct@3", "--to", "htj2k", "-q", check=True).stdout.startswith(
        "reencode ae:ct@3 -> htj2k: 0 done")  # a rerun finds nothing left
    # back to a learned model (its current version), on a local pool of two processes
    summary = reencode(local, "htj2k", "ct", workers=2, progress=False)
    assert (summary.done, summary.failed) == (6, 0), summary.failures
    current = f"ae:{summary.job.rsplit('ae:', 1)[1]}"
    assert {state(local)[uid] for uid in originals} == {(current, 1, d) for d in originals.values()}
    events = [r for r in read(local.audit_path) if r["event"] == "reencode"]
    assert len(events) == 2 and "6 done" in events[0]["detail"]


def test_refusals_name_the_codec(local: Config) -> None:
    with pytest.raises(ConfigError, match="'ct@99'"):
        reencode(local, "ct@99", "htj2k", progress=False)
    with pytest.raises(ConfigError, match="both name htj2k"):
        reencode(local, "htj2k", "htj2k", progress=False)
    proc = run_cli("reencode", "--from", "jpeg2000", "--to", "htj2k")
    assert proc.returncode != 0 and "'jpeg2000' is not jpegls, htj2k" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_object_the_target_cannot_code_keeps_its_blob(local: Config) -> None:
    from pydicom.data import get_testdata_file

    us = Path(get_testdata_file("US1_UNCR.dcm")).read_bytes()  # colour: the CT model codes one sample
    with Archive(load_config(os.environ["AEPACS_CONFIG"], overrides={"routes": {"US": "jpegls"}})) as archive:
        assert ingest(archive, us).status == "added"
    before = state(local)
    summary = reencode(local, "jpegls", "ct@3", workers=1, progress=False)
    assert summary.failed == 1 and "ae:ct@3 cannot code this object" in summary.failures[0][1]
    assert state(local) == before


def test_kill_9_then_rerun_completes(local: Config) -> None:
    originals = fill(local, slices(12), "jpegls")
    rng = random.Random(20261204)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "aepacs", "reencode", "--from", "jpegls", "--to", "htj2k",
                                 "--workers", "1", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with Archive(local) as a:  # once its first batch has begun, at a random instant of the rest
            deadline = time.monotonic() + 60
            while proc.poll() is None and not a.index.pending() and time.monotonic() < deadline:
                time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Archive(local) as a:  # whatever the kill left: every object opens to what was sent
            for uid, digest in originals.items():
                assert hashlib.sha256(fetch(a, uid)).hexdigest() == digest
    summary = reencode(local, "jpegls", "htj2k", workers=1, progress=False)
    assert summary.failed == 0
    assert {v[0] for v in state(local).values()} == {"htj2k"}
    assert {uid: v[2] for uid, v in state(local).items()} == originals


def test_rekey_and_reencode_on_a_scheduler_and_two_worker_processes_on_postgresql_and_s3(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """The same slices in two archives: one on SQLite and local files run on a local pool, one on
    PostgreSQL + S3 run on Dask (a scheduler and two ``dask worker`` processes); both end alike."""
    from aepacs.pipeline.rekey import rekey
    from tests.dask_cluster import Cluster

    s3, pg = request.getfixturevalue("s3_server"), request.getfixturevalue("postgres_server")
    data = slices(10)
    pool = site(home / "pool", monkeypatch)
    pool_sent = fill(pool, data, "jpegls")
    shared = site(home / "shared", monkeypatch, f"index:\n  url: {pg.database()}\nstore:\n  path: {s3.bucket()}\n"
                                                f"  endpoint_url: {s3.endpoint}\n")
    assert fill(shared, data, "jpegls") == pool_sent
    cluster = Cluster(tmp_path)
    try:
        for config, where in ((pool, {"workers": 2}), (shared, {"dask": cluster.address})):
            Keyring.load(config.keyring_path).rotate()
            summary = rekey(config, mode="full", progress=False, **where)  # type: ignore[arg-type]
            assert (summary.done, summary.failed) == (10, 0), summary.failures
            summary = reencode(config, "jpegls", "ct@3", progress=False, **where)  # type: ignore[arg-type]
            assert (summary.done, summary.failed) == (10, 0), summary.failures
        workers = cluster.worker_pids()
        assert len(workers) == 2 and os.getpid() not in workers
    finally:
        cluster.stop()
    assert state(shared) == state(pool)
    assert {v[:2] for v in state(shared).values()} == {("ae:ct@3", 2)}
    assert {uid: v[2] for uid, v in state(shared).items()} == pool_sent
