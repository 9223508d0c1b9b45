"""Sealed transport objects for other PACS: what of an instance they see, and sealing one at receipt.

:func:`transport_object` wraps an archived blob for C-GET and C-MOVE, its
identifiers in clear or as pseudonyms (``transport.identifiers``);
:func:`seal_as_transport` checks, encodes, seals and wraps a received stream
in one step, for a PACS that stores the transport object in place of the
original (the Orthanc plugin). The object itself is built by
:func:`aepacs.dicom.transport.make_transport`.
"""

from __future__ import annotations

import dataclasses
import time
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from aepacs.config import Config
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.pseudonym import pseudonym, site_key
from aepacs.crypto.recipients import Recipient
from aepacs.dicom.part10 import parse
from aepacs.dicom.records import InstanceRecord
from aepacs.dicom.transport import make_transport
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import check, seal_bytes
from aepacs.pipeline.retrieve import fetch, sealed_for


def transport_key(config: Config) -> bytes | None:
    """The site's pseudonym key when transport objects carry pseudonyms (``transport.identifiers``), else None."""
    return site_key(config.pseudonym_key_path) if config.transport.identifiers == "pseudonymous" else None


def outgoing(archive: Archive, row: Any, pseudonym_key: bytes | None, recipient: Recipient | None = None) -> Dataset:
    """What C-GET, C-MOVE and WADO-RS send for one indexed instance (``server.retrieve_as``): the decoded
    original, or its sealed transport object (identifiers as `pseudonym_key` says), sealed to `recipient`
    when there is one (:func:`aepacs.pipeline.recipients.recipient_for`), else under the archive's KEK.

    Raises
    ------
    OpenError
        Blob missing or altered, key not in the keyring, not decodable.
    """
    if archive.config.server.retrieve_as == "decoded":
        return pydicom.dcmread(BytesIO(fetch(archive, row.sop_uid, row)))
    current, blob = sealed_for(archive, row, recipient)
    return transport_object(blob, current, pseudonym_key)


def transport_object(blob: bytes, row: Any, pseudonym_key: bytes | None) -> Dataset:
    """The Raw Data Storage object carrying `blob`, with `row`'s identifiers (pseudonyms under `pseudonym_key`)."""
    return make_transport(blob, row if pseudonym_key is None else pseudonymous(row, pseudonym_key))


def pseudonymous(row: Any, key: bytes) -> SimpleNamespace:
    """The index row as a transport object for an untrusted PACS shows it: no identifying attribute in clear.

    Patient ID and name carry one pseudonym (so the receiving PACS still files a
    patient's studies together), the accession number another; the birth date,
    sex, issuer, study date and time, study ID, referring physician and the
    descriptions are emptied. UIDs stay: they are what files the object, and the
    sealed header carries them in clear anyway.
    """
    values = dict(row._asdict()) if hasattr(row, "_asdict") else dict(vars(row))  # an index row, or a namespace
    patient = pseudonym(key, "patient", f"{row.issuer_of_patient_id}^{row.patient_id}" if row.patient_id else "")
    values.update(patient_id=f"AEP-{patient}" if patient else "", patient_name=f"AEP^{patient}" if patient else "",
                  issuer_of_patient_id="", patient_birth_date="", patient_sex="", study_date="", study_time="",
                  study_id="", referring_physician_name="", study_description="", series_description="",
                  body_part_examined="",
                  accession_number=pseudonym(key, "accession", row.accession_number))
    return SimpleNamespace(**values)


def seal_as_transport(data: bytes, keyring: Keyring, config: Config) -> bytes:
    """Check, encode (the object's route), seal and wrap one received Part 10 stream.

    What another PACS stores in place of the original (the Orthanc plugin):
    the same Raw Data Storage object ``aepacs serve`` sends on C-GET, as a
    Part 10 stream, the original never written anywhere.

    Raises
    ------
    AepacsError
        As :func:`aepacs.pipeline.ingest.ingest`: not DICOM, missing UIDs,
        pixel data not matching its description, a codec failure.
    """
    parts = parse(data)
    check(parts)
    _, blob = seal_bytes(data, keyring, config, parts)
    record = InstanceRecord.from_dataset(parts.dataset)
    row = SimpleNamespace(**dataclasses.asdict(record), stored_at=time.time())
    ds = transport_object(bytes(blob), row, transport_key(config))
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
