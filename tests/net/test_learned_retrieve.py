"""A learned lossy route over the network: C-STORE in, C-GET of sealed transport objects out,
decoded by the SCU into derived images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from aepacs.codec.quality import psnr
from aepacs.dicom.derive import derived_uid
from aepacs.net.client import retrieve
from tests.conftest import ct_files, current_ref
from tests.net.conftest import Running

CT = current_ref("ct")  # the version a bare "ct" route resolves to


def test_lossy_route_round_trip_over_dicom(make_server: Callable[..., Running], tmp_path: Path) -> None:
    srv = make_server(routes={"CT": {"model": "ct", "mode": "lossy", "min_psnr": 40.0}})
    sent = [pydicom.dcmread(f) for f in ct_files()[30:33]]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, [str(sent[0].file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.aet)
    assert all(int(assoc.send_c_store(ds).Status) == 0 for ds in sent)
    assoc.release()
    srv.wait_archived()
    for ds in sent:
        assert srv.archive.index.get(str(ds.SOPInstanceUID)).codec == f"ae:{CT}"
    study = str(sent[0].StudyInstanceUID)
    s = retrieve("127.0.0.1", srv.port, srv.aet, "VIEWER", "study", study, srv.keyring, tmp_path / "out")
    assert not s.failed and s.status == 0 and len(s.written) == len(sent)
    got = {str(pydicom.dcmread(p).SourceImageSequence[0].ReferencedSOPInstanceUID): pydicom.dcmread(p)
           for p in s.written}
    for ds in sent:
        back = got[str(ds.SOPInstanceUID)]
        assert back.SOPInstanceUID == derived_uid(str(ds.SOPInstanceUID), CT)
        assert back.ImageType[0] == "DERIVED" and back.LossyImageCompression == "01"
        assert back.StudyInstanceUID == ds.StudyInstanceUID and back.PatientID == ds.PatientID
        assert psnr(np.asarray(ds.pixel_array), np.asarray(back.pixel_array)) >= 40.0
