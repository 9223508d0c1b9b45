"""Sealed-mode C-GET with and without sealing to the requester's recipient key (used by ``bench/seal.py --cget``).

``aepacs serve`` on embedded defaults (``retrieve_as: sealed``) holds N real CT slices (one series, fresh
UIDs); a registered recipient calls as ``SITEA``, an unregistered AE as ``VIEWER`` (the archive's
KEK-sealed objects, as before recipients). A pynetdicom SCU C-GETs the study and keeps each received
transport object in memory (no opening: what the archive costs). The two alternate, three times each.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from ingest import ENV, free_port, make_slices, stop, wait_listening
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet  # type: ignore[attr-defined]

RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"


def _cget(port: int, aet: str, study: str) -> tuple[float, int]:
    """Seconds to C-GET `study` as `aet`, and how many objects came."""
    got: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        got.append(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(RAW_DATA_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="AEPACS", ext_neg=[build_role(RAW_DATA_STORAGE, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        sys.exit("the archive refused the association")
    last = None
    for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
        last = status
    assoc.release()
    seconds = time.perf_counter() - t0
    if last is None or int(last.Status) != 0:
        sys.exit(f"C-GET as {aet} ended with status {last}")
    return seconds, len(got)


def cget_ratio(count: int) -> None:
    """Print the C-GET table (see the module)."""
    work = Path(tempfile.mkdtemp(prefix="aepacs-bench-cget-"))
    slices, home, port = work / "slices", work / "home", free_port()
    slices.mkdir()
    make_slices(count, slices)
    study = str(pydicom.dcmread(next(slices.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    env = {**ENV, "AEPACS_HOME": str(home)}

    def cli(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "aepacs", *args], env=env, check=True, capture_output=True)

    cli("keys", "init")
    cli("import", str(slices), "-q")
    cli("recipient", "init", "--name", "site-a", "-o", str(work / "reader"))
    cli("recipients", "add", "site-a", "--public-key", str(work / "reader" / "site-a.pub.json"), "--aet", "SITEA")
    server = subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        _cget(port, "VIEWER", study)  # warm: the index's pages, the blobs in the page cache
        times: dict[str, list[float]] = {"VIEWER": [], "SITEA": []}
        for _ in range(3):
            for aet in times:
                seconds, n = _cget(port, aet, study)
                if n != count:
                    sys.exit(f"C-GET as {aet} brought {n} objects, not {count}")
                times[aet].append(seconds)
    finally:
        stop(server)
    kek, rec = statistics.median(times["VIEWER"]), statistics.median(times["SITEA"])
    print(f"\n# sealed-mode C-GET of {count} CT slices (aepacs serve, one association, median of 3)")
    print("| requester | objects sealed | seconds | slices/s | ratio |")
    print("|---|---|---:|---:|---:|")
    print(f"| VIEWER (not registered) | under the archive's KEK | {kek:.2f} | {count / kek:,.0f} | 1.00x |")
    print(f"| SITEA (recipient site-a) | to site-a's public key (HPKE) | {rec:.2f} | {count / rec:,.0f} | "
          f"{kek / rec:.2f}x |")
