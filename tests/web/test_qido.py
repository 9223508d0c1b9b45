"""QIDO-RS requests as C-FIND identifiers (aepacs.web.qido), without a server."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from aepacs.web.qido import MAX_LIMIT, QidoError, identifier, response


def test_keywords_tags_lists_and_ranges_become_the_c_find_keys() -> None:
    s = identifier("STUDY", {}, {"00100020": ["PAT1"], "PatientName": ["Doe^J*"], "StudyDate": ["20200101-20201231"],
                                 "StudyInstanceUID": ["1.2.3,1.2.4"], "ModalitiesInStudy": ["CT", "MR"]})
    ident = s.identifier
    assert ident.QueryRetrieveLevel == "STUDY" and ident.PatientID == "PAT1"
    assert str(ident.PatientName) == "Doe^J*" and ident.StudyDate == "20200101-20201231"
    assert list(ident.StudyInstanceUID) == ["1.2.3", "1.2.4"] and list(ident.ModalitiesInStudy) == ["CT", "MR"]
    assert "NumberOfStudyRelatedInstances" in ident and ident.AccessionNumber is None  # defaults: return keys
    assert (s.limit, s.offset, s.warnings) == (MAX_LIMIT, 0, [])


def test_series_and_instances_carry_the_path_and_what_is_above_them() -> None:
    s = identifier("IMAGE", {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"}, {"limit": ["5"],
                                                                                        "offset": ["10"]})
    assert s.identifier.QueryRetrieveLevel == "IMAGE" and s.identifier.SeriesInstanceUID == "1.2.3"
    assert "SOPInstanceUID" in s.identifier and "PatientID" not in s.identifier and (s.limit, s.offset) == (5, 10)
    unscoped = identifier("SERIES", {}, {}).identifier
    assert "PatientID" in unscoped and "StudyDate" in unscoped  # a /series search names the study too


def test_includefield_all_and_named_and_unsupported_keys_warn() -> None:
    s = identifier("SERIES", {"StudyInstanceUID": "1.2"}, {"includefield": ["all"], "fuzzymatching": ["true"],
                                                           "OperatorsName": ["x"]})
    assert "BodyPartExamined" in s.identifier and "PatientID" in s.identifier and "OperatorsName" in s.identifier
    assert any("fuzzymatching" in w for w in s.warnings) and any("OperatorsName" in w for w in s.warnings)
    assert "00081030" in str(identifier("STUDY", {}, {"includefield": ["00081030"]}).identifier.to_json_dict())


@pytest.mark.parametrize("params", [{"NoSuchKeyword": ["1"]}, {"limit": ["x"]}, {"offset": ["-1"]},
                                    {"includefield": ["12345678"]}])
def test_bad_parameters_are_refused(params: dict[str, list[str]]) -> None:
    with pytest.raises(QidoError):
        identifier("STUDY", {}, params)


def test_responses_are_dicom_json_with_retrieve_urls() -> None:
    match = Dataset()
    match.QueryRetrieveLevel = "SERIES"
    match.StudyInstanceUID, match.SeriesInstanceUID, match.Modality = "1.2", "1.2.3", "CT"
    (out,) = response([match], "SERIES", "http://h/dicomweb")
    assert out["00080060"] == {"vr": "CS", "Value": ["CT"]} and "00080052" not in out
    assert out["00081190"]["Value"] == ["http://h/dicomweb/studies/1.2/series/1.2.3"]
