"""Serving and retrieving need no torch: ``serve`` → ``send`` → ``retrieve`` where torch cannot load.

Every process of the flow (the server, its spool workers, the SCU, the retrieval
client) starts with a ``sitecustomize`` that refuses to import torch and notes
each attempt, as on an install without the ``train`` extra. Only the legacy
``@1`` objects need torch, and they say so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import TEST_SITE, ct_files
from tests.net.conftest import free_port

BLOCKER = textwrap.dedent("""
    import os, sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                with open(os.environ["AEPACS_TORCH_LOG"], "a") as log:
                    log.write(f"{os.getpid()} {name}\\n")
                raise ModuleNotFoundError(f"No module named {name!r} (this test's install has no torch)", name=name)
            return None

    sys.meta_path.insert(0, NoTorch())
""")


@pytest.fixture
def torchless(tmp_path: Path) -> dict[str, str]:
    """The environment of a process that cannot import torch (and a CT route through the shipped wavelet model)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    config = tmp_path / "site.yaml"
    config.write_text("routes:\n  CT: ct@3:lossy\n" + TEST_SITE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "AEPACS_TORCH_LOG": str(tmp_path / "torch-imports.log"), "AEPACS_HOME": str(tmp_path / "home"),
            "AEPACS_CONFIG": str(config)}


def _aepacs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aepacs", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_blocker_blocks(torchless: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=torchless, capture_output=True, text=True)
    assert proc.returncode != 0 and "has no torch" in proc.stderr
    assert Path(torchless["AEPACS_TORCH_LOG"]).read_text().strip().endswith("torch")


def test_serve_send_retrieve_without_torch(torchless: dict[str, str], tmp_path: Path) -> None:
    src = tmp_path / "ct"
    src.mkdir()
    for f in ct_files()[:3]:
        shutil.copy(f, src / f.name)
    study = str(pydicom.dcmread(ct_files()[0], stop_before_pixels=True).StudyInstanceUID)
    assert _aepacs(torchless, "keys", "init").returncode == 0
    port = free_port()
    log = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--port", str(port), "--workers", "1"],
                              env=torchless, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ae = AE()
        ae.add_requested_context(Verification)
        for _ in range(600):
            assert server.poll() is None, log.read_text()
            assoc = ae.associate("127.0.0.1", port, ae_title="AEPACS")
            if assoc.is_established:
                assoc.release()
                break
            time.sleep(0.1)
        sent = _aepacs(torchless, "send", str(src), "--host", "127.0.0.1", "--port", str(port))
        assert sent.returncode == 0, sent.stderr
        out = tmp_path / "out"
        for _ in range(600):  # archived by the spool workers: then C-GET finds them
            got = _aepacs(torchless, "retrieve", "--host", "127.0.0.1", "--port", str(port), "--study", study,
                          "-o", str(out))
            if got.returncode == 0 and "retrieved 3 instances" in got.stdout:
                break
            time.sleep(0.5)
        assert "retrieved 3 instances" in got.stdout, got.stdout + got.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 3
    for f in files:  # through the learned route: marked derived images, decoded without torch
        ds = pydicom.dcmread(f)
        assert ds.LossyImageCompression == "01" and ds.ImageType[0] == "DERIVED"
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
    assert not Path(torchless["AEPACS_TORCH_LOG"]).exists(), Path(torchless["AEPACS_TORCH_LOG"]).read_text()


def test_a_legacy_object_says_it_needs_torch(torchless: dict[str, str], tmp_path: Path) -> None:
    fixtures = Path(__file__).resolve().parent / "fixtures" / "sealed"
    shutil.copy(fixtures / "keyring.json", tmp_path / "keyring.json")
    (tmp_path / "keyring.json").chmod(0o600)
    env = {**torchless, "AEPACS_HOME": str(tmp_path)}
    opened = _aepacs(env, "open", str(fixtures / "ct1-lossy.aep"), "-o", str(tmp_path / "ct1.dcm"))
    assert opened.returncode == 1
    assert "factorized codec needs torch (pip install 'aepacs[train]')" in opened.stderr
    assert not (tmp_path / "ct1.dcm").exists()
    wavelet = _aepacs(env, "open", str(fixtures / "ct3-lossy.aep"), "-o", str(tmp_path / "ct3.dcm"))
    assert wavelet.returncode == 0, wavelet.stderr
