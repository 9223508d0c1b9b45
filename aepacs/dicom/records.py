"""What the index keeps of a DICOM instance (:mod:`aepacs.dicom.attributes`), and the UID rules.

:class:`InstanceRecord` holds the attributes read from one instance, one field
per :data:`~aepacs.dicom.attributes.ATTRIBUTES` entry; :func:`text_value` reads
a value as the index keeps it; :func:`check_uids` is the archive's rule for
the UIDs an instance must have.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass, fields
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from aepacs.dicom.attributes import ATTRIBUTES, Attribute, record_columns
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


#: The namespace of the name-based UIDs aepacs makes (:func:`name_uid`).
_NAMESPACE = uuid.UUID("6f1c2d8e-5b7a-4e43-9a55-ae9ac5000001")


def name_uid(name: str) -> str:
    """A UID made from `name`: the same name gives the same UID on every machine, every time.

    A name-based (SHA-1, RFC 4122 version 5) UUID as a ``2.25.`` UID (PS3.5 B.2).
    """
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


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


def index_text(a: Attribute, value: str) -> str:
    """A text value as the index keeps it for matching: a date of the old ``YYYY.MM.DD`` form as
    ``YYYYMMDD``, and anything longer than the column cut to it (real files exceed their VR's
    length; PostgreSQL refuses what SQLite would keep). UIDs are never cut: they are checked whole.
    The sealed object keeps the value as received."""
    if a.vr == "DA" and len(value) == 10 and value[4] == value[7] == ".":
        value = value.replace(".", "")
    if a.length is not None and a.matching != "uid" and len(value) > a.length:
        return value[:a.length]
    return value


@dataclass(frozen=True)
class InstanceRecord:
    """Index attributes of one instance, by query level (the columns of :data:`~aepacs.dicom.attributes.ATTRIBUTES`)."""

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
        values: dict[str, Any] = {}
        for a in ATTRIBUTES:
            if a.source is not None:
                source = meta if a.source == "file_meta" else ds
                values[a.column] = _int(source, a.keyword) if a.length is None else \
                    index_text(a, text_value(source, a.keyword))
        return cls(**values)

    def values(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The values of the attributes `names` (one query level's worth)."""
        return {n: getattr(self, n) for n in names}


PATIENT_FIELDS = record_columns("PATIENT")
STUDY_FIELDS = record_columns("STUDY")
SERIES_FIELDS = record_columns("SERIES")
INSTANCE_FIELDS = record_columns("IMAGE")
assert tuple(f.name for f in fields(InstanceRecord)) == PATIENT_FIELDS + STUDY_FIELDS + SERIES_FIELDS + INSTANCE_FIELDS
