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

import dataclasses
import time
from io import BytesIO
from types import SimpleNamespace
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from aepacs import __version__
from aepacs.crypto.pseudonym import pseudonym, site_key
from aepacs.errors import InputError

RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"
PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "AEPACS 1"
#: Offsets inside the private block. The blob's exact length is recorded because
#: DICOM pads an odd-length OB value with a zero byte.
E_ORIGINAL_CLASS, E_ORIGINAL_INSTANCE, E_BLOB, E_BLOB_LENGTH = 0x10, 0x11, 0x20, 0x21
#: Creator-Version UID (0008,9123) of the sealed-object format v1, fixed forever.
FORMAT_UID = generate_uid(None, entropy_srcs=["aepacs", "sealed-object-format", "1"])
#: Where the purpose of the reference is stated (DCM 121320 is "Uncompressed predecessor").
_SOURCE_PURPOSE = ("121320", "DCM", "Uncompressed predecessor")


def transport_uid(sop_uid: str) -> str:
    """The transport object's SOP Instance UID: derived from the original, so stable."""
    return str(generate_uid(None, entropy_srcs=["aepacs", "transport", sop_uid]))


def make_transport(blob: bytes, row: Any, pseudonym_key: bytes | None = None) -> Dataset:
    """Wrap a sealed blob in a Raw Data Storage dataset.

    Parameters
    ----------
    blob : bytes
        The sealed object.
    row
        The instance's index row (attributes of all four levels).
    pseudonym_key : bytes, optional
        ``transport.identifiers: pseudonymous``: patient name and ID and the
        accession number in clear as pseudonyms under this site key, the other
        identifying attributes empty (:func:`pseudonymous`).
    """
    if pseudonym_key is not None:
        row = pseudonymous(row, pseudonym_key)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RAW_DATA_STORAGE
    ds.SOPInstanceUID = transport_uid(row.sop_uid)
    stored = time.gmtime(row.stored_at)
    ds.ContentDate = time.strftime("%Y%m%d", stored)
    ds.ContentTime = time.strftime("%H%M%S", stored)
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    # Patient, General Study
    ds.PatientName = row.patient_name
    ds.PatientID = row.patient_id
    if row.issuer_of_patient_id:
        ds.IssuerOfPatientID = row.issuer_of_patient_id
    ds.PatientBirthDate = row.patient_birth_date
    ds.PatientSex = row.patient_sex
    ds.StudyInstanceUID = row.study_uid
    ds.StudyDate = row.study_date
    ds.StudyTime = row.study_time
    ds.AccessionNumber = row.accession_number
    ds.StudyID = row.study_id
    ds.ReferringPhysicianName = row.referring_physician_name
    if row.study_description:
        ds.StudyDescription = row.study_description
    # General Series, General Equipment, Acquisition Context, Raw Data
    ds.Modality = row.modality or "OT"
    ds.SeriesInstanceUID = row.series_uid
    ds.SeriesNumber = row.series_number
    if row.series_description:
        ds.SeriesDescription = row.series_description
    if row.body_part_examined:
        ds.BodyPartExamined = row.body_part_examined
    ds.Laterality = ""  # General Series 2C: the transport object does not know it (empty = unknown)
    ds.Manufacturer = "aepacs"
    ds.SoftwareVersions = __version__
    ds.AcquisitionContextSequence = Sequence()
    ds.InstanceNumber = row.instance_number
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


def pseudonymous(row: Any, key: bytes) -> SimpleNamespace:
    """The index row as a transport object for an untrusted PACS shows it: no identifying attribute in clear.

    Patient ID and name carry one pseudonym (so the receiving PACS still files a
    patient's studies together), the accession number another; the birth date,
    sex, issuer, study date and time, study ID, referring physician and the
    descriptions are emptied. UIDs stay: they are what files the object, and the
    sealed header carries them in clear anyway.
    """
    values = dict(row._asdict()) if hasattr(row, "_asdict") else dict(vars(row))  # an index row, or a namespace
    patient = pseudonym(key, "patient", f"{row.issuer_of_patient_id}^{row.patient_id}" if row.patient_id else "")
    values.update(patient_id=f"AEP-{patient}" if patient else "", patient_name=f"AEP^{patient}" if patient else "",
                  issuer_of_patient_id="", patient_birth_date="", patient_sex="", study_date="", study_time="",
                  study_id="", referring_physician_name="", study_description="", series_description="",
                  body_part_examined="",
                  accession_number=pseudonym(key, "accession", row.accession_number))
    return SimpleNamespace(**values)


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


def seal_as_transport(data: bytes, keyring: Any, config: Any) -> bytes:
    """Check, encode (the object's route), seal and wrap one received Part 10 stream.

    What another PACS stores in place of the original (the Orthanc plugin):
    the same Raw Data Storage object ``aepacs serve`` sends on C-GET, as a
    Part 10 stream, the original never written anywhere.

    Raises
    ------
    AepacsError
        As :func:`aepacs.pipeline.ingest.ingest`: not DICOM, missing UIDs,
        pixel data not matching its description, a codec failure.
    """
    from aepacs.codec.part10 import parse
    from aepacs.pipeline.ingest import check, seal_bytes
    from aepacs.store.records import InstanceRecord

    parts = parse(data)
    check(parts)
    _, blob = seal_bytes(data, keyring, config, parts)
    record = InstanceRecord.from_dataset(parts.dataset)
    key = site_key(config.pseudonym_key_path) if config.transport.identifiers == "pseudonymous" else None
    ds = make_transport(bytes(blob), SimpleNamespace(**dataclasses.asdict(record), stored_at=time.time()), key)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
