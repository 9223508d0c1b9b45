"""The attributes the archive keeps, declared once: the index, the record, the scan and the transport object agree."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pydicom
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_for_tag

from aepacs.dicom.attributes import ATTRIBUTES, BY_KEYWORD, LEVELS, UNIQUE, at_level
from aepacs.dicom.records import InstanceRecord
from aepacs.dicom.scan import TEXTS, UIDS
from aepacs.dicom.transport import make_transport, read_transport
from aepacs.store.schema import TABLES


def test_every_attribute_is_the_dictionary_s() -> None:
    for a in ATTRIBUTES:
        assert keyword_for_tag(a.tag) == a.keyword
        assert dictionary_VR(a.tag) == a.vr, a.keyword
    assert all(BY_KEYWORD[UNIQUE[level]].level == level for level in LEVELS)


def test_the_index_has_one_column_per_attribute_at_its_level() -> None:
    for level in LEVELS:
        columns = set(TABLES[level].c.keys())
        for a in at_level(level):
            assert a.column in columns, a.keyword
            if a.indexed == "unique":
                assert TABLES[level].c[a.column].unique, a.keyword


def test_the_record_reads_every_attribute_of_a_real_instance() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    record = InstanceRecord.from_dataset(ds)
    assert [f.name for f in dataclasses.fields(record)] == [a.column for a in ATTRIBUTES if a.source]
    assert record.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID  # read from the file meta
    assert record.rows == 128 and record.patient_id == str(ds.PatientID)


def test_the_scan_reads_what_the_index_keeps() -> None:
    read = set(TEXTS.values()) | set(UIDS.values())
    kept = {a.keyword for a in ATTRIBUTES if a.source == "dataset" and a.vr != "US"}
    assert kept <= read


def test_the_transport_object_carries_type_2_always_and_type_3_when_known() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    values = dataclasses.asdict(InstanceRecord.from_dataset(ds))
    values.update(study_description="", issuer_of_patient_id="", accession_number="")
    row = SimpleNamespace(**values, stored_at=0.0)
    transport = make_transport(b"sealed bytes", row)
    assert "AccessionNumber" in transport and transport.AccessionNumber == ""  # type 2: present, empty
    assert "StudyDescription" not in transport and "IssuerOfPatientID" not in transport  # type 3: left out
    assert transport.PatientID == values["patient_id"] and transport.SeriesNumber == values["series_number"]
    assert read_transport(transport) == (b"sealed bytes", values["sop_uid"], values["sop_class_uid"])
