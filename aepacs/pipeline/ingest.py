"""Ingest: receive → route → encode → seal → store → index.

:func:`seal_bytes` is the pure core (bytes in, sealed blob out) used by
``aepacs seal``; :func:`ingest` adds the store and the index; and
:func:`import_paths` runs ingest over files with a progress bar.

Order of effects: the blob is written durably before the index row that
points at it, so a crash at any moment leaves no row without its blob (at
worst an unreferenced blob, which a sweep removes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, generate_uid
from tqdm import tqdm

from aepacs.codec.payload import EncodedObject, QualityFloor, encode_object
from aepacs.config import Config, Route
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.recipients import Recipient
from aepacs.crypto.seal import seal
from aepacs.dicom.part10 import Part10, parse
from aepacs.dicom.records import InstanceRecord, check_uid, check_uids, required_uids, shown, text_value
from aepacs.dicom.scan import DEFAULT_MAX_DEPTH, scan
from aepacs.dicom.scan import problem as scan_problem
from aepacs.errors import AepacsError, DatasetMismatch, InputError
from aepacs.models.registry import config_registry
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.codecs import learned_codec
from aepacs.store.index import ADDED, CONFLICT, SAME, BlobRef

log = logging.getLogger("aepacs.ingest")


def object_uid(ds: Dataset) -> str:
    """The UID a sealed object is bound to.

    The SOP Instance UID; else the file meta's Media Storage SOP Instance
    UID; else (a file with neither, sealed stand-alone) a fresh UID.
    """
    for value in (text_value(ds, "SOPInstanceUID"), text_value(getattr(ds, "file_meta", Dataset()),
                                                                 "MediaStorageSOPInstanceUID")):
        if value:
            return value
    return str(generate_uid())


def route(parts: Part10, config: Config) -> Route:
    """The route configured for this object's modality."""
    return config.route_for(text_value(parts.dataset, "Modality"))


#: Lossy objects that failed their route's quality gate (or that the model could not
#: code) and went lossless instead, per model: a model meeting data it was not trained
#: for shows up here at once.
GATE_FALLBACKS: Counter[str] = Counter()


def encode(data: bytes, parts: Part10, r: Route, config: Config, *, sha256: str | None = None) -> EncodedObject:
    """Encode per route `r`; a lossy object below the route's quality floor goes lossless."""
    learned = learned_codec(r, config_registry(config)) if r.model else None
    encoded = encode_object(data, parts=parts, lossless=r.codec or config.codec.lossless,
                            zstd_level=config.codec.zstd_level,
                            sha256=sha256, learned=learned, floor=QualityFloor(r.min_psnr, r.min_ssim))
    if learned is not None and encoded.gate:
        GATE_FALLBACKS[learned.id] += 1
        log.warning("instance %s: %s; stored losslessly with %s",
                    object_uid(parts.dataset), encoded.gate, encoded.codec)
    return encoded


def check(parts: Part10, expect_uid: str | None = None) -> dict[str, str]:
    """Refuse what the archive cannot keep; return the instance's required UIDs and its Modality.

    Raises
    ------
    DatasetMismatch
        UIDs missing or not the announced one, pixel data not matching its description.
    InputError
        Not a composite instance.
    """
    if parts.problem:
        raise DatasetMismatch(parts.problem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modality = text_value(parts.dataset, "Modality")  # as the scan reads it: values joined by "\\"
    return {**_announced(required_uids(parts.dataset), expect_uid), "Modality": modality}


def _announced(uids: dict[str, str], expect_uid: str | None) -> dict[str, str]:
    if expect_uid is not None and uids["SOPInstanceUID"] != expect_uid.strip():
        raise DatasetMismatch(f"dataset SOP Instance UID {uids['SOPInstanceUID']} is not the announced "
                              f"{expect_uid}")
    return uids


def check_received(data: bytes, expect_uid: str | None = None,
                   max_depth: int = DEFAULT_MAX_DEPTH) -> dict[str, str]:
    """:func:`check` for a stream as received, by a structural scan where it can (no pydicom parse).

    Gives the same verdict as ``check(parse(data))`` (the tests hold the two to
    it over the whole corpus and the fuzz harness over mutations of it), and
    refuses sequences nested deeper than `max_depth`; falls back to the full
    parse where the scan cannot tell.
    """
    scanned = scan(data, max_depth)
    if scanned is None:
        return check(parse(data), expect_uid)
    verdict = scan_problem(scanned)
    if verdict:
        raise DatasetMismatch(verdict)
    return {**_announced(check_uids(scanned.uids), expect_uid), "Modality": str(scanned.image.get("Modality", ""))}


def seal_bytes(data: bytes, keyring: Keyring, config: Config, parts: Part10 | None = None, *,
               sha256: str | None = None) -> tuple[EncodedObject, bytearray]:
    """Encode and seal one Part 10 stream; nothing is stored.

    Returns
    -------
    (EncodedObject, bytearray)
        The coded object (its parsed dataset included) and the sealed blob.
    """
    parts = parts or parse(data)
    encoded = encode(data, parts, route(parts, config), config, sha256=sha256)
    return encoded, seal_encoded(encoded, keyring)


def seal_encoded(encoded: EncodedObject, keyring: Keyring, recipients: Sequence[Recipient] = ()) -> bytearray:
    """Seal a coded object under a fresh data key, bound to its SOP Instance and Study UIDs: the key wrapped
    under the keyring's active KEK, or to `recipients` alone (a blind archive's).

    Raises
    ------
    DatasetMismatch
        Either UID is not a valid UID (nothing is sealed under it).
    """
    ds = encoded.parts.dataset
    uid, study = object_uid(ds), text_value(ds, "StudyInstanceUID")
    for keyword, value in (("SOPInstanceUID", uid), ("StudyInstanceUID", study)):
        if value:
            check_uid(keyword, value)
    return seal(encoded.payload, object_uid=uid, study_uid=study, codec=encoded.codec, keyring=keyring,
                recipients=recipients)


@dataclass(frozen=True)
class IngestResult:
    """What happened to one received object."""

    sop_uid: str
    status: str  # added | same | conflict
    codec: str = ""
    source_size: int = 0
    blob_size: int = 0
    modality: str = ""
    encode_s: float = 0.0  #: route codec: decode, model, entropy coding, round-trip check
    seal_s: float = 0.0  #: AES-256-GCM under a fresh data key
    gate: str | None = None  #: the model whose quality gate (or image fit) sent this object lossless


def ingest(archive: Archive, data: bytes, *, expect_uid: str | None = None,
           acknowledged: bool = False) -> IngestResult:
    """Archive one Part 10 stream: route → encode → seal → store → index.

    Parameters
    ----------
    archive : Archive
    data : bytes
        The Part 10 stream as received.
    expect_uid : str, optional
        The SOP Instance UID the sender announced (C-STORE request).
    acknowledged : bool
        The archive SCP has acknowledged `data` (its structural scan accepted
        it): should pydicom fail to read it, it is archived whole from the scan
        (:func:`dataset_from_scan`) instead of being refused.

    Returns
    -------
    IngestResult
        ``added``; ``same`` for an identical re-send (costs nothing); or
        ``conflict`` for a different object under an archived SOP Instance
        UID, kept out and logged (an error with ``ingest.on_conflict: reject``).

    Raises
    ------
    DatasetMismatch
        Missing UIDs, a UID other than announced, or pixel data not matching
        its description; nothing stored.
    InputError
        Not DICOM; nothing stored.
    StoreFullError
        Less than ``store.min_free_mb`` free; nothing stored.
    AepacsError
        Sealing, store or index failure; nothing indexed.
    """
    parts = _parsed(data, expect_uid, acknowledged)
    record = InstanceRecord.from_dataset(parts.dataset)
    sha = hashlib.sha256(data).hexdigest()
    existing = archive.source_sha256(record.sop_uid)
    if existing is not None:
        return _duplicate(archive, record.sop_uid, existing == sha)
    archive.check_room(len(data), acknowledged=acknowledged)
    r = route(parts, archive.config)
    t0 = time.perf_counter()
    encoded = encode(data, parts, r, archive.config, sha256=sha)
    t1 = time.perf_counter()
    recipients = archive.seal_recipients()  # a blind archive's; none: under the active KEK
    blob = seal_encoded(encoded, archive.keyring, recipients)
    t2 = time.perf_counter()
    key = archive.store.put(blob)
    ref = BlobRef(codec=encoded.codec, kek_version=0 if recipients else archive.keyring.active_version, blob_key=key,
                  blob_size=len(blob), source_size=len(data), source_sha256=sha,
                  psnr=(encoded.lossy or {}).get("psnr"), ssim=(encoded.lossy or {}).get("ssim"))
    outcome = archive.index.add(record, ref)
    if outcome != ADDED:  # lost a race with another writer of the same instance
        archive.store.delete(key)
        return _duplicate(archive, record.sop_uid, outcome == SAME)
    return IngestResult(record.sop_uid, ADDED, encoded.codec, len(data), len(blob),
                        modality=text_value(parts.dataset, "Modality"), encode_s=t1 - t0, seal_s=t2 - t1,
                        gate=(r.model or "") if encoded.gate and r.model else None)


def _parsed(data: bytes, expect_uid: str | None, acknowledged: bool) -> Part10:
    """`data` parsed and checked; for an acknowledged stream pydicom cannot read, its scan."""
    try:
        parts = parse(data)
        check(parts, expect_uid)
        return parts
    except InputError as exc:
        whole = dataset_from_scan(data) if acknowledged else None
        if whole is None:
            raise
        log.warning("instance %s: %s; archived whole (as received) with the attributes its scan read",
                    shown(str(whole.dataset.SOPInstanceUID)), exc)
        check(whole, expect_uid)
        return whole


def dataset_from_scan(data: bytes) -> Part10 | None:
    """The stream kept whole, with a dataset of what the structural scan read (None: it cannot tell).

    The last resort for an acknowledged instance that pydicom cannot read: the
    scan accepted it, so it has valid UIDs; the index gets the attributes the
    scan read (text decoded as ASCII), the blob the exact bytes received.
    """
    scanned = scan(data, DEFAULT_MAX_DEPTH)
    if scanned is None or scanned.problem:
        return None
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(scanned.transfer_syntax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in {**scanned.image, **scanned.uids}.items():
            try:
                setattr(ds, keyword, value)
            except (TypeError, ValueError, OverflowError):
                continue  # the index keeps it empty
    return Part10(ds, data, b"", b"", None, False, None)


def _duplicate(archive: Archive, sop_uid: str, same: bool) -> IngestResult:
    if same:
        return IngestResult(sop_uid, SAME)
    log.warning("instance %s: a different object with this SOP Instance UID is already archived; "
                "keeping the first", sop_uid)
    if archive.config.ingest.on_conflict == "reject":
        raise InputError(f"{sop_uid}: a different object with this SOP Instance UID is already archived")
    return IngestResult(sop_uid, CONFLICT)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under `paths` (files or directories), in a stable order."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for dirpath, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(dirpath) / name
        elif path.is_file():
            yield path


@dataclass
class ImportSummary:
    """Counts and failures of one import run."""

    added: int = 0
    same: int = 0
    conflicts: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not DICOM / not archivable
    failed: list[tuple[str, str]] = field(default_factory=list)   # archive errors
    source_bytes: int = 0
    stored_bytes: int = 0


def import_paths(archive: Archive, paths: Iterable[Path], *, progress: bool = True) -> ImportSummary:
    """Ingest every DICOM file under `paths`; one failure never stops the rest.

    Files that are not DICOM instances (READMEs, DICOMDIRs, files without
    UIDs) are skipped with their reason; archive failures are collected.
    Re-running an interrupted import completes it without duplicates.
    """
    summary = ImportSummary()
    files = list(iter_files(paths))
    for path in tqdm(files, desc="import", unit="file", disable=not progress):
        try:
            result = ingest(archive, path.read_bytes())
        except InputError as exc:
            summary.skipped.append((str(path), str(exc)))
            continue
        except (AepacsError, OSError) as exc:
            log.error("%s: %s", path, exc)
            summary.failed.append((str(path), str(exc)))
            continue
        if result.status == ADDED:
            summary.added += 1
            summary.source_bytes += result.source_size
            summary.stored_bytes += result.blob_size
        elif result.status == SAME:
            summary.same += 1
        else:
            summary.conflicts += 1
    return summary
