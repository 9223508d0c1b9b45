"""Several archive nodes on one shared index (PostgreSQL) and blob store (S3): what one stores, any answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from aepacs.audit import read
from aepacs.demo.compare import same_instance
from aepacs.net.client import query, retrieve
from tests.conftest import ct_files
from tests.net.conftest import Running
from tests.net.dcmtk import run


@pytest.fixture
def backend() -> str:
    """Several nodes share PostgreSQL and S3 by definition: one run, not one per backend."""
    return "postgresql+s3"


def test_two_nodes_share_one_archive_on_postgresql_and_s3(make_server: Callable[..., Running], postgres_server: Any,
                                                          s3_server: Any, tmp_path: Path) -> None:
    shared = {"index": {"url": postgres_server.database()},
              "store": {"path": s3_server.bucket(), "endpoint_url": s3_server.endpoint}}
    nodes = [make_server(**shared, ingest={"workers": 1, "spool_path": str(tmp_path / f"spool-{n}")})
             for n in (1, 2)]
    files = ct_files()[:24]
    half = len(files) // 2
    for node, part in zip(nodes, (files[:half], files[half - 2:]), strict=True):  # two sent to both
        run("storescu", "-aec", node.aet, "127.0.0.1", str(node.port), *map(str, part))
    for node in nodes:
        node.wait_archived()
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    for node in nodes:  # each node finds every instance, whichever node stored it; each once
        found = query("127.0.0.1", node.port, node.aet, "FINDER", "IMAGE",
                      {"SOPInstanceUID": "", "SeriesInstanceUID": ""})
        assert sorted(str(d.SOPInstanceUID) for d in found) == sorted(uids)
    assert nodes[0].archive.index.count() == len(files)
    series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    got = retrieve("127.0.0.1", nodes[1].port, nodes[1].aet, "GETTER", "series", series, nodes[1].keyring,
                   tmp_path / "out")
    assert len(got.written) == len(files) and not got.failed
    for path in got.written:  # the lossless route: every element as sent (C-STORE carries no file meta,
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)  # group lengths, padding)
        assert same_instance(uids[uid], path), path.name


def test_two_nodes_behind_haproxy_answer_for_each_other(make_server: Callable[..., Running], postgres_server: Any,
                                                        s3_server: Any, tmp_path: Path) -> None:
    """Four storescu associations at once through one HAProxy address: each instance archived once,
    duplicates across nodes resolved keep-first as on one node, C-FIND on either node finds all."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.haproxy import Balancer
    from tests.net.conftest import free_port

    shared = {"index": {"url": postgres_server.database()},
              "store": {"path": s3_server.bucket(), "endpoint_url": s3_server.endpoint}}
    nodes = [make_server(**shared, ingest={"workers": 1, "spool_path": str(tmp_path / f"spool-{n}")},
                         metrics={"port": free_port()}, audit={"path": str(tmp_path / f"audit-{n}.jsonl")})
             for n in (1, 2)]  # each node its own spool and audit trail on local disk
    balancer = Balancer([(node.port, node.config.metrics.port) for node in nodes])
    try:
        balancer.wait_up(2)
        files = ct_files()[:40]
        batches = [files[i::4] + files[:3] for i in range(4)]  # the first three sent four times, to any node
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda part: run("storescu", "-aec", "AEPACS", "127.0.0.1", str(balancer.port),
                                           *map(str, part)), batches))
        for node in nodes:
            node.wait_archived()
        uids = sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
        assert nodes[0].archive.index.count() == len(files)  # stored once each
        keys = {"SOPInstanceUID": "", "SeriesInstanceUID": ""}
        for port in (balancer.port, nodes[0].port, nodes[1].port):
            found = query("127.0.0.1", port, "AEPACS", "FINDER", "IMAGE", keys)
            assert sorted(str(d.SOPInstanceUID) for d in found) == uids
        for n in (1, 2):  # four associations at once, least connections first: both nodes took some
            assert any(r["event"] == "store" for r in read(tmp_path / f"audit-{n}.jsonl")), n
    finally:
        balancer.stop()
