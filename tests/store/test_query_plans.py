"""The queries a PACS sends most are served by an index on both engines: their plans, from the database.

Each C-FIND below is run through :func:`aepacs.store.query.find` (and a C-GET selection through
:func:`retrieve_rows`) with every SQL statement captured as executed; each is then explained by the
database itself. SQLite: no table is read by a full ``SCAN``. PostgreSQL: with sequential scans
disabled (on a table this small the planner would otherwise prefer one), no ``Seq Scan`` remains and
no index is walked without a condition on it.
``bench/index.py`` times the same queries at 10 k to 10 M instances.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sqlalchemy import event, text

from aepacs.dicom.records import InstanceRecord
from aepacs.store.index import BlobRef, Index
from aepacs.store.query import find, retrieve_rows

NAMES = ["Smith^John", "SMITHERS^Ann", "Jones^Mary", "Doe^Jane", "Müller^Jörg", "Ng^Wei"]


def search_identifier(level: str, **keys: str) -> Dataset:
    """A C-FIND identifier at `level` asking for PatientID, PatientName and StudyInstanceUID, with
    `keys` to match (``bench/index.py`` times the same searches)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID"):
        setattr(ds, keyword, "")
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


#: the searches a PACS sees most, as C-FIND identifiers (QIDO-RS makes the same)
SEARCHES = {
    "PatientID": ("PATIENT", {"PatientID": "P0007"}),
    "AccessionNumber": ("STUDY", {"AccessionNumber": "A00042"}),
    "StudyDate range and Modality": ("STUDY", {"StudyDate": "20240110-20240111", "ModalitiesInStudy": "CT"}),
    "PatientName prefix": ("PATIENT", {"PatientName": "SMITH*"}),
    "a series' instances": ("IMAGE", {"SeriesInstanceUID": "1.2.826.0.1.3680043.9.7.12.1",
                                      "SOPInstanceUID": ""}),
}


@pytest.fixture
def index(new_index_url: Callable[[], str]) -> Iterator[Index]:
    """60 patients, 120 studies, 240 series, 480 instances."""
    idx = Index(new_index_url())
    base = InstanceRecord.from_dataset(pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True))
    n = 0
    for p in range(60):
        for s in range(2):
            study = p * 2 + s
            for r in range(2):
                series = study * 2 + r
                for i in range(2):
                    rec = dataclasses.replace(
                        base, patient_id=f"P{p:04d}", patient_name=NAMES[p % len(NAMES)] + str(p),
                        study_uid=f"1.2.826.0.1.3680043.9.7.{study}", study_date=f"202401{1 + study % 28:02d}",
                        accession_number=f"A{study:05d}", series_uid=f"1.2.826.0.1.3680043.9.7.{series}.1",
                        modality=("CT", "MR")[r], sop_uid=f"1.2.826.0.1.3680043.9.7.{series}.1.{i}")
                    idx.add(rec, BlobRef("zstd", 1, f"{n:064x}", 10, 20, f"{n:064x}"))
                    n += 1
    if idx.engine.dialect.name == "postgresql":
        with idx.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    yield idx
    idx.close()


def _captured(index: Index, run: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The statements `run` executes on the index, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(index.engine, "before_cursor_execute", listen)
    try:
        run()
    finally:
        event.remove(index.engine, "before_cursor_execute", listen)
    return seen


def _full_scans(index: Index, statement: str, parameters: Any) -> list[str]:
    """The plan's steps that read a whole table."""
    raw = index.engine.raw_connection()
    try:
        cur = raw.cursor()
        if index.engine.dialect.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            steps = [str(row[-1]) for row in cur.fetchall()]
            return [s for s in steps if s.startswith("SCAN ") and " USING " not in s]
        cur.execute("SET enable_seqscan = off")
        cur.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
        plan = cur.fetchone()[0]
        plan = json.loads(plan) if isinstance(plan, str) else plan

        def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
            yield node
            for child in node.get("Plans", []):
                yield from nodes(child)

        # a sequential scan, or an index walked end to end (no condition on it): the whole table read
        return [f"{n['Node Type']} on {n.get('Relation Name')}" for n in nodes(plan[0]["Plan"])
                if n["Node Type"] == "Seq Scan"
                or (n["Node Type"] in ("Index Scan", "Index Only Scan") and "Index Cond" not in n)]
    finally:
        raw.rollback()
        raw.close()


@pytest.mark.parametrize("search", list(SEARCHES))
def test_every_frequent_search_uses_an_index(index: Index, search: str) -> None:
    level, keys = SEARCHES[search]
    identifier = search_identifier(level, **keys)
    found: list[Dataset] = []
    statements = _captured(index, lambda: found.extend(find(index, identifier)))
    assert found, "the search must match something, or its plan proves little"
    assert statements
    for statement, parameters in statements:
        assert _full_scans(index, statement, parameters) == [], statement


def test_the_name_prefix_search_is_case_insensitive_and_exact(index: Index) -> None:
    names = sorted(str(d.PatientName) for d in find(index, search_identifier("PATIENT", PatientName="SMITH*")))
    assert names and all(n.lower().startswith("smith") for n in names)
    assert {n.rstrip("0123456789") for n in names} == {"Smith^John", "SMITHERS^Ann"}
    umlaut = [str(d.PatientName) for d in find(index, search_identifier("PATIENT", PatientName="müller*"))]
    assert umlaut and all(n.startswith("Müller^Jörg") for n in umlaut)


def test_a_series_retrieval_uses_an_index(index: Index) -> None:
    identifier = search_identifier("SERIES", SeriesInstanceUID="1.2.826.0.1.3680043.9.7.12.1",
                                   StudyInstanceUID="1.2.826.0.1.3680043.9.7.6")
    rows: list[Any] = []
    statements = _captured(index, lambda: rows.extend(retrieve_rows(index, identifier)))
    assert len(rows) == 2
    for statement, parameters in statements:
        assert _full_scans(index, statement, parameters) == [], statement


def test_a_search_on_a_column_without_an_index_is_seen_as_a_full_scan(index: Index) -> None:
    """The check above can fail: StudyDescription has no index, and the plan says so."""
    identifier = search_identifier("STUDY", StudyDescription="*Chest*")
    statements = _captured(index, lambda: list(find(index, identifier)))
    assert any(_full_scans(index, statement, parameters) for statement, parameters in statements)
