"""The learned route end to end: ingest → seal → store → fetch → a derived image a viewer opens."""

from __future__ import annotations

import dataclasses
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest

from aepacs.codec.quality import psnr
from aepacs.config import Config, Route
from aepacs.crypto.keyring import Keyring
from aepacs.dicom.derive import METHOD, derived_uid
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import GATE_FALLBACKS, ingest
from aepacs.pipeline.retrieve import fetch
from tests.conftest import ct_files, current_ref
from tests.net.dcmtk import require

CHANGED = {"SOPInstanceUID", "ImageType", "LossyImageCompression", "LossyImageCompressionRatio",
           "LossyImageCompressionMethod", "DerivationDescription", "DerivationCodeSequence",
           "SourceImageSequence", "PixelData"}

CT = current_ref("ct")  # the version a bare "ct" route resolves to


def _archive(config: Config, keyring: Keyring, route: Route) -> Archive:
    return Archive(dataclasses.replace(config, routes={"default": Route(), "CT": route}), keyring)


def test_lossy_route_stores_the_latent_and_returns_a_derived_image(config: Config, keyring: Keyring) -> None:
    files = ct_files()[20:23]
    with _archive(config, keyring, Route(model="ct", mode="lossy", gain=18, min_psnr=40.0)) as archive:
        for f in files:
            assert ingest(archive, f.read_bytes()).codec == f"ae:{CT}"
        for f in files:
            original = pydicom.dcmread(f)
            row = archive.index.get(str(original.SOPInstanceUID))
            assert row.codec == f"ae:{CT}" and row.psnr >= 40.0 and 0 < row.ssim <= 1
            assert row.blob_size < row.source_size / 4  # the latent, not the image
            first, second = fetch(archive, row.sop_uid), fetch(archive, row.sop_uid)
            assert first == second  # same pixels, same new UID, every time
            ds = pydicom.dcmread(BytesIO(first))
            assert ds.SOPInstanceUID == derived_uid(row.sop_uid, CT) != row.sop_uid
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.ImageType[0] == "DERIVED" and ds.LossyImageCompression == "01"
            methods = ds.LossyImageCompressionMethod
            assert METHOD in ([methods] if isinstance(methods, str) else list(methods))
            assert ds.DerivationCodeSequence[0].CodeValue == "113040"
            src = ds.SourceImageSequence[0]
            assert src.ReferencedSOPInstanceUID == row.sop_uid and src.ReferencedSOPClassUID == original.SOPClassUID
            assert src.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
            assert CT in ds.DerivationDescription
            quality = psnr(original.pixel_array, ds.pixel_array)
            assert abs(quality - row.psnr) < 0.01  # what the index says is what comes back
            for elem in original:  # everything else as it was
                if elem.keyword not in CHANGED and elem.tag.group != 0x0002:
                    assert ds[elem.tag].value == elem.value, elem.keyword


def test_quality_gate_falls_back_to_lossless_and_counts(config: Config, keyring: Keyring) -> None:
    f = ct_files()[10]
    before = GATE_FALLBACKS[f"ae:{CT}"]
    with _archive(config, keyring, Route(model="ct", mode="lossy", gain=0, min_psnr=99.0)) as archive:
        result = ingest(archive, f.read_bytes())
        assert result.codec == "jpegls"
        assert fetch(archive, result.sop_uid) == f.read_bytes()  # the original, bit for bit
        assert archive.index.get(result.sop_uid).psnr is None
    assert GATE_FALLBACKS[f"ae:{CT}"] == before + 1


def test_lossless_learned_route_returns_the_original(config: Config, keyring: Keyring) -> None:
    f = ct_files()[30]
    with _archive(config, keyring, Route(model="ct", mode="lossless")) as archive:
        result = ingest(archive, f.read_bytes())
        assert result.codec == f"ae:{CT}"
        assert fetch(archive, result.sop_uid) == f.read_bytes()


def test_derived_file_passes_dciodvfy_with_no_new_errors(config: Config, keyring: Keyring, tmp_path: Path) -> None:
    tool = require("dciodvfy")
    import subprocess

    def errors(path: Path) -> set[str]:
        proc = subprocess.run([str(tool), str(path)], capture_output=True, text=True, errors="replace")
        return {line.strip() for line in (proc.stdout + proc.stderr).splitlines()
                if line.startswith("Error") and "(0x0002," not in line}

    f = ct_files()[5]
    with _archive(config, keyring, Route(model="ct", mode="lossy", min_psnr=30.0)) as archive:
        result = ingest(archive, f.read_bytes())
        out = tmp_path / "derived.dcm"
        out.write_bytes(fetch(archive, result.sop_uid))
    assert errors(out) <= errors(f)
    subprocess.run([str(require("dcmdump")), str(out)], check=True, capture_output=True)


@pytest.mark.parametrize("modality", ["CT"])
def test_model_that_cannot_code_the_image_falls_back(config: Config, keyring: Keyring, modality: str) -> None:
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("SC_rgb.dcm")).read_bytes()  # 3 samples: the CT model codes 1
    ds = pydicom.dcmread(BytesIO(data))
    ds.Modality = modality
    buf = BytesIO()
    ds.save_as(buf)
    with _archive(config, keyring, Route(model="ct", mode="lossy")) as archive:
        result = ingest(archive, buf.getvalue())
        assert result.codec in ("jpegls", "zstd")
        assert fetch(archive, result.sop_uid) == buf.getvalue()
    assert np.all(True)
