"""The archive SCP: its Application Entity, TLS, allow-list, limits, lifecycle and health.

:class:`ArchiveServer` builds the AE (every storage SOP class in every transfer
syntax, the Patient and Study Root Query/Retrieve models, Verification),
listens (TLS when configured, calling AE titles checked against the
allow-list), runs the spool and its workers, serves ``/metrics`` and
``/health``, and shuts down without losing what it acknowledged. The DIMSE
handlers are :mod:`aepacs.net.handlers`; the statuses they answer,
:mod:`aepacs.dicom.status`.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import time
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from aepacs.audit import Party
from aepacs.config import Config
from aepacs.crypto.keyring import Keyring
from aepacs.errors import ConfigError, SealError, StoreFullError
from aepacs.net.handlers import Handlers
from aepacs.net.metrics import Metrics, MetricsServer
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.codecs import check_routes
from aepacs.pipeline.ingest import IngestResult
from aepacs.pipeline.spool import Spool
from aepacs.pipeline.workers import SpoolWorker
from aepacs.store.index import sqlite_path
from aepacs.web.app import Service
from aepacs.web.server import WebServer

log = logging.getLogger("aepacs.serve")

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
        if config.blind:
            try:
                self.archive.seal_recipients()
            except SealError as exc:
                raise ConfigError(str(exc)) from None
        self.spool = Spool(config.spool_path)
        self.metrics = Metrics()
        self.worker = SpoolWorker(config, self.spool, config.ingest.workers if workers is None else workers,
                                  observer=self._archived)
        self.http: MetricsServer | None = None
        self.web: WebServer | None = None
        self.ae = self._build_ae()
        self.server: ThreadedAssociationServer | None = None
        self.audit = self.archive.audit
        self.handlers = Handlers(config, self.archive, self.spool, self.worker.wake, self.metrics, self._me())

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
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=False, scp_role=True)
        for sop in QR_CONTEXTS:
            ae.add_supported_context(sop)
        return ae

    def start(self) -> ThreadedAssociationServer:
        """Start listening (in background threads), the spool flusher and the spool workers."""
        cfg = self.config.server
        try:  # first, so that an address in use is a configuration error at once, before workers start
            server = self.ae.start_server((cfg.bind, cfg.port), block=False, evt_handlers=self.handlers.bindings(),
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
        if self.config.web.port:
            try:
                self.web = WebServer(Service(self.config, self.archive, self.spool, self.worker.wake, self._me()))
                self.web.start()
            except ConfigError:
                server.shutdown()
                if self.http is not None:
                    self.http.stop()
                raise
            if self.config.web.anonymous:
                log.warning("web.anonymous: DICOMweb answers without a token; for a loopback demo only")
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
            self.archive.check_room(0)
            self.spool.check_room(0, self.config.store.min_free_mb * 1_000_000)
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
        if self.web is not None:
            self.web.stop()
            self.web = None
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

