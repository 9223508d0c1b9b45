"""Accepting one received instance: check, admit, seal into the spool -- for C-STORE and STOW-RS alike.

:func:`receive` is what happens before an instance is acknowledged, over
DIMSE (:mod:`aepacs.net.handlers`) or DICOMweb (:mod:`aepacs.web.stow`): the
structural check, the conflict rule, the room check, and the sealed spool
entry. :func:`refusal` maps what it raises to the one status both protocols
answer (``docs/CONFORMANCE.md``).
"""

from __future__ import annotations

import hashlib

from aepacs.config import Config
from aepacs.dicom.status import Status
from aepacs.errors import AepacsError, DatasetMismatch, InputError, StoreFullError
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import check_received
from aepacs.pipeline.spool import Spool, seal_entry

__all__ = ["receive", "refusal"]


def receive(archive: Archive, spool: Spool, config: Config, data: bytes, *,
            expect_uid: str | None = None, study_uid: str | None = None) -> dict[str, str]:
    """Check `data` (a Part 10 stream or dataset), seal it as it is into the spool; its UIDs.

    `expect_uid`: the SOP Instance UID the request announced (C-STORE);
    `study_uid`: the study the request stores into (STOW-RS ``/studies/{study}``).
    Once this returns the instance survives a crash and may be acknowledged;
    the spool's workers archive it.

    Raises
    ------
    InputError, DatasetMismatch, StoreFullError, AepacsError, OSError
        Nothing was written; :func:`refusal` gives the status to answer.
    """
    uids = check_received(data, expect_uid=expect_uid,  # a structural scan, no full parse
                          max_depth=config.ingest.max_sequence_depth)
    if study_uid is not None and uids["StudyInstanceUID"] != study_uid:
        raise DatasetMismatch(f"an instance of study {uids['StudyInstanceUID']} sent to study {study_uid}")
    if config.ingest.on_conflict == "reject":
        known = archive.source_sha256(uids["SOPInstanceUID"])
        if known is not None and known != hashlib.sha256(data).hexdigest():
            raise DatasetMismatch("a different object with this SOP Instance UID is already archived")
    archive.seal_recipients()  # a blind archive with no one to seal to refuses now, not after acknowledging
    archive.check_room(spool.admission_need(len(data)))
    spool.check_room(len(data), config.store.min_free_mb * 1_000_000)
    spool.put(seal_entry(data, uids["SOPInstanceUID"], uids["StudyInstanceUID"], archive.keyring),
              uids["SOPInstanceUID"])
    return uids


def refusal(exc: BaseException) -> Status:
    """The status of an instance :func:`receive` refused with `exc` (anything else: not understood)."""
    if isinstance(exc, StoreFullError):
        return Status.OUT_OF_RESOURCES
    if isinstance(exc, DatasetMismatch):
        return Status.MISMATCH
    if isinstance(exc, InputError):
        return Status.CANNOT_UNDERSTAND
    if isinstance(exc, (AepacsError, OSError, MemoryError)):  # spool, store, keyring, index: resources
        return Status.OUT_OF_RESOURCES
    return Status.CANNOT_UNDERSTAND  # input no check foresaw (a bug): refused as not understood
