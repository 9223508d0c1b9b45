"""``aepacs retrieve --dicomweb``: the retrieval client over WADO-RS.

The same receiving end as over DIMSE (:class:`aepacs.net.client.Receiver`):
whatever the archive sends -- sealed transport objects (``retrieve_as:
sealed``) or decoded originals -- is opened with the local keyring where
sealed, checked, and written as ordinary DICOM. An object the archive could
not open is named in its ``Warning`` header and reported as failed.
Standard library HTTP only (``urllib``), TLS verified against the system
store or a given CA.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from aepacs.errors import AepacsError, InputError, OpenError
from aepacs.net.client import Receiver, RetrieveSummary
from aepacs.web import multipart

__all__ = ["WebError", "retrieve_web"]

_WARNED = re.compile(r'299 aepacs "([0-9.]+): ')


class WebError(AepacsError):
    """The DICOMweb server refused the request or answered something that is not DICOMweb."""


def _get(url: str, token: str | None, accept: str, context: ssl.SSLContext | None) -> tuple[int, dict[str, str],
                                                                                            bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept, **(
        {"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=600, context=context) as response:  # noqa: S310 (http/https)
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()[:300].decode("utf-8", "replace")
        if exc.code == 401:
            raise WebError(f"{url}: 401, the token is missing or not accepted") from None
        if exc.code in (404, 204):
            return exc.code, {}, b""
        if exc.code == 500:  # nothing could be opened: the Warning header names them
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, b""
        raise WebError(f"{url}: HTTP {exc.code} {body}") from None
    except urllib.error.URLError as exc:
        raise WebError(f"{url}: {exc.reason}") from None


def _locate(root: str, level: str, uid: str, token: str | None, context: ssl.SSLContext | None) -> str:
    """The WADO-RS URL of a study, series or instance: the UIDs above it from QIDO-RS."""
    if level == "study":
        return f"{root}/studies/{uid}"
    resource, key = {"series": ("series", "SeriesInstanceUID"), "instance": ("instances", "SOPInstanceUID")}[level]
    status, _, body = _get(f"{root}/{resource}?{key}={urllib.parse.quote(uid)}", token, "application/dicom+json",
                           context)
    matches: list[dict[str, Any]] = json.loads(body) if status == 200 and body else []
    if not matches:
        raise WebError(f"no {level} {uid} on {root}")
    study = str(matches[0]["0020000D"]["Value"][0])
    if level == "series":
        return f"{root}/studies/{study}/series/{uid}"
    return f"{root}/studies/{study}/series/{matches[0]['0020000E']['Value'][0]}/instances/{uid}"


def retrieve_web(root: str, level: str, uid: str, receiver: Receiver, *, token: str | None = None,
                 context: ssl.SSLContext | None = None) -> RetrieveSummary:
    """Retrieve a study, series or instance from the DICOMweb service `root` into `receiver`.

    Parameters
    ----------
    root : str
        The service root, ``https://host:port/dicomweb``.
    level : str
        ``study``, ``series`` or ``instance``.

    Raises
    ------
    WebError
        A refused request (401), an unknown UID, an answer that is not multipart DICOM.
    """
    url = _locate(root.rstrip("/"), level, uid, token, context)
    status, headers, body = _get(url, token, 'multipart/related; type="application/dicom"', context)
    summary = receiver.summary
    summary.status = status
    for failed in _WARNED.findall(headers.get("warning", "")):
        summary.failed.append((failed, "the archive could not open it (tampered, or its key is not in its keyring)"))
    if status == 404 or not body:
        return summary
    try:
        parts = multipart.parse(body, headers.get("content-type", ""))
    except InputError as exc:
        raise WebError(f"{url}: {exc}") from None
    for i, part in enumerate(parts):
        name = f"{url} part {i + 1}"
        try:
            summary.written.append(receiver.accept(part.data, name))
        except (OpenError, AepacsError, OSError) as exc:
            summary.failed.append((name, str(exc)))
    return summary
