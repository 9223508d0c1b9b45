"""What the index keeps of a DICOM instance: the attributes C-FIND needs per level."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

from pydicom.dataset import Dataset

from aepacs.errors import DatasetMismatch, InputError


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


def required_uids(ds: Dataset) -> dict[str, str]:
    """The UIDs an archived instance must have, by keyword.

    Raises
    ------
    InputError
        Neither SOP Class nor SOP Instance UID: not a composite instance.
    DatasetMismatch
        Any of them missing.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return check_uids({k: _text(ds, k) for k in REQUIRED_UIDS})


def check_uids(uids: dict[str, str]) -> dict[str, str]:
    """The rules of :func:`required_uids`, on UID values however they were read."""
    uids = {k: uids.get(k, "") for k in REQUIRED_UIDS}
    if not uids["SOPInstanceUID"] and not uids["SOPClassUID"]:
        raise InputError("no SOP Class UID and no SOP Instance UID: not a DICOM composite instance")
    for keyword, value in uids.items():
        if not value:
            raise DatasetMismatch(f"missing {keyword}: not an archivable instance")
    return uids


@dataclass(frozen=True)
class InstanceRecord:
    """Index attributes of one instance, by query level."""

    # patient
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    # study
    study_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    # series
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    # instance
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> InstanceRecord:
        """Extract the index attributes of `ds`.

        Raises
        ------
        InputError, DatasetMismatch
            As :func:`required_uids`: it cannot be archived and queried.
        """
        with warnings.catch_warnings():  # an archive keeps what it gets; pydicom's value checks are noise here
            warnings.simplefilter("ignore")
            required_uids(ds)
            return cls._from_dataset(ds)

    @classmethod
    def _from_dataset(cls, ds: Dataset) -> InstanceRecord:
        meta = getattr(ds, "file_meta", Dataset())
        return cls(
            patient_id=_text(ds, "PatientID"),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_sex=_text(ds, "PatientSex"),
            study_uid=_text(ds, "StudyInstanceUID"),
            study_date=_text(ds, "StudyDate"),
            study_time=_text(ds, "StudyTime"),
            accession_number=_text(ds, "AccessionNumber"),
            study_id=_text(ds, "StudyID"),
            study_description=_text(ds, "StudyDescription"),
            referring_physician_name=_text(ds, "ReferringPhysicianName"),
            series_uid=_text(ds, "SeriesInstanceUID"),
            modality=_text(ds, "Modality"),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            body_part_examined=_text(ds, "BodyPartExamined"),
            sop_uid=_text(ds, "SOPInstanceUID"),
            sop_class_uid=_text(ds, "SOPClassUID"),
            instance_number=_int(ds, "InstanceNumber"),
            transfer_syntax_uid=_text(meta, "TransferSyntaxUID"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=_int(ds, "NumberOfFrames"),
        )

    def values(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The values of the attributes `names` (one query level's worth)."""
        return {n: getattr(self, n) for n in names}


PATIENT_FIELDS = ("patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex")
STUDY_FIELDS = ("study_uid", "study_date", "study_time", "accession_number", "study_id",
                "study_description", "referring_physician_name")
SERIES_FIELDS = ("series_uid", "modality", "series_number", "series_description", "body_part_examined")
INSTANCE_FIELDS = ("sop_uid", "sop_class_uid", "instance_number", "transfer_syntax_uid", "rows",
                   "columns", "number_of_frames")
assert set(PATIENT_FIELDS + STUDY_FIELDS + SERIES_FIELDS + INSTANCE_FIELDS) == \
    {f.name for f in fields(InstanceRecord)}
