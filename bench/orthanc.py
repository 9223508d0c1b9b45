"""Orthanc with and without aepacs under it: dcmtk storescu, real CT slices, one run.

(a) plain Orthanc (its own storage directory, loopback ports), as Debian configures it
    (``SyncStorageArea`` true: each file fsync'ed as it is written);
(b) Orthanc on aepacs's storage area (``plugins/orthanc``, ``Mode: storage-area``), as shipped: each
    file sealed and made durable before Orthanc hears it is stored, coded a day later
    (``CompressAfter``), so the series is read back as it came;
(a', b') the same two with ``SyncStorageArea`` false (neither syncs each file: Orthanc leaves its
    files to the kernel's writeback, aepacs flushes every second);
(d) as (b), coded at once (``CompressAfter: 0``): acknowledged and sustained (until every DICOM
    file is coded by ``aepacs orthanc-compress``), read back coded (the plugin decoding the series
    ahead of Orthanc's reads on every core, ``ReadAhead``);
(c) Orthanc with the plugin in transport mode: each instance encoded and sealed inside the
    C-STORE, stored as a transport object.

Every Orthanc also loads Debian's DICOMweb plugin: WADO-RS retrieval of the whole series
(multipart, as a viewer fetches it) is timed on (a), (b) and (d), each the median of three, on (b)
and (d) once the plugin's journal is moved into the blob store (it moves when Orthanc has been quiet
for half a second, so about a second after the last store). Bytes
at rest are compared with JPEG-LS on the same slices (imagecodecs, each slice's pixel data coded on
its own, plus its header as received), and the time CharLS takes to decode them all on one core
(the least a coded read of the series at JPEG-LS's size costs a reader that decodes one file at a
time, as Orthanc reads); with ``--series series-3-5mm`` only slices of the series the
CT model was not trained on are sent.

Prints a table and the ratios against (a) (for b': against a'), measured in the same run.

Usage: ``python bench/orthanc.py [--count 500] [--series GLOB]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import imagecodecs
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import ENV, ROOT, free_port, make_slices, send, stop  # noqa: E402

sys.path.insert(0, str(ROOT))
from aepacs.config import load_config  # noqa: E402
from aepacs.pipeline.archive import Archive  # noqa: E402
from aepacs.pipeline.storage_area import DICOM, FILE, StorageArea  # noqa: E402

ORTHANC = Path("/usr/sbin/Orthanc")
PYTHON = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Node:
    """One Orthanc, configured as `mode` (None: plain) in `root`."""

    def __init__(self, root: Path, mode: str | None, orthanc: dict[str, object] | None = None,
                 **settings: object) -> None:
        self.root, self.mode, self.port, self.http = root, mode, free_port(), free_port()
        root.mkdir()
        self.home = root / "aepacs-home"
        self.env = {**ENV, "AEPACS_HOME": str(self.home)}
        conf: dict[str, object] = {
            "Name": root.name, "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "DicomAet": "ORTHANC", "DicomPort": self.port, "HttpPort": self.http, "RemoteAccessAllowed": False,
            "DicomCheckCalledAet": False, "Plugins": [str(DICOMWEB)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "MaximumStorageCacheSize": 0,  # every retrieval reads its storage (Orthanc caches 128 MB by default)
            **(orthanc or {})}
        if mode:
            subprocess.run([sys.executable, "-m", "aepacs", "keys", "init"], env=self.env, check=True,
                           capture_output=True)
            conf["Plugins"] = [str(PYTHON), str(DICOMWEB)]
            conf.update({"PythonScript": str(ROOT / "plugins" / "orthanc" / "aepacs_orthanc.py"),
                         "Aepacs": {"Mode": mode, "Config": None, "SitePackages": [sysconfig.get_paths()["purelib"]],
                                    **settings}})
        (root / "orthanc.json").write_text(json.dumps(conf))
        self.log = root / "orthanc.log"
        self.proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], env=self.env,
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/system", timeout=2)
                if not mode or "plugin ready" in self.log.read_text(errors="replace"):
                    return
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                sys.exit(f"Orthanc ({root.name}) did not start; see {self.log}")
            time.sleep(0.2)

    def get(self, path: str, accept: str | None = None) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}",
                                         headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=600) as response:
            return bytes(response.read())

    def wado_series(self, study: str, series: str) -> float:
        """Seconds to retrieve the whole series over WADO-RS (median of three)."""
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            body = self.get(f"/dicom-web/studies/{study}/series/{series}",
                            'multipart/related; type="application/dicom"')
            times.append(time.perf_counter() - t0)
            assert len(body) > 1000
        return statistics.median(times)

    def settled(self, timeout: float = 600) -> None:
        """Wait until the plugin's journal is moved into the blob store and the index (it moves once
        Orthanc is quiet for a moment)."""
        deadline = time.time() + timeout
        while any(p.stat().st_size for p in (self.home / "orthanc-journal").glob("*")):
            if time.time() > deadline:
                sys.exit("the journal was not moved")
            time.sleep(0.1)

    def stored_bytes(self) -> int:
        """Bytes at rest: Orthanc's storage directory (not its index), and aepacs's blob store."""
        files = [p for p in (self.root / "db").rglob("*") if p.is_file() and not p.name.startswith("index")]
        files += [p for p in (self.home / "blobs").rglob("*") if p.is_file()]
        files += [p for p in (self.home / "orthanc-journal").glob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files)

    def coded(self, timeout: float = 3600) -> None:
        """Wait until the storage area holds no DICOM file still sealed as it came."""
        self.settled()
        os.environ["AEPACS_HOME"] = str(self.home)  # the archive this Orthanc's plugin made
        with Archive(load_config()) as archive:
            area = StorageArea(archive)
            deadline = time.time() + timeout
            while area.rows.coded_by(FILE, DICOM, limit=1):
                if time.time() > deadline:
                    sys.exit("the compressor did not finish")
                time.sleep(0.2)

    def stop(self) -> None:
        stop(self.proc)


def jpegls(slices: Path) -> tuple[int, float]:
    """What JPEG-LS makes of the slices: each slice's pixel data coded alone, plus the rest of its file; and
    the seconds its decoder (CharLS) takes for all of them on one core, the least any coded read of a
    series at JPEG-LS's size costs a reader that decodes one file at a time."""
    total, streams = 0, []
    for path in sorted(slices.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        streams.append(imagecodecs.jpegls_encode(ds.pixel_array))
        total += path.stat().st_size - len(ds.PixelData) + len(streams[-1])
    t0 = time.perf_counter()
    for stream in streams:
        imagecodecs.jpegls_decode(stream)
    return total, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--series", default="*", metavar="GLOB",
                        help="only the CT series whose directory matches (series-3-5mm: held out from training)")
    args = parser.parse_args()
    if not (ORTHANC.exists() and PYTHON.exists() and DICOMWEB.exists()):
        sys.exit("bench/orthanc.py needs Debian's orthanc, orthanc-python and orthanc-dicomweb")
    work = Path(tempfile.mkdtemp(prefix="aepacs-bench-orthanc-"))
    try:
        slices = work / "slices"
        slices.mkdir()
        size, n = make_slices(args.count, slices, args.series), args.count
        first = pydicom.dcmread(next(slices.glob("*.dcm")), stop_before_pixels=True)
        study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        no_sync = {"SyncStorageArea": False}
        #: name, mode, Orthanc settings, Aepacs settings, wait until coded, read back over WADO-RS
        setups: list[tuple[str, str | None, dict[str, object], dict[str, object], bool, bool]] = [
            ("a plain Orthanc", None, {}, {}, False, True),
            ("b Orthanc on aepacs storage", "storage-area", {}, {}, False, True),
            ("a' plain Orthanc, no sync", None, no_sync, {}, False, False),
            ("b' Orthanc on aepacs storage, no sync", "storage-area", no_sync, {}, False, False),
            ("d Orthanc on aepacs storage, coded at once", "storage-area", {}, {"CompressAfter": 0}, True, True),
            ("c Orthanc + transport objects", "transport", {}, {}, False, False),
        ]
        rows: list[tuple[str, float, float | None, float | None, int]] = []
        for name, mode, orthanc_conf, settings, wait, wado in setups:
            node = Node(work / name.split()[0].replace("'", "_"), mode, orthanc_conf, **settings)
            try:
                t0 = time.perf_counter()
                acked = send(node.port, "ORTHANC", slices)
                if mode == "storage-area":
                    node.settled()  # read back, and counted at rest, once moved out of the journal
                if wait:
                    node.coded()
                sustained = time.perf_counter() - t0 if wait else None
                rows.append((name, acked, sustained, node.wado_series(study, series) if wado else None,
                             node.stored_bytes()))
            finally:
                node.stop()
            print(f"{name}: {n / acked:.1f} slices/s acknowledged", file=sys.stderr, flush=True)

        jls, jls_decode = jpegls(slices)
        print(f"# bench/orthanc.py: {n} CT slices of {args.series} ({size / n / 1e3:.0f} kB each), storescu, "
              "one association")
        print("| Orthanc | acknowledged slices/s | sustained slices/s | WADO-RS series (s) | MB at rest |")
        print("|---|---:|---:|---:|---:|")
        for name, ack, sus, wado, stored in rows:
            ref = rows[2] if name.startswith("b'") else rows[0]
            print(f"| {name} | {n / ack:,.1f} ({ref[1] / ack:.2f}x) | "
                  + (f"{n / sus:,.1f}" if sus else "") + " | "
                  + (f"{wado:.2f} ({ref[3] / wado:.2f}x)" if wado and ref[3] else "") + " | "
                  + f"{stored / 1e6:.1f} |")
        print(f"| JPEG-LS of the same slices (imagecodecs) | | | {jls_decode:.2f} (decoding alone, one core; "
              f"{rows[0][3] / jls_decode:.2f}x) | {jls / 1e6:.1f} |")
        coded = [row for row in rows if row[0].startswith("d ")][0]
        print(f"\ncoded storage at rest / JPEG-LS = {coded[4] / jls:.3f}; as received: {size / 1e6:.1f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
