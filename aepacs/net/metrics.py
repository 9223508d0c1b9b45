"""``aepacs serve`` observability: Prometheus metrics and a health check over loopback HTTP.

``GET /metrics`` answers in the Prometheus text format; ``GET /health`` answers
200 with a JSON summary while the archive can take data (listening, spool
workers alive, store above its free-space floor), else 503 with the reason.
Each server has its own registry, so servers in one process (tests) do not mix.

Counters (``_total``) only ever grow; a scrape every 15-60 s is plenty.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from aepacs.pipeline.ingest import IngestResult

log = logging.getLogger(__name__)

#: seconds; spans a 64x64 lossless object (ms) to a 2 k x 2 k learned one (s)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

__all__ = ["Metrics", "MetricsServer"]


class Metrics:
    """The archive server's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("aepacs_instances_received", "C-STORE requests answered, by DICOM status and "
                                "modality", ["status", "modality"], registry=r)
        self.bytes_received = Counter("aepacs_bytes_received", "Bytes of instances acknowledged", registry=r)
        self.archived = Counter("aepacs_instances_archived", "Instances archived in their final form, by "
                                "modality and codec", ["modality", "codec"], registry=r)
        self.bytes_stored = Counter("aepacs_bytes_stored", "Bytes of sealed blobs written", registry=r)
        self.bytes_source = Counter("aepacs_bytes_source", "Bytes of the instances those blobs hold", registry=r)
        self.encode_seconds = Histogram("aepacs_encode_seconds", "Route codec time per instance (decode, "
                                        "model, entropy coding, round-trip check)", ["codec"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.seal_seconds = Histogram("aepacs_seal_seconds", "AES-256-GCM sealing time per instance",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.gate_fallbacks = Counter("aepacs_quality_gate_fallbacks", "Objects a learned route stored "
                                      "losslessly instead (below the quality floor, or not codable)", ["model"],
                                      registry=r)
        self.archive_failures = Counter("aepacs_archive_failures", "Spool entries that failed to archive "
                                        "(retried)", registry=r)
        self.spool_depth = Gauge("aepacs_spool_depth", "Acknowledged instances waiting in the spool", registry=r)
        self.associations = Gauge("aepacs_associations_open", "Open DICOM associations", registry=r)
        self.queries = Counter("aepacs_queries", "C-FIND requests answered", ["level"], registry=r)
        self.retrieved = Counter("aepacs_instances_retrieved", "Instances sent by C-GET / C-MOVE", ["kind"],
                                 registry=r)
        self.retrieve_failures = Counter("aepacs_retrieve_failures", "Instances a C-GET / C-MOVE could not send "
                                         "(tampered, missing, key or model missing)", registry=r)

    def archived_one(self, result: IngestResult) -> None:
        """Count one spool entry the workers archived (an :class:`~aepacs.pipeline.ingest.IngestResult`)."""
        if result.status != "added":
            return
        modality = result.modality or "none"
        self.archived.labels(modality, result.codec).inc()
        self.bytes_stored.inc(result.blob_size)
        self.bytes_source.inc(result.source_size)
        self.encode_seconds.labels(result.codec).observe(result.encode_s)
        self.seal_seconds.observe(result.seal_s)
        if result.gate:
            self.gate_fallbacks.labels(result.gate).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` and ``/health`` on a loopback port, in a background thread.

    Parameters
    ----------
    metrics : Metrics
    health : callable
        Returns ``(healthy, details)``; called on every ``/health`` request.
    refresh : callable
        Called before each scrape (gauges that are read, not counted).
    bind, port : str, int
        Where to listen (port 0: any free port; see :attr:`port`).
    """

    def __init__(self, metrics: Metrics, health: Callable[[], tuple[bool, dict[str, Any]]],
                 refresh: Callable[[], None], bind: str, port: int) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    refresh()
                    self._send(200, outer.metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/health":
                    ok, details = health()
                    body = json.dumps({"status": "ok" if ok else "unavailable", **details}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /health\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except ConnectionError:  # a load balancer's check that read the status line and left
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                log.debug("metrics http: " + format, *args)

        self.metrics = metrics
        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="aepacs-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
