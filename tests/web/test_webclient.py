"""``aepacs retrieve --dicomweb``: the retrieval client over WADO-RS, against a running archive."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom

from tests.conftest import ct_files, run_cli
from tests.web.conftest import TOKEN, Web


def test_retrieve_over_dicomweb_opens_the_sealed_objects_with_the_local_keyring(make_web: Callable[..., Web],
                                                                                tmp_path: Path,
                                                                                home: Path) -> None:
    web = make_web(retrieve_as="sealed")
    files = ct_files()[:3]
    web.client.store_instances([pydicom.dcmread(f) for f in files])
    web.running.wait_archived()
    first = pydicom.dcmread(files[0])
    env = {"AEPACS_WEB_TOKEN": TOKEN}
    for option, value, expected in (("--study", first.StudyInstanceUID, 3), ("--series", first.SeriesInstanceUID, 3),
                                    ("--instance", first.SOPInstanceUID, 1)):
        out = tmp_path / option.strip("-")
        proc = run_cli("retrieve", "--dicomweb", web.url, option, value, "-o", str(out), env=env, check=True)
        written = sorted(out.rglob("*.dcm"))
        assert len(written) == expected and f"retrieved {expected} instance" in proc.stdout
        originals = {pydicom.dcmread(f).SOPInstanceUID: Path(f).read_bytes() for f in files}
        for path in written:  # the lossless route: the original files, byte for byte
            assert path.read_bytes() == originals[pydicom.dcmread(path).SOPInstanceUID]
    proc = run_cli("retrieve", "--dicomweb", web.url, "--study", first.StudyInstanceUID, "-o", str(tmp_path / "x"),
                   env={"AEPACS_WEB_TOKEN": "wrong"})
    assert proc.returncode == 1 and "401" in proc.stderr and not (tmp_path / "x").exists()


def test_send_over_dicomweb_stores_and_names_each_refusal(make_web: Callable[..., Web], tmp_path: Path,
                                                          home: Path) -> None:
    web = make_web(retrieve_as="decoded")
    files = ct_files()[:3]
    bad = pydicom.dcmread(files[0])
    bad.SOPInstanceUID = pydicom.uid.generate_uid()
    bad.Rows = int(bad.Rows) + 7  # its pixel data no longer fits its description: refused, 0xA900
    bad.save_as(tmp_path / "bad.dcm")
    proc = run_cli("send", "--dicomweb", web.url, *map(str, files), str(tmp_path / "bad.dcm"),
                   env={"AEPACS_WEB_TOKEN": TOKEN})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "3 stored, 1 refused" in proc.stdout and f"REFUSED {tmp_path / 'bad.dcm'}: 0xA900" in proc.stderr
    web.running.wait_archived()
    found = {d["00080018"]["Value"][0] for d in web.client.search_for_instances(
        search_filters={"SeriesInstanceUID": pydicom.dcmread(files[0]).SeriesInstanceUID})}
    assert found == {pydicom.dcmread(f).SOPInstanceUID for f in files}
