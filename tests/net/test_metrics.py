"""``/metrics`` and ``/health`` of a running archive server, read with curl during a real ingest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable

import pydicom
import pydicom.uid
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import ct_files
from tests.net.conftest import Running, free_port


def curl(url: str) -> tuple[int, str]:
    exe = shutil.which("curl", path="/usr/bin:/bin")
    if exe is None:
        pytest.skip("curl not installed")
    proc = subprocess.run([exe, "-s", "-w", "\n%{http_code}", url], capture_output=True, text=True, timeout=30)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code), body


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_counters_move_during_an_ingest(make_server: Callable[..., Running]) -> None:
    running = make_server(metrics={"port": free_port()})
    url = f"http://127.0.0.1:{running.config.metrics.port}"
    code, before = curl(url + "/metrics")
    assert code == 200 and metric(before, "aepacs_instances_received_total", status="0x0000", modality="CT") == 0
    files = ct_files()[:4]
    ae = AE(ae_title="CTSCANNER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", running.port, ae_title=running.aet)
    for i, f in enumerate(files):
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
        if i == 1:  # mid-ingest: the association is open and two are counted
            mid = curl(url + "/metrics")[1]
            assert metric(mid, "aepacs_instances_received_total", status="0x0000", modality="CT") == 2
            assert metric(mid, "aepacs_associations_open") == 1
    bad = pydicom.dcmread(files[0])
    bad.SOPInstanceUID = pydicom.uid.generate_uid()
    bad.Rows = 1024  # pixel data now too short for Rows x Columns
    assert assoc.send_c_store(bad).Status == 0xA900
    assoc.release()
    running.wait_archived()
    after = curl(url + "/metrics")[1]
    assert metric(after, "aepacs_instances_received_total", status="0x0000", modality="CT") == 4
    assert metric(after, "aepacs_instances_received_total", status="0xA900", modality="CT") == 1
    assert metric(after, "aepacs_bytes_received_total") > sum(len(pydicom.dcmread(f).PixelData) for f in files)
    codec = running.archive.index.get(str(pydicom.dcmread(files[0]).SOPInstanceUID)).codec
    assert metric(after, "aepacs_instances_archived_total", modality="CT", codec=codec) == 4
    assert metric(after, "aepacs_encode_seconds_count", codec=codec) == 4
    assert metric(after, "aepacs_spool_depth") == 0
    assert 0 < metric(after, "aepacs_bytes_stored_total") < metric(after, "aepacs_bytes_source_total")
    code, health = curl(url + "/health")
    assert code == 200 and json.loads(health)["status"] == "ok"
    assert curl(url + "/nothing")[0] == 404


def test_health_says_unavailable_below_the_free_space_floor(make_server: Callable[..., Running]) -> None:
    running = make_server(metrics={"port": free_port()}, store={"min_free_mb": 10**9})
    code, body = curl(f"http://127.0.0.1:{running.config.metrics.port}/health")
    assert code == 503
    report = json.loads(body)
    assert report["status"] == "unavailable" and "reserve" in report["problems"][0]


def test_archived_one_counts_added_instances_only() -> None:
    from aepacs.net.metrics import Metrics
    from aepacs.pipeline.ingest import IngestResult

    m = Metrics()
    m.archived_one(IngestResult("1.2.3", "added", "ae:ct@3", source_size=1000, blob_size=250, modality="CT",
                                encode_s=0.02, seal_s=0.001, gate=None))
    m.archived_one(IngestResult("1.2.4", "added", "jpegls", source_size=500, blob_size=300, modality="",
                                encode_s=0.004, seal_s=0.001, gate="ct@3"))
    m.archived_one(IngestResult("1.2.3", "same"))  # a re-send costs nothing and counts nothing
    text = m.exposition().decode()
    assert metric(text, "aepacs_instances_archived_total", modality="CT", codec="ae:ct@3") == 1
    assert metric(text, "aepacs_instances_archived_total", modality="none", codec="jpegls") == 1
    assert metric(text, "aepacs_bytes_stored_total") == 550 and metric(text, "aepacs_bytes_source_total") == 1500
    assert metric(text, "aepacs_quality_gate_fallbacks_total", model="ct@3") == 1
    assert metric(text, "aepacs_encode_seconds_count", codec="ae:ct@3") == 1
    assert metric(text, "aepacs_encode_seconds_bucket", codec="jpegls", le="0.005") == 1
