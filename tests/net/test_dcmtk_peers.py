"""Acceptance with third-party peers: dcmtk storescu / findscu / getscu / movescu / storescp.

One archive is loaded once per module over one storescu association with
every pydicom / pydicom-data file that has a storage SOP class; the tests then
query and retrieve it the ways a hospital's systems would.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AllStoragePresentationContexts

from aepacs.config import load_config
from aepacs.crypto.keyring import Keyring
from aepacs.dicom.transport import PRIVATE_CREATOR, RAW_DATA_STORAGE, read_transport
from aepacs.net.client import receive_files, retrieve
from aepacs.net.server import ArchiveServer
from tests.conftest import BACKENDS, SHARED_CT, backend_site, corpus_files, ct_files
from tests.net.conftest import free_port
from tests.net.dcmtk import readable_by_dcmtk, require, run, storescu_profile

STORAGE = {cx.abstract_syntax for cx in AllStoragePresentationContexts}


def _read(path: Path, **kw: Any) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, **kw)


def sendable(paths: list[Path]) -> list[Path]:
    """Files a DICOM peer can send: a storage SOP class, SOP UIDs, and readable by dcmtk."""
    out = []
    for p in paths:
        ds = _read(p, stop_before_pixels=True)
        meta = ds.file_meta
        if (meta.get("MediaStorageSOPClassUID") in STORAGE and meta.get("TransferSyntaxUID")
                and ds.get("SOPInstanceUID") and ds.get("SOPClassUID") and readable_by_dcmtk(p)):
            out.append(p)
    return out


UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # PS3.5 9.1, written out again here


def expected_refusal(path: Path) -> bool:
    """Independent of the archive's code: Type 1 UIDs missing or not UIDs, or an unreadable image description."""
    ds = _read(path, stop_before_pixels=True)
    if not ds.get("StudyInstanceUID") or not ds.get("SeriesInstanceUID"):
        return True
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip("\0 ")
        if len(value) > 64 or not UID.fullmatch(value):
            return True
    frames = ds.get("NumberOfFrames")
    return frames is not None and not str(frames).strip().isdigit()


class Loaded:
    def __init__(self, port: int, keyring: Keyring, sent: list[Path], statuses: dict[Path, str],
                 originals: dict[str, Path], server: ArchiveServer, move_port: int, self_port: int) -> None:
        self.port, self.keyring, self.sent, self.statuses = port, keyring, sent, statuses
        self.originals, self.server, self.move_port, self.self_port = originals, server, move_port, self_port


def _store_statuses(log: str) -> dict[str, str]:
    """storescu -v output: file -> status text of its response."""
    out: dict[str, str] = {}
    current = None
    for line in log.splitlines():
        m = re.match(r"I: Sending file: (.*)$", line)
        if m:
            current = m.group(1).strip()
        m = re.match(r"I: Received Store Response \((.*)\)$", line)
        if m and current:
            out[current] = m.group(1)
            current = None
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Module-wide here: :func:`loaded` sends the corpus once per backend."""
    return str(request.param)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, backend: str, request: pytest.FixtureRequest) -> Iterator[Loaded]:
    require("storescu")
    home = tmp_path_factory.mktemp("home")
    site = backend_site(backend, tmp_path_factory.mktemp("backend"), request)
    files = sendable(corpus_files())
    if SHARED_CT.is_dir():
        files += sorted((SHARED_CT / "series-3-5mm").glob("*.dcm"))
    move_port, self_port = free_port(), free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AEPACS_HOME", str(home))
        mp.setenv("AEPACS_CONFIG", str(site))
        config = load_config(overrides={
            "server": {"port": free_port(),
                       "move_destinations": {"STORESCP": ["127.0.0.1", move_port],
                                             "SELF": ["127.0.0.1", self_port]}},
            "ingest": {"workers": 2}})
        keyring = Keyring.create(config.keyring_path)
        server = ArchiveServer(config, keyring)
        server.start()
        try:
            profile = storescu_profile(files, home / "storescu.cfg")
            proc = run("storescu", "-v", "-nh", "-xf", str(profile), "AEPACS", "-aec", "AEPACS",
                       "127.0.0.1", str(config.server.port), *map(str, files), check=False)
            assert proc.stderr.count("Requesting Association") == 1  # one association for all
            statuses = {Path(k): v for k, v in _store_statuses(proc.stderr).items()}
            originals: dict[str, Path] = {}
            for f in files:  # keep-first: the first file sent with a SOP Instance UID is what is archived
                if statuses.get(f) == "Success":
                    originals.setdefault(str(_read(f, stop_before_pixels=True).SOPInstanceUID), f)
            assert server.worker.wait_idle(300)
            yield Loaded(config.server.port, keyring, files, statuses, originals, server, move_port, self_port)
        finally:
            server.stop(timeout=5)


def test_every_sendable_file_gets_its_status(loaded: Loaded) -> None:
    attempted = set(loaded.statuses)  # storescu itself declines a few files it cannot parse UIDs from
    assert len(attempted) > 150 and len(set(loaded.sent) - attempted) <= 5
    for path in attempted:
        status = loaded.statuses[path]
        if expected_refusal(path):
            assert status == "Error: DataSetDoesNotMatchSOPClass", path.name
        else:
            assert status == "Success", (path.name, status)
    index = loaded.server.archive.index
    assert index.count() == len(loaded.originals)
    assert loaded.server.spool.entries() == []  # every acknowledged instance reached the archive


def _find(loaded: Loaded, tmp: Path, model: str, *keys: str) -> list[pydicom.Dataset]:
    out = tmp / f"find-{time.monotonic_ns()}"
    out.mkdir()
    args = [model, "-aec", "AEPACS", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    run("findscu", *args, "127.0.0.1", str(loaded.port))
    return [_read(p) for p in sorted(out.glob("rsp*.dcm"))]


def _archived(loaded: Loaded) -> list[pydicom.Dataset]:
    return [_read(p, stop_before_pixels=True) for p in loaded.originals.values()]


def test_findscu_at_every_level(loaded: Loaded, tmp_path: Path) -> None:
    archived = _archived(loaded)
    patients = {(str(d.get("PatientID", "")), str(d.get("IssuerOfPatientID", ""))) for d in archived}
    rsp = _find(loaded, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName")
    assert len(rsp) == len(patients)

    ct = next(d for d in archived if d.get("Modality") == "CT" and str(d.get("PatientName", "")))
    name = str(ct.PatientName)
    pattern = name[:3] + "*"
    want = {str(d.StudyInstanceUID) for d in archived if fnmatch.fnmatchcase(str(d.get("PatientName", "")), pattern)}
    rsp = _find(loaded, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"PatientName={pattern}", "StudyInstanceUID",
                "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
    assert {str(r.StudyInstanceUID) for r in rsp} == want
    for r in rsp:  # requested keys come back filled
        n = sum(1 for d in archived if str(d.StudyInstanceUID) == str(r.StudyInstanceUID))
        assert int(r.NumberOfStudyRelatedInstances) == n

    dated = sorted({str(d.StudyDate) for d in archived if str(d.get("StudyDate", ""))})
    lo, hi = dated[len(dated) // 4], dated[3 * len(dated) // 4]
    want = {str(d.StudyInstanceUID) for d in archived if lo <= str(d.get("StudyDate", "")) <= hi and d.get("StudyDate")}
    rsp = _find(loaded, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyDate={lo}-{hi}", "StudyInstanceUID")
    assert {str(r.StudyInstanceUID) for r in rsp} == want and want
    rsp = _find(loaded, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyDate=-{lo}", "StudyInstanceUID")
    assert {str(r.StudyInstanceUID) for r in rsp} == {
        str(d.StudyInstanceUID) for d in archived if d.get("StudyDate") and str(d.StudyDate) <= lo}

    study = str(ct.StudyInstanceUID)
    want_series = {str(d.SeriesInstanceUID) for d in archived if str(d.StudyInstanceUID) == study}
    rsp = _find(loaded, tmp_path, "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert {str(r.SeriesInstanceUID) for r in rsp} == want_series

    series = str(ct.SeriesInstanceUID)
    want_images = {str(d.SOPInstanceUID) for d in archived if str(d.SeriesInstanceUID) == series}
    rsp = _find(loaded, tmp_path, "-S", "QueryRetrieveLevel=IMAGE", f"SeriesInstanceUID={series}",
                "SOPInstanceUID", "SOPClassUID", "InstanceNumber")
    assert {str(r.SOPInstanceUID) for r in rsp} == want_images
    some = sorted(want_images)[:2]
    rsp = _find(loaded, tmp_path, "-S", "QueryRetrieveLevel=IMAGE", "SOPInstanceUID=" + "\\".join(some))
    assert {str(r.SOPInstanceUID) for r in rsp} == set(some)  # UID-list matching
    assert _find(loaded, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientName=nobody-here*") == []


def _without_group_lengths(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Drop group lengths and Data Set Trailing Padding: media-only, not sent over a network."""
    for elem in list(ds):
        if elem.tag.element == 0 or elem.tag == 0xFFFCFFFC:
            del ds[elem.tag]
    return ds


def _as_sent(path: Path, tmp: Path) -> list[pydicom.Dataset]:
    """What the sender may have put on the wire: the file, or dcmtk's re-encoding of it
    (dcmtk repairs some malformed files while sending, e.g. odd-length OW pixel data)."""
    out = [_without_group_lengths(_read(path))]
    conv = tmp / f"dcmconv-{path.name}"
    if subprocess.run([str(require("dcmconv")), str(path), str(conv)], capture_output=True).returncode == 0:
        out.append(_without_group_lengths(_read(conv)))
    return out


def _dciodvfy_errors(path: Path) -> set[str]:
    """dicom3tools' IOD validator: its Error lines about the dataset.

    File meta (group 0002) errors are left out: the meta is not sent over a
    network; every receiver writes its own from the C-STORE request (which
    carries the original's own, possibly invalid, UIDs).
    """
    proc = subprocess.run([str(require("dciodvfy")), str(path)], capture_output=True, text=True, errors="replace")
    return {line.strip() for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("Error") and "(0x0002," not in line}


def _assert_equal_to_originals(loaded: Loaded, files: list[Path], tmp: Path) -> set[str]:
    seen = set()
    for path in files:
        got = _without_group_lengths(_read(path))
        uid = str(got.SOPInstanceUID)
        # every element equal, raw pixel bytes included
        candidates = _as_sent(loaded.originals[uid], tmp)
        assert any(got == src and got.get("PixelData") == src.get("PixelData") for src in candidates), \
            (uid, [e.keyword or str(e.tag) for e in candidates[0] if e.tag not in got or got[e.tag] != e],
             [e.keyword or str(e.tag) for e in got if e.tag not in candidates[0]])
        seen.add(uid)
    return seen


def test_getscu_fetches_sealed_transport_objects(loaded: Loaded, tmp_path: Path) -> None:
    ct = next(d for d in _archived(loaded) if d.get("Modality") == "CT")
    out = tmp_path / "get"
    out.mkdir()
    run("getscu", "-S", "-aec", "AEPACS", "-od", str(out), "-k", "QueryRetrieveLevel=SERIES",
        "-k", f"SeriesInstanceUID={ct.SeriesInstanceUID}", "127.0.0.1", str(loaded.port))
    received = sorted(out.iterdir())
    want = {u for u, p in loaded.originals.items()
            if str(_read(p, stop_before_pixels=True).SeriesInstanceUID) == str(ct.SeriesInstanceUID)}
    assert len(received) == len(want)
    for f in received:
        ds = _read(f)
        assert ds.SOPClassUID == RAW_DATA_STORAGE
        assert ds.private_block(0x0009, PRIVATE_CREATOR)  # found by its private creator
        assert ds.StudyInstanceUID == ct.StudyInstanceUID and ds.PatientID == ct.PatientID
        assert ds.CreatorVersionUID
        blob, uid, klass = read_transport(ds)
        assert uid in want and klass == str(_read(loaded.originals[uid], stop_before_pixels=True).SOPClassUID)
        assert blob[:4] == b"AEPX"
        check = run("dcmdump", "-q", str(f), check=False)
        assert check.returncode == 0 and "E: " not in check.stderr
        assert _dciodvfy_errors(f) == set(), f  # the transport object is a valid Raw Data instance
    decoded = receive_files([out], loaded.keyring, tmp_path / "decoded")
    assert not decoded.failed
    assert _assert_equal_to_originals(loaded, decoded.written, tmp_path) == want


def test_movescu_to_storescp(loaded: Loaded, tmp_path: Path) -> None:
    ct = next(d for d in _archived(loaded) if d.get("Modality") == "CT")
    inbox = tmp_path / "storescp"
    inbox.mkdir()
    scp = subprocess.Popen([str(require("storescp")), "-aet", "STORESCP", "-od", str(inbox),
                            str(loaded.move_port)], env={"TCP_NODELAY": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        run("movescu", "-S", "-aec", "AEPACS", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={ct.StudyInstanceUID}", "127.0.0.1", str(loaded.port))
    finally:
        scp.terminate()
        scp.wait(10)
    want = {u for u, p in loaded.originals.items()
            if str(_read(p, stop_before_pixels=True).StudyInstanceUID) == str(ct.StudyInstanceUID)}
    assert len(list(inbox.iterdir())) == len(want)
    decoded = receive_files([inbox], loaded.keyring, tmp_path / "decoded")
    assert not decoded.failed and _assert_equal_to_originals(loaded, decoded.written, tmp_path) == want
    proc = run("movescu", "-S", "-aec", "AEPACS", "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
               "-k", f"StudyInstanceUID={ct.StudyInstanceUID}", "127.0.0.1", str(loaded.port), check=False)
    assert "0xa801" in (proc.stdout + proc.stderr).lower() or "MoveDestinationUnknown" in proc.stderr


def test_aepacs_retrieve_returns_the_whole_set(loaded: Loaded, tmp_path: Path) -> None:
    studies = {str(r.study_uid) for r in loaded.server.archive.index.studies()}
    written: list[Path] = []
    for i, study in enumerate(sorted(studies)):
        if i % 2:  # half by C-GET, half by C-MOVE to a storage SCP of its own
            s = retrieve("127.0.0.1", loaded.port, "AEPACS", "SELF", "study", study, loaded.keyring,
                         tmp_path / "out", move_to_self=loaded.self_port)
        else:
            s = retrieve("127.0.0.1", loaded.port, "AEPACS", "AEPACS_SCU", "study", study, loaded.keyring,
                         tmp_path / "out")
        assert not s.failed and s.status == 0x0000, (study, s.failed, s.status)
        written += s.written
    assert _assert_equal_to_originals(loaded, written, tmp_path) == set(loaded.originals)
    for path in written[::3]:  # dciodvfy: no error the original did not have
        original = loaded.originals[str(_read(path, stop_before_pixels=True).SOPInstanceUID)]
        assert _dciodvfy_errors(path) <= _dciodvfy_errors(original), path.name


def test_dcmtk_storescu_and_findscu_over_tls(make_server: Any, tmp_path: Path) -> None:
    """A third-party TLS peer: dcmtk's storescu and findscu (+tls, BCP 195 profile) with a client certificate."""
    from tests.net.test_server import _certificates

    certs = _certificates(tmp_path)
    srv = make_server(server={"tls": {"enabled": True, "certificate": str(certs["server.pem"]),
                                      "private_key": str(certs["server.key"]), "ca": str(certs["ca.pem"]),
                                      "require_client_certificate": True}})
    tls = ["+tls", str(certs["client.key"]), str(certs["client.pem"]), "+cf", str(certs["ca.pem"])]
    src = ct_files()[:2]
    run("storescu", *tls, "-aec", srv.aet, "127.0.0.1", str(srv.port), *map(str, src))
    srv.wait_archived()
    assert srv.archive.index.count() == 2
    study = str(pydicom.dcmread(src[0], stop_before_pixels=True).StudyInstanceUID)
    out = tmp_path / "find"
    out.mkdir()
    run("findscu", *tls, "-S", "-aec", srv.aet, "-X", "-od", str(out), "-k", "QueryRetrieveLevel=IMAGE",
        "-k", f"StudyInstanceUID={study}", "-k", "SOPInstanceUID", "127.0.0.1", str(srv.port))
    found = {str(pydicom.dcmread(p).SOPInstanceUID) for p in out.iterdir()}
    assert found == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in src}
    plain = run("storescu", "-aec", srv.aet, "127.0.0.1", str(srv.port), str(src[0]), check=False)
    assert plain.returncode != 0  # without TLS the server does not talk
    no_cert = run("storescu", "+tla", "+cf", str(certs["ca.pem"]), "-aec", srv.aet, "127.0.0.1", str(srv.port),
                  str(src[0]), check=False)
    assert no_cert.returncode != 0  # and without a client certificate neither
