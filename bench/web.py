"""DICOMweb speed: aepacs serve against Orthanc + orthanc-dicomweb on the same CT slices, in one run.

Both servers run on loopback with their data on the same disk; the client
is dicomweb-client (requests), one connection at a time:

* STOW-RS: the slices (real CT, 512x512, fresh UIDs) in batches of 25 per
  request; instances/s until the last answer, and -- for aepacs, whose
  answer comes once an instance is checked and sealed into the spool --
  until every instance is archived (queryable);
* WADO-RS: the whole series retrieved as ``multipart/related;
  type="application/dicom"`` and parsed (aepacs decodes every slice from its
  stored codec: ``retrieve_as: decoded``); MB/s and instances/s;
* frames: every slice's frame 1 (``/frames/1``), frames/s;
* time to the first frame: a QIDO-RS search for the series' instances,
  then the first instance's metadata and its frame 1 (median of 5).

Ratios are aepacs / Orthanc: above 1 is aepacs ahead, except for the time
to the first frame, where below 1 is. Targets (issue 17): STOW >= 1.0x, series retrieval >= 0.8x,
time to first frame <= 1.5x Orthanc's.

Usage: ``python bench/web.py [--slices 500]``
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from ingest import free_port, make_slices, stop  # noqa: E402

from aepacs.web.auth import new_token  # noqa: E402

ORTHANC = Path("/usr/sbin/Orthanc")
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: frames in whatever transfer syntax the server holds them (both hold these slices uncompressed)
ANY = (("application/octet-stream", "*"),)


def wait_http(url: str, headers: dict[str, str], proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.returncode}")
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer")


def start_aepacs(work: Path, ct_route: str | None = None) -> tuple[subprocess.Popen[bytes], DICOMwebClient,
                                                                   Callable[[], int]]:
    token, digest = new_token()
    home = work / "aepacs"
    home.mkdir()
    port = free_port()
    config: dict[str, object] = {"server": {"port": free_port(), "retrieve_as": "decoded"},
                                 "web": {"port": port, "tokens_sha256": [digest]}}
    if ct_route:
        config["routes"] = {"CT": ct_route}
    (home / "config.yaml").write_text(json.dumps(config))
    env = {**os.environ, "AEPACS_HOME": str(home), "AEPACS_CONFIG": str(home / "config.yaml")}
    subprocess.run([sys.executable, "-m", "aepacs", "keys", "init"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "aepacs", "serve"], env=env, stdout=(home / "log").open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    headers = {"Authorization": f"Bearer {token}"}
    url = f"http://127.0.0.1:{port}/dicomweb"
    wait_http(f"{url}/studies", headers, proc)
    client = DICOMwebClient(url=url, headers=headers)
    return proc, client, lambda: len(client.search_for_instances())


def start_orthanc(work: Path) -> tuple[subprocess.Popen[bytes], DICOMwebClient, Callable[[], int]]:
    root = work / "orthanc"
    root.mkdir()
    http = free_port()
    (root / "orthanc.json").write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(root), "IndexDirectory": str(root), "DicomPort": free_port(),
        "HttpPort": http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}))
    proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=(root / "log").open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http}/dicom-web"
    wait_http(f"{url}/studies", {}, proc)
    client = DICOMwebClient(url=url)
    return proc, client, lambda: len(client.search_for_instances())


def measure(start: Callable[[Path], tuple[subprocess.Popen[bytes], DICOMwebClient, Callable[[], int]]],
            files: list[Path], work: Path) -> dict[str, float]:
    datasets = [pydicom.dcmread(f) for f in files]
    size = sum(f.stat().st_size for f in files) / 1e6
    proc, client, count = start(work)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(datasets), 25):
            answer = client.store_instances(datasets[i:i + 25])
            assert not answer.get("FailedSOPSequence"), f"{len(answer.FailedSOPSequence)} instances refused"
        acked = time.perf_counter() - t0
        while count() < len(datasets):
            time.sleep(0.05)
        stored = time.perf_counter() - t0
        study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
        t0 = time.perf_counter()
        whole = client.retrieve_series(study, series)
        retrieve = time.perf_counter() - t0
        assert len(whole) == len(datasets)
        data = work / "aepacs" / "blobs" if (work / "aepacs").is_dir() else work / "orthanc"
        stored_mb = sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 1e6
        uids = [d.SOPInstanceUID for d in datasets]
        t0 = time.perf_counter()
        for uid in uids:
            client.retrieve_instance_frames(study, series, uid, frame_numbers=[1], media_types=ANY)
        frames = time.perf_counter() - t0
        first = []
        for _ in range(5):  # what a viewer does to show a series: list it, read one instance's header, its frame
            t0 = time.perf_counter()
            listed = client.search_for_instances(study, series)
            sop = listed[0]["00080018"]["Value"][0]
            client.retrieve_instance_metadata(study, series, sop)
            client.retrieve_instance_frames(study, series, sop, frame_numbers=[1], media_types=ANY)
            first.append(time.perf_counter() - t0)
    finally:
        stop(proc)
    return {"stow_acked": len(files) / acked, "stow_stored": len(files) / stored, "retrieve_mbs": size / retrieve,
            "retrieve_ips": len(files) / retrieve, "frames": len(files) / frames,
            "first_ms": 1000 * statistics.median(first), "stored_mb": stored_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=500)
    ap.add_argument("--ct-route", metavar="ROUTE",
                    help="also run aepacs with CT on this route (e.g. jpegls: a faster decoder, larger blobs)")
    args = ap.parse_args()
    if not (ORTHANC.exists() and PLUGIN.exists()):
        sys.exit("bench/web.py needs Orthanc and orthanc-dicomweb (Debian packages)")
    print(f"# bench/web.py, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}, {args.slices} CT slices")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "slices").mkdir()
        make_slices(args.slices, work / "slices")
        files = sorted((work / "slices").glob("*.dcm"))
        results = {}
        runs: list[tuple[str, Callable[[Path], tuple[subprocess.Popen[bytes], DICOMwebClient, Callable[[], int]]]]]
        runs = [("Orthanc", start_orthanc), ("aepacs", start_aepacs)]
        if args.ct_route:
            runs.append((f"CT: {args.ct_route}", functools.partial(start_aepacs, ct_route=args.ct_route)))
        for name, start in runs:
            (work / name).mkdir()
            results[name] = measure(start, files, work / name)
            shutil.rmtree(work / name, ignore_errors=True)
    o = results.pop("Orthanc")
    names = list(results)
    print(f"{'':34}" + "".join(f"{n:>14}{'ratio':>7}" for n in names) + f"{'Orthanc':>12}")
    rows = (("stow_acked", "STOW-RS instances/s (answered)"), ("stow_stored", "STOW-RS instances/s (queryable)"),
            ("retrieve_mbs", "series retrieval MB/s"), ("retrieve_ips", "series retrieval instances/s"),
            ("frames", "frames/s (frame 1 of each)"), ("first_ms", "time to the first frame, ms"),
            ("stored_mb", "stored MB"))
    for key, label in rows:
        print(f"{label:34}" + "".join(f"{results[n][key]:14.1f}{results[n][key] / o[key]:7.2f}" for n in names)
              + f"{o[key]:12.1f}")
    print("ratios: aepacs / Orthanc; for the time to the first frame below 1.5 meets the target")


if __name__ == "__main__":
    main()
