"""Sending instances to a Storage SCP: the C-STORE SCU of ``aepacs send`` and the demo.

Each file goes as it is stored: its dataset bytes are sent unchanged in the
file's own transfer syntax (compressed ones included), read in chunks from
the file (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``, set while sending:
the default decodes and re-encodes, which changes some files and fails on
others), over a presentation context proposed for exactly that (SOP class,
transfer syntax) pair. Files
are sent in order over as few associations as the 128-context limit of an
association allows.
"""

from __future__ import annotations

import logging
import ssl
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, _config

from aepacs.dicom.status import stored
from aepacs.errors import AepacsError
from aepacs.pipeline.ingest import iter_files

log = logging.getLogger("aepacs.send")

STORAGE_CLASSES = frozenset(cx.abstract_syntax for cx in AllStoragePresentationContexts)
MAX_CONTEXTS = 128  #: presentation contexts one association may propose (PS3.8 9.3.2.2)


@dataclass(frozen=True)
class Storable:
    """A file that can be sent as it is: its SOP class, transfer syntax, SOP Instance UID and Modality."""

    path: Path
    sop_class: str
    transfer_syntax: str
    sop_uid: str
    modality: str = ""


def storable(path: Path) -> Storable | None:
    """The file as a C-STORE sends it, or ``None`` (not DICOM, no storage SOP class, no UIDs, no meta)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            meta = getattr(ds, "file_meta", None)
            sop_class = str(meta.get("MediaStorageSOPClassUID", "") if meta else "")
            syntax = str(meta.get("TransferSyntaxUID", "") if meta else "")
            uid = str(ds.get("SOPInstanceUID", "") or "").strip()
            same_class = str(ds.get("SOPClassUID", "")) == sop_class
            modality = str(ds.get("Modality", "") or "").strip()
    except Exception:  # pydicom raises many kinds on files that are not DICOM, some only when a value is read
        return None
    if sop_class not in STORAGE_CLASSES or not syntax or not uid or not same_class:
        return None
    return Storable(Path(path), sop_class, syntax, uid, modality)


def storables(paths: Iterable[Path]) -> tuple[list[Storable], int]:
    """Every sendable file under `paths` (files or directories, in a stable order), and how many others."""
    files, others = [], 0
    for path in iter_files(paths):
        f = storable(path)
        if f is None:
            others += 1
        else:
            files.append(f)
    return files, others


def batches(files: list[Storable], limit: int = MAX_CONTEXTS) -> list[list[Storable]]:
    """Consecutive runs of `files` needing at most `limit` distinct (SOP class, transfer syntax) pairs."""
    out: list[list[Storable]] = []
    pairs: set[tuple[str, str]] = set()
    for f in files:
        pair = (f.sop_class, f.transfer_syntax)
        if not out or (pair not in pairs and len(pairs) == limit):
            out.append([])
            pairs = set()
        pairs.add(pair)
        out[-1].append(f)
    return out


@dataclass
class SendSummary:
    """Per file, the C-STORE status (``None``: no response); and the seconds it took."""

    statuses: dict[Path, int | None] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def stored(self) -> list[Path]:
        """Files acknowledged with success or a warning (0x0000, 0xB000-0xB0FF, 0x0107, 0x0116)."""
        return [p for p, s in self.statuses.items() if s is not None and stored(s)]


def send_files(host: str, port: int, called_aet: str, calling_aet: str, files: Iterable[Storable], *,
               tls: ssl.SSLContext | None = None, timeout: float = 60.0) -> SendSummary:
    """C-STORE `files` to ``called_aet`` at `host`:`port`, each as it is stored.

    Raises
    ------
    AepacsError
        The peer could not be reached or refused an association.
    """
    summary = SendSummary()
    t0 = time.perf_counter()
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True  # bytes as stored
    try:
        for batch in batches(list(files)):
            _send_batch(host, port, called_aet, calling_aet, batch, tls, timeout, summary)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    summary.seconds = time.perf_counter() - t0
    return summary


def _send_batch(host: str, port: int, called_aet: str, calling_aet: str, batch: list[Storable],
                tls: ssl.SSLContext | None, timeout: float, summary: SendSummary) -> None:
    """One association: a context per (SOP class, transfer syntax) pair, then each file."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class, syntax in dict.fromkeys((f.sop_class, f.transfer_syntax) for f in batch):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=(tls, host) if tls else None)
    if not assoc.is_established:
        raise AepacsError(f"{called_aet}@{host}:{port}: association refused or failed")
    try:
        for f in batch:
            try:
                rsp = assoc.send_c_store(f.path)
            except (ValueError, AttributeError, OSError) as exc:  # no accepted context, unreadable file
                log.error("%s: not sent: %s", f.path, exc)
                summary.statuses[f.path] = None
                continue
            summary.statuses[f.path] = int(rsp.Status) if rsp is not None and "Status" in rsp else None
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
