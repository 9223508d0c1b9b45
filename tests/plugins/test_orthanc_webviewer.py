"""The Orthanc Web Viewer plugin (Debian ``orthanc-webviewer``) on aepacs's storage area: it shows the same
images as on Orthanc's own storage, from files sealed as they came and from coded ones."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from aepacs.config import load_config
from aepacs.pipeline.archive import Archive, load_keyring
from aepacs.pipeline.storage_area import DICOM, FILE, StorageArea
from tests.conftest import ct_files, run_cli
from tests.plugins.conftest import ENV, WEBVIEWER_PLUGIN, Orthanc, wait_indexed

pytestmark = pytest.mark.skipif(not WEBVIEWER_PLUGIN.exists(), reason="needs Debian's orthanc-webviewer")


@pytest.fixture
def orthancs(tmp_path: Path, orthanc_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Orthanc, Orthanc]]:
    monkeypatch.setenv("AEPACS_HOME", str(orthanc_home))
    plain = Orthanc(tmp_path / "plain", orthanc_home, mode=None, webviewer=True)
    sealed = Orthanc(tmp_path / "sealed", orthanc_home, mode="storage-area", webviewer=True, compress_after=3600)
    yield plain, sealed
    plain.stop()
    sealed.stop()


def _views(orthanc: Orthanc, ids: list[str]) -> dict[str, object]:
    """What the viewer's page asks for each instance: the decoded frame, deflated (lossless), and its tags."""
    return {i: json.loads(orthanc.rest(f"/web-viewer/instances/deflate-{i}_0")) for i in ids}


def test_the_web_viewer_shows_the_same_images_on_sealed_storage(orthancs: tuple[Orthanc, Orthanc],
                                                                orthanc_home: Path) -> None:
    plain, sealed = orthancs
    files = ct_files()[:4]
    for orthanc in orthancs:
        out = subprocess.run(["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.port),
                              *map(str, files)], env=ENV, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    ids = sorted(json.loads(plain.rest("/instances")))
    assert sorted(json.loads(sealed.rest("/instances"))) == ids  # Orthanc's ids: hashes of the UIDs
    series = json.loads(plain.rest("/series"))[0]
    listing = f"/web-viewer/series/{series}"
    assert json.loads(sealed.rest(listing)) == json.loads(plain.rest(listing))
    expected = _views(plain, ids)
    assert all(view["Orthanc"]["Compression"] == "Deflate" for view in expected.values())
    assert {view["rows"] for view in expected.values()} == {pydicom.dcmread(f).Rows for f in files}
    assert _views(sealed, ids) == expected  # read from files sealed as they came

    config = load_config()
    area = StorageArea(Archive(config, load_keyring(config)))
    wait_indexed(area, len(files))
    run_cli("orthanc-compress", "--quiet", env={"AEPACS_HOME": str(orthanc_home)}, check=True)
    assert not area.rows.coded_by(FILE, DICOM, limit=1)  # every DICOM file coded now
    sealed.stop()
    cache = sealed.conf.parent / "webviewer-cache"
    for path in cache.rglob("*"):  # the viewer's own cache of decoded images: emptied, so it reads aepacs again
        if path.is_file():
            path.unlink()
    sealed.start()
    assert _views(sealed, ids) == expected  # decoded from the coded files
