"""Fixtures: a real archive SCP on a free loopback port, and its keyring.

Every test here runs twice: on the embedded defaults (SQLite, local files)
and on the engines several nodes share (PostgreSQL, S3); see
:func:`tests.conftest.home`.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from aepacs.config import Config, load_config
from aepacs.crypto.keyring import Keyring
from aepacs.net.server import ArchiveServer
from tests.conftest import BACKENDS


@pytest.fixture(params=BACKENDS, autouse=True)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _data_directory(home: Path) -> Path:
    """Every test's data directory and backend set up, also for tests that start ``aepacs serve``
    on ``tmp_path / "home"`` themselves."""
    return home


def local_only(backend: str, why: str) -> None:
    """Skip a test's ``postgresql+s3`` run: what it checks exists only on local files (say what)."""
    if backend != "local":
        pytest.skip(why)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free now, chosen at random below the kernel's ephemeral range: there no outgoing
    connection (of this test, or of the other test process running beside it) takes it before it is used."""
    low = _ephemeral_low()
    if low < 20_000:  # an unusual range: take the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(500):
        port = random.randrange(10_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def start_serve(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start ``aepacs serve`` in its own process group and wait until it answers C-ECHO."""
    proc = subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--port", str(port), "--workers", "1"],
                            env={**os.environ, "AEPACS_HOME": str(home)}, start_new_session=True,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    ae = AE()
    ae.add_requested_context(Verification)
    deadline = time.time() + 180  # a bound: imports and the bind take seconds, more on a loaded host
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        assoc = ae.associate("127.0.0.1", port, ae_title="AEPACS")
        if assoc.is_established:
            assoc.release()
            return proc
        time.sleep(0.1)
    raise AssertionError("server did not start")


class Running:
    """A started archive server and what tests need to reach it."""

    def __init__(self, server: ArchiveServer, config: Config, keyring: Keyring) -> None:
        self.server, self.config, self.keyring = server, config, keyring
        self.port = config.server.port
        self.aet = config.server.ae_title
        self.archive = server.archive

    def wait_archived(self, timeout: float = 600) -> None:
        """Wait until every acknowledged instance has left the spool for the archive (`timeout`: a bound
        for a stuck worker, not a speed target: 800 CT slices on a loaded 2-core host took over 120 s)."""
        assert self.server.worker.wait_idle(timeout), "spool not drained in time"
        assert self.server.spool.entries() == []


@pytest.fixture
def make_server(home: Path) -> Iterator[Callable[..., Running]]:
    """Start archive servers with config overrides (``server={...}``, ``ingest={...}``)."""
    started: list[ArchiveServer] = []
    keyring_path = home / "keyring.json"

    def start(**overrides: Any) -> Running:
        overrides.setdefault("server", {})
        overrides["server"].setdefault("port", free_port())
        overrides.setdefault("ingest", {"workers": 1})
        config = load_config(overrides=overrides)
        keyring = Keyring.load(keyring_path) if keyring_path.exists() else Keyring.create(keyring_path)
        server = ArchiveServer(config, keyring)
        server.start()
        started.append(server)
        return Running(server, config, keyring)

    yield start
    for server in started:
        server.stop(timeout=5, drain=30)


@pytest.fixture
def server(make_server: Callable[..., Running]) -> Running:
    return make_server()
