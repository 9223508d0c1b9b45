"""The archive SCP under load and abuse, over real associations on 127.0.0.1."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification

from aepacs.pipeline.retrieve import fetch
from aepacs.store.blobs import BlobStore
from tests.conftest import current_ref
from tests.net.conftest import Running


def tiny_ct(i: int, study: str, series: str, rng: np.random.Generator) -> Dataset:
    """A small but complete CT image with fresh UIDs."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = i
    ds.Rows = ds.Columns = 32
    ds.PixelData = rng.integers(0, 2000, (32, 32), dtype=np.int16).tobytes()
    return ds


def store_series(srv: Running, count: int, seed: int) -> tuple[str, str, list[Dataset]]:
    """C-STORE `count` tiny CT images of one new series over one association, each acknowledged with 0x0000."""
    study, series, rng = generate_uid(), generate_uid(), np.random.default_rng(seed)
    sent = [tiny_ct(i, study, series, rng) for i in range(count)]
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert assoc.is_established
    assert all(int(assoc.send_c_store(ds).Status) == 0 for ds in sent)
    assoc.release()
    return study, series, sent


def scu(aet: str = "TESTSCU") -> AE:
    """A CT storage SCU that waits as long as a busy host needs (the tests wait for conditions, not clocks)."""
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    return ae


def test_four_concurrent_associations_of_200(server: Running) -> None:
    study = generate_uid()
    results: dict[int, list[int]] = {}

    def send(worker: int) -> None:
        rng = np.random.default_rng(worker)
        assoc = scu(f"SCU{worker}").associate("127.0.0.1", server.port, ae_title=server.aet)
        assert assoc.is_established
        series = generate_uid()
        statuses = []
        for i in range(200):
            rsp = assoc.send_c_store(tiny_ct(i, study, series, rng))
            statuses.append(int(rsp.Status) if rsp else -1)
        assoc.release()
        results[worker] = statuses

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(s == 0 for statuses in results.values() for s in statuses)
    server.wait_archived()
    index = server.archive.index
    rows = index.find(study_uid=study)
    assert len(rows) == 800 == len({r.sop_uid for r in rows}) == index.count()
    assert {r.codec for r in rows} == {f"ae:{current_ref('ct')}"}  # the default CT route
    with index.engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from series").scalar() == 4
        assert conn.exec_driver_sql("select count(*) from studies").scalar() == 1
    assert set(server.archive.store.keys()) == {r.blob_key for r in rows}  # no stray blobs
    for row in rows[::40]:
        assert pydicom.dcmread(BytesIO(fetch(server.archive, row.sop_uid))).SOPInstanceUID == row.sop_uid


def _raw_file(path: Path, sop_uid: str, body: bytes) -> Path:
    """A Part 10 file whose dataset is exactly `body` (sent as-is by pynetdicom's chunked mode)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    buf = BytesIO()
    pydicom.filewriter.write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + body)
    return path


def _encoded(ds: Dataset) -> bytes:
    """The dataset alone (no preamble, no file meta), explicit VR little endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def malformed_cases(tmp: Path) -> dict[str, tuple[Path, int]]:
    """name -> (file, expected status class) for the issue's malformed inputs."""
    rng = np.random.default_rng(0)
    study, series = generate_uid(), generate_uid()
    cases: dict[str, tuple[Path, int]] = {}

    ds = tiny_ct(1, study, series, rng)
    body = _encoded(ds)
    cases["truncated pixel data"] = (_raw_file(tmp / "a.dcm", ds.SOPInstanceUID, body[:-500]), 0xA900)

    ds = tiny_ct(2, study, series, rng)
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    cases["missing SOP Instance UID"] = (_raw_file(tmp / "b.dcm", uid, _encoded(ds)), 0xA900)

    ds = tiny_ct(3, study, series, rng)
    body = bytearray(_encoded(ds))
    at = body.index(b"\x10\x00\x10\x00PN")                   # (0010,0010) Patient's Name
    body[at + 6:at + 8] = (60000).to_bytes(2, "little")        # a length running far past its value
    # mis-framed: the elements after it are swallowed, so either "does not match" or "cannot understand"
    cases["wrong VR length"] = (_raw_file(tmp / "c.dcm", ds.SOPInstanceUID, bytes(body)), -1)

    ds = tiny_ct(4, study, series, rng)
    ds.Rows = 64  # pixel data is 32 x 32
    cases["rows x columns mismatch"] = (_raw_file(tmp / "d.dcm", ds.SOPInstanceUID, _encoded(ds)), 0xA900)

    cases["garbage bytes"] = (_raw_file(tmp / "e.dcm", generate_uid(), rng.bytes(3000)), 0xC000)

    ds = tiny_ct(5, study, series, rng)
    cases["announced UID differs"] = (_raw_file(tmp / "f.dcm", generate_uid(), _encoded(ds)), 0xA900)
    return cases


def test_malformed_inputs_get_failure_statuses_and_nothing_is_stored(server: Running, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes exactly as written
    cases = malformed_cases(tmp_path)
    assoc = scu().associate("127.0.0.1", server.port, ae_title=server.aet)
    assert assoc.is_established
    for name, (path, expected) in cases.items():
        rsp = assoc.send_c_store(path)
        assert rsp is not None and "Status" in rsp, name
        status = int(rsp.Status)
        if expected == -1:
            assert status & 0xFF00 in (0xA900, 0xC000), (name, hex(status))
        else:
            assert status & 0xFF00 == expected & 0xFF00, (name, hex(status))
    # the same association, and the server, keep serving
    ok = assoc.send_c_store(tiny_ct(9, generate_uid(), generate_uid(), np.random.default_rng(1)))
    assert int(ok.Status) == 0
    assoc.release()
    server.wait_archived()
    assert server.archive.index.count() == 1
    assert len(list(server.archive.store.keys())) == 1  # nothing partial left behind
    if isinstance(server.archive.store, BlobStore):  # local files: no temporary left either
        assert not [p for p in server.archive.store.tmp.iterdir()]


def test_allow_list_rejects_unknown_calling_ae(make_server: Callable[..., Running]) -> None:
    srv = make_server(server={"allowed_calling_aets": ["MODALITY1"]})
    bad = scu("INTRUDER").associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert bad.is_rejected and not bad.is_established
    good = scu("MODALITY1").associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert good.is_established
    assert int(good.send_c_echo().Status) == 0
    good.release()


def _certificates(tmp: Path) -> dict[str, Path]:
    """A CA, and server and client certificates it signed (openssl)."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=aepacs test CA")
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")
    return {n: tmp / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_tls_server_talks_tls_and_refuses_plain(make_server: Callable[..., Running], tmp_path: Path) -> None:
    from aepacs.net.client import client_ssl_context

    certs = _certificates(tmp_path)
    srv = make_server(server={"tls": {"enabled": True, "certificate": str(certs["server.pem"]),
                                      "private_key": str(certs["server.key"]), "ca": str(certs["ca.pem"]),
                                      "require_client_certificate": True}})
    ctx = client_ssl_context(certs["ca.pem"], certs["client.pem"], certs["client.key"])
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet, tls_args=(ctx, "127.0.0.1"))
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    plain = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert not plain.is_established
    no_cert = client_ssl_context(certs["ca.pem"], None, None)
    anonymous = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet, tls_args=(no_cert, "127.0.0.1"))
    assert not anonymous.is_established


def test_disk_reserve_refuses_with_out_of_resources(make_server: Callable[..., Running]) -> None:
    srv = make_server(store={"min_free_mb": 10**9})  # a reserve no disk here has
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    rsp = assoc.send_c_store(tiny_ct(1, generate_uid(), generate_uid(), np.random.default_rng(2)))
    assoc.release()
    assert int(rsp.Status) == 0xA700
    srv.wait_archived()
    assert srv.archive.index.count() == 0 and list(srv.archive.store.keys()) == []


def test_retrieve_as_decoded_sends_the_originals(make_server: Callable[..., Running], tmp_path: Path) -> None:
    from aepacs.net.client import retrieve

    srv = make_server(server={"retrieve_as": "decoded"})
    study, _, sent = store_series(srv, 5, seed=3)
    srv.wait_archived()
    s = retrieve("127.0.0.1", srv.port, srv.aet, "VIEWER", "study", study, srv.keyring, tmp_path / "out")
    assert not s.failed and s.status == 0
    got = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in s.written}
    for ds in sent:
        back = got[str(ds.SOPInstanceUID)]
        assert back.SOPClassUID == CTImageStorage  # the original, not a sealed transport object
        assert back == ds and back.PixelData == ds.PixelData


def test_a_retrieve_that_names_no_unique_key_gets_a900_not_success(server: Running) -> None:
    from pynetdicom import build_role
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        PatientRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
    )

    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(CTImageStorage)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"  # and no Study Instance UID
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.aet,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)])
    assert assoc.is_established
    statuses = [int(status.Status) for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
                if status is not None]
    assoc.release()
    assert statuses[-1] == 0xA900, [hex(s) for s in statuses]
