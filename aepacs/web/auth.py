"""Who may call the DICOMweb server: bearer tokens, known to the configuration only by their SHA-256,
or client certificates, by their subject.

The configuration (``web.tokens_sha256``) never holds a token: a request's
token is hashed and the digest compared, in constant time, with every
allowed one. :func:`new_token` makes a token and its digest for an operator.
A TLS client certificate that the handshake verified against ``server.tls.ca``
lets a request in when its subject's common name is in
``web.client_certificates``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Any

from aepacs.errors import ConfigError

__all__ = ["Tokens", "bearer", "certificate_name", "common_name", "digest", "new_token"]

_HEX = re.compile(r"^[0-9a-f]{64}$")


def digest(token: str) -> str:
    """The SHA-256 (lower-case hex) of `token`, as the configuration lists it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header value, or None when it carries none."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def new_token() -> tuple[str, str]:
    """A fresh random bearer token (256 bits, URL-safe) and its digest."""
    token = secrets.token_urlsafe(32)
    return token, digest(token)


class Tokens:
    """The allowed bearer tokens, by digest."""

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = [d.strip().lower() for d in digests]
        bad = [d for d in self._digests if not _HEX.match(d)]
        if bad:
            raise ConfigError(f"web.tokens_sha256: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} not a "
                              "SHA-256 in hex (64 characters 0-9a-f); list digests, never tokens")

    def __bool__(self) -> bool:
        return bool(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries an allowed bearer token (constant time per digest)."""
        token = bearer(authorization)
        if token is None:
            return False
        seen = digest(token).encode("ascii")
        ok = False
        for d in self._digests:  # every digest compared, whichever matches
            ok |= hmac.compare_digest(seen, d.encode("ascii"))
        return ok


def certificate_name(cert: dict[str, Any]) -> str:
    """A verified peer certificate's subject (:meth:`ssl.SSLSocket.getpeercert`) as ``CN=…,O=…``."""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
             "localityName": "L", "stateOrProvinceName": "ST", "emailAddress": "E"}
    return ",".join(f"{short.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)


def common_name(cert: dict[str, Any]) -> str | None:
    """The subject's common name (CN) of a verified peer certificate; None when it has none."""
    return next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), None)
