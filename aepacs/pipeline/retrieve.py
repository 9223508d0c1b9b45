"""Retrieve: fetch → open → decode → write.

:func:`open_bytes` is the pure core (sealed blob in, original Part 10 bytes
out) used by ``aepacs open``; :func:`fetch` adds the index and the store;
:func:`export` writes a selection of instances as DICOM files. A file is
written only after its object opened, decoded and matched its recorded
hash, and atomically, so a failed open writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aepacs.codec.payload import decode_payload, read_manifest
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.recipients import Recipient, RecipientKey
from aepacs.crypto.seal import SealedHeader, for_recipient, open_sealed, read_header, seal_to, unwrap_key, with_slot
from aepacs.dicom.derive import derive
from aepacs.errors import AepacsError, CodecError, OpenError
from aepacs.models.registry import Registry, config_registry
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.codecs import resolver
from aepacs.store.atomic import atomic_write
from aepacs.store.blobs import blob_key
from aepacs.store.paths import instance_path

log = logging.getLogger("aepacs.retrieve")


def open_payload(blob: bytes, keyring: Keyring | RecipientKey, *, name: str = "object", expect_uid: str | None = None,
                 registry: Registry | None = None) -> tuple[SealedHeader, bytes, dict[str, Any] | None]:
    """Open and decode a sealed object: (clear header, Part 10 bytes, lossy record or None).

    For a learned lossy object the bytes are the original header around the
    reconstructed pixels (not yet marked as derived; :func:`open_bytes` does that).

    Raises
    ------
    OpenError
        Tampered, swapped, wrong key, a model missing or damaged, or a
        payload that does not decode; the message names `name`.
    """
    header, payload = open_sealed(blob, keyring, name=name, expect_uid=expect_uid)
    try:
        data, lossy = decode_payload(payload, resolver(registry))
    except CodecError as exc:
        raise OpenError(name, str(exc)) from None
    return header, data, lossy


def open_bytes(blob: bytes, keyring: Keyring | RecipientKey, *, name: str = "object", expect_uid: str | None = None,
               registry: Registry | None = None) -> tuple[SealedHeader, bytes]:
    """Open and decode a sealed object into DICOM a viewer can read.

    Returns
    -------
    (SealedHeader, bytes)
        Its clear header and the original Part 10 bytes, or for a learned
        lossy object the derived image (:mod:`aepacs.dicom.derive`).

    Raises
    ------
    OpenError
        As :func:`open_payload`.
    """
    header, data, lossy = open_payload(blob, keyring, name=name, expect_uid=expect_uid, registry=registry)
    return header, _viewable(data, lossy, name)


def _viewable(data: bytes, lossy: dict[str, Any] | None, name: str) -> bytes:
    """The opened bytes, or for a lossy reconstruction its derived image."""
    if lossy is None:
        return data
    try:
        return derive(data, lossy)
    except CodecError as exc:
        raise OpenError(name, str(exc)) from None


def fetch_blob(archive: Archive, sop_uid: str, row: Any = None) -> tuple[Any, bytes]:
    """Return an archived instance's index row and its sealed blob, checked against its content key.

    The blob comes with its current key slot (the index's, after a rewrap).
    A blob that vanishes between reading the row and reading the file was
    switched by a concurrent ``aepacs rekey``: the row is read again. `row`:
    the instance's index row where the caller has it (a retrieval's selection),
    saving the lookup.

    Raises
    ------
    OpenError
        Not archived, or its blob missing or altered on disk.
    """
    for attempt in range(5):
        if attempt or row is None:
            row = archive.index.get(sop_uid)
        if row is None:
            raise OpenError(sop_uid, "not in the archive")
        try:
            blob = archive.store.get(row.blob_key)
        except AepacsError as exc:
            again = archive.index.get(sop_uid)
            if again is not None and again.blob_key != row.blob_key and attempt < 4:
                continue  # switched by a rekey meanwhile
            raise OpenError(sop_uid, str(exc)) from None
        if blob_key(blob) != row.blob_key:
            raise OpenError(sop_uid, f"blob {row.blob_key} was altered on disk")
        if row.key_slot is not None:
            blob = with_slot(blob, bytes(row.key_slot), sop_uid)
        return row, blob
    raise OpenError(sop_uid, "blob kept changing while being read")


def sealed_for(archive: Archive, row: Any, recipient: Recipient | None) -> tuple[Any, bytes]:
    """The index row and blob of an instance as sealed for `recipient` (None: the archive's KEK-sealed form).

    A blind archive's object (sealed to a list of recipients) goes out with the recipient's own slot alone,
    no key used (:func:`aepacs.crypto.seal.for_recipient`), or as stored (every listed recipient opens it)
    where no recipient is named; any other is re-wrapped to the recipient
    (:func:`aepacs.crypto.seal.seal_to`).

    Raises
    ------
    OpenError
        Blob missing or altered, key not in the keyring.
    RecipientRefused
        A blind archive's object, and `recipient` is not one of those it is sealed to.
    """
    current, blob = fetch_blob(archive, row.sop_uid, row)
    if recipient is not None and read_header(blob, row.sop_uid).recipient_ids:
        return current, for_recipient(blob, recipient.id, name=row.sop_uid, expect_uid=row.sop_uid)
    if recipient is not None:
        return current, seal_to(blob, archive.keyring, recipient, name=row.sop_uid, expect_uid=row.sop_uid)
    return current, blob


def check_opens(archive: Archive, sop_uid: str, row: Any = None) -> None:
    """Check quickly that an archived instance will open: its blob as stored (its content key), its
    header and key slot authenticating under a KEK of the keyring. The part of :func:`fetch` that
    fails on a tampered or swapped blob or a missing key, without decrypting or decoding the payload.

    Raises
    ------
    OpenError
        As :func:`fetch`.
    """
    _, blob = fetch_blob(archive, sop_uid, row)
    unwrap_key(blob, archive.keyring, name=sop_uid, expect_uid=sop_uid)


def fetch(archive: Archive, sop_uid: str, row: Any = None) -> bytes:
    """Return the original bytes of an archived instance (the derived image of a lossy one).

    `row`: its index row where the caller has it (saves the lookup).

    Raises
    ------
    OpenError
        Not archived, blob missing or altered, or its key is not in the keyring.
    """
    row, blob = fetch_blob(archive, sop_uid, row)
    _, data, lossy = open_payload(blob, archive.keyring, name=sop_uid, expect_uid=sop_uid,
                                  registry=config_registry(archive.config))
    # a lossy reconstruction's hash was checked by the decoder; an original's is checked here
    if lossy is None and hashlib.sha256(data).hexdigest() != row.source_sha256:
        raise OpenError(sop_uid, "opened object does not match the index")
    return _viewable(data, lossy, sop_uid)


@dataclass
class ExportSummary:
    """Files written and failures of one export."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes_written: int = 0


def export(archive: Archive, out_dir: Path, *, patient_id: str | None = None, study_uid: str | None = None,
           series_uid: str | None = None, sop_uid: str | None = None, progress: bool = True,
           sealed: bool = False, recipient: Recipient | None = None) -> ExportSummary:
    """Write the selected instances as ``OUT/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, or with `sealed` their
    sealed objects as ``….aepx``: sealed to `recipient` (whose private key alone opens them), else under
    the archive's KEK.

    File names come from :func:`aepacs.store.paths.instance_path` (confined to
    `out_dir`). One failure never stops the rest; failures are returned with reasons.
    """
    rows = archive.index.find(patient_id=patient_id, study_uid=study_uid, series_uid=series_uid,
                              sop_uid=sop_uid)
    summary = ExportSummary()
    for row in tqdm(rows, desc="export", unit="file", disable=not progress):
        try:
            target = instance_path(Path(out_dir), row.series_uid, row.sop_uid)
            if sealed:
                _, data = sealed_for(archive, row, recipient)
                target = target.with_suffix(".aepx")
            else:
                data = fetch(archive, row.sop_uid)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data, mode=0o600)
        except AepacsError as exc:
            log.error("%s", exc)
            summary.failed.append((row.sop_uid, str(exc)))
            continue
        summary.written.append(target)
        summary.bytes_written += len(data)
    return summary


def describe_payload(blob: bytes, keyring: Keyring, name: str) -> list[tuple[str, str]]:
    """What the encrypted manifest says (sizes, codec, model, quality at sealing), as (label, value) rows.

    A keyring that does not open the object gives one row saying why.
    """
    try:
        _, payload = open_sealed(blob, keyring, name=name)
        manifest, _ = read_manifest(payload)
    except AepacsError as exc:
        return [("payload", f"not opened ({exc})")]
    rows = [("original bytes", f"{manifest['size']:,}"), ("original sha256", manifest["sha256"]),
            ("pixel codec", manifest.get("pixels", {}).get("codec", "-"))]
    lossy = manifest.get("lossy")
    if lossy:
        rows += [("lossy", f"yes: model {lossy['model']}, ratio {lossy['ratio']}:1"),
                 ("quality at sealing", f"PSNR {lossy['psnr']} dB, SSIM {lossy['ssim']}")]
    else:
        rows += [("lossy", "no (decodes bit for bit)")]
    return rows

