"""Two ``aepacs serve`` nodes on PostgreSQL + S3 behind HAProxy; one is killed with SIGKILL again and
again while four associations send 800 real instances: nothing it acknowledged is lost."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from aepacs.audit import read
from aepacs.config import load_config
from aepacs.crypto.keyring import Keyring
from aepacs.net.client import query, retrieve
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.retrieve import fetch
from tests.conftest import run_cli
from tests.haproxy import Balancer
from tests.net.conftest import free_port
from tests.net.test_server import scu

INSTANCES, SHARED, SENDERS, KILLS = 800, 20, 4, 5


@pytest.fixture
def backend() -> str:
    """Several nodes share PostgreSQL and S3 by definition: one run, not one per backend."""
    return "postgresql+s3"


@dataclass
class Node:
    home: Path
    site: Path
    port: int
    health: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--port", str(self.port),
                                      "--workers", "1"], start_new_session=True,
                                     env={**os.environ, "AEPACS_HOME": str(self.home), "AEPACS_CONFIG": str(self.site)},
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        ae = scu()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assoc = ae.associate("127.0.0.1", self.port, ae_title="AEPACS")
            if assoc.is_established:
                assoc.release()
                return
            time.sleep(0.1)
        raise AssertionError(f"node {self.home.name} did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its spool workers at once
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            assert self.proc.wait(120) == 0, self.log.read_text()[-3000:]

    def associations(self) -> int:
        """Associations open on this node now (its /health)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/health", timeout=10) as r:
            return int(json.loads(r.read())["associations"])

    def spooled(self) -> list[Path]:
        return list((self.home / "spool").glob("*.aepx"))


@dataclass
class Sent:
    acked: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> SHA-256 of the dataset sent
    lock: threading.Lock = field(default_factory=threading.Lock)
    cut: int = 0  # associations that ended with an instance unacknowledged (their node killed)


#: real CT and MR images, small enough for 800 of them several times over in the suite's time
SMALL = [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]
#: instances a sender sends per association (a modality sends a study and releases)
PER_ASSOCIATION = 25
#: a sender's pause after each acknowledgement: the stream lasts long enough for every kill to land in it
PACE_S = 0.2


def _datasets(study: str, count: int, seed: int) -> list[tuple[Path, str, str]]:
    """(real image file, new SOP Instance UID, series) for `count` instances, in two series."""
    series = [generate_uid(), generate_uid()]
    return [(SMALL[(seed + i) % 2], generate_uid(), series[(seed + i) % 2]) for i in range(count)]


def _scu() -> AE:
    """A modality sending CT and MR."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for sop_class in (CTImageStorage, MRImageStorage, Verification):
        ae.add_requested_context(sop_class)
    return ae


def _dataset(path: Path, uid: str, study: str, series: str) -> Dataset:
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    return ds


def _sender(port: int, todo: list[tuple[Path, str, str]], study: str, sent: Sent, stop: threading.Event,
            pace: float = PACE_S) -> None:
    """Send every instance of `todo` through the balancer, as a modality does: an instance not
    acknowledged (association cut) is sent again on a new association."""
    ae, i, assoc = _scu(), 0, None
    while i < len(todo) and not stop.is_set():
        if assoc is not None and assoc.is_established and i % PER_ASSOCIATION == 0:
            assoc.release()  # a study sent: the next goes on a new association, to whichever node
        if assoc is None or not assoc.is_established:
            assoc = ae.associate("127.0.0.1", port, ae_title="AEPACS")
            if not assoc.is_established:
                time.sleep(0.2)
                continue
        path, uid, series = todo[i]
        ds = _dataset(path, uid, study, series)
        try:
            rsp = assoc.send_c_store(ds)
        except Exception:  # noqa: BLE001 -- the node went away mid-request: send it again
            rsp = None
        if rsp is not None and "Status" in rsp and int(rsp.Status) == 0:
            with sent.lock:
                sent.acked[uid] = hashlib.sha256(ds.PixelData).hexdigest()
            i += 1
            time.sleep(pace)
        else:
            with sent.lock:
                sent.cut += 1
            if assoc.is_established:
                assoc.abort()
    if assoc is not None and assoc.is_established:
        assoc.release()


def test_sigkill_of_a_node_behind_haproxy_loses_nothing_it_acknowledged(home: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Path(os.environ["AEPACS_CONFIG"]).read_text()  # one PostgreSQL database and S3 bucket for both
    Keyring.create(home / "keyring.json")
    nodes = []
    for n in (1, 2):
        node_home = tmp_path / f"node{n}"
        node_home.mkdir(mode=0o700)
        shutil.copy2(home / "keyring.json", node_home / "keyring.json")  # the cluster's KEKs on each node
        site = node_home / "site.yaml"
        site.write_text(backend + f"metrics:\n  port: {(health := free_port())}\n")
        nodes.append(Node(node_home, site, free_port(), health, tmp_path / f"node{n}.log"))
    for node in nodes:
        node.start()
    balancer = Balancer([(node.port, node.health) for node in nodes])
    study, sent, stop = generate_uid(), Sent(), threading.Event()
    shared = _datasets(study, SHARED, 0)  # sent by every sender: each stored once
    per_sender = (INSTANCES - SHARED) // SENDERS
    work = [shared + _datasets(study, per_sender, 1 + s) for s in range(SENDERS)]
    senders = [threading.Thread(target=_sender, args=(balancer.port, todo, study, sent, stop)) for todo in work]
    rng = random.Random(20261204)
    victim, other = nodes
    try:
        balancer.wait_up(2)
        for t in senders:
            t.start()
        busy_at_kill = []
        for _ in range(KILLS):  # at random moments of the stream, each once the last restart is done
            time.sleep(rng.uniform(0.5, 2.0))
            while victim.associations() == 0 and any(t.is_alive() for t in senders):
                time.sleep(0.005)  # mid-stream: while it holds associations (leastconn may have left it idle)
            busy_at_kill.append(victim.associations())
            victim.kill()
            time.sleep(rng.uniform(0.2, 1.0))  # the others go on through the other node meanwhile
            victim.start()  # the restart archives what its spool holds
            balancer.wait_up(2)
        for t in senders:
            t.join(600)
        assert not any(t.is_alive() for t in senders), "senders did not finish"
        assert len(sent.acked) == INSTANCES
        assert all(busy_at_kill) and sent.cut >= 1, (busy_at_kill, sent.cut)  # each kill cut open associations

        deadline = time.monotonic() + 300
        while any(node.spooled() for node in nodes) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(node.spooled() for node in nodes), "acknowledged instances left in a spool"
        for node in nodes:
            assert not (node.home / "spool" / "failed").exists()

        keys = {"SOPInstanceUID": "", "StudyInstanceUID": study}
        for port in (victim.port, other.port, balancer.port):  # either node, and the balancer, finds all 800
            found = query("127.0.0.1", port, "AEPACS", "FINDER", "IMAGE", keys)
            assert sorted(str(d.SOPInstanceUID) for d in found) == sorted(sent.acked)
        # every acknowledged instance retrievable through the node never killed, and opens as sent
        ring = Keyring.load(other.home / "keyring.json")
        got = retrieve("127.0.0.1", other.port, "AEPACS", "GETTER", "study", study, ring, tmp_path / "out")
        assert not got.failed and len(got.written) == INSTANCES
        for path in got.written:
            ds = pydicom.dcmread(path)
            assert hashlib.sha256(ds.PixelData).hexdigest() == sent.acked[str(ds.SOPInstanceUID)]
    finally:
        stop.set()
        balancer.stop()
        for node in nodes:
            node.stop()
    monkeypatch.setenv("AEPACS_HOME", str(other.home))
    monkeypatch.setenv("AEPACS_CONFIG", str(other.site))
    with Archive(load_config()) as archive:  # once each, and nothing a crash left behind after a sweep
        assert archive.index.count() == INSTANCES
        referenced = set(archive.index.blob_keys())
        orphans = set(archive.store.keys()) - referenced  # a blob written just before a kill, its row not
        assert archive.sweep_orphans(min_age_s=0) == len(orphans)
        assert set(archive.store.keys()) == referenced
        uid = next(iter(sent.acked))
        assert pydicom.dcmread(BytesIO(fetch(archive, uid))).SOPInstanceUID == uid
    assert run_cli("audit", "verify", env={"AEPACS_HOME": str(other.home)}).returncode == 0


def test_another_node_adopts_the_spool_of_a_node_that_never_comes_back(home: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Path(os.environ["AEPACS_CONFIG"]).read_text()
    Keyring.create(home / "keyring.json")
    nodes = []
    for n in (1, 2):
        node_home = tmp_path / f"node{n}"
        node_home.mkdir(mode=0o700)
        shutil.copy2(home / "keyring.json", node_home / "keyring.json")
        site = node_home / "site.yaml"  # the learned CT route: its workers lag behind a burst
        site.write_text(backend)
        nodes.append(Node(node_home, site, free_port(), 0, tmp_path / f"node{n}.log"))
    dead, survivor = nodes
    dead.start()
    study, sent, stop = generate_uid(), Sent(), threading.Event()
    _sender(dead.port, _datasets(study, 60, 0), study, sent, stop, pace=0.0)  # a burst
    dead.kill()  # and it never comes back: its disk is reachable (or its spool copied) from another node
    assert len(sent.acked) == 60
    left = dead.spooled()
    assert left, "the burst was archived before the kill: nothing to adopt"
    proc = run_cli("spool", "adopt", str(dead.home / "spool"), "-q",
                   env={"AEPACS_HOME": str(survivor.home), "AEPACS_CONFIG": str(survivor.site)})
    assert proc.returncode == 0, proc.stderr
    assert f"{len(left)} entries" in proc.stdout and dead.spooled() == []
    survivor.start()
    try:
        ring = Keyring.load(survivor.home / "keyring.json")
        got = retrieve("127.0.0.1", survivor.port, "AEPACS", "GETTER", "study", study, ring, tmp_path / "out")
        assert not got.failed and len(got.written) == 60
        for path in got.written:
            ds = pydicom.dcmread(path)
            assert hashlib.sha256(ds.PixelData).hexdigest() == sent.acked[str(ds.SOPInstanceUID)]
    finally:
        survivor.stop()
    records = [r for r in read(survivor.home / "audit.jsonl") if r["event"] == "import"]
    assert records and "aepacs spool adopt" in records[-1]["detail"]
