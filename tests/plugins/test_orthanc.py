"""The Orthanc plugin against the real Orthanc: sealed on disk, retrievable, failures refused."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.uid
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from aepacs.crypto.keyring import Keyring
from tests.conftest import ct_files, run_cli
from tests.net.conftest import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
SCRIPT = Path(__file__).resolve().parents[2] / "plugins" / "orthanc" / "aepacs_orthanc.py"
ENV = {**os.environ, "TCP_NODELAY": "1"}


class Orthanc:
    def __init__(self, root: Path, home: Path, fail_with: int | None = None) -> None:
        self.storage = root / "storage"
        self.port, self.http, self.client_port = free_port(), free_port(), free_port()
        conf = {"Name": "aepacs-test", "StorageDirectory": str(self.storage), "IndexDirectory": str(self.storage),
                "DicomAet": "ORTHANC", "DicomPort": self.port, "HttpPort": self.http, "RemoteAccessAllowed": False,
                "DicomCheckCalledAet": False, "Plugins": [str(PYTHON_PLUGIN)], "PythonScript": str(SCRIPT),
                "DicomModalities": {"AEPACSCLIENT": ["AEPACSCLIENT", "127.0.0.1", self.client_port]},
                "Aepacs": {"Config": None, "SitePackages": [sysconfig.get_paths()["purelib"]],
                           "Keyring": str(home / "keyring.json"), "Models": str(home / "models"),
                           "FailWith": fail_with}}
        root.mkdir(parents=True, exist_ok=True)
        (root / "orthanc.json").write_text(json.dumps(conf))
        self.log = root / "orthanc.log"
        self.proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], env={**ENV, "AEPACS_HOME": str(home)},
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/system", timeout=2)
                if "plugin ready" in self.log.read_text():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("Orthanc did not start:\n" + self.log.read_text())

    def stored_files(self) -> list[Path]:
        return [p for p in self.storage.rglob("*") if p.is_file() and not p.name.startswith("index")]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(20)


@pytest.fixture
def orthanc_home(tmp_path: Path) -> Path:
    if not (ORTHANC.exists() and PYTHON_PLUGIN.exists()):
        pytest.skip("Orthanc and its Python plugin are not installed (Debian: orthanc orthanc-python)")
    home = tmp_path / "home"
    home.mkdir()
    Keyring.create(home / "keyring.json")
    return home


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
