"""QIDO-RS cross-checked against a reference server: Orthanc with the Debian orthanc-dicomweb plugin.

The same instances are stored in both (STOW-RS through dicomweb-client); the same queries must
list the same studies, series and instances, with the same values of the attributes both return.
Differences in what each returns beyond that are listed in docs/CONFORMANCE.md (section 6).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from tests.conftest import ct_files
from tests.net.conftest import free_port
from tests.web.conftest import Web

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: attributes compared where both servers return them
COMPARED = ("0020000D", "0020000E", "00080018", "00080016", "00100020", "00100010", "00100030", "00100040",
            "00080020", "00080030", "00080050", "00200010", "00080060", "00200011", "00200013", "00280010",
            "00280011", "00081030", "0008103E")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[DICOMwebClient]:
    if not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()):
        pytest.fail("Orthanc and its DICOMweb plugin are needed (Debian: orthanc orthanc-dicomweb; .ci/run)")
    root = tmp_path / "orthanc"
    root.mkdir()
    http = free_port()
    conf = {"Name": "reference", "StorageDirectory": str(root), "IndexDirectory": str(root), "DicomPort": free_port(),
            "HttpPort": http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (root / "orthanc.json").write_text(json.dumps(conf))
    log = root / "orthanc.log"
    proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/dicom-web/studies", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        yield DICOMwebClient(url=f"http://127.0.0.1:{http}/dicom-web")
    finally:
        proc.terminate()
        proc.wait(20)


def _by_uid(matches: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {m[key]["Value"][0]: m for m in matches}


def _values(match: dict[str, Any]) -> dict[str, Any]:
    return {tag: match[tag].get("Value") for tag in COMPARED if tag in match}


def test_qido_answers_as_orthanc_does(web: Web, orthanc: DICOMwebClient) -> None:
    datasets = [pydicom.dcmread(f) for f in [*ct_files()[:4], *(get_testdata_file(n) for n in
                                                                ("MR2_UNCR.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm"))]]
    web.client.store_instances(datasets)
    orthanc.store_instances(datasets)
    web.running.wait_archived()
    ct = datasets[0]
    queries: list[tuple[str, dict[str, Any]]] = [
        ("studies", {}), ("studies", {"search_filters": {"PatientID": ct.PatientID}}),
        ("studies", {"search_filters": {"ModalitiesInStudy": "MR"}}),
        ("studies", {"search_filters": {"StudyDate": f"{ct.StudyDate}-"}}),
        ("series", {}), ("series", {"search_filters": {"Modality": "CT"}}),
        ("instances", {}), ("instances", {"study_instance_uid": ct.StudyInstanceUID}),
    ]
    key = {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}
    compared = 0
    for level, kwargs in queries:
        ours = _by_uid(getattr(web.client, f"search_for_{level}")(**kwargs), key[level])
        theirs = _by_uid(getattr(orthanc, f"search_for_{level}")(**kwargs), key[level])
        assert set(ours) == set(theirs), (level, kwargs)
        for uid, match in ours.items():
            a, b = _values(match), _values(theirs[uid])
            common = set(a) & set(b)
            assert {t: a[t] for t in common} == {t: b[t] for t in common}, (level, uid)
            compared += len(common)
    assert compared > 50  # the comparison had substance
