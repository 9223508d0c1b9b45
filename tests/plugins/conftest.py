"""The real Orthanc (Debian orthanc + orthanc-python) with the aepacs plugin, started on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from aepacs.crypto.keyring import Keyring
from tests.net.conftest import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
WEBVIEWER_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so")
SCRIPT = Path(__file__).resolve().parents[2] / "plugins" / "orthanc" / "aepacs_orthanc.py"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def wait_indexed(area: Any, dicom_files: int, timeout: float = 60.0) -> None:
    """Until the plugin has moved `dicom_files` DICOM files from its journal into the index (it does so
    behind Orthanc, once Orthanc is quiet for a moment)."""
    deadline = time.time() + timeout
    while area.rows.count(content_type=1) < dicom_files:
        assert time.time() < deadline, f"{area.rows.count(content_type=1)} of {dicom_files} DICOM files indexed"
        time.sleep(0.1)


def wait_journal_moved(home: Path, timeout: float = 60.0) -> None:
    """Until the plugin's journal (in aepacs's data directory `home`) holds nothing: every file Orthanc
    stored is in the blob store and the index."""
    deadline = time.time() + timeout
    while any(p.stat().st_size for p in (home / "orthanc-journal").glob("*")):
        assert time.time() < deadline, "the journal was not moved"
        time.sleep(0.1)


class Orthanc:
    def __init__(self, root: Path, home: Path, fail_with: int | None = None, mode: str | None = "transport",
                 dicomweb: bool = False, site: Path | None = None, migrate_from: Path | None = None,
                 compress_after: float = 0, webviewer: bool = False) -> None:
        """`mode` None: a plain Orthanc (its own storage, no aepacs); files coded at once by default."""
        self.storage = root / "storage"
        self.port, self.http, self.client_port = free_port(), free_port(), free_port()
        conf = {"Name": "aepacs-test", "StorageDirectory": str(self.storage), "IndexDirectory": str(self.storage),
                "DicomAet": "ORTHANC", "DicomPort": self.port, "HttpPort": self.http, "RemoteAccessAllowed": False,
                "DicomCheckCalledAet": False, "Plugins": [str(PYTHON_PLUGIN)], "PythonScript": str(SCRIPT),
                "DicomModalities": {"AEPACSCLIENT": ["AEPACSCLIENT", "127.0.0.1", self.client_port]},
                "Aepacs": {"Config": str(site) if site else None, "SitePackages": [sysconfig.get_paths()["purelib"]],
                           "Keyring": str(home / "keyring.json"), "Models": str(home / "models"),
                           "FailWith": fail_with, "Mode": mode, "CompressAfter": compress_after,
                           "MigrateFrom": str(migrate_from) if migrate_from else None}}
        if mode is None:
            conf["Plugins"], self.plain = [], True
            del conf["PythonScript"], conf["Aepacs"]
        else:
            self.plain = False
        if webviewer:  # Debian's orthanc-webviewer, its cache of decoded images beside the storage
            conf["Plugins"].append(str(WEBVIEWER_PLUGIN))
            conf["WebViewer"] = {"CachePath": str(root / "webviewer-cache")}
        if dicomweb:  # Debian's orthanc-dicomweb, beside the aepacs plugin
            conf["Plugins"].append(str(DICOMWEB_PLUGIN))
            conf["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        root.mkdir(parents=True, exist_ok=True)
        self.conf, self.home = root / "orthanc.json", home
        self.conf.write_text(json.dumps(conf))
        self.log = root / "orthanc.log"
        self.start()

    def configure(self, **settings: object) -> None:
        """Change Orthanc's settings; they take effect at the next :meth:`start`."""
        self.conf.write_text(json.dumps({**json.loads(self.conf.read_text()), **settings}))

    def start(self) -> None:
        """Start Orthanc (again, on the same storage and ports) and wait for the plugin to be ready."""
        with self.log.open("ab") as log:
            start = log.tell()
            self.proc = subprocess.Popen([str(ORTHANC), str(self.conf)], env={**ENV, "AEPACS_HOME": str(self.home)},
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/system", timeout=2)
                if self.plain or "plugin ready" in self.log.read_bytes()[start:].decode(errors="replace"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("Orthanc did not start:\n" + self.log.read_text())

    def kill(self) -> None:
        """SIGKILL Orthanc and its children (the compressor) at once, as a power cut would end them."""
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in [self.proc.pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(20)

    def rest(self, path: str, method: str = "GET", data: bytes | None = None) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", method=method, data=data)
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

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


