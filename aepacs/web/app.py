"""The DICOMweb origin server (PS3.18): QIDO-RS, WADO-RS and STOW-RS over the archive ``aepacs serve`` runs.

Resources, under ``/dicomweb``:

* QIDO-RS ``GET /studies``, ``/series``, ``/instances``, ``/studies/{study}/series``,
  ``/studies/{study}/instances``, ``/studies/{study}/series/{series}/instances``
  (:mod:`aepacs.web.qido`: the C-FIND matcher);
* WADO-RS ``GET /studies/{study}[/series/{series}[/instances/{instance}]]``
  (``multipart/related; type="application/dicom"``) and ``.../metadata``
  (DICOM JSON); in ``retrieve_as: decoded`` the originals (a lossy route's
  derived image), in ``sealed`` the sealed transport objects, as over DIMSE;
* STOW-RS ``POST /studies[/{study}]``: each part through the same acceptance
  as C-STORE (:mod:`aepacs.pipeline.receive`), answered with the same statuses.

Every request needs a bearer token or an allowed client certificate
(:mod:`aepacs.web.auth`) unless the site set ``web.anonymous``; a refused one is answered 401 and audited. The
endpoints are plain functions run in Starlette's thread pool: the archive's
index and stores are synchronous.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.cookies import SimpleCookie
from io import BytesIO
from itertools import islice
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aepacs.audit import MINOR_FAILURE, AuditTrail, Party
from aepacs.audit import SUCCESS as AUDIT_OK
from aepacs.config import Config
from aepacs.crypto.recipients import Recipient
from aepacs.dicom.records import shown
from aepacs.errors import InputError, RecipientRefused
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.receive import receive, refusal
from aepacs.pipeline.recipients import recipient_for
from aepacs.pipeline.retrieve import check_opens, fetch, sealed_for
from aepacs.pipeline.spool import Spool
from aepacs.pipeline.transport import outgoing, transport_key
from aepacs.web import multipart, pixels, qido, viewer
from aepacs.web.auth import Tokens, bearer, digest

log = logging.getLogger("aepacs.web")

#: the DICOMweb service root; every path under it needs a token
ROOT = "/dicomweb"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
__all__ = ["Service", "build_app"]


def _part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class StreamAborted(Exception):
    """A streamed answer that cannot be completed (an object failed after the status went out): the
    connection is closed without the closing boundary, so the client cannot take it for whole."""


def _warnings(failed: list[str]) -> list[str]:
    """The ``Warning`` header values naming the instances that could not be opened."""
    return [f'299 aepacs "{uid}: cannot be opened (tampered, or its key is not in the keyring)"' for uid in failed]


def _pixel_error(exc: pixels.PixelError) -> Response:
    status = 404 if isinstance(exc, pixels.NoSuchFrame) else 406 if isinstance(exc, pixels.NotAcceptable) else 400
    return JSONResponse({"error": str(exc)}, status_code=status)


def _bearer(request: Request) -> str | None:
    """The bearer token a request carries (its header, or a viewer session's cookie, as the guard takes
    them), if any."""
    return bearer(request.headers.get("authorization")) or request.cookies.get(viewer.COOKIE) or None


def _client(request: Request) -> Party:
    host = request.client.host if request.client else "?"
    port = request.client.port if request.client else 0
    return Party(request.headers.get("user-agent", "DICOMweb client")[:64], f"{host}:{port}")


@dataclass
class Service:
    """What the DICOMweb endpoints work on: the archive, its spool and audit trail, as ``aepacs serve`` has them."""

    config: Config
    archive: Archive
    spool: Spool
    wake: Callable[[], None]
    me: Party

    def __post_init__(self) -> None:
        self._pseudonym_key = transport_key(self.config)  # read once, not per instance sent

    @property
    def audit(self) -> AuditTrail:
        return self.archive.audit

    def root(self, request: Request) -> str:
        """The service root URL as this client reached it (``…/dicomweb``): its Host header, with the
        port this server listens on where the header names none (some clients leave it out)."""
        host = request.headers.get("host") or self.config.web.bind
        port = (request.scope.get("server") or (None, None))[1]
        if ":" not in host.rsplit("]", 1)[-1] and port not in (None, 80, 443):
            host = f"{host}:{port}"
        return f"{request.url.scheme}://{host}/dicomweb"

    # -- QIDO-RS ----------------------------------------------------------------------
    def search(self, request: Request, level: str) -> Response:
        path = {k: v for k, v in (("StudyInstanceUID", request.path_params.get("study")),
                                  ("SeriesInstanceUID", request.path_params.get("series"))) if v}
        params: dict[str, list[str]] = {}
        for name, value in request.query_params.multi_items():
            params.setdefault(name, []).append(value)
        outcome, count = AUDIT_OK, 0
        try:
            search = qido.identifier(level, path, params)
            matches = self.archive.find(search.identifier, ae_title=self.config.server.ae_title,
                                        offset=search.offset, limit=search.limit)
            body = qido.response(matches, level, self.root(request))
            count = len(body)
        except InputError as exc:
            outcome = MINOR_FAILURE
            return JSONResponse({"error": str(exc)}, status_code=400)
        finally:
            self.audit.record("query", outcome=outcome, source=_client(request), destination=self.me,
                              studies=[path["StudyInstanceUID"]] if "StudyInstanceUID" in path else [],
                              detail=f"QIDO-RS at {level} level, {count} matches")
        headers = {"Warning": ", ".join(search.warnings)} if search.warnings else {}
        if not body:
            return Response(status_code=204, headers=headers)
        return JSONResponse(body, media_type=DICOM_JSON, headers=headers)

    # -- WADO-RS ----------------------------------------------------------------------
    def _rows(self, request: Request) -> list[Any]:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = request.path_params["study"]
        if "series" in request.path_params:
            ident.QueryRetrieveLevel = "SERIES"
            ident.SeriesInstanceUID = request.path_params["series"]
        if "instance" in request.path_params:
            ident.QueryRetrieveLevel = "IMAGE"
            ident.SOPInstanceUID = request.path_params["instance"]
        return self.archive.selection(ident)

    def _dataset(self, row: Any) -> Dataset:
        return outgoing(self.archive, row, self._pseudonym_key)

    def _map(self, rows: list[Any], what: str, convert: Callable[[Any], Any]) -> tuple[list[tuple[Any, Any]],
                                                                                      list[str]]:
        """(row, `convert` of it) for each of `rows` that converts; the UIDs of those that could not be
        opened (named, logged). Opening and decoding release the GIL (AES-GCM, SHA-256, the numba
        decoders): one thread per core."""
        def one(row: Any) -> tuple[bool, Any]:
            try:
                return True, (row, convert(row))
            except Exception as exc:  # tampered, key missing, undecodable: this object fails, not the rest
                log.error("WADO-RS %s of %s failed: %s", what, shown(row.sop_uid), exc)
                return False, row.sop_uid

        with ThreadPoolExecutor(min(len(rows), os.cpu_count() or 1) or 1) as pool:
            results = list(pool.map(one, rows))
        return [value for ok, value in results if ok], [value for ok, value in results if not ok]

    def _objects(self, request: Request, what: str, convert: Callable[[Any], Any]) -> tuple[list[Any], list[str]]:
        """`convert` of each selected instance; the UIDs of those that could not be opened (audited)."""
        rows = self._rows(request)
        done, failed = self._map(rows, what, convert)
        self._audit_retrieve(request, rows, len(done), failed, what)
        return [value for _, value in done], failed

    def _outcome(self, body: bytes, media_type: str, done: list[Any], failed: list[str]) -> Response:
        if not done and not failed:
            return Response(status_code=404)
        warnings = _warnings(failed)
        if not done:
            return JSONResponse({"error": "no instance could be opened", "failed": failed}, status_code=500,
                                headers={"Warning": ", ".join(warnings)})
        headers = {"Warning": ", ".join(warnings)} if warnings else {}
        return Response(body, status_code=206 if failed else 200, media_type=media_type, headers=headers)

    def _part10_of(self, row: Any, recipient: Recipient | None = None) -> bytes:
        """What WADO-RS sends for one instance: the original's bytes as stored, or the sealed transport object
        (sealed to `recipient`, when the requester is one)."""
        if self.config.server.retrieve_as == "decoded":
            return fetch(self.archive, row.sop_uid, row)  # a Part 10 stream already: no parse, no re-encoding
        return _part10(outgoing(self.archive, row, self._pseudonym_key, recipient))

    def _recipient(self, request: Request) -> Recipient | None:
        """Whom sealed objects for this request are sealed to: the recipient its bearer token belongs to.

        Raises
        ------
        RecipientRefused
            As :func:`aepacs.pipeline.recipients.recipient_for`.
        """
        token = _bearer(request)
        return recipient_for(self.archive, token_sha256=digest(token) if token else None)

    def retrieve(self, request: Request) -> Response:
        """The selected instances as one multipart answer, sent while later ones are still being decoded.

        Each object's seal is opened first (cheap: no decoding), so the status
        and ``Warning`` header name those that cannot be opened before any
        byte goes out; one that then fails to decode cuts the answer off (the
        client sees an incomplete body) and is logged and audited by name.
        """
        rows = self._rows(request)
        if not rows:
            return Response(status_code=404)
        recipient = None
        if self.config.server.retrieve_as == "sealed":
            try:
                recipient = self._recipient(request)
            except RecipientRefused as exc:
                log.error("WADO-RS retrieve by %s refused: %s", _client(request).address, exc)
                self.audit.record("retrieve", outcome=MINOR_FAILURE, source=self.me, destination=_client(request),
                                  studies=sorted({r.study_uid for r in rows}), detail=f"WADO-RS refused: {exc}")
                return JSONResponse({"error": str(exc)}, status_code=403)
        check = (lambda row: check_opens(self.archive, row.sop_uid, row)) \
            if self.config.server.retrieve_as == "decoded" else (lambda row: sealed_for(self.archive, row, recipient))
        opened, failed = self._map(rows, "retrieve", check)
        good = [row for row, _ in opened]
        if not good:
            self._audit_retrieve(request, rows, 0, failed, "retrieve")
            return self._outcome(b"", "", [], failed)
        boundary = multipart.new_boundary()
        parts = ((data, DICOM) for data in self._produce(request, rows, good, failed, recipient))
        warnings = _warnings(failed)
        return StreamingResponse(multipart.stream(parts, boundary), status_code=206 if failed else 200,
                                 media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}',
                                 headers={"Warning": ", ".join(warnings)} if warnings else None)

    def _produce(self, request: Request, rows: list[Any], good: list[Any], failed: list[str],
                 recipient: Recipient | None) -> Iterator[bytes]:
        """Each of `good`'s Part 10 bytes, in order, made ahead on one thread per core (a bounded window)."""
        cores = os.cpu_count() or 1
        sent, broken = 0, None
        pool = ThreadPoolExecutor(cores, thread_name_prefix="aepacs-wado")
        try:
            todo = iter(good)
            window = deque((row, pool.submit(self._part10_of, row, recipient)) for row in islice(todo, 2 * cores))
            while window:
                row, future = window.popleft()
                try:
                    data = future.result()
                except Exception as exc:
                    broken = row.sop_uid
                    log.error("WADO-RS retrieve: %s could not be decoded after its seal opened (%s); the answer "
                              "is cut off", shown(row.sop_uid), exc)
                    raise StreamAborted(row.sop_uid) from None
                nxt = next(todo, None)
                if nxt is not None:
                    window.append((nxt, pool.submit(self._part10_of, nxt, recipient)))
                yield data
                sent += 1
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            self._audit_retrieve(request, rows, sent, failed + ([broken] if broken else []), "retrieve",
                                 cut=sent < len(good), recipient=recipient)

    def _audit_retrieve(self, request: Request, rows: list[Any], sent: int, failed: list[str], what: str,
                        cut: bool = False, recipient: Recipient | None = None) -> None:
        self.audit.record("retrieve", outcome=MINOR_FAILURE if failed or cut else AUDIT_OK, source=self.me,
                          destination=_client(request), patients=[r.patient_id for r in rows],
                          studies=[r.study_uid for r in rows], objects=sent,
                          detail=f"WADO-RS {what}, {self.config.server.retrieve_as} objects"
                                 + (f" sealed to recipient {recipient.name} ({recipient.id})" if recipient else "")
                                 + (f"; {len(failed)} could not be opened" if failed else "")
                                 + ("; the answer was cut off" if cut else ""))

    def metadata(self, request: Request) -> Response:
        def convert(row: Any) -> dict[str, Any]:
            ds = self._dataset(row)
            base = f"{self.root(request)}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
            pixel_data = ds.pop("PixelData", None)
            out: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1 << 30)
            if pixel_data is not None:  # the bulk data is the instance's own resource
                out["7FE00010"] = {"vr": pixel_data.VR, "BulkDataURI": f"{base}/bulkdata/7FE00010"}
            return out

        done, failed = self._objects(request, "metadata", convert)
        return self._outcome(json.dumps(done).encode(), DICOM_JSON, done, failed)

    def _instance(self, request: Request) -> Dataset | Response:
        """The decoded instance a pixel resource names, or the response that says why there is none."""
        if self.config.server.retrieve_as != "decoded":
            return JSONResponse({"error": "this archive serves sealed objects (server.retrieve_as: sealed): "
                                          "no pixel resources"}, status_code=409)
        done, failed = self._objects(request, "pixels", self._dataset)
        if failed:
            return self._outcome(b"", "", [], failed)
        if not done:
            return Response(status_code=404)
        ds: Dataset = done[0]
        return ds

    def frames(self, request: Request) -> Response:
        ds = self._instance(request)
        if isinstance(ds, Response):
            return ds
        try:
            numbers = pixels.frame_list(request.path_params["frames"])
            data, kind, syntax = pixels.frames(ds, numbers, request.headers.get("accept", "*/*"))
        except pixels.PixelError as exc:
            return _pixel_error(exc)
        body, boundary = multipart.build((d, f"{kind}; transfer-syntax={syntax}") for d in data)
        return Response(body, media_type=f'multipart/related; type="{kind}"; boundary={boundary}')

    def bulkdata(self, request: Request) -> Response:
        ds = self._instance(request)
        if isinstance(ds, Response):
            return ds
        try:
            data = pixels.native(ds, range(1, int(ds.get("NumberOfFrames", 1) or 1) + 1))
        except pixels.PixelError as exc:
            return _pixel_error(exc)
        kind = f"{pixels.OCTET}; transfer-syntax={ExplicitVRLittleEndian}"
        body, boundary = multipart.build([(b"".join(data), kind)])
        return Response(body, media_type=f'multipart/related; type="{pixels.OCTET}"; boundary={boundary}')

    def rendered(self, request: Request) -> Response:
        ds = self._instance(request)
        if isinstance(ds, Response):
            return ds
        accept = request.headers.get("accept", "image/png")
        kind = "image/jpeg" if "image/jpeg" in accept and "image/png" not in accept else "image/png"
        try:
            frame = pixels.frame_list(request.path_params.get("frames", "1"))[0]
            quality = int(request.query_params.get("quality", "90"))
            image = pixels.rendered(ds, frame, window=request.query_params.get("window"), media_type=kind,
                                    quality=min(max(quality, 1), 100))
        except pixels.PixelError as exc:
            return _pixel_error(exc)
        except ValueError:
            return JSONResponse({"error": "quality must be an integer"}, status_code=400)
        return Response(image, media_type=kind)

    # -- STOW-RS ----------------------------------------------------------------------
    def store(self, request: Request, body: bytes) -> Response:
        try:
            parts = multipart.parse(body, request.headers.get("content-type", ""))
        except InputError as exc:
            log.error("STOW-RS from %s refused: %s", _client(request).address, exc)
            return JSONResponse({"error": str(exc)}, status_code=400)
        study = request.path_params.get("study")
        stored, failed = Dataset(), Dataset()
        stored.ReferencedSOPSequence, failed.FailedSOPSequence = [], []
        studies: set[str] = set()
        for part in parts:
            item = Dataset()
            try:
                if part.content_type not in (DICOM, ""):
                    raise InputError(f"a part of type {part.content_type}, not {DICOM}")
                uids = receive(self.archive, self.spool, self.config, part.data, study_uid=study)
            except Exception as exc:
                status = refusal(exc)
                log.error("STOW-RS from %s: an instance refused (0x%04X): %s", _client(request).address, status,
                          str(exc)[:300])
                item.ReferencedSOPClassUID = ""
                item.ReferencedSOPInstanceUID = ""
                item.FailureReason = int(status)
                failed.FailedSOPSequence.append(item)
                continue
            item.ReferencedSOPClassUID = uids.get("SOPClassUID", "")
            item.ReferencedSOPInstanceUID = uids["SOPInstanceUID"]
            item.RetrieveURL = (f"{self.root(request)}/studies/{uids['StudyInstanceUID']}/series/"
                                f"{uids['SeriesInstanceUID']}/instances/{uids['SOPInstanceUID']}")
            stored.ReferencedSOPSequence.append(item)
            studies.add(uids["StudyInstanceUID"])
        if stored.ReferencedSOPSequence:
            self.wake()
        out = Dataset()
        if study or len(studies) == 1:
            out.RetrieveURL = f"{self.root(request)}/studies/{study or next(iter(studies))}"
        if failed.FailedSOPSequence:
            out.FailedSOPSequence = failed.FailedSOPSequence
        out.ReferencedSOPSequence = stored.ReferencedSOPSequence
        self.audit.record("store", outcome=MINOR_FAILURE if failed.FailedSOPSequence else AUDIT_OK,
                          source=_client(request), destination=self.me, studies=sorted(studies),
                          objects=len(stored.ReferencedSOPSequence),
                          detail=f"STOW-RS; {len(failed.FailedSOPSequence)} refused" if failed.FailedSOPSequence
                          else "STOW-RS")
        code = 200 if not failed.FailedSOPSequence else (202 if stored.ReferencedSOPSequence else 409)
        return JSONResponse(out.to_json_dict(), status_code=code, media_type=DICOM_JSON)


class _Guard:
    """ASGI middleware: a bearer token or an allowed client certificate, before any DICOMweb endpoint runs."""

    def __init__(self, app: ASGIApp, service: Service, tokens: Tokens) -> None:
        self.app, self.service, self.tokens = app, service, tokens
        self.certificates = frozenset(service.config.web.client_certificates)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or self.service.config.web.anonymous or scope["method"] == "OPTIONS"
                or not (scope["path"] == ROOT or scope["path"].startswith(ROOT + "/"))):
            await self._pass(scope, receive, send)  # only DICOMweb holds data; the viewer's files do not
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = headers.get("authorization")
        if authorization is None and scope["method"] in ("GET", "HEAD"):  # a viewer session: its cookie
            cookie = SimpleCookie(headers.get("cookie", "")).get(viewer.COOKIE)
            authorization = f"Bearer {cookie.value}" if cookie is not None else None
        certified = ((scope.get("extensions") or {}).get("tls") or {}).get("aepacs_common_name")
        if not (self.tokens.allows(authorization) or certified in self.certificates):
            client = scope.get("client") or ("?", 0)
            self.service.audit.record("login-refused", outcome=MINOR_FAILURE,
                                      source=Party("DICOMweb client", f"{client[0]}:{client[1]}"),
                                      destination=self.service.me,
                                      detail=f"{scope['method']} {scope['path']}: "
                                             + ("wrong token" if authorization else "no token")
                                             + (f", certificate CN={certified} not allowed" if certified else ""))
            response = JSONResponse({"error": "a valid bearer token is required"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="aepacs"'})
            await response(scope, receive, send)
            return
        await self._pass(scope, receive, send)

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        # StreamAborted: logged where it happened; the server closes the connection with the answer incomplete
        with contextlib.suppress(StreamAborted):
            await self.app(scope, receive, send)


def build_app(service: Service) -> Starlette:
    """The ASGI application of `service` (CORS from ``web.cors_origins``)."""
    tokens = Tokens(service.config.web.tokens_sha256)
    if not tokens and not service.config.web.client_certificates and not service.config.web.anonymous:
        log.warning("web: no token in web.tokens_sha256 and anonymous is false: every request gets 401")
    limit = service.config.web.max_request_mb << 20

    def search(level: str) -> Callable[[Request], Response]:
        return lambda request: service.search(request, level)

    async def stow(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return JSONResponse({"error": f"a request body over web.max_request_mb ({limit >> 20} MB)"},
                                status_code=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return JSONResponse({"error": f"a request body over web.max_request_mb ({limit >> 20} MB)"},
                                    status_code=413)
            chunks.append(chunk)
        return await run_in_threadpool(service.store, request, b"".join(chunks))

    root = ROOT
    routes: list[BaseRoute] = [
        Route(f"{root}/studies", search("STUDY"), methods=["GET"]),
        Route(f"{root}/series", search("SERIES"), methods=["GET"]),
        Route(f"{root}/instances", search("IMAGE"), methods=["GET"]),
        Route(f"{root}/studies/{{study}}/series", search("SERIES"), methods=["GET"]),
        Route(f"{root}/studies/{{study}}/instances", search("IMAGE"), methods=["GET"]),
        Route(f"{root}/studies/{{study}}/series/{{series}}/instances", search("IMAGE"), methods=["GET"]),
        Route(f"{root}/studies", stow, methods=["POST"]),
        Route(f"{root}/studies/{{study}}", stow, methods=["POST"]),
    ]
    for path in ("/studies/{study}", "/studies/{study}/series/{series}",
                 "/studies/{study}/series/{series}/instances/{instance}"):
        routes.append(Route(f"{root}{path}", service.retrieve, methods=["GET"]))
        routes.append(Route(f"{root}{path}/metadata", service.metadata, methods=["GET"]))
    instance = f"{root}/studies/{{study}}/series/{{series}}/instances/{{instance}}"
    routes += [Route(f"{instance}/frames/{{frames}}", service.frames, methods=["GET"]),
               Route(f"{instance}/bulkdata/7FE00010", service.bulkdata, methods=["GET"]),
               Route(f"{instance}/rendered", service.rendered, methods=["GET"]),
               Route(f"{instance}/frames/{{frames}}/rendered", service.rendered, methods=["GET"])]
    viewer_dir = service.config.resolve(service.config.web.viewer)
    if (viewer_dir / "index.html").is_file():
        routes += viewer.routes(viewer_dir, service.root, secure=service.config.server.tls.enabled)
    middleware = [Middleware(_Guard, service=service, tokens=tokens)]
    if service.config.web.cors_origins:
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(service.config.web.cors_origins),
                                        allow_methods=["GET", "POST"], allow_headers=["Authorization", "Accept",
                                                                                      "Content-Type"]))
    return Starlette(routes=routes, middleware=middleware)

