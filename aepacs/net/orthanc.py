"""Orthanc's REST API, as ``aepacs orthanc-migrate`` reads it: which files an Orthanc keeps, and their MD5."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from aepacs.errors import AepacsError

#: resources listed per request
PAGE = 500
#: the largest answer read (a page of 500 ids is about 25 kB)
MAX_RESPONSE = 16 << 20
#: the levels of Orthanc's resources, each of which may have files (attachments)
LEVELS = ("patients", "studies", "series", "instances")


class OrthancApi:
    """An Orthanc's REST API at `url` (``http://host:8042``; ``http://user:password@host:8042`` for HTTP
    basic authentication: the password is sent, never shown)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AepacsError(f"Orthanc URL {parts.scheme}://{parts.hostname or ''}… is not http(s)://host[:port]")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._headers = {}
        if parts.username is not None:
            token = f"{parts.username}:{parts.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        self.timeout = timeout

    def get(self, path: str) -> Any:
        """The JSON at `path`."""
        request = urllib.request.Request(self.base + path, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(MAX_RESPONSE + 1)
        except urllib.error.HTTPError as exc:
            raise AepacsError(f"Orthanc {self.base}{path}: HTTP {exc.code} {exc.reason}") from None
        except OSError as exc:
            raise AepacsError(f"Orthanc {self.base}: {exc}") from None
        if len(body) > MAX_RESPONSE:
            raise AepacsError(f"Orthanc {self.base}{path}: answer over {MAX_RESPONSE >> 20} MB")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise AepacsError(f"Orthanc {self.base}{path}: not JSON ({exc})") from None

    def files(self, levels: tuple[str, ...] = LEVELS) -> Iterator[tuple[str, int, str | None]]:
        """Every file of every resource of `levels` (``patients``, ``studies``, ``series``, ``instances``):
        ``(uuid, content type, MD5 of the stored bytes)``, page by page."""
        for level in levels:
            since = 0
            while ids := self.get(f"/{level}?since={since}&limit={PAGE}"):
                for resource in ids:
                    try:
                        names = self.get(f"/{level}/{quote(resource)}/attachments")
                    except AepacsError:
                        continue  # deleted meanwhile
                    for name in names:
                        try:
                            info = self.get(f"/{level}/{quote(resource)}/attachments/{quote(name)}/info")
                        except AepacsError:
                            continue
                        try:
                            yield str(info["Uuid"]), int(info["ContentType"]), info.get("CompressedMD5")
                        except (KeyError, TypeError, ValueError):
                            raise AepacsError(f"Orthanc {self.base}: a malformed attachment of {level} "
                                              f"{resource}") from None
                since += len(ids)


__all__ = ["LEVELS", "OrthancApi"]
