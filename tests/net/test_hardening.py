"""Issue 14's defects, tried as a hostile sender and a careless operator would, over real associations."""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import _config
from pynetdicom.sop_class import CTImageStorage

from aepacs.codec.payload import encode_object
from aepacs.crypto.seal import seal
from aepacs.dicom.part10 import parse
from aepacs.dicom.records import InstanceRecord
from aepacs.net.client import query, receive_files, retrieve
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.retrieve import export
from aepacs.store.index import BlobRef
from tests.conftest import run_cli, tamper
from tests.fuzz.mutate import nested_sequence, with_element
from tests.net.conftest import Running, free_port, local_only
from tests.net.dcmtk import run
from tests.net.test_server import scu, store_series, tiny_ct


def _meta(sop_uid: bytes, sop_class: bytes = CTImageStorage.encode()) -> bytes:
    """Preamble, DICM and a File Meta Information group written byte by byte (any UID bytes)."""
    def element(elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        if vr == b"OB":
            return struct.pack("<HH2sHI", 2, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value

    body = b"".join([element(1, b"OB", b"\0\1"), element(2, b"UI", sop_class), element(3, b"UI", sop_uid),
                     element(0x10, b"UI", ExplicitVRLittleEndian.encode()),
                     element(0x12, b"UI", b"1.2.826.0.1.3680043.8.498.1")])
    return b"\0" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body


def _dataset_bytes(ds: pydicom.Dataset) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _ct_with_uid(uid: str) -> tuple[pydicom.Dataset, bytes]:
    ds = tiny_ct(1, generate_uid(), generate_uid(), np.random.default_rng(0))
    ds.SOPInstanceUID = uid
    return ds, _dataset_bytes(ds)


@pytest.fixture
def chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes exactly as written


def _send_raw(port: int, path: Path) -> int:
    assoc = scu().associate("127.0.0.1", port, ae_title="AEPACS")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
        assert rsp is not None and "Status" in rsp
        return int(rsp.Status)
    finally:
        assoc.release()


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]


HOSTILE_UIDS = ["../../../../tmp/aepacs-escape/y", "/tmp/aepacs-escape/abs10", "1.2.03.4", "1..2", "1" * 65,
                "1.2.3\\1.2.4"]


# -- defect 1: path traversal through UIDs -------------------------------------------------------------
@pytest.mark.parametrize("uid", HOSTILE_UIDS)
def test_c_store_of_a_uid_that_is_not_a_uid_gets_a900(server: Running, tmp_path: Path, chunked: None,
                                                      uid: str, caplog: pytest.LogCaptureFixture) -> None:
    _, body = _ct_with_uid(uid)
    path = tmp_path / "bad.dcm"
    announced = uid if len(uid) <= 64 and "\\" not in uid else generate_uid()  # pynetdicom will not announce these
    path.write_bytes(_meta(announced.encode()) + body)
    with caplog.at_level(logging.INFO, logger="aepacs"):
        assert _send_raw(server.port, path) == 0xA900
    assert any("not a valid UID" in r.getMessage() and "TESTSCU" in r.getMessage() for r in caplog.records)
    server.wait_archived()
    assert server.archive.index.count() == 0
    _no_tracebacks(caplog)


def test_non_ascii_announced_uid_gets_a900_not_0110(server: Running, tmp_path: Path, chunked: None,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Defect 3: a non-ASCII byte in the announced UID raised UnicodeEncodeError (0x0110, traceback)."""
    uid = "1.2.840.99.\u00e9"
    _, body = _ct_with_uid(uid)
    path = tmp_path / "bad.dcm"
    path.write_bytes(_meta(uid.encode("latin-1")) + body)
    assert _send_raw(server.port, path) == 0xA900
    _no_tracebacks(caplog)


def _as_older_release(archive: Archive, data: bytes) -> str:
    """Archive `data` as a release without UID checks did: straight to the store and the index."""
    parts = parse(data)
    encoded = encode_object(data, parts=parts)
    ds = parts.dataset
    blob = seal(encoded.payload, object_uid=str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
                codec=encoded.codec, keyring=archive.keyring)
    key = archive.store.put(blob)
    archive.index.add(InstanceRecord._from_dataset(ds), BlobRef(
        codec=encoded.codec, kek_version=archive.keyring.active_version, blob_key=key, blob_size=len(blob),
        source_size=len(data), source_sha256=hashlib.sha256(data).hexdigest()))
    return str(ds.SOPInstanceUID)


def _crafted(tmp_path: Path, sop_uid: str, series_uid: str) -> bytes:
    ds, body = _ct_with_uid(sop_uid)
    ds.SeriesInstanceUID = series_uid
    return _meta(b"1.2.3.4") + _dataset_bytes(ds)


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_export_retrieve_and_from_files_stay_inside_the_output_directory(
        server: Running, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """Defect 1: a stored UID ``../../x`` or ``/tmp/x`` made export and retrieve write outside -o."""
    # a path short enough for the index's 64-character UID columns (PostgreSQL enforces them)
    escape = tmp_path / "escaped" if kind == "relative" else Path("/tmp") / f"aepacs-escape-{uuid.uuid4().hex[:8]}"
    sop = "../../../escaped/sop" if kind == "relative" else str(escape / "abs10")
    series = "../../escaped-series" if kind == "relative" else str(escape / "series")
    uid = _as_older_release(server.archive, _crafted(tmp_path, sop, series))

    def inside(out: Path) -> Path:
        written = [p for p in out.rglob("*") if p.is_file()]
        assert len(written) == 1 and written[0].name.startswith("uid-"), written
        assert not escape.exists() and not (tmp_path / "escaped-series").exists()
        return written[0]

    out = tmp_path / "a" / "b" / "export"
    summary = export(server.archive, out, sop_uid=uid, progress=False)
    assert not summary.failed
    assert pydicom.dcmread(inside(out)).SOPInstanceUID == uid
    assert any("not valid UIDs" in r.getMessage() for r in caplog.records)  # the warning, escaped

    out = tmp_path / "a" / "b" / "retrieve"  # C-GET of the sealed transport object, opened by the Receiver
    s = retrieve("127.0.0.1", server.port, server.aet, "VIEWER", "instance", uid, server.keyring, out)
    assert not s.failed
    assert pydicom.dcmread(inside(out)).SOPInstanceUID == uid

    plain = tmp_path / "incoming" / "crafted.dcm"  # no key needed: a plain file with a hostile UID
    plain.parent.mkdir()
    plain.write_bytes(_crafted(tmp_path, sop, series))
    out = tmp_path / "a" / "b" / "from-files"
    s = receive_files([plain.parent], server.keyring, out)
    assert not s.failed
    inside(out)


def test_import_and_seal_refuse_uids_that_are_not_uids(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "in" / "bad.dcm"
    bad.parent.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "../../../../tmp/aepacs-escape/y"
    ds.save_as(bad)
    run_cli("keys", "init", env=env, check=True)
    proc = run_cli("seal", str(bad), "-o", str(tmp_path / "x.aepx"), env=env)
    assert proc.returncode == 1 and "is not a valid UID" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.aepx").exists()
    proc = run_cli("import", "-q", "-v", str(bad.parent), env=env)
    assert "imported 0 new" in proc.stdout and "is not a valid UID" in proc.stdout


# -- defects 2 and 3: nesting ---------------------------------------------------------------------------
def _nested_ct(tmp_path: Path, depth: int, undefined: bool = True) -> tuple[Path, str]:
    ds = tiny_ct(1, generate_uid(), generate_uid(), np.random.default_rng(depth))
    data = with_element(_meta(str(ds.SOPInstanceUID).encode()) + _dataset_bytes(ds),
                        nested_sequence(depth, undefined=undefined))
    path = tmp_path / f"nested-{depth}.dcm"
    path.write_bytes(data)
    return path, str(ds.SOPInstanceUID)


@pytest.mark.parametrize("depth", [200, 2_000, 20_000])
def test_deep_nesting_is_refused_before_the_acknowledgement(server: Running, tmp_path: Path, chunked: None,
                                                            depth: int, caplog: pytest.LogCaptureFixture) -> None:
    """Defect 2: 200 levels were acknowledged (0x0000), then never archived; defect 3: 2,000 and 20,000
    made the scan recurse and pynetdicom answer 0xC211 with a traceback."""
    path, _ = _nested_ct(tmp_path, depth)
    with caplog.at_level(logging.INFO, logger="aepacs"):
        assert _send_raw(server.port, path) == 0xA900
    assert any("nested deeper than 32" in r.getMessage() for r in caplog.records)
    _no_tracebacks(caplog)


def test_nesting_within_the_limit_is_archived_findable_and_identical(server: Running, tmp_path: Path,
                                                                      chunked: None) -> None:
    path, uid = _nested_ct(tmp_path, 32)
    assert _send_raw(server.port, path) == 0x0000
    server.wait_archived()
    assert not (server.config.spool_path / "failed").exists()
    assert [str(d.SOPInstanceUID) for d in query("127.0.0.1", server.port, server.aet, "SCU", "IMAGE",
                                                 {"SOPInstanceUID": uid})] == [uid]
    s = retrieve("127.0.0.1", server.port, server.aet, "VIEWER", "instance", uid, server.keyring, tmp_path / "o")
    assert s.written[0].read_bytes()[-5000:] == path.read_bytes()[-5000:]


# -- defect 5: failed retrievals are reported ------------------------------------------------------------
MOVE_PORT = free_port()


@pytest.fixture
def three_with_one_tampered(make_server: Callable[..., Running], tmp_path: Path) -> Iterator[tuple[Running, str, str]]:
    srv = make_server(server={"move_destinations": {"VIEWER": ["127.0.0.1", MOVE_PORT]}})
    _, series, sent = store_series(srv, 3, seed=7)
    srv.wait_archived()
    victim = str(sent[1].SOPInstanceUID)
    tamper(srv.archive.store, srv.archive.index.get(victim).blob_key, -10)
    yield srv, series, victim


def test_c_get_of_a_tampered_object_is_a_failed_sub_operation(three_with_one_tampered: tuple[Running, str, str],
                                                              tmp_path: Path) -> None:
    srv, series, victim = three_with_one_tampered
    s = retrieve("127.0.0.1", srv.port, srv.aet, "VIEWER", "series", series, srv.keyring, tmp_path / "out")
    assert s.status == 0xB000 and s.sub_ops == {"completed": 2, "failed": 1, "warning": 0}
    assert [uid for uid, _ in s.failed] == [victim] and victim in s.failed[0][1]
    assert len(s.written) == 2


def test_c_move_of_a_tampered_object_is_reported_too(three_with_one_tampered: tuple[Running, str, str],
                                                     tmp_path: Path) -> None:
    srv, series, victim = three_with_one_tampered
    s = retrieve("127.0.0.1", srv.port, srv.aet, "VIEWER", "series", series, srv.keyring, tmp_path / "out",
                 move_to_self=MOVE_PORT)
    assert s.status == 0xB000 and s.sub_ops["failed"] == 1 and [u for u, _ in s.failed] == [victim]


def test_aepacs_retrieve_names_the_failed_object_and_exits_1(three_with_one_tampered: tuple[Running, str, str],
                                                             tmp_path: Path, home: Path) -> None:
    srv, series, victim = three_with_one_tampered
    proc = run_cli("retrieve", "--host", "127.0.0.1", "--port", str(srv.port), "--series", series,
                   "-o", str(tmp_path / "out"), env={"AEPACS_HOME": str(home)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "retrieved 2 instances" in proc.stdout and "1 failed" in proc.stdout
    assert f"FAILED '{victim}'" in proc.stderr


def test_getscu_sees_the_failure(three_with_one_tampered: tuple[Running, str, str], tmp_path: Path) -> None:
    srv, series, victim = three_with_one_tampered
    out = tmp_path / "getscu"
    out.mkdir()
    proc = run("getscu", "-v", "-S", "-aec", srv.aet, "-od", str(out), "-k", "QueryRetrieveLevel=SERIES",
               "-k", f"SeriesInstanceUID={series}", "127.0.0.1", str(srv.port), check=False)
    text = proc.stdout + proc.stderr
    assert "Number of Failed Suboperations    : 1" in text or "Failed Suboperations : 1" in text, text
    assert len(list(out.iterdir())) == 2


# -- defect 6: file modes ----------------------------------------------------------------------------------
def test_data_directory_is_private_whatever_the_umask(env: dict[str, str], tmp_path: Path, backend: str) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    shell = {**env, "PATH": os.environ["PATH"]}
    home = Path(env["AEPACS_HOME"])
    for args in (["keys", "init"], ["import", "-q", str(src)],
                 ["export", "--patient", "1CT1", "-o", str(tmp_path / "x")]):
        proc = subprocess.run(["sh", "-c", 'umask 022; exec "$@"', "sh", sys.executable, "-m", "aepacs", *args],
                              capture_output=True, text=True, env={**os.environ, **shell})
        assert proc.returncode == 0, proc.stderr
    modes = {p.relative_to(home).as_posix(): p.stat().st_mode & 0o777 for p in [home, *home.rglob("*")]}
    assert modes["."] == 0o700
    if backend == "local":  # else on PostgreSQL and S3, whose own access control applies
        assert modes["index.sqlite3"] == 0o600 and modes["blobs"] == 0o700
    assert modes["audit.jsonl"] == 0o600 and modes["keyring.json"] == 0o600
    assert all(m & 0o077 == 0 for m in modes.values()), {k: oct(m) for k, m in modes.items() if m & 0o077}
    exported = [p for p in (tmp_path / "x").rglob("*")]
    assert exported and all(p.stat().st_mode & 0o077 == 0 for p in exported)


def test_serve_refuses_an_index_others_can_read(env: dict[str, str], backend: str) -> None:
    local_only(backend, "an SQLite index file's mode")
    run_cli("keys", "init", env=env, check=True)
    run_cli("import", "-q", get_testdata_file("CT_small.dcm"), env=env, check=True)
    index = Path(env["AEPACS_HOME"]) / "index.sqlite3"
    os.chmod(index, 0o644)
    proc = run_cli("serve", "--port", str(free_port()), env=env, timeout=60)
    assert proc.returncode == 2
    assert "index.sqlite3 is readable by group or others (mode 0644)" in proc.stderr
    assert "chmod 600" in proc.stderr


# -- defect 4: disk full ------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB tmpfs (root only, as in CI): a disk that fills in seconds."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            raise AssertionError(f"cannot mount a tmpfs: {proc.stderr}")
        pytest.skip(f"cannot mount a tmpfs here (not root?): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 1e6


def test_disk_full_refuses_new_data_and_archives_everything_acknowledged(
        make_server: Callable[..., Running], small_disk: Path, tmp_path: Path, backend: str) -> None:
    """Defect 4: with the disk at its reserve, 57 acknowledged instances stayed in the spool for good
    ("archiving failed, will retry: StoreFullError"), invisible to C-FIND and C-GET."""
    local_only(backend, "index and blobs on a small disk of their own (the spool disk on S3: next test)")
    srv = make_server(store={"path": str(small_disk / "blobs"), "min_free_mb": 6},
                      index={"url": f"sqlite:///{small_disk / 'index.sqlite3'}"},
                      ingest={"spool_path": str(small_disk / "spool"), "workers": 1})
    study, series, rng = generate_uid(), generate_uid(), np.random.default_rng(11)
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    acked: list[str] = []
    statuses: list[int] = []
    for _ in range(60):  # rounds: send until refused, let the spool drain; full once refused on an empty spool
        for i in range(100):
            ds = tiny_ct(i, study, series, rng)
            ds.Rows = ds.Columns = 512  # 0.5 MB of noise: it hardly compresses
            ds.PixelData = rng.integers(0, 4000, (512, 512), dtype=np.int16).tobytes()
            statuses.append(int(assoc.send_c_store(ds).Status))
            if statuses[-1] != 0:
                break
            acked.append(str(ds.SOPInstanceUID))
        if i == 0:
            break  # refused with nothing waiting: the disk is at its reserve
        srv.wait_archived(timeout=300)  # what was acknowledged reaches the archive, no operator needed
    assoc.release()
    assert set(statuses) == {0x0000, 0xA700} and i == 0, statuses
    srv.wait_archived(timeout=300)
    assert not (srv.config.spool_path / "failed").exists()
    assert _free_mb(small_disk) < 6 + 2 * 0.6, (len(acked), _free_mb(small_disk))  # still full
    found = query("127.0.0.1", srv.port, srv.aet, "SCU", "IMAGE", {"SOPInstanceUID": "\\".join(acked)})
    assert sorted(str(d.SOPInstanceUID) for d in found) == sorted(acked)
    s = retrieve("127.0.0.1", srv.port, srv.aet, "VIEWER", "series", series, srv.keyring, tmp_path / "out")
    assert not s.failed and len(s.written) == len(acked)


def test_a_full_spool_disk_refuses_new_data_whatever_holds_the_blobs(
        make_server: Callable[..., Running], small_disk: Path, tmp_path: Path) -> None:
    """A node whose blobs go to object storage (no free-space figure there) still has a spool on a
    local disk: when that disk is at its reserve, new data is refused (0xA700) and nothing is spooled."""
    reserve = int(_free_mb(small_disk) - 1.0)  # room for about 1 MB of spool entries
    srv = make_server(store={"min_free_mb": reserve}, ingest={"spool_path": str(small_disk / "spool"),
                                                             "workers": 1})
    study, series, rng = generate_uid(), generate_uid(), np.random.default_rng(5)
    small, large = tiny_ct(0, study, series, rng), tiny_ct(1, study, series, rng)
    large.Rows = large.Columns = 1024  # 2 MB: more than the spool disk has above its reserve
    large.PixelData = rng.integers(0, 4000, (1024, 1024), dtype=np.int16).tobytes()
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert [int(assoc.send_c_store(ds).Status) for ds in (large, small)] == [0xA700, 0x0000]
    assoc.release()
    srv.wait_archived()
    found = query("127.0.0.1", srv.port, srv.aet, "SCU", "IMAGE", {"SOPInstanceUID": "", "StudyInstanceUID": study})
    assert [str(d.SOPInstanceUID) for d in found] == [str(small.SOPInstanceUID)]


# -- operator finding: what a transport object shows in clear --------------------------------------------
def test_pseudonymous_transport_objects_show_no_patient_data(make_server: Callable[..., Running],
                                                             tmp_path: Path) -> None:
    srv = make_server(transport={"identifiers": "pseudonymous"})
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN-0042-77", "19700101"
    ds.AccessionNumber, ds.StudyDescription = "ACC778899", "CT chest Doe"
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    srv.wait_archived()
    out = tmp_path / "pacs"
    out.mkdir()
    run("getscu", "-S", "-aec", srv.aet, "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={ds.StudyInstanceUID}", "127.0.0.1", str(srv.port))
    [received] = list(out.iterdir())
    raw = received.read_bytes()
    for secret in (b"Doe", b"MRN-0042-77", b"19700101", b"ACC778899"):
        assert secret not in raw, secret  # in clear nowhere: only inside the sealed object
    transport = pydicom.dcmread(received)
    assert str(transport.PatientID).startswith("AEP-") and str(transport.PatientName).startswith("AEP^")
    assert transport.PatientBirthDate == "" and not transport.get("StudyDescription")
    from aepacs.crypto.pseudonym import pseudonym, site_key

    expected = pseudonym(site_key(srv.config.pseudonym_key_path), "patient", "^MRN-0042-77")
    assert transport.PatientID == f"AEP-{expected}"  # stable: the site key's HMAC, the same every time
    back = receive_files([out], srv.keyring, tmp_path / "opened")
    original = pydicom.dcmread(back.written[0])
    assert original.PatientID == "MRN-0042-77" and original.PatientName == "Doe^Jane"


# -- operator finding: archiving starved by other load -------------------------------------------------

def test_archiving_keeps_up_on_a_host_other_work_keeps_busy(make_server: Callable[..., Running]) -> None:
    """Issue 14: under SCHED_IDLE, any other load starved the spool workers, and acknowledged
    instances stayed invisible to C-FIND for minutes. Past ingest.max_lag_s a worker at normal
    priority takes over, so they reach the archive while the load goes on."""
    srv = make_server(ingest={"workers": 1, "max_lag_s": 1})
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        store_series(srv, 6, seed=5)
        srv.wait_archived(timeout=300)  # with every core busy the whole time
        assert all(h.poll() is None for h in hogs)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert srv.archive.index.count() == 6
    assert srv.server.worker.caught_up > 0  # the catch-up worker did it
