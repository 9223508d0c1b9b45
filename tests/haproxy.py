"""A real HAProxy for the tests: Debian's ``haproxy`` in TCP mode in front of archive nodes on loopback.

One DICOM address (``bind``) spread over the nodes' DIMSE ports, each node
checked over HTTP on its ``/health`` endpoint (``metrics.port``), as
``deploy/haproxy.cfg`` does in production.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

HAPROXY = Path("/usr/sbin/haproxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(port: int, nodes: list[tuple[int, int]], stats: int) -> str:
    """An HAProxy configuration: `port` in front of `nodes` ((DICOM port, health port) each)."""
    servers = "\n".join(f"    server node{i} 127.0.0.1:{dicom} check port {health} inter 500 fall 2 rise 1"
                        for i, (dicom, health) in enumerate(nodes, 1))
    return f"""global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    retries 2
    option redispatch
frontend dicom
    bind 127.0.0.1:{port}
    default_backend archive
backend archive
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
{servers}
listen stats
    mode http
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"""


class Balancer:
    """HAProxy running in the foreground of its own process; :meth:`up` counts the nodes it sees healthy."""

    def __init__(self, nodes: list[tuple[int, int]]) -> None:
        if not HAPROXY.exists():
            if os.environ.get("CI"):
                raise AssertionError("haproxy missing: .ci/run must install haproxy")
            pytest.skip("haproxy not installed (apt-get install haproxy)")
        self.port, self.stats = _free_port(), _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="aepacs-haproxy-"))
        (self.dir / "haproxy.cfg").write_text(config(self.port, nodes, self.stats))
        check = subprocess.run([str(HAPROXY), "-c", "-f", str(self.dir / "haproxy.cfg")], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc = subprocess.Popen([str(HAPROXY), "-db", "-f", str(self.dir / "haproxy.cfg")],
                                     stdout=(self.dir / "log").open("wb"), stderr=subprocess.STDOUT)

    def up(self) -> int:
        """How many nodes HAProxy counts as up (its stats page, CSV)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats}/stats;csv", timeout=5) as r:
            rows = r.read().decode().splitlines()
        return sum(1 for row in rows if row.startswith("archive,node") and row.split(",")[17].startswith("UP"))

    def wait_up(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.dir / "log").read_text()
            try:
                if self.up() == count:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"HAProxy does not see {count} nodes up: {(self.dir / 'log').read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
