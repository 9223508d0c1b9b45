"""The retrieval client (SCU-side decoder): fetch → open → decode → write.

``query`` asks an archive what it holds (C-FIND). ``retrieve`` asks it for
a patient, study, series or instance by C-GET (default) or by C-MOVE to a
storage SCP it runs itself. Each instance
that arrives is handled by :class:`Receiver`. A sealed transport object is
opened with the keyring and decoded back to the original instance; an
ordinary instance (from ``retrieve_as: decoded``) is kept as it came. Each
is written as ``OUT/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, only after it
opened and decoded, and atomically. ``receive_files`` does the same for
sealed objects that arrived by other means (files from another PACS).
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import _UI
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import time
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from aepacs.crypto.keyring import Keyring
from aepacs.crypto.recipients import RecipientKey
from aepacs.crypto.seal import MAGIC
from aepacs.dicom.part10 import read_dataset
from aepacs.dicom.records import shown
from aepacs.dicom.status import PENDING, Status
from aepacs.dicom.transport import RAW_DATA_STORAGE, is_transport, read_transport
from aepacs.errors import AepacsError, InputError, OpenError
from aepacs.models.registry import Registry
from aepacs.pipeline.ingest import iter_files
from aepacs.pipeline.retrieve import open_bytes
from aepacs.store.atomic import atomic_write
from aepacs.store.paths import instance_path

log = logging.getLogger("aepacs.retrieve")

LEVEL_KEYS = {"patient": ("PATIENT", "PatientID"), "study": ("STUDY", "StudyInstanceUID"),
              "series": ("SERIES", "SeriesInstanceUID"), "instance": ("IMAGE", "SOPInstanceUID")}


@dataclass
class RetrieveSummary:
    """What a retrieval wrote and what failed."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None  # final C-GET / C-MOVE status, when over the network
    sub_ops: dict[str, int] = field(default_factory=dict)


class Receiver:
    """Turns received instances into original DICOM files under `out_dir`."""

    def __init__(self, keyring: Keyring | RecipientKey, out_dir: Path, registry: Registry | None = None) -> None:
        self.keyring = keyring
        self.registry = registry
        self.out_dir = Path(out_dir)
        self.summary = RetrieveSummary()
        self._lock = threading.Lock()

    def accept(self, data: bytes, name: str) -> Path:
        """Open/decode one received Part 10 stream or sealed blob and write the original.

        Raises
        ------
        OpenError
            Tampered, wrong key, or not decodable; nothing written.
        InputError
            Neither a sealed object nor DICOM.
        """
        ds = None
        if data[:4] == MAGIC:  # a bare sealed object
            _, original = open_bytes(data, self.keyring, name=name, registry=self.registry)
        else:
            ds, _ = read_dataset(data)
            if is_transport(ds):
                blob, uid, _ = read_transport(ds)
                _, original = open_bytes(blob, self.keyring, name=uid, expect_uid=uid, registry=self.registry)
                ds = None
            else:
                original = data  # an ordinary instance (retrieve_as: decoded): as it came
        if ds is None:
            ds, _ = read_dataset(original)
        target = instance_path(self.out_dir, str(ds.get("SeriesInstanceUID", "") or ""),
                               str(ds.get("SOPInstanceUID", "") or name))
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, original, mode=0o600)
        return target

    def on_store(self, event: Event) -> int:
        """pynetdicom C-STORE handler: 0x0000 when written, 0xC000-range when not."""
        uid = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
        try:
            path = self.accept(event.encoded_dataset(), uid)
        except (AepacsError, OSError) as exc:
            log.error("%s", exc)
            with self._lock:
                self.summary.failed.append((uid, str(exc)))
            return Status.CANNOT_WRITE
        with self._lock:
            self.summary.written.append(path)
        return Status.SUCCESS


def receive_files(paths: list[Path], keyring: Keyring | RecipientKey, out_dir: Path,
                  registry: Registry | None = None) -> RetrieveSummary:
    """Open and decode sealed objects that arrived as files (``.aepx`` or transport objects)."""
    receiver = Receiver(keyring, out_dir, registry)
    for path in iter_files(paths):
        try:
            receiver.summary.written.append(receiver.accept(path.read_bytes(), str(path)))
        except InputError:
            continue  # not DICOM, or not sealed: not ours to open
        except (OpenError, AepacsError, OSError) as exc:
            receiver.summary.failed.append((str(path), str(exc)))
    return receiver.summary


def client_ssl_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ client context verifying the server against `ca`, optionally with a client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def _identifier(level: str, value: str) -> tuple[Dataset, bool]:
    qr_level, keyword = LEVEL_KEYS[level]
    ds = Dataset()
    ds.QueryRetrieveLevel = qr_level
    setattr(ds, keyword, value)
    return ds, level == "patient"


def query(host: str, port: int, called_aet: str, calling_aet: str, level: str, keys: dict[str, str], *,
          tls: ssl.SSLContext | None = None, timeout: float = 60.0) -> list[Dataset]:
    """C-FIND (Study Root) at `level` (``STUDY``, ``SERIES`` or ``IMAGE``) with `keys`; the matches.

    Keys with an empty value are return keys; the others match (wildcards,
    ranges and UID lists as the archive supports them).

    Raises
    ------
    AepacsError
        The archive could not be reached, refused the association, or failed the query.
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=(tls, host) if tls else None)
    if not assoc.is_established:
        raise AepacsError(f"{called_aet}@{host}:{port}: association refused or failed")
    matches = []
    try:
        for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if status is None or int(status.Status) not in (Status.SUCCESS, *PENDING):
                raise AepacsError(f"{called_aet}@{host}:{port}: C-FIND failed "
                                  f"({'no response' if status is None else hex(int(status.Status))})")
            if ds is not None and int(status.Status) in PENDING:
                matches.append(ds)
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
    return matches


def _storage_contexts() -> list[tuple[str, list[str]]]:
    """Raw Data Storage (sealed transport objects) first, then common storage classes (decoded)."""
    contexts: list[tuple[str, list[str]]] = [(RAW_DATA_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    for cx in StoragePresentationContexts:
        if cx.abstract_syntax is not None and cx.abstract_syntax != RAW_DATA_STORAGE and len(contexts) < 126:
            contexts.append((cx.abstract_syntax, ALL_TRANSFER_SYNTAXES))
    return contexts


def _not_sent(summary: RetrieveSummary, identifier: Dataset, archive: str) -> None:
    """Add the final response's Failed SOP Instance UID List to `summary.failed` (once per UID)."""
    listed = identifier.get("FailedSOPInstanceUIDList") or []
    uids = [listed] if isinstance(listed, str) else list(listed)
    known = {uid for uid, _ in summary.failed}
    for uid in map(str, uids):
        if uid and uid not in known:
            summary.failed.append((uid, f"{shown(uid)}: {archive} could not send it (tampered, missing or "
                                        f"unreadable there; its log names the reason)"))
            known.add(uid)


def retrieve(host: str, port: int, called_aet: str, calling_aet: str, level: str, value: str,
             keyring: Keyring | RecipientKey, out_dir: Path, *, move_to_self: int | None = None,
             bind: str = "127.0.0.1",
             tls: ssl.SSLContext | None = None, timeout: float = 60.0,
             registry: Registry | None = None) -> RetrieveSummary:
    """Retrieve and decode everything under one patient / study / series / instance.

    Parameters
    ----------
    level : {"patient", "study", "series", "instance"}
    value : str
        Its Patient ID or UID.
    move_to_self : int, optional
        Use C-MOVE to a storage SCP this call runs on `bind`:`move_to_self`
        (the archive must know `calling_aet` as a move destination there).

    Raises
    ------
    AepacsError
        The archive could not be reached or refused the association.
    """
    receiver = Receiver(keyring, out_dir, registry)
    identifier, patient_root = _identifier(level, value)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    tls_args = (tls, host) if tls else None
    handlers: list[EventHandlerType] = [(evt.EVT_C_STORE, receiver.on_store)]
    if move_to_self is None:
        model = (PatientRootQueryRetrieveInformationModelGet if patient_root
                 else StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(model)
        roles: list[_UI] = []
        for sop, syntaxes in _storage_contexts():
            ae.add_requested_context(sop, syntaxes)
            roles.append(build_role(sop, scp_role=True))
        assoc = ae.associate(host, port, ae_title=called_aet, ext_neg=roles, evt_handlers=handlers,
                             tls_args=tls_args)
        server = None
    else:
        model = (PatientRootQueryRetrieveInformationModelMove if patient_root
                 else StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(model)
        for sop, syntaxes in _storage_contexts():
            ae.add_supported_context(sop, syntaxes)
        server = ae.start_server((bind, move_to_self), block=False, evt_handlers=handlers)
        assoc = ae.associate(host, port, ae_title=called_aet, tls_args=tls_args)
    try:
        if not assoc.is_established:
            raise AepacsError(f"{called_aet}@{host}:{port}: association refused or failed")
        responses = (assoc.send_c_get(identifier, model) if server is None
                     else assoc.send_c_move(identifier, calling_aet, model))
        for status, response in responses:
            if status is None:
                raise AepacsError(f"{called_aet}@{host}:{port}: no response (timeout or abort)")
            receiver.summary.status = int(status.Status)
            for kw in ("Completed", "Failed", "Warning"):
                attr = f"NumberOf{kw}Suboperations"
                if attr in status:
                    receiver.summary.sub_ops[kw.lower()] = int(status.get(attr))
            if response is not None and receiver.summary.status not in PENDING:
                _not_sent(receiver.summary, response, f"{called_aet}@{host}:{port}")
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        if server is not None:
            server.shutdown()
    return receiver.summary
