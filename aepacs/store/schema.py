"""The index tables: patient, study, series and instance (SQLAlchemy Core), and the rekey's pending blobs.

What the queries see; the database gets them from the migrations in
:mod:`aepacs.store.migrations` (``aepacs db upgrade``), which must agree.

The query attributes' columns are made from :data:`aepacs.dicom.attributes.ATTRIBUTES`;
each instance row adds where its sealed blob is and how it was sealed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

from aepacs.dicom.attributes import at_level

metadata = MetaData()



def _columns(level: str) -> list[Column[Any]]:
    """The index columns of one level's attributes (:data:`~aepacs.dicom.attributes.ATTRIBUTES`)."""
    out: list[Column[Any]] = []
    for a in at_level(level):
        kind: Any = Integer if a.length is None else String(a.length)
        extra: dict[str, Any] = {"unique": True} if a.indexed == "unique" else {"index": True} if a.indexed else {}
        if a.source is None:  # computed by the index from the level below
            extra["default"] = ""
        out.append(Column(a.column, kind, nullable=a.length is None, **extra))
    return out


#: Text compared bytewise (by code point): PostgreSQL's "C" collation, SQLite's default. A prefix
#: range on such a column is exact whatever the database's locale, and its index serves it.
BYTEWISE = String(324).with_variant(String(324, collation="C"), "postgresql")


def fold(name: str) -> str:
    """A person name as PN wildcards match it: case-insensitively (PS3.4 C.2.2.2.1)."""
    return name.lower()[:324]


patients = Table(
    "patients", metadata,
    Column("pk", Integer, primary_key=True),
    *_columns("PATIENT"),
    # PatientName folded by :func:`fold`, indexed: the name searches a PACS sees most (SMITH*)
    Column("patient_name_fold", BYTEWISE, nullable=False, server_default="", index=True),
    # a patient is PatientID within its issuer
    UniqueConstraint("patient_id", "issuer_of_patient_id"),
)
#: the folded, indexed copy of a column that PN wildcards match on
FOLDED = {"patient_name": "patient_name_fold"}
studies = Table(
    "studies", metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_pk", ForeignKey("patients.pk"), nullable=False, index=True),
    *_columns("STUDY"),
)
series = Table(
    "series", metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False, index=True),
    *_columns("SERIES"),
)
instances = Table(
    "instances", metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_pk", ForeignKey("series.pk"), nullable=False, index=True),
    *_columns("IMAGE"),
    Column("codec", String(64), nullable=False),
    Column("kek_version", Integer, nullable=False, index=True),
    Column("blob_key", String(64), nullable=False, index=True),
    Column("blob_size", BigInteger, nullable=False),
    Column("source_size", BigInteger, nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("psnr", Float),   # learned lossy objects: quality measured at sealing
    Column("ssim", Float),
    Column("stored_at", Float, nullable=False),
    # after a rewrap (aepacs rekey): the current key slot, which replaces the one in the blob
    # file (see docs/FORMAT.md); NULL while the blob's own slot is current
    Column("key_slot", LargeBinary),
    # when the blob was last sealed with a fresh data key (NULL: at stored_at)
    Column("sealed_at", Float),
)
#: the table of each query level
TABLES = {"PATIENT": patients, "STUDY": studies, "SERIES": series, "IMAGE": instances}
#: The files another program keeps in aepacs (Orthanc's storage area, ``plugins/orthanc``): each
#: sealed as it came, its blob bound to ``object_uid`` (the program's file id and content type), the
#: DICOM files among them later coded losslessly (``codec`` then names the pixel codec, as for an
#: instance; ``file``: the payload is the file itself, ``file-kept``: and stays so). They are not query
#: rows: the program that stored them keeps their index.
attachments = Table(
    "attachments", metadata,
    Column("pk", Integer, primary_key=True),
    Column("object_uid", String(64), nullable=False, unique=True),
    Column("content_type", Integer, nullable=False),
    Column("codec", String(64), nullable=False, index=True),
    Column("kek_version", Integer, nullable=False, index=True),
    Column("blob_key", String(64), nullable=False, index=True),
    Column("blob_size", BigInteger, nullable=False),
    Column("source_size", BigInteger, nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("stored_at", Float, nullable=False),
    Column("key_slot", LargeBinary),
    Column("sealed_at", Float),
)
#: The recipients the archive seals what it sends to (``aepacs recipients``): each an X25519 public key,
#: named at the archive, found by the AE title it retrieves as or the SHA-256 of its DICOMweb token. A
#: revoked row stays (what was sealed to it, and when it stopped); no object is sealed to it again.
recipients = Table(
    "recipients", metadata,
    Column("pk", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("recipient_id", String(32), nullable=False, unique=True),
    Column("public_key", LargeBinary, nullable=False),
    Column("aet", String(16), index=True),
    Column("token_sha256", String(64), index=True),
    Column("added_at", Float, nullable=False),
    Column("revoked_at", Float),
)
#: every table whose rows point at sealed blobs (what the sweep, key retirement and rekey cover)
OBJECT_TABLES = (instances, attachments)
#: the column that names each object table's objects (its blobs are bound to that name)
OBJECT_NAMES = {instances.name: instances.c.sop_uid, attachments.name: attachments.c.object_uid}
#: Blobs that may have become garbage: a rekey's new blob not yet switched in, or the old
#: blob of a switched row not yet removed. Cleared by the rekey that wrote them, or by the
#: next one when that process died (:mod:`aepacs.pipeline.rekey`).
pending_blobs = Table(
    "pending_blobs", metadata,
    Column("blob_key", String(64), primary_key=True),
    Column("sop_uid", String(64), nullable=False),
    Column("owner", String(160), nullable=False),
    Column("created", Float, nullable=False),
)
#: Columns releases before schema migrations added in place: :mod:`aepacs.store.migrate` adds any
#: that an index of theirs lacks before calling it the baseline revision.
ADDED_COLUMNS = ("psnr", "ssim", "key_slot", "sealed_at")
