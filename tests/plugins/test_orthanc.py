"""The Orthanc plugin against the real Orthanc: sealed on disk, retrievable, failures refused."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.uid
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import ct_files, run_cli
from tests.plugins.conftest import ENV, Orthanc


@pytest.fixture
def orthanc(tmp_path: Path, orthanc_home: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", orthanc_home)
    yield server
    server.stop()


def test_orthanc_keeps_only_sealed_objects_and_aepacs_retrieve_decodes_them(
        orthanc: Orthanc, orthanc_home: Path, tmp_path: Path) -> None:
    files = ct_files()[10:14]
    subprocess.run(["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.port), *map(str, files)],
                   env=ENV, check=True, capture_output=True)
    stored = orthanc.stored_files()
    assert len(stored) == len(files)
    blobs = b"".join(p.read_bytes() for p in stored)
    for f in files:  # no run of the original pixel bytes anywhere in Orthanc's storage
        pixels = pydicom.dcmread(f).PixelData
        for start in range(0, len(pixels) - 256, len(pixels) // 8):
            assert pixels[start:start + 256] not in blobs
    for p in stored:
        ds = pydicom.dcmread(p)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66" and ds.Modality == "CT"
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    env = {"AEPACS_HOME": str(orthanc_home)}
    for how, extra in (("get", []), ("move", ["--move-to-self", str(orthanc.client_port)])):
        out = tmp_path / how
        run_cli("retrieve", "--host", "127.0.0.1", "--port", str(orthanc.port), "--called-aet", "ORTHANC",
                "--aet", "AEPACSCLIENT", "--study", study, "-o", str(out), *extra, env=env, check=True)
        back = {pydicom.dcmread(p).SOPInstanceUID: p for p in out.rglob("*") if p.is_file()}
        assert len(back) == len(files)
        for f in files:  # the CT route is lossless: the instance as Orthanc received it, element for element
            original = pydicom.dcmread(f)
            got = pydicom.dcmread(back[original.SOPInstanceUID])
            kept = [e for e in original if e.tag != 0xFFFCFFFC]  # Orthanc (DCMTK) drops trailing padding
            assert [e.tag for e in got] == [e.tag for e in kept]
            for elem in kept:
                assert got[elem.tag].value == elem.value, elem.keyword


def test_a_failure_refuses_the_instance_and_stores_nothing(tmp_path: Path, orthanc_home: Path) -> None:
    server = Orthanc(tmp_path / "failing", orthanc_home, fail_with=0xA700)
    try:
        f = ct_files()[3]
        proc = subprocess.run(["/usr/bin/storescu", "-v", "-aec", "ORTHANC", "127.0.0.1", str(server.port), str(f)],
                              env=ENV, capture_output=True, text=True)
        assert "Received Store Response (Refused: OutOfResources)" in proc.stdout + proc.stderr
        ae = AE(ae_title="CT01")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="ORTHANC")
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0xA700
        assoc.release()
        assert server.stored_files() == []
        assert "not sealed (0xA700)" in server.log.read_text()
    finally:
        server.stop()


def test_a_malformed_instance_gets_a_failure_status(orthanc: Orthanc) -> None:
    ds = pydicom.dcmread(ct_files()[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Rows = 1024  # the pixel data is now too short for the image it describes
    ae = AE(ae_title="CT01")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", orthanc.port, ae_title="ORTHANC")
    assert assoc.send_c_store(ds).Status == 0xA900
    assoc.release()
    assert orthanc.stored_files() == []
