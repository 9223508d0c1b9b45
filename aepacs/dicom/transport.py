"""Sealed transport objects: a sealed blob as a DICOM Raw Data Storage instance.

C-GET and C-MOVE send each archived instance as a Raw Data Storage object
(1.2.840.10008.5.1.4.1.1.66), so any PACS can store and file it without
holding keys. It carries:

* the original Patient, Study and Series identifiers (the object files under
  the original study and series everywhere);
* a Referenced Instance Sequence naming the original SOP Class and Instance UID
  (standard attributes), repeated in the private block;
* the Creator-Version UID of the aepacs sealed-object format;
* the sealed blob itself, in the private block reserved by the private creator
  ``AEPACS 1`` in group 0009 (found by its creator, wherever it is reserved,
  per PS3.5 7.8).

Its own SOP Instance UID is derived from the original one, so sending the same
instance twice gives the same UID.
"""

from __future__ import annotations

import time
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from aepacs import __version__
from aepacs.dicom.attributes import ATTRIBUTES
from aepacs.dicom.records import name_uid
from aepacs.errors import InputError

RAW_DATA_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66")
PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "AEPACS 1"
#: Offsets inside the private block. The blob's exact length is recorded because
#: DICOM pads an odd-length OB value with a zero byte.
E_ORIGINAL_CLASS, E_ORIGINAL_INSTANCE, E_BLOB, E_BLOB_LENGTH = 0x10, 0x11, 0x20, 0x21
#: Creator-Version UID (0008,9123) of the sealed-object format v1, fixed forever.
FORMAT_UID = name_uid("aepacs|sealed-object-format|1")
#: Where the purpose of the reference is stated (DCM 121320 is "Uncompressed predecessor").
_SOURCE_PURPOSE = ("121320", "DCM", "Uncompressed predecessor")


def transport_uid(sop_uid: str) -> str:
    """The transport object's SOP Instance UID: derived from the original, so stable across sends and machines."""
    return name_uid(f"aepacs|transport|{sop_uid}")


def make_transport(blob: bytes, row: Any) -> Dataset:
    """Wrap a sealed blob in a Raw Data Storage dataset.

    Parameters
    ----------
    blob : bytes
        The sealed object.
    row
        The instance's index row (attributes of all four levels), or what of it
        the receiver may see (:func:`aepacs.pipeline.transport.pseudonymous`).
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RAW_DATA_STORAGE
    ds.SOPInstanceUID = UID(transport_uid(row.sop_uid))
    stored = time.gmtime(row.stored_at)
    ds.ContentDate = time.strftime("%Y%m%d", stored)
    ds.ContentTime = time.strftime("%H%M%S", stored)
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    # Patient, General Study, General Series: what the index keeps (type 2 always, type 3 when known)
    for a in ATTRIBUTES:
        value = getattr(row, a.column) if a.transport else None
        if a.transport == 2 or (a.transport == 3 and value):
            setattr(ds, a.keyword, value)
    ds.Modality = row.modality or "OT"
    # General Equipment, Acquisition Context, Raw Data
    ds.Laterality = ""  # General Series 2C: the transport object does not know it (empty = unknown)
    ds.Manufacturer = "aepacs"
    ds.SoftwareVersions = __version__
    ds.AcquisitionContextSequence = Sequence()
    ds.CreatorVersionUID = FORMAT_UID
    ref = Dataset()
    ref.ReferencedSOPClassUID = row.sop_class_uid
    ref.ReferencedSOPInstanceUID = row.sop_uid
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = _SOURCE_PURPOSE
    ref.PurposeOfReferenceCodeSequence = Sequence([purpose])
    ds.ReferencedInstanceSequence = Sequence([ref])
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(E_ORIGINAL_CLASS, "UI", row.sop_class_uid)
    block.add_new(E_ORIGINAL_INSTANCE, "UI", row.sop_uid)
    block.add_new(E_BLOB, "OB", bytes(blob))
    block.add_new(E_BLOB_LENGTH, "UL", len(blob))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RAW_DATA_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def is_transport(ds: Dataset) -> bool:
    """True when `ds` is an aepacs sealed transport object."""
    if str(ds.get("SOPClassUID", "")) != RAW_DATA_STORAGE:
        return False
    try:
        ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return False
    return True


def read_transport(ds: Dataset) -> tuple[bytes, str, str]:
    """Return (sealed blob, original SOP Instance UID, original SOP Class UID).

    Raises
    ------
    InputError
        When `ds` is not a sealed transport object.
    """
    if not is_transport(ds):
        raise InputError("not an aepacs sealed transport object")
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    try:
        blob = block[E_BLOB].value
        instance = _text(block[E_ORIGINAL_INSTANCE].value)
        klass = _text(block[E_ORIGINAL_CLASS].value)
        length = block[E_BLOB_LENGTH].value
    except KeyError as exc:
        raise InputError(f"sealed transport object lacks {exc}") from None
    if isinstance(blob, str):
        blob = blob.encode("latin-1")
    if isinstance(length, (bytes, bytearray)):  # arrived implicitly: raw little-endian UL
        length = int.from_bytes(bytes(length[:4]), "little")
    return bytes(blob[:int(length)]), instance, klass


def _text(value: Any) -> str:
    """A UI value, also when it arrived implicitly (as raw bytes of an unknown private tag)."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", "replace")
    return str(value).strip("\0 ")
