"""A Dask cluster as operators run one: ``dask scheduler`` and ``dask worker`` as separate processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.net.conftest import free_port


class Cluster:
    """A scheduler on a loopback port and `workers` worker processes (one thread each) connected to it."""

    def __init__(self, log_dir: Path, workers: int = 2) -> None:
        dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.log = log_dir / "dask.log"
        out = self.log.open("ab")
        common = {"stdout": out, "stderr": subprocess.STDOUT, "start_new_session": True,
                  "env": {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}}
        self.procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                        "--no-dashboard"], **common)]  # type: ignore[call-overload]
        self.procs += [subprocess.Popen([dask, "worker", self.address, "--nthreads", "1", "--no-dashboard",
                                         "--name", f"w{n}", "--local-directory", str(log_dir / f"w{n}")],
                                        **common) for n in range(workers)]  # type: ignore[call-overload]
        self.wait_workers(workers)

    def wait_workers(self, n: int, timeout: float = 90) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                assert proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with Client(self.address, timeout=5) as client:
                    client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError):
                time.sleep(0.2)
        raise AssertionError(f"dask workers did not join: {self.log.read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        from distributed import Client

        with Client(self.address, timeout=10) as client:
            return sorted(int(pid) for pid in client.run(os.getpid).values())

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
