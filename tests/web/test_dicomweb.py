"""DICOMweb end to end: dicomweb-client (a third-party client) against a running archive on loopback."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from aepacs.audit import read
from aepacs.dicom.transport import RAW_DATA_STORAGE
from aepacs.errors import InputError
from aepacs.web import multipart
from aepacs.web.multipart import build
from tests.conftest import ct_files
from tests.web.conftest import TOKEN, Web

OTHERS = ("MR2_UNCR.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm")


def _originals() -> list[Path]:
    return [*ct_files()[:6], *(Path(str(get_testdata_file(n))) for n in OTHERS)]


def _stow(web: Web) -> list[Dataset]:
    datasets = [pydicom.dcmread(p) for p in _originals()]
    answer = web.client.store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == len(datasets) and "FailedSOPSequence" not in answer
    web.running.wait_archived()
    return datasets


def _uids(matches: list[dict]) -> set[str]:  # type: ignore[type-arg]
    return {m["0020000D"]["Value"][0] for m in matches}


def test_stow_qido_wado_round_trip(web: Web) -> None:
    originals = _stow(web)
    ct = originals[0]
    studies = web.client.search_for_studies()
    assert _uids(studies) == {d.StudyInstanceUID for d in originals}
    # each matching kind, as C-FIND has it (one implementation)
    assert _uids(web.client.search_for_studies(search_filters={"PatientID": ct.PatientID})) == {ct.StudyInstanceUID}
    name = str(ct.PatientName)
    assert ct.StudyInstanceUID in _uids(web.client.search_for_studies(search_filters={"PatientName": name[:3] + "*"}))
    assert _uids(web.client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})) == {
        d.StudyInstanceUID for d in originals if d.Modality == "CT"}
    date = ct.StudyDate
    assert ct.StudyInstanceUID in _uids(web.client.search_for_studies(search_filters={"StudyDate": f"{date}-{date}"}))
    assert not web.client.search_for_studies(search_filters={"StudyDate": "19000101-19000102"})
    two = sorted({d.StudyInstanceUID for d in originals})[:2]
    assert _uids(web.client.search_for_studies(search_filters={"StudyInstanceUID": ",".join(two)})) == set(two)
    # the levels below, the counts, limit and offset
    (series,) = web.client.search_for_series(ct.StudyInstanceUID)
    assert series["0020000E"]["Value"] == [ct.SeriesInstanceUID] and series["00201209"]["Value"] == [6]
    instances = web.client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert len(instances) == 6, instances
    assert all(i["00081190"]["Value"][0].startswith(web.url) for i in instances), instances[0]["00081190"]
    page = web.client.search_for_instances(ct.StudyInstanceUID, limit=4, offset=3)
    assert len(page) == 3 and len(web.client.search_for_instances()) == len(originals)
    assert {s["00080060"]["Value"][0] for s in web.client.search_for_series()} == {d.Modality for d in originals}
    # WADO-RS: lossless routes give the originals back element by element
    for original in originals:
        got = web.client.retrieve_instance(original.StudyInstanceUID, original.SeriesInstanceUID,
                                           original.SOPInstanceUID)
        assert got == original and got.PixelData == original.PixelData, original.SOPInstanceUID
    whole = web.client.retrieve_series(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert sorted(d.SOPInstanceUID for d in whole) == sorted(d.SOPInstanceUID for d in originals[:6])
    meta = web.client.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert meta["00100020"]["Value"] == [ct.PatientID] and "BulkDataURI" in meta["7FE00010"]
    assert len(web.client.retrieve_study_metadata(ct.StudyInstanceUID)) == 6
    events = [r["event"] for r in read(web.running.config.audit_path)]
    assert {"store", "query", "retrieve"} <= set(events)


def test_sealed_mode_serves_the_sealed_transport_objects(make_web: Callable[..., Web]) -> None:
    web = make_web(retrieve_as="sealed")
    (original,) = [pydicom.dcmread(ct_files()[0])]
    web.client.store_instances([original])
    web.running.wait_archived()
    got = web.client.retrieve_instance(original.StudyInstanceUID, original.SeriesInstanceUID,
                                       original.SOPInstanceUID)
    assert got.SOPClassUID == RAW_DATA_STORAGE and got.SOPInstanceUID != original.SOPInstanceUID
    assert got.StudyInstanceUID == original.StudyInstanceUID and "PixelData" not in got
    r = requests.get(f"{web.url}/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}/instances/"
                     f"{original.SOPInstanceUID}/rendered", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 409 and "sealed" in r.json()["error"]  # no pixels leave a sealed-mode archive


def test_every_route_wants_a_valid_token(web: Web) -> None:
    base = web.url
    uid = "1.2.3"
    routes = [("GET", f"{base}/studies"), ("GET", f"{base}/series"), ("GET", f"{base}/instances"),
              ("GET", f"{base}/studies/{uid}/series"), ("GET", f"{base}/studies/{uid}/instances"),
              ("GET", f"{base}/studies/{uid}/series/{uid}/instances"), ("GET", f"{base}/studies/{uid}"),
              ("GET", f"{base}/studies/{uid}/metadata"), ("GET", f"{base}/studies/{uid}/series/{uid}"),
              ("GET", f"{base}/studies/{uid}/series/{uid}/instances/{uid}/metadata"),
              ("POST", f"{base}/studies"), ("POST", f"{base}/studies/{uid}")]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for method, url in routes:
            r = requests.request(method, url, headers=headers, timeout=30)
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), (method, url)
    assert requests.get(f"{base}/studies", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).status_code == 204
    refused = [r for r in read(web.running.config.audit_path) if r["event"] == "login-refused"]
    assert len(refused) == 3 * len(routes) and TOKEN not in str(refused)


def _post(web: Web, body: bytes, content_type: str) -> requests.Response:
    return requests.post(f"{web.url}/studies", data=body, timeout=60,
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type})


def test_malformed_stow_bodies_fail_alone_and_store_nothing(web: Web) -> None:
    good = Path(ct_files()[0]).read_bytes()
    body, boundary = build([(good, "application/dicom")])
    kind = f'multipart/related; type="application/dicom"; boundary={boundary}'
    assert _post(web, body, "multipart/related; boundary=").status_code == 400  # bad boundary
    assert _post(web, body[:-40], kind).status_code == 400  # truncated
    r = requests.post(f"{web.url}/studies", data=b"x" * 10, timeout=30,  # huge declared length
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": kind,
                               "Content-Length": str(1 << 50)})
    assert r.status_code in (400, 413)
    junk, boundary = build([(b"not DICOM %d" % i, "application/dicom") for i in range(1000)])
    r = _post(web, junk, f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert r.status_code == 409 and len(r.json()["00081198"]["Value"]) == 1000
    assert {f["00081197"]["Value"][0] for f in r.json()["00081198"]["Value"]} <= {0xA900, 0xC000}
    mixed, boundary = build([(b"garbage", "application/dicom"), (good, "application/dicom"),
                             (b"{}", "application/json")])
    r = _post(web, mixed, f'multipart/related; type="application/dicom"; boundary={boundary}')
    answer = r.json()
    assert r.status_code == 202 and len(answer["00081199"]["Value"]) == 1 and len(answer["00081198"]["Value"]) == 2
    web.running.wait_archived()
    assert len(web.client.search_for_instances()) == 1  # the good part alone, and the server still answers


def test_stow_into_a_study_refuses_an_instance_of_another(web: Web) -> None:
    body, boundary = build([(Path(ct_files()[0]).read_bytes(), "application/dicom")])
    other = "1.2.826.0.1.3680043.2.1143.1"
    r = requests.post(f"{web.url}/studies/{other}", data=body, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}",
                               "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    with pytest.raises(requests.HTTPError):  # dicomweb-client sees the same refusal
        web.client.store_instances([pydicom.dcmread(ct_files()[0])], study_instance_uid=other)
    assert not web.client.search_for_instances()


def test_frames_bulkdata_and_rendered_images(web: Web) -> None:
    import imagecodecs
    import numpy as np
    from pydicom.encaps import generate_frames

    ct = pydicom.dcmread(ct_files()[0])
    multi = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # 10 native frames
    j2k = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))  # encapsulated: kept as it came
    web.client.store_instances([ct, multi, j2k])
    web.running.wait_archived()

    def uids(ds: Dataset) -> tuple[str, str, str]:
        return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID

    (frame,) = web.client.retrieve_instance_frames(*uids(ct), frame_numbers=[1])
    assert frame == ct.PixelData  # native, little endian: the stored samples
    got = web.client.retrieve_instance_frames(*uids(multi), frame_numbers=[3, 1])
    for data, n in zip(got, (3, 1), strict=True):
        assert np.array_equal(np.frombuffer(data, "<u2").reshape(64, 64), multi.pixel_array[n - 1])
    (stored,) = web.client.retrieve_instance_frames(*uids(j2k), frame_numbers=[1],
                                                    media_types=(("application/octet-stream", "*"),))
    assert stored == next(generate_frames(j2k.PixelData, number_of_frames=1))  # as stored, compressed
    (decoded,) = web.client.retrieve_instance_frames(*uids(j2k), frame_numbers=[1])
    want = j2k.pixel_array
    assert np.array_equal(np.frombuffer(decoded, want.dtype.newbyteorder("<")).reshape(want.shape), want)
    # transcoded on request, losslessly: the archived CT slice's pixels in JPEG-LS, JPEG 2000 and HTJ2K
    (jls,) = web.client.retrieve_instance_frames(*uids(ct), frame_numbers=[1],
                                                 media_types=(("image/jls", "1.2.840.10008.1.2.4.80"),))
    (jp2,) = web.client.retrieve_instance_frames(*uids(ct), frame_numbers=[1], media_types=(("image/jp2",),))
    instance = (f"{web.url}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/"
                f"{ct.SOPInstanceUID}")
    r = requests.get(f"{instance}/frames/1", timeout=30, headers={
        "Authorization": f"Bearer {TOKEN}", "Accept": 'multipart/related; type="image/jphc"'})
    (part,) = multipart.parse(r.content, r.headers["content-type"])
    assert part.content_type == "image/jphc"
    for data, decode in ((jls, imagecodecs.jpegls_decode), (jp2, imagecodecs.jpeg2k_decode),
                         (part.data, imagecodecs.htj2k_decode)):
        assert np.array_equal(np.asarray(decode(data)).view(ct.pixel_array.dtype), ct.pixel_array)
    r = requests.get(f"{instance}/frames/1", timeout=30, headers={
        "Authorization": f"Bearer {TOKEN}", "Accept": 'multipart/related; type="image/jpx"'})
    assert r.status_code == 406
    meta = web.client.retrieve_instance_metadata(*uids(multi))
    (bulk,) = web.client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
    assert bulk == multi.PixelData
    png = web.client.retrieve_instance_rendered(*uids(ct), media_types=("image/png",))
    image = imagecodecs.png_decode(png)
    assert image.shape == (ct.Rows, ct.Columns) and image.dtype == np.uint8 and image.std() > 10
    lung = imagecodecs.png_decode(web.client.retrieve_instance_rendered(*uids(ct), media_types=("image/png",),
                                                                        params={"window": "-600,1500"}))
    assert not np.array_equal(lung, image)  # the window asked for, not the instance's
    jpeg = web.client.retrieve_instance_frames_rendered(*uids(multi), frame_numbers=[2], media_types=("image/jpeg",))
    assert jpeg[:2] == b"\xff\xd8" and imagecodecs.jpeg8_decode(jpeg).shape == (64, 64)
    r = requests.get(f"{web.url}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/"
                     f"{ct.SOPInstanceUID}/frames/2", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 404 and "1 frame" in r.json()["error"]
    for bad in ("frames/x", "frames/0", "rendered?window=40", "rendered?quality=high"):
        r = requests.get(f"{web.url}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/"
                         f"{ct.SOPInstanceUID}/{bad}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert r.status_code == 400, bad


def test_web_token_prints_a_token_whose_digest_lets_it_in(make_server, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from tests.conftest import run_cli
    from tests.net.conftest import free_port

    out = run_cli("web-token", env=env, check=True).stdout
    token = out.split("it is not stored anywhere): ")[1].split()[0]
    digest = out.split("web.tokens_sha256: ")[1].split()[0]
    assert hashlib.sha256(token.encode()).hexdigest() == digest
    running = make_server(web={"port": free_port(), "tokens_sha256": [digest]})
    assert running.server.web is not None
    url = running.server.web.url
    assert requests.get(f"{url}/studies", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 204
    assert requests.get(f"{url}/studies", headers={"Authorization": f"Bearer {token}x"}, timeout=30).status_code == 401


def test_dicomweb_over_tls_with_the_dimse_certificates(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.net.conftest import free_port
    from tests.net.test_server import _certificates
    from tests.web.conftest import TOKEN_SHA256

    certs = _certificates(tmp_path)
    running = make_server(server={"tls": {"enabled": True, "certificate": str(certs["server.pem"]),
                                          "private_key": str(certs["server.key"]), "ca": str(certs["ca.pem"]),
                                          "require_client_certificate": True}},
                          web={"port": free_port(), "tokens_sha256": [TOKEN_SHA256]})
    url = running.server.web.url
    assert url.startswith("https://")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = requests.get(f"{url}/studies", headers=auth, verify=str(certs["ca.pem"]),
                      cert=(str(certs["client.pem"]), str(certs["client.key"])), timeout=30)
    assert ok.status_code == 204
    with pytest.raises(requests.exceptions.ConnectionError):  # no client certificate: refused in the handshake
        requests.get(f"{url}/studies", headers=auth, verify=str(certs["ca.pem"]), timeout=30)
    with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP on the TLS port
        requests.get(url.replace("https://", "http://") + "/studies", headers=auth, timeout=30)


def test_client_certificates_let_in_by_subject_without_a_token(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.net.conftest import free_port
    from tests.net.test_server import _certificates
    from tests.web.conftest import TOKEN_SHA256

    certs = _certificates(tmp_path)  # "client" and "server", both signed by the test CA
    running = make_server(server={"tls": {"enabled": True, "certificate": str(certs["server.pem"]),
                                          "private_key": str(certs["server.key"]), "ca": str(certs["ca.pem"])}},
                          web={"port": free_port(), "tokens_sha256": [TOKEN_SHA256], "client_certificates": ["client"]})
    url, ca = running.server.web.url, str(certs["ca.pem"])
    client = (str(certs["client.pem"]), str(certs["client.key"]))
    assert requests.get(f"{url}/studies", verify=ca, cert=client, timeout=30).status_code == 204  # no token
    other = requests.get(f"{url}/studies", verify=ca, cert=(str(certs["server.pem"]), str(certs["server.key"])),
                         timeout=30)  # signed by the CA, but CN=server is not listed
    assert other.status_code == 401
    assert requests.get(f"{url}/studies", verify=ca, timeout=30).status_code == 401  # neither
    assert requests.get(f"{url}/studies", verify=ca, headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=30).status_code == 204  # a token still does without a certificate
    refused = [r for r in read(running.config.audit_path) if r["event"] == "login-refused"]
    assert any("CN=server not allowed" in r["detail"] for r in refused)


def test_wado_rs_names_objects_that_cannot_be_opened_and_cuts_off_one_that_fails_late(web: Web) -> None:
    import os

    from sqlalchemy import text

    files = ct_files()[:4]
    datasets = [pydicom.dcmread(f) for f in files]
    web.client.store_instances(datasets)
    web.running.wait_archived()
    archive = web.running.archive
    study, series = datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    url = f"{web.url}/studies/{study}/series/{series}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # a blob altered on disk: refused before the answer starts; the others are sent, the status says partial
    tampered = datasets[1].SOPInstanceUID
    path = archive.store.path_for(archive.index.get(tampered).blob_key)
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    r = requests.get(url, headers=auth, timeout=60)
    assert r.status_code == 206 and tampered in r.headers["warning"]
    parts = multipart.parse(r.content, r.headers["content-type"])
    got = {pydicom.dcmread(BytesIO(p.data)).SOPInstanceUID: p.data for p in parts}
    assert set(got) == {d.SOPInstanceUID for d in datasets} - {tampered}
    for f in files:  # the lossless route: the others byte for byte
        uid = pydicom.dcmread(f).SOPInstanceUID
        assert uid == tampered or got[uid] == Path(f).read_bytes()
    # an object whose seal opens but whose decoded bytes disagree with the index: found only while
    # streaming, so the answer is cut off (no closing boundary), never passed off as complete
    late = datasets[3].SOPInstanceUID
    with archive.index.engine.begin() as db:
        db.execute(text("UPDATE instances SET source_sha256 = :h WHERE sop_uid = :u"), {"h": "0" * 64, "u": late})
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError, InputError)):
        r = requests.get(url, headers=auth, timeout=60)
        multipart.parse(r.content, r.headers["content-type"])
    events = [e for e in read(web.running.config.audit_path) if e["event"] == "retrieve"]
    assert "could not be opened" in events[-2]["detail"] and "cut off" in events[-1]["detail"]
    assert requests.get(f"{web.url}/studies", headers=auth, timeout=30).status_code == 200  # still serving
