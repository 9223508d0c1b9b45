"""C-FIND matching (PS3.4 C.2.2.2) against a real index: each matching rule, and what a response holds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from sqlalchemy import select

from aepacs.dicom.records import InstanceRecord
from aepacs.errors import DatasetMismatch
from aepacs.store.index import BlobRef, Index
from aepacs.store.query import KEYS, chunked, condition, find, retrieve_rows
from aepacs.store.schema import instances


def _record(n: int, **changes: object) -> InstanceRecord:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    base = InstanceRecord.from_dataset(ds)
    return dataclasses.replace(base, sop_uid=f"1.2.826.0.1.3680043.9.1.{n}", **changes)


@pytest.fixture
def index(new_index_url: Callable[[], str]) -> Index:
    """Three patients, four studies, five instances with the values the cases below match on (on SQLite
    and on PostgreSQL: the same answers from both)."""
    idx = Index(new_index_url())
    rows = [
        _record(1, patient_id="P1", patient_name="Doe^Jane", study_uid="1.2.3.1", study_date="20240105",
                study_time="101500", accession_number="ACC-1", series_uid="1.2.3.1.1", modality="CT",
                series_number=1, instance_number=1, study_description="Chest"),
        _record(2, patient_id="P1", patient_name="Doe^Jane", study_uid="1.2.3.1", study_date="20240105",
                study_time="101500", accession_number="ACC-1", series_uid="1.2.3.1.2", modality="PT",
                series_number=2, instance_number=1, study_description="Chest"),
        _record(3, patient_id="P2", patient_name="doe^john", study_uid="1.2.3.2", study_date="20231231",
                study_time="150030.5", accession_number="acc-2", series_uid="1.2.3.2.1", modality="MR",
                series_number=7, instance_number=3, study_description="Head"),
        _record(4, patient_id="P3", patient_name="Roe^Ann", study_uid="1.2.3.3", study_date="",
                study_time="", accession_number="", series_uid="1.2.3.3.1", modality="CR",
                series_number=None, instance_number=None, study_description=""),
        _record(5, patient_id="P3", patient_name="Roe^Ann", study_uid="1.2.3.4", study_date="20240301",
                study_time="080000", accession_number="ACC-4", series_uid="1.2.3.4.1", modality="CT",
                series_number=1, instance_number=2, study_description="Chest follow-up"),
    ]
    for i, rec in enumerate(rows):
        idx.add(rec, BlobRef("zstd", 1, f"{i:064x}", 10, 20, f"{i:064x}"))
    yield idx
    idx.close()


def _query(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _values(index: Index, level: str, keyword: str, **keys: object) -> list[str]:
    return [str(r.get(keyword, "")) for r in find(index, _query(level, **{keyword: "", **keys}))]


def test_wildcards_are_case_sensitive_except_for_person_names(index: Index) -> None:
    assert _values(index, "STUDY", "AccessionNumber", AccessionNumber="ACC*") == ["ACC-1", "ACC-4"]
    assert _values(index, "STUDY", "AccessionNumber", AccessionNumber="acc?2") == ["acc-2"]
    # PN: case-insensitive matching is allowed (PS3.4 C.2.2.2.1), on either engine
    assert sorted(_values(index, "PATIENT", "PatientName", PatientName="DOE*")) == ["Doe^Jane", "doe^john"]
    assert sorted(_values(index, "PATIENT", "PatientName", PatientName="d?e^j*")) == ["Doe^Jane", "doe^john"]
    assert _values(index, "PATIENT", "PatientName", PatientName="ROE^ANN") == []  # no wildcard: exact


def test_uid_lists_dates_and_time_ranges(index: Index) -> None:
    assert _values(index, "STUDY", "StudyInstanceUID", StudyInstanceUID="1.2.3.2\\1.2.3.4") == ["1.2.3.2", "1.2.3.4"]
    assert _values(index, "STUDY", "StudyDate", StudyDate="20240101-") == ["20240105", "20240301"]
    assert _values(index, "STUDY", "StudyDate", StudyDate="-20231231") == ["20231231"]
    # an empty date never falls in a range; a bare end time covers its whole last unit
    assert _values(index, "STUDY", "StudyTime", StudyTime="1500-1500") == ["150030.5"]
    assert _values(index, "STUDY", "StudyTime", StudyTime="0800-1015") == ["101500", "080000"]


def test_numbers_match_as_numbers_and_refuse_text(index: Index) -> None:
    assert _values(index, "SERIES", "SeriesNumber", SeriesNumber="7") == ["7"]
    assert _values(index, "SERIES", "SeriesNumber", SeriesNumber="1") == ["1", "1"]
    with pytest.raises(DatasetMismatch, match="not a number"):
        condition(KEYS["SeriesNumber"], "seven")  # (as a dataset value pydicom refuses it sooner)


def test_modalities_in_study_matches_any_value(index: Index) -> None:
    got = _values(index, "STUDY", "StudyInstanceUID", ModalitiesInStudy="PT")
    assert got == ["1.2.3.1"]
    assert len(_values(index, "STUDY", "StudyInstanceUID", ModalitiesInStudy="MR\\CR")) == 2


def test_response_keys_universal_unknown_and_counts(index: Index) -> None:
    q = _query("STUDY", PatientID="P1", StudyDescription="", NumberOfStudyRelatedInstances="",
               OperatorsName="", RetrieveAETitle="")
    (rsp,) = list(find(index, q, ae_title="AEPACS"))
    assert rsp.QueryRetrieveLevel == "STUDY" and rsp.PatientID == "P1"
    assert rsp.StudyDescription == "Chest"  # universal matching: returned filled
    assert rsp.NumberOfStudyRelatedInstances == 2
    assert rsp.RetrieveAETitle == "AEPACS"
    assert rsp["OperatorsName"].is_empty  # not kept: returned, empty


def test_a_key_below_the_level_does_not_restrict(index: Index) -> None:
    # SOPInstanceUID is an IMAGE key: at STUDY level it neither matches nor is filled
    studies = list(find(index, _query("STUDY", StudyInstanceUID="", SOPInstanceUID="1.2.826.0.1.3680043.9.1.3")))
    assert len(studies) == 4 and all(not s.SOPInstanceUID for s in studies)


@pytest.mark.parametrize(("keys", "matches"), [
    ({"StudyInstanceUID": ""}, 4),                 # universal: the database pages
    ({"AccessionNumber": "*C*"}, 2),               # case-sensitive wildcard: SQL's LIKE finds 3, Python keeps 2
    ({"ModalitiesInStudy": "PT\\MR\\CR"}, 3),      # multi-valued: finished in Python
], ids=["sql", "wildcard", "multi-valued"])
def test_offset_and_limit_page_the_full_answer(index: Index, keys: dict[str, str], matches: int) -> None:
    """Every page of a search is the same slice of its full answer, whether the database pages or the
    Python check counts."""
    def uids(**page: int) -> list[str]:
        return [r.StudyInstanceUID for r in find(index, _query("STUDY", **{"StudyInstanceUID": "", **keys}), **page)]

    full = uids()
    assert len(full) == matches
    for offset in range(len(full) + 1):
        for limit in range(len(full) + 1):
            assert uids(offset=offset, limit=limit) == full[offset:offset + limit], (offset, limit)
        assert uids(offset=offset) == full[offset:]


@pytest.mark.parametrize("size", [1, 2, 4, 5, 1000])
def test_rows_read_in_chunks_are_all_the_rows_once(index: Index, size: int) -> None:
    q = select(instances.c.pk.label("_pk"), instances.c.sop_uid).order_by(instances.c.pk)
    with index.engine.connect() as conn:
        assert list(chunked(conn, q, instances.c.pk, size)) == conn.execute(q).all()
        assert len(conn.execute(q).all()) == 5


def test_a_bad_level_is_refused(index: Index) -> None:
    with pytest.raises(DatasetMismatch, match="QueryRetrieveLevel"):
        list(find(index, _query("FRAME")))


def test_retrieve_rows_need_a_unique_key_at_or_above_the_level(index: Index) -> None:
    assert {r.sop_uid[-1] for r in retrieve_rows(index, _query("STUDY", StudyInstanceUID="1.2.3.1"))} == {"1", "2"}
    assert len(retrieve_rows(index, _query("PATIENT", PatientID="P3"))) == 2
    with pytest.raises(DatasetMismatch, match="names no SeriesInstanceUID"):
        retrieve_rows(index, _query("SERIES", Modality="CT"))


def test_every_query_key_is_an_index_column_at_its_level() -> None:
    for keyword, key in KEYS.items():
        assert key.column.table.name == {"PATIENT": "patients", "STUDY": "studies", "SERIES": "series",
                                         "IMAGE": "instances"}[key.level], keyword
