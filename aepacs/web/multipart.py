"""``multipart/related`` bodies (RFC 2387) as DICOMweb uses them (PS3.18 8.6.1.2).

Pure functions: :func:`parse` splits a received body into its parts, each
with its headers, refusing what is malformed with a reason a STOW-RS
response can carry; :func:`build` frames parts for a WADO-RS response, :func:`stream` the same
piece by piece.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from aepacs.errors import InputError

__all__ = ["MultipartError", "Part", "boundary_of", "build", "new_boundary", "parse", "stream"]

#: RFC 2046 5.1.1: 1 to 70 characters from this set, not ending in a space
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


class MultipartError(InputError):
    """A body that is not a well-formed ``multipart/related`` message."""


@dataclass
class Part:
    """One body part: its headers (names lower-cased) and its bytes."""

    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        """The part's media type without parameters, lower-cased ('' when absent)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def media_type(header: str) -> tuple[str, dict[str, str]]:
    """``(type/subtype, {parameter: value})`` of a Content-Type or Accept item (names lower-cased)."""
    head = header.split(";", 1)[0].strip().lower()
    params = {}
    for name, value in _PARAM.findall(header[len(header.split(";", 1)[0]):]):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[name.lower()] = value
    return head, params


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related`` Content-Type, checked (RFC 2046 5.1.1).

    Raises
    ------
    MultipartError
        Not ``multipart/related``, or no or a malformed boundary.
    """
    kind, params = media_type(content_type)
    if kind != "multipart/related":
        raise MultipartError(f"expected multipart/related, got {kind or 'no content type'}")
    boundary = params.get("boundary", "")
    if not _BOUNDARY.match(boundary):
        raise MultipartError("multipart/related without a valid boundary parameter")
    return boundary


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultipartError("malformed part header line")
        out[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return out


def parse(body: bytes, content_type: str, *, max_parts: int = 10_000) -> list[Part]:
    """The parts of a ``multipart/related`` `body`.

    Parameters
    ----------
    body : bytes
        The whole request body.
    content_type : str
        The request's Content-Type header (carries the boundary).
    max_parts : int
        Refuse a body with more parts than this.

    Returns
    -------
    list of Part
        In the order sent; the preamble and epilogue are dropped.

    Raises
    ------
    MultipartError
        No boundary, no closing delimiter (a truncated body), a part without
        the blank line that ends its headers, too many parts.
    """
    delimiter = b"--" + boundary_of(content_type).encode("ascii")
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("the body holds no part (its boundary never occurs)")
    parts: list[Part] = []
    pos = start + len(delimiter)
    while True:
        if body.startswith(b"--", pos):
            return parts  # the close delimiter: what follows is the epilogue
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise MultipartError("a boundary line is followed by something other than a line end")
        nxt = body.find(b"\r\n" + delimiter, eol)
        if nxt < 0:
            raise MultipartError("the body ends inside a part (no closing boundary): truncated")
        if len(parts) >= max_parts:
            raise MultipartError(f"more than {max_parts} parts")
        chunk = body[eol + 2:nxt]
        if chunk.startswith(b"\r\n"):
            head, data = b"", chunk[2:]
        else:
            split = chunk.find(b"\r\n\r\n")
            if split < 0:
                raise MultipartError("a part's headers do not end in a blank line")
            head, data = chunk[:split], chunk[split + 4:]
        parts.append(Part(data, _headers(head)))
        pos = nxt + 2 + len(delimiter)


def new_boundary() -> str:
    """A random boundary (128 bits: it cannot occur in the parts by chance)."""
    return secrets.token_hex(16)


def stream(parts: Iterable[tuple[bytes, str]], boundary: str) -> Iterator[bytes]:
    """The ``multipart/related`` body of ``(data, content type)`` pairs, a piece at a time, so an answer
    can go out while its later parts are still being made. A part's data is passed on, not copied."""
    delimiter = b"--" + boundary.encode("ascii")
    for data, kind in parts:
        yield b"".join((delimiter, b"\r\nContent-Type: ", kind.encode("ascii"), b"\r\n\r\n"))
        yield data
        yield b"\r\n"
    yield delimiter + b"--\r\n"


def build(parts: Iterable[tuple[bytes, str]], boundary: str | None = None) -> tuple[bytes, str]:
    """Frame ``(data, content type)`` pairs as one ``multipart/related`` body.

    Returns
    -------
    body, boundary : bytes, str
        The boundary is random unless given (:func:`new_boundary`).
    """
    boundary = boundary or new_boundary()
    return b"".join(stream(parts, boundary)), boundary
