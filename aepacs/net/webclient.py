"""``aepacs retrieve --dicomweb`` and ``aepacs send --dicomweb``: the clients over WADO-RS and STOW-RS.

The same receiving end as over DIMSE (:class:`aepacs.net.client.Receiver`):
whatever the archive sends -- sealed transport objects (``retrieve_as:
sealed``) or decoded originals -- is opened with the local keyring where
sealed, checked, and written as ordinary DICOM. An object the archive could
not open is named in its ``Warning`` header and reported as failed.
:func:`store_web` sends files as they are stored, a few instances to a
STOW-RS request, and reports each one the archive refused with its status.
Standard library HTTP only (``urllib``), TLS verified against the system
store or a given CA.
"""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aepacs.errors import AepacsError, InputError, OpenError
from aepacs.net.client import Receiver, RetrieveSummary
from aepacs.web import multipart

__all__ = ["StowSummary", "WebError", "get", "retrieve_web", "store_web"]

_WARNED = re.compile(r'299 aepacs "([0-9.]+): ')


class WebError(AepacsError):
    """The DICOMweb server refused the request or answered something that is not DICOMweb."""


def get(url: str, token: str | None, accept: str,
        context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET `url` with a bearer `token`: (status, headers lower-cased, body); 404 and 204 come back empty.

    Raises
    ------
    WebError
        401, another error status, or no answer.
    """
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
    status, _, body = get(f"{root}/{resource}?{key}={urllib.parse.quote(uid)}", token, "application/dicom+json",
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
    status, headers, body = get(url, token, 'multipart/related; type="application/dicom"', context)
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


@dataclass
class StowSummary:
    """What a :func:`store_web` run did: the SOP Instance UIDs stored, the files refused (with the
    archive's failure reason), and the seconds it took."""

    stored: list[str] = field(default_factory=list)
    refused: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0


def _post(url: str, body: bytes, content_type: str, token: str | None,
          context: ssl.SSLContext | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": content_type, "Accept": "application/dicom+json",
        **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=600, context=context) as response:  # noqa: S310 (http/https)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise WebError(f"{url}: 401, the token is missing or not accepted") from None
        if exc.code in (202, 409):  # some or all refused: the body says which
            return exc.code, exc.read()
        raise WebError(f"{url}: HTTP {exc.code} {exc.read()[:300].decode('utf-8', 'replace')}") from None
    except urllib.error.URLError as exc:
        raise WebError(f"{url}: {exc.reason}") from None


def _referenced(answer: dict[str, Any], sequence: str) -> list[tuple[str, int | None]]:
    """(SOP Instance UID, FailureReason) of each item of a STOW-RS answer's `sequence` (DICOM JSON)."""
    items = answer.get({"ReferencedSOPSequence": "00081199", "FailedSOPSequence": "00081198"}[sequence], {})
    out = []
    for item in items.get("Value", []):
        uid = (item.get("00081155", {}).get("Value") or [""])[0]
        reason = (item.get("00081197", {}).get("Value") or [None])[0]
        out.append((str(uid), reason))
    return out


def store_web(root: str, files: Sequence[tuple[Path, str]], *, token: str | None = None,
              context: ssl.SSLContext | None = None, batch: int = 25) -> StowSummary:
    """STOW-RS `files` ((path, SOP Instance UID) pairs), each as it is stored, `batch` to a request.

    Raises
    ------
    WebError
        A refused request (401), a body the server would not parse (400, 413), no answer.
    """
    summary, start = StowSummary(), time.perf_counter()
    for i in range(0, len(files), batch):
        chunk = files[i:i + batch]
        body, boundary = multipart.build((path.read_bytes(), "application/dicom") for path, _ in chunk)
        status, answer = _post(f"{root.rstrip('/')}/studies", body,
                               f'multipart/related; type="application/dicom"; boundary={boundary}', token, context)
        parsed: dict[str, Any] = json.loads(answer) if answer else {}
        stored = {uid for uid, _ in _referenced(parsed, "ReferencedSOPSequence")}
        reasons = [reason for _, reason in _referenced(parsed, "FailedSOPSequence")]
        for path, uid in chunk:
            if uid in stored:
                summary.stored.append(uid)
            else:  # a refused part carries no UID the server trusted: its reason, in order
                reason = reasons.pop(0) if reasons else None
                summary.refused[path] = f"0x{reason:04X}" if isinstance(reason, int) else f"HTTP {status}"
    summary.seconds = time.perf_counter() - start
    return summary
