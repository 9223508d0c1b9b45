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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import Select, and_, func, select
from sqlalchemy.engine import Connection, Row
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from aepacs.dicom.attributes import ATTRIBUTES, BY_KEYWORD, LEVELS, UNIQUE, Attribute
from aepacs.errors import DatasetMismatch
from aepacs.store.index import Index
from aepacs.store.schema import FOLDED, TABLES, instances, patients, series, studies


@dataclass(frozen=True)
class Key:
    """A query key: its attribute and index column."""

    attribute: Attribute
    column: Any

    @property
    def level(self) -> str:
        return self.attribute.level

    @property
    def matching(self) -> str:
        return self.attribute.matching


KEYS: dict[str, Key] = {a.keyword: Key(a, TABLES[a.level].c[a.column]) for a in ATTRIBUTES if a.query}
#: Counts a request may ask for: keyword -> (level it is asked at, level counted).
COUNTS = {
    "NumberOfPatientRelatedStudies": ("PATIENT", "STUDY"),
    "NumberOfPatientRelatedSeries": ("PATIENT", "SERIES"),
    "NumberOfPatientRelatedInstances": ("PATIENT", "IMAGE"),
    "NumberOfStudyRelatedSeries": ("STUDY", "SERIES"),
    "NumberOfStudyRelatedInstances": ("STUDY", "IMAGE"),
    "NumberOfSeriesRelatedInstances": ("SERIES", "IMAGE"),
}
_PK = {level: table.c.pk for level, table in TABLES.items()}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _name_like(key: Key, pattern: str) -> ColumnElement[bool]:
    """A lowercased PN wildcard pattern against the name's folded copy where the index keeps one
    (its literal prefix as a range the index serves: ``SMITH*``), else against ``lower(column)``."""
    table = key.column.table
    folded = FOLDED.get(key.column.name)
    if folded is None:
        return func.lower(key.column).like(_like(pattern), escape="\\")
    col = table.c[folded]
    like = col.like(_like(pattern), escape="\\")
    prefix = pattern[:min(i for i in (pattern.find("*"), pattern.find("?"), len(pattern)) if i >= 0)]
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return like
    return and_(col >= prefix, col < prefix[:-1] + chr(ord(prefix[-1]) + 1), like)


def condition(key: Key, pattern: str) -> ColumnElement[bool] | None:
    """The SQL condition of one matching key, or None for universal matching."""
    col = key.column
    if pattern in ("", "*"):
        return None
    if key.matching == "uid":
        uids = [u.strip() for u in pattern.split("\\") if u.strip()]
        return col == uids[0] if len(uids) == 1 else col.in_(uids)
    if key.matching in ("date", "time") and "-" in pattern:
        lo, hi = (p.strip() for p in pattern.split("-", 1))
        parts = []
        if lo:
            parts.append(col >= lo)
        if hi:
            # a bare end time (1500) covers its whole last unit: 150059.999 sorts before "1500~"
            parts.append(col <= (hi + "~" if key.matching == "time" else hi))
        return and_(col != "", *parts)
    if key.matching == "multi":
        return None  # multi-valued: matched in Python
    if "*" in pattern or "?" in pattern:
        if key.matching == "name":  # PN: case-insensitive, the same on every engine
            return _name_like(key, pattern.lower())
        return col.like(_like(pattern), escape="\\")
    if key.matching == "number":
        try:
            return col == int(pattern)
        except ValueError:
            raise DatasetMismatch(f"query value {pattern!r} is not a number") from None
    return col == pattern


def _python_checked(key: Key, pattern: str) -> bool:
    """Whether SQL's answer for this key is only a superset, finished by :func:`_python_match`."""
    if pattern in ("", "*"):
        return False
    return key.matching == "multi" or (("*" in pattern or "?" in pattern) and key.matching != "name")


def _python_match(key: Key, pattern: str, value: Any) -> bool:
    """Where DICOM matching and SQL differ (a key :func:`_python_checked` names): case-sensitive wildcards,
    multi-valued values."""
    if key.matching == "multi":
        wanted = {p.strip() for p in pattern.split("\\")}
        return bool(wanted & set(_text(value).split("\\")))
    return fnmatch.fnmatchcase(_text(value), pattern.replace("[", "[[]"))  # PN: case-insensitive is allowed


def _level(identifier: Dataset) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise DatasetMismatch(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    return level


def _from_clause(level: str) -> FromClause:
    joined: FromClause = patients
    if level in ("STUDY", "SERIES", "IMAGE"):
        joined = studies.join(patients, studies.c.patient_pk == patients.c.pk)
    if level in ("SERIES", "IMAGE"):
        joined = series.join(joined, series.c.study_pk == studies.c.pk)
    if level == "IMAGE":
        joined = instances.join(joined, instances.c.series_pk == series.c.pk)
    return joined


def find(index: Index, identifier: Dataset, *, ae_title: str = "", offset: int = 0,
         limit: int | None = None) -> Iterator[Dataset]:
    """Yield one response identifier per matching entity at the request's level.

    Parameters
    ----------
    index : Index
        The archive's index.
    identifier : Dataset
        The request identifier (QueryRetrieveLevel and the keys).
    ae_title : str
        The RetrieveAETitle to answer with.
    offset, limit : int
        Skip the first `offset` matches (in index order) and yield at most `limit` (QIDO-RS paging).
        Done by the database when SQL decides every key alone; otherwise the rows are read as a
        stream and counted after the Python check.

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
    checked = {k: key for k, key in usable.items() if _python_checked(key, patterns[k])}
    if limit is not None and limit <= 0:
        return
    with index.engine.connect() as conn:
        rows: Iterable[Row[Any]]
        if not checked and (offset or limit is not None):  # SQL's answer is the answer: it pages too
            rows = conn.execute(q.offset(offset or None).limit(limit)).all()
            offset, limit = 0, None
        else:
            rows = chunked(conn, q, _PK[level])
        for row in rows:
            if not all(_python_match(key, patterns[k], getattr(row, k)) for k, key in checked.items()):
                continue
            if offset:
                offset -= 1
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
            if limit is not None:
                limit -= 1
                if limit <= 0:
                    return


def chunked(conn: Connection, q: Select[Any], pk: ColumnElement[int], size: int = 1000) -> Iterator[Row[Any]]:
    """The rows of `q` (ordered by `pk`, which it selects as ``_pk``), read `size` at a time by key, so
    that a search matching millions holds a thousand at once (without a server-side cursor, whose
    extra round trips would slow every small search on PostgreSQL)."""
    last = None
    while True:
        page = conn.execute((q if last is None else q.where(pk > last)).limit(size)).all()
        yield from page
        if len(page) < size:
            return
        last = page[-1]._pk


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
    for lvl in LEVELS:
        keyword = UNIQUE[lvl]
        arg = BY_KEYWORD[keyword].column
        value = _text(identifier.get(keyword)) if keyword in identifier else ""
        if value and LEVELS.index(lvl) <= LEVELS.index(level):
            values = [v.strip() for v in value.split("\\") if v.strip()]
            selection[arg] = values
    if not selection:
        raise DatasetMismatch(f"retrieve at {level} level names no {UNIQUE[level]}")
    return index.find(**selection)
