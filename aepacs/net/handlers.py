"""The archive SCP's DIMSE handlers: C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE and the association events.

Ingest on C-STORE: the handler takes the encoded dataset as received, checks
it (the statuses below; a structural scan, :mod:`aepacs.dicom.scan`, gives the
same verdict as a full parse), seals it as it is and writes it to the spool
(:mod:`aepacs.pipeline.spool`); then it answers 0x0000. The instance then
survives a crash of the process, and the spool's grouped fsync follows
within milliseconds. Worker processes archive each spool entry (route →
encode → seal → store → index) off the association threads; a restart
archives what is still spooled. A stored instance becomes visible to C-FIND
once archived, typically well under a second later (within ``ingest.max_lag_s``
plus its archiving time on a host that other work keeps busy).

Statuses (PS3.4 B.2.3, :class:`~aepacs.dicom.status.Status`), these four only:
0x0000 stored; 0xA700 out of resources (no room for the instance and its
archiving, spool write failure); 0xA900 dataset does not match (no UIDs, a UID
that is not a UID or other than announced, sequences nested too deep, pixel
data not matching Rows × Columns, a conflicting re-send with ``on_conflict:
reject``); 0xC000 cannot understand (not decodable, or input no check
foresaw). Every failure is logged in one line with the calling AE title and
the SOP Instance UID, never with pixel data or keys, never with a traceback.

The handlers reach the archive through :class:`aepacs.pipeline.archive.Archive`
and :mod:`aepacs.pipeline` only; the association set-up (TLS, allow-list,
limits, health) is :mod:`aepacs.net.server`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, build_context, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import PresentationContext

from aepacs.audit import MINOR_FAILURE, SERIOUS_FAILURE, AuditTrail, Party
from aepacs.audit import SUCCESS as AUDIT_OK
from aepacs.config import Config
from aepacs.crypto.recipients import Recipient
from aepacs.dicom.part10 import file_meta_prefix
from aepacs.dicom.records import check_uid, shown
from aepacs.dicom.scan import scan
from aepacs.dicom.status import Status
from aepacs.dicom.transport import RAW_DATA_STORAGE
from aepacs.errors import AepacsError, DatasetMismatch, InputError, RecipientRefused
from aepacs.net.metrics import Metrics
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.receive import receive, refusal
from aepacs.pipeline.recipients import recipient_for
from aepacs.pipeline.spool import Spool
from aepacs.pipeline.transport import outgoing, transport_key

log = logging.getLogger("aepacs.serve")


@dataclass
class _Session:
    """What one association stored, for its audit record."""

    stored: int = 0
    refused: int = 0
    studies: set[str] = field(default_factory=set)


def _modality_of(data: bytes) -> str:
    """The Modality of a received stream for metrics labels, by the structural scan ("unknown": none found)."""
    scanned = scan(data) if data else None
    return str(scanned.image.get("Modality") or "none") if scanned is not None else "unknown"


def _requestor(event: Event) -> Party:
    req = event.assoc.requestor
    return Party(_calling(event), f"{req.address}:{req.port}")


def _refusal(status: int) -> Iterator[Any]:
    """A C-GET or C-MOVE handler's answer that sends nothing and ends with failure `status`. (The count
    announced is one: with none, pynetdicom answers Success before the handler can give a status.)"""
    yield 1
    yield status, None


def _calling(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _unsendable(sop_uid: str) -> Dataset:
    """What a C-GET/C-MOVE handler yields for an object it cannot send: a failed sub-operation.

    A dataset with only its SOP Instance UID: pynetdicom's C-STORE of it stops
    before anything is sent (no SOP Class UID), which counts the sub-operation
    as failed and lists the UID in the final response's Failed SOP Instance UID
    List (0008,0058), status 0xB000 (0xA702 when every one failed). A ``None``
    would not be counted at all, and the requestor would see a success.
    """
    ds = Dataset()
    ds.SOPInstanceUID = sop_uid
    return ds


def _store_request(event: Event) -> C_STORE:
    """The C-STORE request of a C-STORE event."""
    request = event.request
    if not isinstance(request, C_STORE):
        raise InputError(f"not a C-STORE request ({type(request).__name__})")
    return request


def _announced_uids(event: Event) -> str:
    """The request's Affected SOP Instance UID, after both its UIDs passed :func:`check_uid`.

    Raises
    ------
    DatasetMismatch
        Either is not a valid UID (it would become part of a file meta header).
    """
    request = _store_request(event)
    for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        check_uid(f"C-STORE request's {keyword}", str(getattr(request, keyword, "") or ""))
    return str(request.AffectedSOPInstanceUID)


def received_stream(event: Event) -> bytes:
    """A C-STORE's dataset as a Part 10 stream: the bytes of ``event.encoded_dataset()``.

    Its File Meta Information is encoded directly (0.01 ms instead of 0.2 ms
    through a pydicom dataset: this runs before every acknowledgement).
    """
    request = _store_request(event)
    meta = file_meta_prefix(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                            str(event.context.transfer_syntax), PYNETDICOM_IMPLEMENTATION_UID,
                            PYNETDICOM_IMPLEMENTATION_VERSION)
    if request.DataSet is None:
        raise InputError("C-STORE request without a dataset")
    return b"".join((meta, request.DataSet.getvalue()))


class Handlers:
    """The DIMSE and association handlers of one archive SCP.

    Parameters
    ----------
    config : Config
    archive : Archive
    spool : Spool
        Where C-STORE puts what it acknowledges.
    wake : callable
        Tells the spool workers an entry is waiting.
    metrics : Metrics
    me : Party
        This SCP, as audit records name it.
    """

    def __init__(self, config: Config, archive: Archive, spool: Spool, wake: Callable[[], None], metrics: Metrics,
                 me: Party) -> None:
        self.config, self.archive, self.spool, self.wake, self.metrics = config, archive, spool, wake, metrics
        self.audit: AuditTrail = archive.audit
        self.me = me
        self._sessions: dict[int, _Session] = {}
        self._sessions_lock = threading.Lock()
        self._pseudonym_key = transport_key(config)

    def bindings(self) -> list[EventHandlerType]:
        """The (event, handler) pairs for pynetdicom's ``evt_handlers``."""
        return [(evt.EVT_C_ECHO, lambda event: Status.SUCCESS),
                (evt.EVT_C_STORE, self.on_store),
                (evt.EVT_C_FIND, self.on_find),
                (evt.EVT_C_GET, self.on_get),
                (evt.EVT_C_MOVE, self.on_move),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_REJECTED, self._on_rejected),
                (evt.EVT_RELEASED, self._on_closed),
                (evt.EVT_ABORTED, self._on_closed)]

    def _move_contexts(self, rows: list[Any]) -> list[PresentationContext]:
        """Presentation contexts for a C-MOVE sub-association: what will be sent, nothing else."""
        if self.config.server.retrieve_as == "sealed":
            return [build_context(RAW_DATA_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
        wanted: dict[str, set[str]] = {}
        for row in rows:
            wanted.setdefault(row.sop_class_uid, set()).add(row.transfer_syntax_uid)
        return [build_context(sop, sorted(ts | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
                for sop, ts in list(wanted.items())[:128]]

    # -- association log lines -----------------------------------------------------
    def _on_accepted(self, event: Event) -> None:
        log.info("association accepted from %s (%s:%s)", _calling(event), event.assoc.requestor.address,
                 event.assoc.requestor.port)

    def _on_rejected(self, event: Event) -> None:
        log.warning("association rejected from %s (%s)", _calling(event), event.assoc.requestor.address)
        self.audit.record("association-rejected", outcome=MINOR_FAILURE, source=_requestor(event),
                          destination=self.me, detail="calling AE title not allowed")

    def _session(self, event: Event) -> _Session:
        with self._sessions_lock:
            return self._sessions.setdefault(id(event.assoc), _Session())

    def _on_closed(self, event: Event) -> None:
        log.info("association with %s %s", _calling(event),
                 "released" if event.event is evt.EVT_RELEASED else "aborted")
        with self._sessions_lock:
            session = self._sessions.pop(id(event.assoc), None)
        if session is not None and (session.stored or session.refused):
            self.audit.record("store", outcome=AUDIT_OK if not session.refused else MINOR_FAILURE,
                              source=_requestor(event), destination=self.me, studies=session.studies,
                              objects=session.stored,
                              detail=f"{session.refused} refused" if session.refused else None)

    # -- C-STORE ------------------------------------------------------------------
    def on_store(self, event: Event) -> int:
        """Check the received instance, seal it as it came into the spool; then acknowledge.

        Every outcome is a status of ``docs/CONFORMANCE.md`` with one log line:
        an exception of any kind on this path (a bug included) never reaches
        pynetdicom, which would answer 0xC211/0x0110 and log a traceback.
        """
        announced = ""
        data = b""
        try:
            announced = _announced_uids(event)
            data = received_stream(event)
            uids = receive(self.archive, self.spool, self.config, data, expect_uid=announced)
            modality = uids["Modality"] or "none"
        except Exception as exc:  # every refusal (a bug included) is a status and one log line
            if refusal(exc) == Status.CANNOT_UNDERSTAND and not isinstance(exc, InputError):
                log.debug("C-STORE of %s: traceback", shown(announced), exc_info=True)
                exc = InputError(f"unexpected {type(exc).__name__}: {exc}")
            return self._fail(event, announced, refusal(exc), exc, data)
        self.wake()
        self.metrics.received.labels(f"0x{Status.SUCCESS:04X}", modality).inc()
        self.metrics.bytes_received.inc(len(data))
        session = self._session(event)
        session.stored += 1
        session.studies.add(uids["StudyInstanceUID"])
        return Status.SUCCESS

    def _fail(self, event: Event, uid: str, status: int, exc: BaseException, data: bytes) -> int:
        log.error("C-STORE from %s of %s refused (0x%04X): %s", _calling(event), shown(uid) if uid else "?",
                  status, str(exc)[:300])
        try:
            modality = _modality_of(data)
        except Exception:
            modality = "unknown"
        self.metrics.received.labels(f"0x{status:04X}", modality).inc()
        self._session(event).refused += 1
        return status

    # -- C-FIND ---------------------------------------------------------------------
    def on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        matched, outcome, ident = 0, AUDIT_OK, event.identifier
        try:
            matches = self.archive.find(ident, ae_title=self.config.server.ae_title)
            for rsp in matches:
                if event.is_cancelled:
                    yield Status.CANCEL, None
                    return
                matched += 1
                yield Status.PENDING, rsp
        except DatasetMismatch as exc:
            log.error("C-FIND from %s refused: %s", _calling(event), exc)
            outcome = MINOR_FAILURE
            yield Status.MISMATCH, None
            return
        except AepacsError as exc:
            log.error("C-FIND from %s failed: %s", _calling(event), exc)
            outcome = SERIOUS_FAILURE
            yield Status.OUT_OF_RESOURCES, None
            return
        finally:
            level = str(ident.get("QueryRetrieveLevel", "") or "") if ident is not None else ""
            patient = str(ident.get("PatientID", "") or "") if ident is not None else ""
            study = str(ident.get("StudyInstanceUID", "") or "") if ident is not None else ""
            self.metrics.queries.labels(level or "?").inc()
            self.audit.record("query", outcome=outcome, source=_requestor(event), destination=self.me,
                              patients=[patient] if patient and not set(patient) & set("*?\\") else [],
                              studies=[u for u in study.split("\\") if u and not set(u) & set("*?")],
                              detail=f"C-FIND at {level or '?'} level, {matched} matches")
        yield Status.SUCCESS, None

    # -- C-GET / C-MOVE -----------------------------------------------------------------
    def _outgoing(self, event: Event, rows: list[Any], failed: list[str],
                  recipient: Recipient | None) -> Iterator[tuple[int, Dataset | None]]:
        """One dataset per row (sealed to `recipient`, if any); a row that cannot be sent is a failed
        sub-operation, its UID put in `failed`."""
        for row in rows:
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            try:
                dataset = outgoing(self.archive, row, self._pseudonym_key, recipient)
            except Exception as exc:  # tampered, key missing, undecodable: this object fails, not the rest
                log.error("retrieve by %s of %s failed: %s", _calling(event), shown(row.sop_uid), exc)
                self.metrics.retrieve_failures.inc()
                failed.append(row.sop_uid)
                yield Status.PENDING, _unsendable(row.sop_uid)
                continue
            yield Status.PENDING, dataset

    def _rows(self, event: Event) -> list[Any] | None:
        try:
            return self.archive.selection(event.identifier)
        except DatasetMismatch as exc:
            log.error("retrieve from %s refused: %s", _calling(event), exc)
            return None

    def _suboperations(self, event: Event, rows: list[Any] | None, destination: Party) -> Iterator[Any]:
        """The handler's tail for C-GET and C-MOVE: the count, then one dataset per instance."""
        if rows is None:
            self.audit.record("retrieve", outcome=MINOR_FAILURE, source=self.me, destination=destination,
                              detail="refused: no unique key")
            yield from _refusal(Status.MISMATCH)
            return
        recipient = None
        if self.config.server.retrieve_as == "sealed":  # sealed to the receiving AE's recipient key, if any
            try:
                recipient = recipient_for(self.archive, aet=destination.ae)
            except RecipientRefused as exc:
                log.error("retrieve by %s refused: %s", _calling(event), exc)
                self.audit.record("retrieve", outcome=MINOR_FAILURE, source=self.me, destination=destination,
                                  studies=sorted({r.study_uid for r in rows}), detail=f"refused: {exc}")
                yield from _refusal(Status.NOT_AUTHORIZED)
                return
        yield len(rows)
        failed: list[str] = []
        yield from self._outgoing(event, rows, failed, recipient)
        self.metrics.retrieved.labels(self.config.server.retrieve_as).inc(len(rows) - len(failed))
        self.audit.record("retrieve", outcome=MINOR_FAILURE if failed else AUDIT_OK, source=self.me,
                          destination=destination, patients=[r.patient_id for r in rows],
                          studies=[r.study_uid for r in rows], objects=len(rows) - len(failed),
                          detail=f"{self.config.server.retrieve_as} objects"
                                 + (f" sealed to recipient {recipient.name} ({recipient.id})" if recipient else "")
                                 + f", requested by {_calling(event)}"
                                 + (f"; {len(failed)} could not be sent" if failed else ""))

    def on_get(self, event: Event) -> Iterator[Any]:
        yield from self._suboperations(event, self._rows(event), _requestor(event))

    def on_move(self, event: Event) -> Iterator[Any]:
        dest = str(event.move_destination).strip()
        known = self.config.server.move_destinations.get(dest)
        if known is None:
            log.error("C-MOVE from %s to unknown destination %r", _calling(event), dest)
            yield None, None  # pynetdicom answers 0xA801 (Status.MOVE_DESTINATION_UNKNOWN)
            return
        rows = self._rows(event)
        yield known[0], known[1], {"contexts": self._move_contexts(rows or [])}
        yield from self._suboperations(event, rows, Party(dest, f"{known[0]}:{known[1]}"))
