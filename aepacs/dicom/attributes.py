"""The attributes the archive keeps of every instance, declared once, by query level.

Each :class:`Attribute` says where it is read (the dataset or its file meta),
at which Query/Retrieve level it lives, its VR, its index column (and the
:class:`~aepacs.dicom.records.InstanceRecord` field of the same name), how
C-FIND matches it and whether the sealed transport object carries it. The
index schema (:mod:`aepacs.store.index`), the query matcher
(:mod:`aepacs.store.query`), the record extraction
(:mod:`aepacs.dicom.records`) and the transport builder
(:mod:`aepacs.dicom.transport`) are all made from :data:`ATTRIBUTES`: adding
an attribute is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

#: How C-FIND matches a key (PS3.4 C.2.2.2): ``text`` single value and wildcards,
#: ``name`` the same but case-insensitive wildcards allowed (PN), ``uid`` list of UIDs,
#: ``date``/``time`` ranges, ``number`` an integer, ``multi`` any of a multi-valued value.
MATCHING = ("text", "name", "uid", "date", "time", "number", "multi")


@dataclass(frozen=True)
class Attribute:
    """One attribute the index keeps."""

    keyword: str
    level: str
    vr: str
    #: the index column and InstanceRecord field
    column: str
    #: text column length; None: an integer column
    length: int | None
    matching: str
    #: answered in C-FIND (the transfer syntax is kept, not queried)
    query: bool = True
    #: read from the file meta (else the dataset); None: computed by the index (ModalitiesInStudy)
    source: str | None = "dataset"
    #: the transport object carries it: 2 always (empty when unknown), 3 only when known, 0 never
    transport: int = 0
    #: the column is indexed (``unique``: the level's key)
    indexed: str = ""

    @property
    def tag(self) -> int:
        """The DICOM tag of `keyword`."""
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return int(tag)


_ = Attribute
ATTRIBUTES: tuple[Attribute, ...] = (
    _("PatientID", "PATIENT", "LO", "patient_id", 64, "text", transport=2),
    _("IssuerOfPatientID", "PATIENT", "LO", "issuer_of_patient_id", 64, "text", transport=3),
    _("PatientName", "PATIENT", "PN", "patient_name", 324, "name", transport=2),
    _("PatientBirthDate", "PATIENT", "DA", "patient_birth_date", 8, "date", transport=2),
    _("PatientSex", "PATIENT", "CS", "patient_sex", 16, "text", transport=2),
    _("StudyInstanceUID", "STUDY", "UI", "study_uid", 64, "uid", transport=2, indexed="unique"),
    _("StudyDate", "STUDY", "DA", "study_date", 8, "date", transport=2, indexed="index"),
    _("StudyTime", "STUDY", "TM", "study_time", 16, "time", transport=2),
    _("AccessionNumber", "STUDY", "SH", "accession_number", 64, "text", transport=2, indexed="index"),
    _("StudyID", "STUDY", "SH", "study_id", 16, "text", transport=2),
    _("StudyDescription", "STUDY", "LO", "study_description", 64, "text", transport=3),
    _("ReferringPhysicianName", "STUDY", "PN", "referring_physician_name", 324, "name", transport=2),
    _("ModalitiesInStudy", "STUDY", "CS", "modalities_in_study", 256, "multi", source=None),
    _("SeriesInstanceUID", "SERIES", "UI", "series_uid", 64, "uid", transport=2, indexed="unique"),
    _("Modality", "SERIES", "CS", "modality", 16, "text", transport=2),
    _("SeriesNumber", "SERIES", "IS", "series_number", None, "number", transport=2),
    _("SeriesDescription", "SERIES", "LO", "series_description", 64, "text", transport=3),
    _("BodyPartExamined", "SERIES", "CS", "body_part_examined", 16, "text", transport=3),
    _("SOPInstanceUID", "IMAGE", "UI", "sop_uid", 64, "uid", indexed="unique"),
    _("SOPClassUID", "IMAGE", "UI", "sop_class_uid", 64, "uid"),
    _("InstanceNumber", "IMAGE", "IS", "instance_number", None, "number", transport=2),
    _("TransferSyntaxUID", "IMAGE", "UI", "transfer_syntax_uid", 64, "uid", query=False, source="file_meta"),
    _("Rows", "IMAGE", "US", "rows", None, "number"),
    _("Columns", "IMAGE", "US", "columns", None, "number"),
    _("NumberOfFrames", "IMAGE", "IS", "number_of_frames", None, "number"),
)
del _

assert all(a.level in LEVELS and a.matching in MATCHING for a in ATTRIBUTES)
#: by keyword
BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}
#: the unique key of each level
UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}


def at_level(level: str) -> tuple[Attribute, ...]:
    """The attributes of one level, in declaration order."""
    return tuple(a for a in ATTRIBUTES if a.level == level)


def record_columns(level: str) -> tuple[str, ...]:
    """The InstanceRecord fields of one level: what is read from each instance (not computed by the index)."""
    return tuple(a.column for a in at_level(level) if a.source is not None)
