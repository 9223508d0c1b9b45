"""Ingest throughput: dcmtk storescu → each receiver, 500 real CT slices, one association each.

Receivers, all measured in this one run, on loopback ports:

(a) ``aepacs serve``, lossless route: the rate the sender sees (each instance
    acknowledged once checked, sealed and spooled), and the sustained rate
    until every object is archived in its final JPEG-LS form
(b) ``aepacs serve``, learned route (``configs/learned.yaml``: CT to the shipped CT
    model, lossy at a target PSNR): acknowledged as in (a), then sustained until every
    object is in its final learned form
(c) a minimal pynetdicom Storage SCP writing ``event.encoded_dataset()`` to disk
(d) dcmtk ``storescp``
(e) Orthanc, when installed (Debian package ``orthanc``)

The slices are the real CT series of ``../shared/data/ct`` repeated with new
UIDs (512×512, 16 bits allocated). dcmtk runs with TCP_NODELAY=1. The ratios
(a/c, a/d, a/e) are the figures to compare across machines.

Each round runs every receiver once; the medians over rounds (default 3) are printed, with
each ratio the median of its per-round ratios (peers measured minutes apart on a noisy
machine differ more than the receivers do). Each receiver writes into a fresh directory
that is deleted and synced before the next one starts: the writeback of 250 MB left by one
receiver otherwise slows the file writes of the next (measured: 0.15 → 1.4 ms per 0.5 MB
write).

It then measures, once each:

- the warm start: seconds from starting ``aepacs serve`` (learned routes, a fresh data
  directory) to its first learned-route instance archived (target: 10 s or less on 2 cores);
- the visibility delay under load: with every core kept busy by other processes, the seconds
  from each instance's acknowledgement to its index row (C-FIND sees it then), over 20
  instances sent one by one (bounded by ``ingest.max_lag_s`` plus the archiving time).

Usage: ``python bench/ingest.py [--count 500] [--rounds 3] [--startup-only]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT.parent / "shared" / "data" / "ct" / "lung-pet-ct-dx-A0001"
ENV = {**os.environ, "TCP_NODELAY": "1"}
T = TypeVar("T")

MINIMAL_SCP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
    from pynetdicom.sop_class import CTImageStorage
    out = Path(sys.argv[2])
    def store(event):
        (out / event.request.AffectedSOPInstanceUID).write_bytes(event.encoded_dataset())
        return 0
    ae = AE(ae_title="MINIMAL")
    ae.maximum_pdu_size = int(sys.argv[3])
    ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, store)])
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port}")


def make_slices(count: int, out: Path, series_glob: str = "*") -> int:
    """`count` real CT slices (of the series in `series_glob`, cycled) with fresh UIDs; returns their total bytes."""
    sources = sorted(CT.glob(f"{series_glob}/*.dcm"))
    if not sources:
        sys.exit(f"bench/ingest.py needs the CT series in {CT}")
    series = generate_uid()
    total = 0
    for i in range(count):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def send(port: int, aet: str, slices: Path) -> float:
    """storescu over one association; return seconds."""
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/storescu", "-aec", aet, "+sd", "127.0.0.1", str(port), str(slices)],
                   env=ENV, check=True, capture_output=True)
    return time.perf_counter() - t0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench_aepacs(slices: Path, work: Path, count: int, config: Path | None = None) -> tuple[float, float]:
    home, port = work / f"aepacs-home-{config.stem if config else 'default'}", free_port()
    env = {**ENV, "AEPACS_HOME": str(home), **({"AEPACS_CONFIG": str(config)} if config else {})}
    subprocess.run([sys.executable, "-m", "aepacs", "keys", "init"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        wait_workers(proc, os.cpu_count() or 1)  # a started server: its workers up, as in production
        t0 = time.perf_counter()
        acked = send(port, "AEPACS", slices)
        db, spool = home / "index.sqlite3", home / "spool"
        while True:  # every instance archived in its final form, nothing left in the spool
            with sqlite3.connect(db, timeout=60) as conn:
                total = conn.execute("select count(*) from instances").fetchone()[0]
            if total == count and not list(spool.glob("*.aepx")):
                break
            time.sleep(0.05)
        sustained = time.perf_counter() - t0
    finally:
        stop(proc)
    return acked, sustained


def wait_workers(server: subprocess.Popen[bytes], count: int, timeout: float = 120) -> None:
    """Wait until the server's archiving workers have started (they turn SCHED_IDLE when ready)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ready = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == server.pid and \
                        os.sched_getscheduler(int(stat.parent.name)) == os.SCHED_IDLE:
                    ready += 1
            except (OSError, ValueError, IndexError):
                continue
        if ready >= count:
            return
        time.sleep(0.1)
    raise SystemExit("the server's archiving workers did not start")


def time_receiver(cmd: list[str], port: int, aet: str, slices: Path) -> float:
    """Start a receiver, wait until it listens, time storescu into it, stop it."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        return send(port, aet, slices)
    finally:
        stop(proc)


def bench_minimal(slices: Path, work: Path, max_pdu: int) -> float:
    out, port = work / "minimal", free_port()
    out.mkdir()
    return time_receiver([sys.executable, "-c", MINIMAL_SCP, str(port), str(out), str(max_pdu)],
                         port, "MINIMAL", slices)


def bench_storescp(slices: Path, work: Path) -> float:
    out, port = work / "storescp", free_port()
    out.mkdir()
    return time_receiver(["/usr/bin/storescp", "-od", str(out), str(port)], port, "STORESCP", slices)


def bench_orthanc(slices: Path, work: Path) -> float | None:
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if exe is None:
        return None
    port, http = free_port(), free_port()
    conf = work / "orthanc.json"
    conf.write_text(json.dumps({"Name": "bench", "StorageDirectory": str(work / "orthanc-db"),
                                "IndexDirectory": str(work / "orthanc-db"), "DicomAet": "ORTHANC",
                                "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
                                "DicomCheckCalledAet": False, "Plugins": []}))
    return time_receiver([exe, str(conf)], port, "ORTHANC", slices)


def settled(measure: Callable[..., T], slices: Path, work: Path, *args: Any) -> T:
    """Run one receiver in a fresh directory; then delete what it wrote and wait for the disk.

    No receiver then pays for the writeback of the one before.
    """
    out = work / "receiver"
    out.mkdir()
    try:
        return measure(slices, out, *args)
    finally:
        shutil.rmtree(out)
        os.sync()


def _serve(home: Path, port: int, config: Path) -> subprocess.Popen[bytes]:
    env = {**ENV, "AEPACS_HOME": str(home), "AEPACS_CONFIG": str(config)}
    subprocess.run([sys.executable, "-m", "aepacs", "keys", "init"], env=env, check=True, capture_output=True)
    return subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _store_one_by_one(port: int, files: list[Path]) -> dict[str, float]:
    """C-STORE each file (pynetdicom, as stored); the wall time of each acknowledgement, by SOP Instance UID."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    acked = {}
    for f in files:
        assoc = ae.associate("127.0.0.1", port, ae_title="AEPACS")
        rsp = assoc.send_c_store(f)
        acked[str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = time.time()
        assoc.release()
        assert int(rsp.Status) == 0
    return acked


def _stored_at(db: Path, uids: set[str], timeout: float = 900) -> dict[str, float]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with sqlite3.connect(db, timeout=60) as conn:
            rows = dict(conn.execute("select sop_uid, stored_at from instances").fetchall())
        if uids <= set(rows):
            return {u: rows[u] for u in uids}
        time.sleep(0.05)
    raise SystemExit("instances not archived in time")


def bench_startup(slices: Path, work: Path) -> tuple[float, list[float]]:
    """(seconds from serve start to the first learned-route instance archived, ack→archived delays under load)."""
    config = ROOT / "configs" / "learned.yaml"
    files = sorted(slices.glob("*.dcm"))
    home, port = work / "aepacs-home-startup", free_port()
    t0 = time.time()
    proc = _serve(home, port, config)
    try:
        wait_listening(port, 120)
        first = _store_one_by_one(port, files[:1])
        warm = max(_stored_at(home / "index.sqlite3", set(first)).values()) - t0
    finally:
        stop(proc)
    shutil.rmtree(home, ignore_errors=True)
    home, port = work / "aepacs-home-load", free_port()
    proc = _serve(home, port, config)
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        wait_listening(port, 120)
        wait_workers(proc, os.cpu_count() or 1)
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        acked = _store_one_by_one(port, files[1:21])
        stored = _stored_at(home / "index.sqlite3", set(acked))
    finally:
        for h in hogs:
            h.kill()
        stop(proc)
    return warm, sorted(stored[u] - acked[u] for u in acked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3,
                        help="every receiver once per round; medians are printed (default 3)")
    parser.add_argument("--startup-only", action="store_true",
                        help="only the warm start and the visibility delay under load")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from aepacs.config import DEFAULT_CONFIG_PATH, load_config

    max_pdu = load_config(DEFAULT_CONFIG_PATH).server.max_pdu
    work = Path(tempfile.mkdtemp(prefix="aepacs-bench-ingest-"))
    try:
        slices = work / "slices"
        slices.mkdir()
        if args.startup_only:
            args.count = min(args.count, 21)
        size = make_slices(args.count, slices)
        os.sync()
        n = args.count
        rounds: list[dict[str, float]] = []
        for r in range(0 if args.startup_only else args.rounds):
            a_ack, a_sustained = settled(bench_aepacs, slices, work, n)
            b_ack, b_sustained = settled(bench_aepacs, slices, work, n, ROOT / "configs" / "learned.yaml")
            rate = {"a (ack)": n / a_ack, "a (sustained, all in final form)": n / a_sustained,
                    "b (ack)": n / b_ack, "b (sustained, all in final learned form)": n / b_sustained,
                    "c minimal pynetdicom": n / settled(bench_minimal, slices, work, max_pdu),
                    "d dcmtk storescp": n / settled(bench_storescp, slices, work)}
            e = settled(bench_orthanc, slices, work)
            if e is not None:
                rate["e Orthanc"] = n / e
            rounds.append(rate)
            print(f"round {r + 1}: " + "; ".join(f"{k} {v:,.0f}" for k, v in rate.items()), file=sys.stderr)
        if rounds:
            print(f"# bench/ingest.py — {n} CT slices ({size / n / 1e3:.0f} kB each), storescu, one association, "
                  f"{os.cpu_count()} cores, max PDU {max_pdu}; median of {args.rounds} rounds")
            print("| receiver | slices/s (median) | range |")
            print("|---|---|---|")
        for name in rounds[0] if rounds else []:
            values = [r[name] for r in rounds]
            print(f"| {name} | {statistics.median(values):,.0f} | {min(values):,.0f}–{max(values):,.0f} |")
        print()

        def ratio(top: str, bottom: str) -> str:  # the median of the per-round ratios (same-round peers)
            values = [r[top] / r[bottom] for r in rounds if bottom in r]
            return f"{statistics.median(values):.2f}" if values else "n/a"

        c, d, e_name = "c minimal pynetdicom", "d dcmtk storescp", "e Orthanc"
        if rounds:
            print(f"a/c = {ratio('a (ack)', c)} (ack), {ratio('a (sustained, all in final form)', c)} (sustained); "
                  f"b/c = {ratio('b (sustained, all in final learned form)', c)} (sustained); "
                  f"a/d = {ratio('a (ack)', d)}; a/e = {ratio('a (ack)', e_name)}")
        warm, delays = bench_startup(slices, work)
        lag = load_config(DEFAULT_CONFIG_PATH).ingest.max_lag_s
        print(f"warm start: {warm:.1f} s from starting aepacs serve (learned routes, fresh data directory) "
              f"to its first learned-route instance archived (target 10 s)")
        print(f"visibility under load ({os.cpu_count()} busy processes, {len(delays)} instances one by one): "
              f"acknowledgement to archived median {statistics.median(delays):.1f} s, max {max(delays):.1f} s "
              f"(ingest.max_lag_s {lag:g})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
