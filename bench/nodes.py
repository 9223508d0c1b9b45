"""Ingest through HAProxy with one and two ``aepacs serve`` nodes, next to one node without it.

All three on the engines several nodes share: one PostgreSQL database and one S3 bucket each (the
tests' throwaway PostgreSQL cluster and moto's S3 server, on loopback), each node with its own spool.
Four dcmtk ``storescu`` processes at once (TCP_NODELAY=1) send COUNT real CT slices (the shared CT
series under new UIDs, a quarter each, one association each), in every configuration:

(a) one node, storescu straight to it;
(b) one node behind HAProxy (TCP mode, leastconn, /health checks: ``tests/haproxy.py``, as
    ``deploy/haproxy.cfg``);
(c) two nodes behind HAProxy.

For each: acknowledged (instances/s the senders see) and sustained (until the index holds every
instance in its final form). The figures to compare: (b)/(a), the balancer's overhead (target: at
least 0.95), and (c)/(b), what a second node adds on the same 2 cores.

Usage: ``python bench/nodes.py [--count 400] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import ENV, free_port, make_slices, wait_listening  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from aepacs.crypto.keyring import Keyring  # noqa: E402
from tests.haproxy import Balancer  # noqa: E402
from tests.postgres import start_postgres  # noqa: E402
from tests.s3 import S3  # noqa: E402

SENDERS = 4


def _send(port: int, parts: list[Path]) -> float:
    """Four storescu at once, one directory each; seconds until all are acknowledged."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(lambda d: subprocess.run(["/usr/bin/storescu", "-aec", "AEPACS", "+sd", "127.0.0.1", str(port),
                                                str(d)], env=ENV, check=True, capture_output=True), parts))
    return time.perf_counter() - t0


def _archived(url: str, count: int, timeout: float = 1800) -> None:
    engine = create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM instances")).scalar() == count:
                    return
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise SystemExit("not every instance was archived in time")


def run(nodes: int, balanced: bool, parts: list[Path], count: int, work: Path, pg: object,
        s3: S3) -> tuple[float, float]:
    """(acknowledged/s, sustained/s) of one configuration, on a fresh database and bucket."""
    url = pg.database()  # type: ignore[attr-defined]
    site = f"index:\n  url: {url}\nstore:\n  path: {s3.bucket()}\n  endpoint_url: {s3.endpoint}\n"
    base = Path(tempfile.mkdtemp(dir=work))
    Keyring.create(base / "keyring.json")
    ports = [(free_port(), free_port()) for _ in range(nodes)]
    procs = []
    for n, (port, health) in enumerate(ports):
        home = base / f"node{n}"
        procs.append(_node_with_keyring(home, base / "keyring.json", site, port, health))
    balancer = Balancer(ports) if balanced else None
    try:
        if balancer is not None:
            balancer.wait_up(nodes)
        target = balancer.port if balancer is not None else ports[0][0]
        t0 = time.perf_counter()
        acked = _send(target, parts)
        _archived(url, count)
        sustained = time.perf_counter() - t0
    finally:
        if balancer is not None:
            balancer.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(120)
        shutil.rmtree(base, ignore_errors=True)
    return count / acked, count / sustained


def _node_with_keyring(home: Path, keyring: Path, site: str, port: int, health: int) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, mode=0o700)
    shutil.copy2(keyring, home / "keyring.json")  # the cluster's KEKs on each node
    (home / "site.yaml").write_text(site + f"metrics:\n  port: {health}\n")
    proc = subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--port", str(port)],
                            env={**os.environ, "AEPACS_HOME": str(home), "AEPACS_CONFIG": str(home / "site.yaml")},
                            stdout=(home / "serve.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_listening(port)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aepacs-bench-nodes-"))
    parts = []
    for s in range(SENDERS):
        part = work / f"slices-{s}"
        part.mkdir()
        make_slices(args.count // SENDERS, part)
        parts.append(part)
    count = SENDERS * (args.count // SENDERS)
    pg, s3 = start_postgres(), S3()
    configs = {"one node": (1, False), "one node behind HAProxy": (1, True), "two nodes behind HAProxy": (2, True)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    try:
        for r in range(args.rounds):
            for name, (nodes, balanced) in configs.items():
                results[name].append(run(nodes, balanced, parts, count, work, pg, s3))
                ack, sus = results[name][-1]
                print(f"round {r + 1}: {name:26} acknowledged {ack:6.1f}/s, sustained {sus:6.1f}/s", flush=True)
    finally:
        s3.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{count} real CT slices, {SENDERS} storescu at once, PostgreSQL + S3 (moto); medians of {args.rounds}")
    print("| configuration | acknowledged /s | sustained /s |")
    print("|---|---:|---:|")
    med = {name: (statistics.median(a for a, _ in v), statistics.median(s for _, s in v))
           for name, v in results.items()}
    for name, (ack, sus) in med.items():
        print(f"| {name} | {ack:.1f} | {sus:.1f} |")
    one, behind, two = med["one node"], med["one node behind HAProxy"], med["two nodes behind HAProxy"]
    print(f"balancer overhead: acknowledged {behind[0] / one[0]:.2f}x, sustained {behind[1] / one[1]:.2f}x "
          "(target >= 0.95x)")
    print(f"second node: acknowledged {two[0] / behind[0]:.2f}x, sustained {two[1] / behind[1]:.2f}x")


if __name__ == "__main__":
    main()
