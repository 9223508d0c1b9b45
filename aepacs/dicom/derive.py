"""A learned lossy reconstruction as a DICOM derived image (PS3.3 C.7.6.1.1.5).

What a viewer and a radiologist must be told about an image that is not
the acquired one:

* Image Type value 1 ``DERIVED``;
* Lossy Image Compression ``01``, its Ratio and Method appended to any
  earlier ones (an image compressed twice lists both);
* Derivation Description in words (model, quality) and Derivation Code
  Sequence (DCM 113040 "Lossy Compression");
* Source Image Sequence referencing the original instance (purpose DCM
  121320 "Uncompressed predecessor");
* a new SOP Instance UID derived from the original UID and the model
  version, so that retrieving twice yields the same UID.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from aepacs.dicom.records import name_uid
from aepacs.errors import CodecError

METHOD = "AEPACS_AE1"
"""Lossy Image Compression Method: aepacs's defined term (explained in Derivation Description)."""


def derived_uid(original_uid: str, model: str) -> str:
    """The SOP Instance UID of the reconstruction of `original_uid` by `model`.

    A name-based (SHA-1, RFC 4122 version 5) UUID of both, as a ``2.25.``
    UID (PS3.5 B.2): the same inputs give the same UID on every machine.
    """
    return name_uid(f"{original_uid}|{model}")


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def _values(ds: Dataset, keyword: str) -> list[str]:
    """An attribute's values as strings (none when absent or empty)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def mark_derived(ds: Dataset, lossy: dict[str, Any]) -> Dataset:
    """Turn `ds` (original header, reconstructed pixels) into the derived image, in place."""
    original_uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    image_type = list(ds.get("ImageType", []) or ["", "PRIMARY"])
    image_type[0] = "DERIVED"
    if len(image_type) < 2:
        image_type.append("SECONDARY")
    ds.ImageType = image_type
    ratios, methods = _values(ds, "LossyImageCompressionRatio"), _values(ds, "LossyImageCompressionMethod")
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ratios + [f"{float(lossy['ratio']):.4g}"]
    ds.LossyImageCompressionMethod = methods + [METHOD]
    ds.DerivationDescription = (
        f"Lossy compression by the aepacs learned codec (method {METHOD}: convolutional autoencoder "
        f"latent, quantized and entropy coded) with model {lossy['model']}; ratio {float(lossy['ratio']):.2f}:1, "
        f"PSNR {float(lossy['psnr']):.2f} dB and SSIM {float(lossy['ssim']):.4f} over the stored value range, "
        f"measured against the original at sealing.")[:1024]
    ds.DerivationCodeSequence = [_code("113040", "Lossy Compression")]
    source = Dataset()
    source.ReferencedSOPClassUID = sop_class
    source.ReferencedSOPInstanceUID = original_uid
    source.PurposeOfReferenceCodeSequence = [_code("121320", "Uncompressed predecessor")]
    ds.SourceImageSequence = [source]
    new_uid = UID(derived_uid(original_uid, str(lossy["model"])))
    ds.SOPInstanceUID = new_uid
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = new_uid
    return ds


def derive(data: bytes, lossy: dict[str, Any]) -> bytes:
    """Part 10 bytes of the derived image for a decoded lossy object."""
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises a variety of errors on bad input
        raise CodecError(f"reconstruction does not parse ({exc})") from None
    mark_derived(ds, lossy)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
