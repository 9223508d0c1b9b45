"""The Orthanc plugin's storage-area mode against the real Orthanc: every file sealed and compressed at rest
in aepacs, Orthanc's own services unchanged."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from aepacs.config import load_config
from aepacs.pipeline.archive import Archive, load_keyring
from aepacs.pipeline.storage_area import DICOM, FILE, StorageArea, attachment_uid
from tests.conftest import ct_files, run_cli
from tests.plugins.conftest import DICOMWEB_PLUGIN, ENV, Orthanc, wait_indexed

#: the other modalities' sample files sent with the CT series (pydicom's test data: MR, US, CR, OT, NM)
OTHERS = ("MR_small.dcm", "US1_UNCI.dcm", "RG3_UNCR.dcm", "SC_rgb_16bit.dcm", "JPEG2000_UNC.dcm")


@pytest.fixture
def sealed_orthanc(tmp_path: Path, orthanc_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orthanc]:
    monkeypatch.setenv("AEPACS_HOME", str(orthanc_home))
    server = Orthanc(tmp_path / "orthanc", orthanc_home, mode="storage-area", dicomweb=DICOMWEB_PLUGIN.exists())
    yield server
    server.stop()


def _archive(home: Path) -> Archive:
    config = load_config()
    assert config.data_dir == home
    return Archive(config, load_keyring(config))


def _runs(pixels: bytes, haystack: bytes, run: int = 64) -> int:
    step = max(1, (len(pixels) - run) // 64)
    return sum(pixels[i:i + run] in haystack for i in range(0, len(pixels) - run, step))


def _wait_coded(area: StorageArea, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while area.rows.coded_by(FILE, DICOM, limit=1):
        assert time.time() < deadline, "the compressor did not code every DICOM file"
        time.sleep(0.5)


def test_orthanc_on_sealed_storage_gives_back_what_it_stored(sealed_orthanc: Orthanc, orthanc_home: Path) -> None:
    files = ct_files()[:12] + [Path(get_testdata_file(name)) for name in OTHERS]
    sent_out = subprocess.run(["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(sealed_orthanc.port),
                               *map(str, files)], env=ENV, capture_output=True, text=True)
    assert sent_out.returncode == 0, sent_out.stdout + sent_out.stderr
    ids = json.loads(sealed_orthanc.rest("/instances"))
    assert len(ids) == len(files)
    archive = _archive(orthanc_home)
    area = StorageArea(archive)
    wait_indexed(area, len(files))
    sent = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in files}

    def check_every_instance() -> None:
        for orthanc_id in ids:
            data = sealed_orthanc.rest(f"/instances/{orthanc_id}/file")
            # byte for byte what Orthanc handed its storage area (once coded, the SHA-256 aepacs took) ...
            uuid = json.loads(sealed_orthanc.rest(f"/instances/{orthanc_id}/attachments/dicom/info"))["Uuid"]
            row = area.rows.get(attachment_uid(uuid, DICOM))
            assert row is not None and area.read(uuid, DICOM) == data
            assert row.source_sha256 == (hashlib.sha256(data).hexdigest() if row.codec != FILE else "")
            got = pydicom.dcmread(BytesIO(data))
            # ... and element for element what storescu sent
            original = sent[str(got.SOPInstanceUID)]
            kept = [e for e in original if e.tag != 0xFFFCFFFC]
            assert [e.tag for e in got] == [e.tag for e in kept]
            for elem in kept:
                assert got[elem.tag].value == elem.value, elem.keyword

    check_every_instance()
    _wait_coded(area)
    rows = _dicom_rows(area)
    assert len(rows) == len(files) and sum(r.codec != FILE for r in rows) >= 12  # the CT series at least coded
    assert sum(r.blob_size for r in rows) < sum(r.source_size for r in rows) / 1.5
    check_every_instance()  # the same bytes from the coded blobs

    # Orthanc's DICOMweb (orthanc-dicomweb) serves the same instances: QIDO-RS finds them, WADO-RS returns them
    if DICOMWEB_PLUGIN.exists():
        client = DICOMwebClient(f"http://127.0.0.1:{sealed_orthanc.http}/dicom-web")
        found = client.search_for_instances()
        assert {str(pydicom.Dataset.from_json(f).SOPInstanceUID) for f in found} == set(sent)
        for uid, original in sent.items():
            (match,) = [pydicom.Dataset.from_json(f) for f in found
                        if str(pydicom.Dataset.from_json(f).SOPInstanceUID) == uid]
            got = client.retrieve_instance(match.StudyInstanceUID, match.SeriesInstanceUID, uid)
            assert got.PixelData == original.PixelData and got.SOPInstanceUID == uid

    # keys rotated and every file fully re-sealed while Orthanc serves; the old key retired
    env = {"AEPACS_HOME": str(orthanc_home)}
    run_cli("keys", "rotate", env=env, check=True)
    reads, errors, stop = [], [], threading.Event()

    def read_meanwhile() -> None:  # a viewer reading the study the whole time
        while not stop.is_set():
            for orthanc_id in ids:
                try:
                    reads.append(hashlib.sha256(sealed_orthanc.rest(f"/instances/{orthanc_id}/file")).hexdigest())
                except OSError as exc:
                    errors.append(f"{orthanc_id}: {exc}")

    reader = threading.Thread(target=read_meanwhile)
    reader.start()
    try:
        run_cli("rekey", "--mode", "full", "--quiet", env=env, check=True)
    finally:
        stop.set()
        reader.join(60)
    assert errors == [] and reads and set(reads) <= {r.source_sha256 for r in _dicom_rows(area)}
    run_cli("keys", "retire", "1", "--yes", env=env, check=True)
    assert set(archive.index.kek_versions()) == {2}  # every file: its DICOM and its other attachments
    check_every_instance()

    # at rest: no 64-byte run of any original's pixel data, no DICOM preamble, in Orthanc's storage
    # directory or aepacs's blob store
    at_rest = b"".join(p.read_bytes() for p in list(sealed_orthanc.storage.rglob("*")) +
                       list((orthanc_home / "blobs").rglob("*")) if p.is_file() and "index" not in p.name)
    assert b"DICM" not in at_rest
    for uid, ds in sent.items():
        assert _runs(bytes(ds.PixelData), at_rest) == 0, uid

    # deleting the study in Orthanc removes its sealed blobs
    study = json.loads(sealed_orthanc.rest(f"/instances/{ids[0]}/study"))
    blobs_before = len(list(archive.store.keys()))
    sealed_orthanc.rest(f"/studies/{study['ID']}", method="DELETE")
    left = json.loads(sealed_orthanc.rest("/instances"))
    gone = len(ids) - len(left)
    assert gone >= 1 and len(_dicom_rows(area)) == len(left)
    assert len(list(archive.store.keys())) <= blobs_before - gone


def _dicom_rows(area: StorageArea) -> list:  # type: ignore[type-arg]
    with area.archive.index.engine.connect() as conn:
        from aepacs.store.schema import attachments

        return list(conn.execute(attachments.select().where(attachments.c.content_type == DICOM)).all())


def test_a_failure_fails_the_store_and_keeps_nothing(tmp_path: Path, orthanc_home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEPACS_HOME", str(orthanc_home))
    server = Orthanc(tmp_path / "failing", orthanc_home, fail_with=0xA700, mode="storage-area")
    try:
        proc = subprocess.run(["/usr/bin/storescu", "-v", "-aec", "ORTHANC", "127.0.0.1", str(server.port),
                               str(ct_files()[3])], env=ENV, capture_output=True, text=True)
        # Orthanc answers a storage area that raised with 0xA700
        assert "Received Store Response (Refused: OutOfResources)" in proc.stdout + proc.stderr, proc.stdout
        assert json.loads(server.rest("/instances")) == []
        archive = _archive(orthanc_home)
        assert StorageArea(archive).rows.count() == 0 and list(archive.store.keys()) == []
    finally:
        server.stop()


def _store_one(server: Orthanc, f: Path) -> str:
    proc = subprocess.run(["/usr/bin/storescu", "-v", "-aec", "ORTHANC", "127.0.0.1", str(server.port), str(f)],
                          env=ENV, capture_output=True, text=True)
    return proc.stdout + proc.stderr


def test_a_full_disk_or_a_damaged_keyring_fails_the_store(tmp_path: Path, orthanc_home: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Real failures, not a forced one: a blob store below its free-space reserve, and a keyring file
    that no longer parses (seen at the next store); and with no keyring at all Orthanc does not start
    (it never falls back to its own plaintext storage)."""
    monkeypatch.setenv("AEPACS_HOME", str(orthanc_home))
    site = tmp_path / "full.yaml"
    site.write_text("store:\n  min_free_mb: 1000000000\n")  # a reserve no disk here has
    full = Orthanc(tmp_path / "full", orthanc_home, mode="storage-area", site=site)
    try:
        assert "Received Store Response (Refused: OutOfResources)" in _store_one(full, ct_files()[0])
        assert json.loads(full.rest("/instances")) == [] and "below" in full.log.read_text()
    finally:
        full.stop()

    server = Orthanc(tmp_path / "damaged", orthanc_home, mode="storage-area")
    keyring = orthanc_home / "keyring.json"
    good = keyring.read_bytes()
    try:
        keyring.write_bytes(b"{not a keyring")
        assert "Received Store Response (Refused: OutOfResources)" in _store_one(server, ct_files()[1])
        assert json.loads(server.rest("/instances")) == []
        keyring.write_bytes(good)
        assert "Received Store Response (Success)" in _store_one(server, ct_files()[1])
    finally:
        server.stop()
    archive = _archive(orthanc_home)
    assert StorageArea(archive).rows.count(FILE) >= 1 and archive.sweep_orphans(min_age_s=0) == 0

    keyring.unlink()
    with pytest.raises(AssertionError, match="no keyring"):
        Orthanc(tmp_path / "nokeys", orthanc_home, mode="storage-area")
    assert [p for p in (tmp_path / "nokeys" / "storage").rglob("*") if p.is_file()] == []


def test_orthanc_services_work_on_sealed_storage(sealed_orthanc: Orthanc, tmp_path: Path) -> None:
    """C-FIND, C-GET, C-MOVE (dcmtk), STOW-RS (dicomweb-client), the web viewer's preview and transcoding,
    all on files Orthanc reads from aepacs."""
    files = ct_files()[:4]
    stored = subprocess.run(["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(sealed_orthanc.port),
                            *map(str, files[:3])], env=ENV, capture_output=True, text=True)
    assert stored.returncode == 0, stored.stdout
    sent = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f) for f in files}
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    if DICOMWEB_PLUGIN.exists():  # the fourth by STOW-RS
        DICOMwebClient(f"http://127.0.0.1:{sealed_orthanc.http}/dicom-web").store_instances([sent[str(
            pydicom.dcmread(files[3], stop_before_pixels=True).SOPInstanceUID)]])
    else:
        subprocess.run(["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(sealed_orthanc.port), str(files[3])],
                       env=ENV, check=True, capture_output=True)
    assert len(json.loads(sealed_orthanc.rest("/instances"))) == 4

    me = ["-aet", "AEPACSCLIENT", "-aec", "ORTHANC"]  # an AE Orthanc knows (DicomModalities)
    find = subprocess.run(["/usr/bin/findscu", "-S", *me, "-k", "QueryRetrieveLevel=IMAGE",
                           "-k", f"StudyInstanceUID={study}", "-k", "SOPInstanceUID", "127.0.0.1",
                           str(sealed_orthanc.port)], env=ENV, capture_output=True, text=True)
    assert find.returncode == 0 and find.stderr.count("(0008,0018) UI [") + find.stdout.count("(0008,0018) UI [") == 4

    for how in ("get", "move"):
        out = tmp_path / how
        out.mkdir()
        command = ["/usr/bin/getscu", "-S", *me, "-od", str(out)] if how == "get" else \
            ["/usr/bin/movescu", "-S", *me, "-aem", "AEPACSCLIENT", "+P", str(sealed_orthanc.client_port),
             "-od", str(out)]
        proc = subprocess.run([*command, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                               "127.0.0.1", str(sealed_orthanc.port)], env=ENV, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        got = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, out.iterdir())}
        assert set(got) == set(sent), how
        assert all(got[uid].PixelData == ds.PixelData for uid, ds in sent.items()), how

    some = json.loads(sealed_orthanc.rest("/instances"))[0]
    assert sealed_orthanc.rest(f"/instances/{some}/preview").startswith(b"\x89PNG")  # Orthanc Explorer's view
    original = pydicom.dcmread(BytesIO(sealed_orthanc.rest(f"/instances/{some}/file")))
    request = urllib.request.Request(f"http://127.0.0.1:{sealed_orthanc.http}/instances/{some}/modify",
                                     data=json.dumps({"Transcode": "1.2.840.10008.1.2.4.80", "Force": True,
                                                      "Keep": ["SOPInstanceUID"]}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        transcoded = pydicom.dcmread(BytesIO(response.read()))
    assert transcoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless
    assert (transcoded.pixel_array == original.pixel_array).all()
