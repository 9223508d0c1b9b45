"""Pseudonyms under a site key: stable stand-ins for patient identifiers in what leaves the archive.

With ``transport.identifiers: pseudonymous`` the sealed transport objects that
C-GET and C-MOVE send carry, in clear, pseudonyms instead of the patient's
name, ID and accession number, and none of the other identifying attributes
(``docs/FORMAT.md``, security model). A pseudonym is an HMAC-SHA-256 of the
value under a 256-bit site key, so the same patient always gets the same
pseudonym at the receiving PACS (its studies still file together), and nobody
without the key can tell whom it stands for or test a guess. The original
values travel inside the sealed object, for whoever can open it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from aepacs.crypto.keyring import check_private
from aepacs.errors import KeyringError
from aepacs.store.atomic import private_dir

KEY_BYTES = 32


def site_key(path: Path) -> bytes:
    """The site's pseudonym key at `path`, created (owner-only) on first use.

    Raises
    ------
    KeyringError
        The file is readable by others, or not a key.
    """
    path = Path(path)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES).hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    check_private(path, "pseudonym key")
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise KeyringError(f"{path}: not a pseudonym key ({KEY_BYTES * 2} hex digits)")
    return key


def pseudonym(key: bytes, kind: str, value: str, length: int = 16) -> str:
    """A stable pseudonym of `value` (empty stays empty): `length` hex digits of HMAC-SHA-256.

    `kind` separates the name spaces (a patient ID and an accession number with
    the same text get different pseudonyms).
    """
    if not value:
        return ""
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:length].upper()
