"""C-FIND and retrieve matching against the index (PS3.4 C.2.2).

Supports the Patient Root and Study Root information models at PATIENT,
STUDY, SERIES and IMAGE level with single-value, wildcard (``*``, ``?``),
UID-list, date/time range and universal matching. The response holds every
key the request asked for (empty when unknown), filled from the index.

Matching is done in SQL where it can be (equality, lists, ranges, a LIKE
pre-filter for wildcards) and finished in Python where SQL and DICOM differ
(case-sensitive wildcards, multi-valued ModalitiesInStudy).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import and_, func, select
from sqlalchemy.sql.elements import ColumnElement

from aepacs.errors import DatasetMismatch
from aepacs.store.index import Index, instances, patients, series, studies

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


@dataclass(frozen=True)
class Key:
    """A query key: its level, index column and VR."""

    level: str
    column: Any
    vr: str


KEYS: dict[str, Key] = {
    "PatientName": Key("PATIENT", patients.c.patient_name, "PN"),
    "PatientID": Key("PATIENT", patients.c.patient_id, "LO"),
    "IssuerOfPatientID": Key("PATIENT", patients.c.issuer_of_patient_id, "LO"),
    "PatientBirthDate": Key("PATIENT", patients.c.patient_birth_date, "DA"),
    "PatientSex": Key("PATIENT", patients.c.patient_sex, "CS"),
    "StudyInstanceUID": Key("STUDY", studies.c.study_uid, "UI"),
    "StudyDate": Key("STUDY", studies.c.study_date, "DA"),
    "StudyTime": Key("STUDY", studies.c.study_time, "TM"),
    "AccessionNumber": Key("STUDY", studies.c.accession_number, "SH"),
    "StudyID": Key("STUDY", studies.c.study_id, "SH"),
    "StudyDescription": Key("STUDY", studies.c.study_description, "LO"),
    "ReferringPhysicianName": Key("STUDY", studies.c.referring_physician_name, "PN"),
    "ModalitiesInStudy": Key("STUDY", studies.c.modalities_in_study, "CS"),
    "SeriesInstanceUID": Key("SERIES", series.c.series_uid, "UI"),
    "Modality": Key("SERIES", series.c.modality, "CS"),
    "SeriesNumber": Key("SERIES", series.c.series_number, "IS"),
    "SeriesDescription": Key("SERIES", series.c.series_description, "LO"),
    "BodyPartExamined": Key("SERIES", series.c.body_part_examined, "CS"),
    "SOPInstanceUID": Key("IMAGE", instances.c.sop_uid, "UI"),
    "SOPClassUID": Key("IMAGE", instances.c.sop_class_uid, "UI"),
    "InstanceNumber": Key("IMAGE", instances.c.instance_number, "IS"),
    "Rows": Key("IMAGE", instances.c.rows, "US"),
    "Columns": Key("IMAGE", instances.c.columns, "US"),
    "NumberOfFrames": Key("IMAGE", instances.c.number_of_frames, "IS"),
}
UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}
#: Counts a request may ask for: keyword -> (level it is asked at, level counted).
COUNTS = {
    "NumberOfPatientRelatedStudies": ("PATIENT", "STUDY"),
    "NumberOfPatientRelatedSeries": ("PATIENT", "SERIES"),
    "NumberOfPatientRelatedInstances": ("PATIENT", "IMAGE"),
    "NumberOfStudyRelatedSeries": ("STUDY", "SERIES"),
    "NumberOfStudyRelatedInstances": ("STUDY", "IMAGE"),
    "NumberOfSeriesRelatedInstances": ("SERIES", "IMAGE"),
}
_PK = {"PATIENT": patients.c.pk, "STUDY": studies.c.pk, "SERIES": series.c.pk, "IMAGE": instances.c.pk}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def condition(key: Key, pattern: str) -> ColumnElement[bool] | None:
    """The SQL condition of one matching key, or None for universal matching."""
    col = key.column
    if pattern in ("", "*"):
        return None
    if key.vr == "UI":
        uids = [u.strip() for u in pattern.split("\\") if u.strip()]
        return col == uids[0] if len(uids) == 1 else col.in_(uids)
    if key.vr in ("DA", "TM") and "-" in pattern:
        lo, hi = (p.strip() for p in pattern.split("-", 1))
        parts = []
        if lo:
            parts.append(col >= lo)
        if hi:
            # a bare end time (1500) covers its whole last unit: 150059.999 sorts before "1500~"
            parts.append(col <= (hi + "~" if key.vr == "TM" else hi))
        return and_(col != "", *parts)
    if key is KEYS["ModalitiesInStudy"]:
        return None  # multi-valued: matched in Python
    if "*" in pattern or "?" in pattern:
        return col.like(_like(pattern), escape="\\")
    if key.vr in ("IS", "US"):
        try:
            return col == int(pattern)
        except ValueError:
            raise DatasetMismatch(f"query value {pattern!r} is not a number") from None
    return col == pattern


def _python_match(key: Key, pattern: str, value: Any) -> bool:
    """Where DICOM matching and SQL differ: case-sensitive wildcards, multi-valued values."""
    if pattern in ("", "*"):
        return True
    if key is KEYS["ModalitiesInStudy"]:
        wanted = {p.strip() for p in pattern.split("\\")}
        return bool(wanted & set(_text(value).split("\\")))
    if ("*" in pattern or "?" in pattern) and key.vr != "PN":  # PN: case-insensitive is allowed
        return fnmatch.fnmatchcase(_text(value), pattern.replace("[", "[[]"))
    return True


def _level(identifier: Dataset) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise DatasetMismatch(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    return level


def _from_clause(level: str) -> Any:
    joined = patients
    if level in ("STUDY", "SERIES", "IMAGE"):
        joined = studies.join(patients, studies.c.patient_pk == patients.c.pk)
    if level in ("SERIES", "IMAGE"):
        joined = series.join(joined, series.c.study_pk == studies.c.pk)
    if level == "IMAGE":
        joined = instances.join(joined, instances.c.series_pk == series.c.pk)
    return joined


def find(index: Index, identifier: Dataset, *, ae_title: str = "") -> Iterator[Dataset]:
    """Yield one response identifier per matching entity at the request's level.

    Raises
    ------
    DatasetMismatch
        A missing or unknown QueryRetrieveLevel, or a malformed key value.
    """
    level = _level(identifier)
    depth = LEVELS.index(level)
    asked = [e.keyword for e in identifier if e.keyword]
    usable = {k: KEYS[k] for k in asked if k in KEYS and LEVELS.index(KEYS[k].level) <= depth}
    patterns = {k: _text(identifier[k].value) for k in usable}
    columns = {k: key.column.label(k) for k, key in usable.items()}
    counts = {k: lvl for k, lvl in COUNTS.items() if k in asked and lvl[0] == level}
    q = select(_PK[level].label("_pk"), *columns.values()).select_from(_from_clause(level)).distinct()
    for k, key in usable.items():
        cond = condition(key, patterns[k])
        if cond is not None:
            q = q.where(cond)
    q = q.order_by(_PK[level])
    with index.engine.connect() as conn:
        rows = conn.execute(q).all()
        for row in rows:
            if not all(_python_match(usable[k], patterns[k], getattr(row, k)) for k in usable):
                continue
            rsp = Dataset()
            rsp.SpecificCharacterSet = "ISO_IR 192"
            rsp.QueryRetrieveLevel = level
            for elem in identifier:
                k = elem.keyword
                if k in ("SpecificCharacterSet", "QueryRetrieveLevel"):
                    continue
                if k in usable:
                    value: Any = getattr(row, k)
                elif k in counts:
                    value = _count_related(conn, level, counts[k][1], row._pk)
                elif k == "RetrieveAETitle":
                    value = ae_title
                else:
                    value = None  # a key the archive does not keep: returned empty
                rsp.add_new(elem.tag, elem.VR, None if value in (None, "") else value)
            yield rsp


def _count_related(conn: Any, level: str, counted: str, pk: int) -> int:
    q = (select(func.count(func.distinct(_PK[counted]))).select_from(_from_clause(counted))
         .where(_PK[level] == pk))
    return int(conn.execute(q).scalar() or 0)


def retrieve_rows(index: Index, identifier: Dataset) -> list[Any]:
    """The instances a C-GET / C-MOVE identifier selects (by the unique keys given).

    Raises
    ------
    DatasetMismatch
        No QueryRetrieveLevel, or no unique key at or above it.
    """
    level = _level(identifier)
    selection: dict[str, Any] = {}
    for lvl, keyword, arg in (("PATIENT", "PatientID", "patient_id"), ("STUDY", "StudyInstanceUID", "study_uid"),
                              ("SERIES", "SeriesInstanceUID", "series_uid"),
                              ("IMAGE", "SOPInstanceUID", "sop_uid")):
        value = _text(identifier.get(keyword)) if keyword in identifier else ""
        if value and LEVELS.index(lvl) <= LEVELS.index(level):
            values = [v.strip() for v in value.split("\\") if v.strip()]
            selection[arg] = values
    if not selection:
        raise DatasetMismatch(f"retrieve at {level} level names no {UNIQUE[level]}")
    return index.find(**selection)
