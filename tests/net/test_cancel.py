"""C-CANCEL honoured: a C-GET cancelled after its first sub-operation stops early with 0xFE00."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import RawDataStorage, StudyRootQueryRetrieveInformationModelGet

from tests.net.conftest import Running
from tests.net.test_server import scu, tiny_ct

COUNT = 40


def test_cancelled_get_stops_early(make_server: Callable[..., Running]) -> None:
    srv = make_server()
    study, series, rng = generate_uid(), generate_uid(), np.random.default_rng(9)
    assoc = scu().associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert all(int(assoc.send_c_store(tiny_ct(i, study, series, rng)).Status) == 0 for i in range(COUNT))
    assoc.release()
    srv.wait_archived()

    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="CANCELLER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(RawDataStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.aet,
                         ext_neg=[build_role(RawDataStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    context = next(cx.context_id for cx in assoc.accepted_contexts
                   if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelGet)
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
    statuses = []
    for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet, msg_id=7):
        statuses.append(int(status.Status))
        if len(statuses) == 1:
            assoc.send_c_cancel(7, context)
    assoc.release()
    assert statuses[-1] == 0xFE00, [hex(s) for s in statuses]
    assert 0 < len(received) < COUNT
