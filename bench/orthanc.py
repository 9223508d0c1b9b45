"""Orthanc ingest with and without the aepacs plugin: dcmtk storescu, real CT slices, one run.

(a) plain Orthanc (its own temporary storage, loopback ports)
(b) the same Orthanc with ``plugins/orthanc/aepacs_orthanc.py``: every instance checked,
    encoded by its route (CT: the shipped wavelet model, lossless), sealed and stored as
    a transport object before the C-STORE response

Prints slices/s for each, the ratio b/a, and the bytes Orthanc stored. Unlike ``aepacs
serve`` (which acknowledges once the instance is sealed in its spool and encodes in
background workers), the plugin does all the work inside the C-STORE, in Orthanc's single
Python interpreter.

Usage: ``python bench/orthanc.py [--count 200]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import ENV, ROOT, free_port, make_slices, send, stop  # noqa: E402

ORTHANC = Path("/usr/sbin/Orthanc")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")


def run_orthanc(work: Path, name: str, slices: Path, plugin: bool) -> tuple[float, int]:
    """Start Orthanc, time storescu into it, stop it; (seconds, bytes stored)."""
    root, port, http = work / name, free_port(), free_port()
    root.mkdir()
    conf: dict[str, object] = {"Name": name, "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
                               "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http,
                               "RemoteAccessAllowed": False, "DicomCheckCalledAet": False, "Plugins": []}
    env = dict(ENV)
    if plugin:
        home = root / "aepacs-home"
        env["AEPACS_HOME"] = str(home)
        subprocess.run([sys.executable, "-m", "aepacs", "keys", "init"], env=env, check=True, capture_output=True)
        conf.update({"Plugins": [str(PLUGIN)], "PythonScript": str(ROOT / "plugins" / "orthanc" / "aepacs_orthanc.py"),
                     "Aepacs": {"Config": None, "SitePackages": [sysconfig.get_paths()["purelib"]]}})
    (root / "orthanc.json").write_text(json.dumps(conf))
    log = root / "orthanc.log"
    proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/system", timeout=2)
                if not plugin or "plugin ready" in log.read_text(errors="replace"):
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                sys.exit(f"Orthanc ({name}) did not start; see {log}")
            time.sleep(0.2)
        seconds = send(port, "ORTHANC", slices)
    finally:
        stop(proc)
    stored = sum(p.stat().st_size for p in (root / "db").rglob("*") if p.is_file() and not p.name.startswith("index"))
    return seconds, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    if not (ORTHANC.exists() and PLUGIN.exists()):
        sys.exit("bench/orthanc.py needs Debian's orthanc and orthanc-python")
    work = Path(tempfile.mkdtemp(prefix="aepacs-bench-orthanc-"))
    try:
        slices = work / "slices"
        slices.mkdir()
        size = make_slices(args.count, slices)
        a, a_bytes = run_orthanc(work, "plain", slices, plugin=False)
        b, b_bytes = run_orthanc(work, "aepacs", slices, plugin=True)
        n = args.count
        print(f"# bench/orthanc.py — {n} CT slices ({size / n / 1e3:.0f} kB each), storescu, one association")
        print("| receiver | slices/s | MB stored |")
        print("|---|---|---|")
        print(f"| a plain Orthanc | {n / a:,.1f} | {a_bytes / 1e6:.1f} |")
        print(f"| b Orthanc + aepacs plugin | {n / b:,.1f} | {b_bytes / 1e6:.1f} |")
        print(f"\nb/a = {a / b:.2f} (speed); stored bytes b/a = {b_bytes / a_bytes:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
