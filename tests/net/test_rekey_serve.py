"""A rotation and a full rekey while the archive SCP keeps storing and answering C-GET."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import RawDataStorage, StudyRootQueryRetrieveInformationModelGet

from aepacs.crypto.seal import open_sealed
from aepacs.dicom.transport import read_transport
from aepacs.pipeline.rekey import rekey
from tests.conftest import run_cli
from tests.net.conftest import Running
from tests.net.test_server import scu, tiny_ct


def c_get_study(port: int, aet: str, study: str) -> tuple[list[int], list[bytes]]:
    """C-GET a study; return the final status per response and the sealed blobs received."""
    blobs: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        blobs.append(read_transport(event.dataset)[0])
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(RawDataStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=aet, ext_neg=[build_role(RawDataStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
    statuses = [int(s.Status) for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    return statuses, blobs


def test_rekey_beside_a_serving_archive(make_server: Callable[..., Running]) -> None:
    srv = make_server()
    study, series, rng = generate_uid(), generate_uid(), np.random.default_rng(5)
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert all(int(assoc.send_c_store(tiny_ct(i, study, series, rng)).Status) == 0 for i in range(60))
    assoc.release()
    srv.wait_archived()
    run_cli("keys", "rotate", check=True)  # another process: the server must notice

    failures: list[str] = []
    stop = threading.Event()

    def getter() -> None:
        while not stop.is_set():
            statuses, blobs = c_get_study(srv.port, srv.aet, study)
            if statuses[-1] != 0 or len(blobs) < 60:
                failures.append(f"C-GET ended {statuses[-1]:#06x} with {len(blobs)} objects")
            for blob in blobs:
                try:
                    open_sealed(blob, srv.keyring)
                except Exception as exc:  # noqa: BLE001 - every failure is a finding here
                    failures.append(str(exc))

    thread = threading.Thread(target=getter)
    thread.start()
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    summary = rekey(srv.config, mode="full", workers=1, progress=False)
    assert all(int(assoc.send_c_store(tiny_ct(100 + i, study, series, rng)).Status) == 0 for i in range(10))
    assoc.release()
    stop.set()
    thread.join()
    srv.wait_archived()
    assert failures == []
    assert (summary.done, summary.failed) == (60, 0)
    # what arrived after the rotation was sealed under the new key: nothing needs key 1 any more
    assert srv.archive.index.kek_versions() == {2: 70}
    run_cli("keys", "retire", "1", "--yes", check=True)
    statuses, blobs = c_get_study(srv.port, srv.aet, study)
    assert statuses[-1] == 0 and len(blobs) == 70
    for blob in blobs:
        header, _ = open_sealed(blob, srv.keyring)
        assert header.kek_version == 2
