"""The DICOMweb server's lifecycle: uvicorn in a thread of ``aepacs serve``, TLS as the DIMSE server has it."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from aepacs.errors import ConfigError
from aepacs.web.app import Service, build_app
from aepacs.web.auth import certificate_name, common_name

log = logging.getLogger("aepacs.web")

__all__ = ["WebServer"]


class _CertifiedH11(H11Protocol):
    """uvicorn's h11 protocol, with a verified client certificate's subject in every request's scope
    (the ASGI TLS extension's ``client_cert_name``, which uvicorn does not fill itself)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        if not cert:
            return
        app = self.app
        tls = {"client_cert_name": certificate_name(cert), "client_cert_error": None,
               "aepacs_common_name": common_name(cert)}

        async def with_certificate(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await app(scope, receive, send)

        self.app = with_certificate


class WebServer:
    """``web.bind``:``web.port`` serving :func:`~aepacs.web.app.build_app` of `service` until :meth:`stop`.

    TLS when ``server.tls.enabled`` (the same certificate, key and client CAs as
    DIMSE; client certificates asked for when ``web.client_certificates`` lists
    any); no access log, since a URL carries UIDs and query values (the audit
    trail records who asked for what).
    """

    def __init__(self, service: Service) -> None:
        config = service.config
        tls = config.server.tls
        options: dict[str, object] = {}
        if tls.enabled:
            if not tls.certificate or not tls.private_key:
                raise ConfigError("server.tls: enabled needs certificate and private_key")
            options = {"ssl_certfile": str(config.resolve(tls.certificate)),
                       "ssl_keyfile": str(config.resolve(tls.private_key))}
            if tls.ca:
                options["ssl_ca_certs"] = str(config.resolve(tls.ca))
            if tls.require_client_certificate:
                options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            elif config.web.client_certificates:  # asked for, verified when given; a token will do otherwise
                options["ssl_cert_reqs"] = ssl.CERT_OPTIONAL
        if config.web.client_certificates and not (tls.enabled and tls.ca):
            raise ConfigError("web.client_certificates needs TLS with the CAs that sign them (server.tls: enabled, ca)")
        self.scheme = "https" if tls.enabled else "http"
        self.bind, self.port = config.web.bind, config.web.port
        self._server = uvicorn.Server(uvicorn.Config(build_app(service), host=self.bind, port=self.port,
                                                     log_level="warning", access_log=False, lifespan="off",
                                                     http=_CertifiedH11, server_header=False, **options))  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._server.run, name="aepacs-web", daemon=True)

    @property
    def url(self) -> str:
        """The service root, ``http[s]://bind:port/dicomweb``."""
        return f"{self.scheme}://{self.bind}:{self.port}/dicomweb"

    def start(self, timeout: float = 15.0) -> None:
        """Listen; raises ConfigError (the DIMSE server's way) when the port cannot be had."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"web: cannot listen on {self.bind}:{self.port}; set web.port to a free port")
            time.sleep(0.02)
        log.info("DICOMweb on %s", self.url)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish the requests in flight (up to `timeout`)."""
        self._server.should_exit = True
        self._thread.join(timeout)
