"""The archive SCP: C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE over pynetdicom.

Ingest on C-STORE: the handler takes the encoded dataset as received, checks
it (the statuses below; a structural scan, :mod:`aepacs.codec.scan`, gives the
same verdict as a full parse), seals it as it is and writes it to the spool
(:mod:`aepacs.pipeline.spool`); then it answers 0x0000. The instance then
survives a crash of the process, and the spool's grouped fsync follows
within milliseconds. Worker processes archive each spool entry (route →
encode → seal → store → index) off the association threads; a restart
archives what is still spooled. A stored instance becomes visible to C-FIND
once archived, typically well under a second later (within ``ingest.max_lag_s``
plus its archiving time on a host that other work keeps busy).

Statuses (PS3.4 B.2.3), these four only: 0x0000 stored; 0xA700 out of
resources (no room for the instance and its archiving, spool write failure);
0xA900 dataset does not match (no UIDs, a UID that is not a UID or other than
announced, sequences nested too deep, pixel data not matching Rows × Columns,
a conflicting re-send with ``on_conflict: reject``); 0xC000 cannot understand
(not decodable, or input no check foresaw). Every failure is logged in one
line with the calling AE title and the SOP Instance UID, never with pixel
data or keys, never with a traceback.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import (AE, ALL_TRANSFER_SYNTAXES, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION,
                        AllStoragePresentationContexts, build_context, evt)
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  PatientRootQueryRetrieveInformationModelGet,
                                  PatientRootQueryRetrieveInformationModelMove,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)
from pynetdicom.transport import ThreadedAssociationServer

from aepacs.audit import MINOR_FAILURE, SERIOUS_FAILURE, Party
from aepacs.audit import SUCCESS as AUDIT_OK
from aepacs.codec.part10 import file_meta_prefix
from aepacs.codec.scan import scan
from aepacs.config import Config
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.pseudonym import site_key
from aepacs.errors import AepacsError, ConfigError, DatasetMismatch, InputError, StoreFullError
from aepacs.net.metrics import Metrics, MetricsServer
from aepacs.net.query import find, retrieve_rows
from aepacs.net.transport import RAW_DATA_STORAGE, make_transport
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.ingest import IngestResult, check_received, check_routes
from aepacs.pipeline.spool import Spool, SpoolWorker, seal_entry
from aepacs.pipeline.retrieve import fetch, fetch_blob
from aepacs.store.index import sqlite_path
from aepacs.store.records import check_uid, shown

log = logging.getLogger("aepacs.serve")

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000

QR_CONTEXTS = (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
               PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelFind,
               StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove)


def server_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of the server (TLS 1.2 or newer, per BCP 195), or None when TLS is off."""
    tls = config.server.tls
    if not tls.enabled:
        return None
    if not tls.certificate or not tls.private_key:
        raise ConfigError("server.tls: enabled needs certificate and private_key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(config.resolve(tls.certificate)), str(config.resolve(tls.private_key)))
    if tls.ca:
        ctx.load_verify_locations(str(config.resolve(tls.ca)))
    if tls.require_client_certificate:
        if not tls.ca:
            raise ConfigError("server.tls: require_client_certificate needs ca")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def refuse_shared(config: Config) -> None:
    """Refuse to serve an archive whose SQLite index other local users may read.

    (A keyring others may read is refused by :meth:`Keyring.load`, for every command.)

    Raises
    ------
    ConfigError
        Naming the file, its mode and the fix (``aepacs serve`` exits 2).
    """
    index = sqlite_path(config.index_url)
    if index is None:
        return
    for path in (index, index.with_name(index.name + "-wal"), index.with_name(index.name + "-shm")):
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            raise ConfigError(f"{path} is readable by group or others (mode {mode:04o}) and holds patient names, "
                              f"IDs and birth dates; run 'chmod 600 {path}' (and 'chmod 700' on its directory)")


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


def _requestor(event: Any) -> Party:
    req = event.assoc.requestor
    return Party(_calling(event), f"{req.address}:{req.port}")


def _calling(event: Any) -> str:
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


def _announced_uids(event: Any) -> str:
    """The request's Affected SOP Instance UID, after both its UIDs passed :func:`check_uid`.

    Raises
    ------
    DatasetMismatch
        Either is not a valid UID (it would become part of a file meta header).
    """
    request = event.request
    for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        check_uid(f"C-STORE request's {keyword}", str(getattr(request, keyword, "") or ""))
    return str(request.AffectedSOPInstanceUID)


def received_stream(event: Any) -> bytes:
    """A C-STORE's dataset as a Part 10 stream: the bytes of ``event.encoded_dataset()``.

    Its File Meta Information is encoded directly (0.01 ms instead of 0.2 ms
    through a pydicom dataset: this runs before every acknowledgement).
    """
    request = event.request
    meta = file_meta_prefix(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                            str(event.context.transfer_syntax), PYNETDICOM_IMPLEMENTATION_UID,
                            PYNETDICOM_IMPLEMENTATION_VERSION)
    return b"".join((meta, request.DataSet.getvalue()))


class ArchiveServer:
    """The archive SCP of one configuration.

    Parameters
    ----------
    config : Config
        ``server`` section: AE title, bind address, port, limits, allow-list,
        move destinations, TLS, ``retrieve_as``.
    keyring : Keyring, optional
        Defaults to the configured keyring.
    workers : int, optional
        Conversion worker processes (default ``ingest.workers``).
    """

    def __init__(self, config: Config, keyring: Keyring | None = None, workers: int | None = None) -> None:
        self.config = config
        refuse_shared(config)
        check_routes(config)
        self.archive = Archive(config, keyring)
        self.spool = Spool(config.spool_path)
        self.metrics = Metrics()
        self.worker = SpoolWorker(config, self.spool, config.ingest.workers if workers is None else workers,
                                  observer=self._archived)
        self.http: MetricsServer | None = None
        self.ae = self._build_ae()
        self.server: ThreadedAssociationServer | None = None
        self.audit = self.archive.audit
        self._sessions: dict[int, _Session] = {}
        self._sessions_lock = threading.Lock()
        self._pseudonym_key = (site_key(config.pseudonym_key_path)
                               if config.transport.identifiers == "pseudonymous" else None)

    # -- set-up -----------------------------------------------------------------
    def _build_ae(self) -> AE:
        cfg = self.config.server
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.maximum_pdu_size = cfg.max_pdu
        if cfg.allowed_calling_aets:
            ae.require_calling_aet = list(cfg.allowed_calling_aets)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # as Storage SCP for C-STORE, and as Storage SCU towards a C-GET requestor
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=False, scp_role=True)
        for sop in QR_CONTEXTS:
            ae.add_supported_context(sop)
        return ae

    def _move_contexts(self, rows: list[Any]) -> list[Any]:
        """Presentation contexts for a C-MOVE sub-association: what will be sent, nothing else."""
        if self.config.server.retrieve_as == "sealed":
            return [build_context(RAW_DATA_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
        wanted: dict[str, set[str]] = {}
        for row in rows:
            wanted.setdefault(row.sop_class_uid, set()).add(row.transfer_syntax_uid)
        return [build_context(sop, sorted(ts | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
                for sop, ts in list(wanted.items())[:128]]

    def _handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_C_ECHO, lambda event: SUCCESS),
                (evt.EVT_C_STORE, self.on_store),
                (evt.EVT_C_FIND, self.on_find),
                (evt.EVT_C_GET, self.on_get),
                (evt.EVT_C_MOVE, self.on_move),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_REJECTED, self._on_rejected),
                (evt.EVT_RELEASED, self._on_closed),
                (evt.EVT_ABORTED, self._on_closed)]

    def start(self) -> ThreadedAssociationServer:
        """Start listening (in background threads), the spool flusher and the spool workers."""
        cfg = self.config.server
        try:  # first, so that an address in use is a configuration error at once, before workers start
            server = self.ae.start_server((cfg.bind, cfg.port), block=False, evt_handlers=self._handlers(),
                                          ssl_context=server_ssl_context(self.config))
            assert server is not None  # block=False returns the server
        except OSError as exc:
            raise ConfigError(f"server: cannot listen on {cfg.bind}:{cfg.port} ({exc.strerror or exc}); "
                              f"set server.port (or --port) to a free port") from None
        if self.config.metrics.port:
            try:
                self.http = MetricsServer(self.metrics, self.health, self._refresh, self.config.metrics.bind,
                                          self.config.metrics.port)
            except OSError as exc:
                server.shutdown()
                raise ConfigError(f"metrics: cannot listen on {self.config.metrics.bind}:{self.config.metrics.port} "
                                  f"({exc.strerror or exc}); set metrics.port to a free port") from None
        self.server = server
        # leftovers of a crash (old enough not to be in flight): a walk of the whole store, so in the background
        threading.Thread(target=self._sweep, name="aepacs-sweep", daemon=True).start()
        self.spool.start()
        self.worker.start()  # archives what a previous run left in the spool first
        log.info("listening on %s:%d as %s%s", cfg.bind, cfg.port, cfg.ae_title,
                 " (TLS)" if cfg.tls.enabled else "")
        if self.http is not None:
            self.http.start()
            log.info("metrics on http://%s:%d/metrics, health on /health", self.config.metrics.bind, self.http.port)
        self.audit.record("application-start", destination=self._me(),
                          detail=f"aepacs serve on {cfg.bind}:{cfg.port}{' (TLS)' if cfg.tls.enabled else ''}")
        return server

    def _archived(self, result: IngestResult | None) -> None:
        if result is None:
            self.metrics.archive_failures.inc()
        else:
            self.metrics.archived_one(result)

    def _refresh(self) -> None:
        self.metrics.spool_depth.set(len(self.spool.entries()))
        self.metrics.associations.set(len(self.ae.active_associations))

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the archive can take data now, and the figures that say so (``/health``)."""
        problems = []
        if self.server is None:
            problems.append("not listening")
        if not self.worker.alive:
            problems.append("spool workers stopped")
        try:
            self.archive.store.check_free(0, self.config.store.min_free_mb * 1_000_000)
        except StoreFullError as exc:
            problems.append(str(exc))
        details: dict[str, Any] = {"ae_title": self.config.server.ae_title,
                                   "spool_depth": len(self.spool.entries()),
                                   "associations": len(self.ae.active_associations),
                                   "key_version": self.archive.keyring.active_version}
        if problems:
            details["problems"] = problems
        return not problems, details

    def _me(self) -> Party:
        cfg = self.config.server
        return Party(cfg.ae_title, f"{cfg.bind}:{cfg.port}")

    def _sweep(self) -> None:
        try:
            self.archive.sweep_orphans()
        except Exception as exc:  # housekeeping only: never take the server down
            log.error("sweep of unreferenced blobs failed: %s", exc)

    def stop(self, timeout: float = 30.0, drain: float = 60.0) -> None:
        """Stop accepting; let open associations finish (up to `timeout`); archive what was
        acknowledged (up to `drain` seconds, the rest at the next start); stop the workers."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        deadline = time.monotonic() + timeout
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in self.ae.active_associations:
            assoc.abort()
        self.spool.close()
        if not self.worker.wait_idle(drain):
            log.warning("%d acknowledged instances still spooled; they are archived at the next start",
                        len(self.spool.entries()))
        self.worker.stop()
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.audit.record("application-stop", destination=self._me())
        self.archive.close()
        log.info("stopped")

    def serve_forever(self) -> int:
        """Run until SIGTERM or SIGINT; shut down cleanly and return 0."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        stop.wait()
        log.info("shutting down: no new associations; finishing open ones")
        self.stop()
        return 0

    # -- association log lines -----------------------------------------------------
    def _on_accepted(self, event: Any) -> None:
        log.info("association accepted from %s (%s:%s)", _calling(event), event.assoc.requestor.address,
                 event.assoc.requestor.port)

    def _on_rejected(self, event: Any) -> None:
        log.warning("association rejected from %s (%s)", _calling(event), event.assoc.requestor.address)
        self.audit.record("association-rejected", outcome=MINOR_FAILURE, source=_requestor(event),
                          destination=self._me(), detail="calling AE title not allowed")

    def _session(self, event: Any) -> _Session:
        with self._sessions_lock:
            return self._sessions.setdefault(id(event.assoc), _Session())

    def _on_closed(self, event: Any) -> None:
        log.info("association with %s %s", _calling(event),
                 "released" if event.event is evt.EVT_RELEASED else "aborted")
        with self._sessions_lock:
            session = self._sessions.pop(id(event.assoc), None)
        if session is not None and (session.stored or session.refused):
            self.audit.record("store", outcome=AUDIT_OK if not session.refused else MINOR_FAILURE,
                              source=_requestor(event), destination=self._me(), studies=session.studies,
                              objects=session.stored,
                              detail=f"{session.refused} refused" if session.refused else None)

    # -- C-STORE ------------------------------------------------------------------
    def on_store(self, event: Any) -> int:
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
            uids = check_received(data, expect_uid=announced,  # a structural scan, no full parse
                                  max_depth=self.config.ingest.max_sequence_depth)
            modality = uids["Modality"] or "none"
            if self.config.ingest.on_conflict == "reject":
                known = self.archive.index.source_sha256(uids["SOPInstanceUID"])
                if known is not None and known != hashlib.sha256(data).hexdigest():
                    raise DatasetMismatch("a different object with this SOP Instance UID is already archived")
            self.archive.store.check_free(self.spool.admission_need(len(data)),
                                          self.config.store.min_free_mb * 1_000_000)
            self.spool.put(seal_entry(data, uids["SOPInstanceUID"], uids["StudyInstanceUID"],
                                      self.archive.keyring), uids["SOPInstanceUID"])
        except StoreFullError as exc:
            return self._fail(event, announced, OUT_OF_RESOURCES, exc, data)
        except DatasetMismatch as exc:
            return self._fail(event, announced, MISMATCH, exc, data)
        except InputError as exc:
            return self._fail(event, announced, CANNOT_UNDERSTAND, exc, data)
        except (AepacsError, OSError, MemoryError) as exc:  # spool, store, keyring, index: resources
            return self._fail(event, announced, OUT_OF_RESOURCES, exc, data)
        except Exception as exc:  # input no check foresaw (a bug): refused as not understood, one line
            log.debug("C-STORE of %s: traceback", shown(announced), exc_info=True)
            return self._fail(event, announced, CANNOT_UNDERSTAND,
                              InputError(f"unexpected {type(exc).__name__}: {exc}"), data)
        self.worker.wake()
        self.metrics.received.labels("0x0000", modality).inc()
        self.metrics.bytes_received.inc(len(data))
        session = self._session(event)
        session.stored += 1
        session.studies.add(uids["StudyInstanceUID"])
        return SUCCESS

    def _fail(self, event: Any, uid: str, status: int, exc: BaseException, data: bytes) -> int:
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
    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        matched, outcome, ident = 0, AUDIT_OK, event.identifier
        try:
            matches = find(self.archive.index, ident, ae_title=self.config.server.ae_title)
            for rsp in matches:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                matched += 1
                yield PENDING, rsp
        except DatasetMismatch as exc:
            log.error("C-FIND from %s refused: %s", _calling(event), exc)
            outcome = MINOR_FAILURE
            yield MISMATCH, None
            return
        except AepacsError as exc:
            log.error("C-FIND from %s failed: %s", _calling(event), exc)
            outcome = SERIOUS_FAILURE
            yield OUT_OF_RESOURCES, None
            return
        finally:
            level = str(ident.get("QueryRetrieveLevel", "") or "") if ident is not None else ""
            patient = str(ident.get("PatientID", "") or "") if ident is not None else ""
            study = str(ident.get("StudyInstanceUID", "") or "") if ident is not None else ""
            self.metrics.queries.labels(level or "?").inc()
            self.audit.record("query", outcome=outcome, source=_requestor(event), destination=self._me(),
                              patients=[patient] if patient and not set(patient) & set("*?\\") else [],
                              studies=[u for u in study.split("\\") if u and not set(u) & set("*?")],
                              detail=f"C-FIND at {level or '?'} level, {matched} matches")
        yield SUCCESS, None

    # -- C-GET / C-MOVE -----------------------------------------------------------------
    def _outgoing(self, event: Any, rows: list[Any], failed: list[str]) -> Iterator[tuple[int, Dataset | None]]:
        """One dataset per row; a row that cannot be sent is a failed sub-operation, its UID put in `failed`."""
        for row in rows:
            if event.is_cancelled:
                yield CANCEL, None
                return
            try:
                dataset = self._dataset_for(row)
            except Exception as exc:  # tampered, key missing, undecodable: this object fails, not the rest
                log.error("retrieve by %s of %s failed: %s", _calling(event), shown(row.sop_uid), exc)
                self.metrics.retrieve_failures.inc()
                failed.append(row.sop_uid)
                yield PENDING, _unsendable(row.sop_uid)
                continue
            yield PENDING, dataset

    def _dataset_for(self, row: Any) -> Dataset:
        """What is sent for one instance: its sealed transport object, or the decoded original."""
        if self.config.server.retrieve_as == "decoded":
            return pydicom.dcmread(BytesIO(fetch(self.archive, row.sop_uid)))
        current, blob = fetch_blob(self.archive, row.sop_uid)
        return make_transport(blob, current, self._pseudonym_key)

    def _rows(self, event: Any) -> list[Any] | None:
        try:
            return retrieve_rows(self.archive.index, event.identifier)
        except DatasetMismatch as exc:
            log.error("retrieve from %s refused: %s", _calling(event), exc)
            return None

    def _suboperations(self, event: Any, rows: list[Any] | None, destination: Party) -> Iterator[Any]:
        """The handler's tail for C-GET and C-MOVE: the count, then one dataset per instance."""
        if rows is None:
            self.audit.record("retrieve", outcome=MINOR_FAILURE, source=self._me(), destination=destination,
                              detail="refused: no unique key")
            yield 0
            yield MISMATCH, None
            return
        yield len(rows)
        failed: list[str] = []
        yield from self._outgoing(event, rows, failed)
        self.metrics.retrieved.labels(self.config.server.retrieve_as).inc(len(rows) - len(failed))
        self.audit.record("retrieve", outcome=MINOR_FAILURE if failed else AUDIT_OK, source=self._me(),
                          destination=destination, patients=[r.patient_id for r in rows],
                          studies=[r.study_uid for r in rows], objects=len(rows) - len(failed),
                          detail=f"{self.config.server.retrieve_as} objects, requested by {_calling(event)}"
                                 + (f"; {len(failed)} could not be sent" if failed else ""))

    def on_get(self, event: Any) -> Iterator[Any]:
        yield from self._suboperations(event, self._rows(event), _requestor(event))

    def on_move(self, event: Any) -> Iterator[Any]:
        dest = str(event.move_destination).strip()
        known = self.config.server.move_destinations.get(dest)
        if known is None:
            log.error("C-MOVE from %s to unknown destination %r", _calling(event), dest)
            yield None, None  # pynetdicom answers 0xA801
            return
        rows = self._rows(event)
        yield known[0], known[1], {"contexts": self._move_contexts(rows or [])}
        yield from self._suboperations(event, rows, Party(dest, f"{known[0]}:{known[1]}"))
