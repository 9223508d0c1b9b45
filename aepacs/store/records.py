"""What the index keeps of a DICOM instance: the attributes C-FIND needs per level."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from aepacs.errors import DatasetMismatch, InputError


def text_value(ds: Dataset, keyword: str) -> str:
    """An attribute's value as the index keeps it: multiple values joined by a backslash, stripped.

    Empty when the dataset has no such text (absent, a sequence or bytes where text
    belongs, or a value pydicom cannot convert): what is not understood is not indexed.
    """
    try:
        value = ds.get(keyword)
        if value is None or isinstance(value, (bytes, Dataset, Sequence)):
            return ""
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value)
        return str(value).strip()
    except Exception:  # pydicom converts values lazily, and raises many kinds on damaged ones
        return ""


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except Exception:  # absent, not a number, or not convertible
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
        return check_uids({k: text_value(ds, k) for k in REQUIRED_UIDS})


MAX_UID_LENGTH = 64


def uid_problem(value: str) -> str | None:
    """Why `value` is not a UID by PS3.5 §9.1, or None.

    A UID is at most 64 characters of digits and dots; its components are not
    empty and have no leading zero (``0`` alone is a component). The archive
    keys blobs, index rows and file names on UIDs, so nothing else is taken.
    """
    if not value:
        return "empty"
    if len(value) > MAX_UID_LENGTH:
        return f"{len(value)} characters (at most {MAX_UID_LENGTH})"
    for component in value.split("."):
        if not component:
            return "an empty component"
        if not (component.isascii() and component.isdigit()):
            return "characters other than digits and dots"
        if len(component) > 1 and component[0] == "0":
            return f"a component with a leading zero ({component})"
    return None


def shown(value: str, limit: int = 70) -> str:
    """A value from the network, safe to put in a log line or message: quoted, escaped, cut short."""
    text = ascii(value[:limit])
    return text + ("..." if len(value) > limit else "")


def check_uid(keyword: str, value: str) -> None:
    """Refuse `value` (named `keyword` in the message) unless it is a UID (:func:`uid_problem`).

    Raises
    ------
    DatasetMismatch
        Naming the keyword, the value (escaped) and what is wrong with it.
    """
    problem = uid_problem(value)
    if problem:
        raise DatasetMismatch(f"{keyword} {shown(value)} is not a valid UID: {problem}")


def check_uids(uids: dict[str, str]) -> dict[str, str]:
    """The rules of :func:`required_uids`, on UID values however they were read.

    Raises
    ------
    InputError
        Neither SOP Class nor SOP Instance UID: not a composite instance.
    DatasetMismatch
        A required UID missing or not a valid UID (:func:`uid_problem`).
    """
    uids = {k: uids.get(k, "") for k in REQUIRED_UIDS}
    if not uids["SOPInstanceUID"] and not uids["SOPClassUID"]:
        raise InputError("no SOP Class UID and no SOP Instance UID: not a DICOM composite instance")
    for keyword, value in uids.items():
        if not value:
            raise DatasetMismatch(f"missing {keyword}: not an archivable instance")
        check_uid(keyword, value)
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
            patient_id=text_value(ds, "PatientID"),
            issuer_of_patient_id=text_value(ds, "IssuerOfPatientID"),
            patient_name=text_value(ds, "PatientName"),
            patient_birth_date=text_value(ds, "PatientBirthDate"),
            patient_sex=text_value(ds, "PatientSex"),
            study_uid=text_value(ds, "StudyInstanceUID"),
            study_date=text_value(ds, "StudyDate"),
            study_time=text_value(ds, "StudyTime"),
            accession_number=text_value(ds, "AccessionNumber"),
            study_id=text_value(ds, "StudyID"),
            study_description=text_value(ds, "StudyDescription"),
            referring_physician_name=text_value(ds, "ReferringPhysicianName"),
            series_uid=text_value(ds, "SeriesInstanceUID"),
            modality=text_value(ds, "Modality"),
            series_number=_int(ds, "SeriesNumber"),
            series_description=text_value(ds, "SeriesDescription"),
            body_part_examined=text_value(ds, "BodyPartExamined"),
            sop_uid=text_value(ds, "SOPInstanceUID"),
            sop_class_uid=text_value(ds, "SOPClassUID"),
            instance_number=_int(ds, "InstanceNumber"),
            transfer_syntax_uid=text_value(meta, "TransferSyntaxUID"),
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
