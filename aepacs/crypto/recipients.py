"""Recipients: the X25519 key pairs of the sites and users that retrieve sealed objects.

A recipient makes its key pair on its own machine (``aepacs recipient init``) and gives the archive
only the public half (``aepacs recipients add``). The archive then seals each object it sends that
recipient to its public key: the object's data key is wrapped by HPKE (RFC 9180, base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM) into a recipient key slot
(:mod:`aepacs.crypto.seal`), and the recipient opens it with its private key alone, never with the
archive's keyring.

HPKE comes from pyca/cryptography (``cryptography.hazmat.primitives.hpke``, in the version already
required for AES-GCM): one library for both, backed by OpenSSL, so no second HPKE implementation
(``pyhpke``) is needed.

A recipient is named by its **id**, the first 128 bits of the SHA-256 of its public key (hex): the
id a slot carries cannot be claimed by another key. Its name is a label for people.

Files (JSON, like the keyring's):

- the private key: ``{"format": "aepacs-recipient-key", "version": 1, "name", "id", "protection":
  "none", "private_key"}`` or, with a passphrase, the key sealed as the keyring's keys are
  (scrypt, AES-256-GCM: :func:`aepacs.crypto.keyring.protect`); mode 0600, refused when others may
  read it;
- the public key: ``{"format": "aepacs-recipient", "version": 1, "name", "id", "public_key"}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from aepacs.crypto.keyring import protect, read_key_file, unprotect
from aepacs.errors import KeyringError
from aepacs.store.atomic import atomic_write, private_dir

PUBLIC_FORMAT = "aepacs-recipient"
KEY_FORMAT = "aepacs-recipient-key"
FORMAT_VERSION = 1
KEY_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RAW = serialization.Encoding.Raw


def check_name(name: str) -> str:
    """`name` if it is a recipient name (1-64 of letters, digits, ``.``, ``_``, ``-``).

    Raises
    ------
    KeyringError
        It is not.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KeyringError(f"recipient name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def fingerprint(public_key: bytes) -> str:
    """The id of the recipient whose raw X25519 public key is `public_key`: 32 hex digits."""
    return hashlib.sha256(b"aepacs-recipient\x00" + public_key).hexdigest()[:32]


@dataclass(frozen=True)
class Recipient:
    """A recipient's public half: what the archive holds."""

    name: str
    public_key: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return fingerprint(self.public_key)

    def key(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.public_key)

    def to_json(self) -> str:
        return json.dumps({"format": PUBLIC_FORMAT, "version": FORMAT_VERSION, "name": self.name, "id": self.id,
                           "public_key": base64.b64encode(self.public_key).decode("ascii")}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "public key") -> Recipient:
        """A recipient's public key file, checked.

        Raises
        ------
        KeyringError
            Not such a file, a key of the wrong size, or an id that is not its key's.
        """
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise KeyringError(f"{source}: {exc}") from None
        return cls.from_doc(doc, source)

    @classmethod
    def from_doc(cls, doc: Any, source: str = "public key") -> Recipient:
        """:meth:`from_json` of a document already parsed (a recipient listed in a slot file).

        Raises
        ------
        KeyringError
            As :meth:`from_json`.
        """
        try:
            if not isinstance(doc, dict) or doc.get("format") != PUBLIC_FORMAT:
                raise ValueError("not an aepacs recipient public key")
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {doc.get('version')} not supported")
            public = base64.b64decode(str(doc["public_key"]).encode("ascii"), validate=True)
            if len(public) != KEY_BYTES:
                raise ValueError("an X25519 public key is 32 bytes")
            recipient = cls(check_name(str(doc["name"])), public)
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyringError(f"{source}: {exc}") from None
        if doc.get("id") not in (None, recipient.id):
            raise KeyringError(f"{source}: id {doc.get('id')} is not its key's ({recipient.id})")
        return recipient


@dataclass(frozen=True)
class RecipientKey:
    """A recipient's private key: what only the recipient holds. Its ``repr`` never shows the key."""

    name: str
    private_key: X25519PrivateKey = field(repr=False)

    @property
    def public(self) -> Recipient:
        return Recipient(self.name, self.private_key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw))

    @property
    def id(self) -> str:
        return self.public.id

    @classmethod
    def generate(cls, name: str) -> RecipientKey:
        return cls(check_name(name), X25519PrivateKey.generate())

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the private key to `path` (mode 0600, in an owner-only directory; never over an existing file).

        Raises
        ------
        KeyringError
            `path` exists.
        """
        path = Path(path)
        if path.exists():
            raise KeyringError(f"{path}: exists; not overwriting a recipient key")
        private_dir(path.parent)
        raw = self.private_key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        entry = {"private_key": base64.b64encode(raw).decode("ascii")}
        doc: dict[str, Any] = {"format": KEY_FORMAT, "version": FORMAT_VERSION, "name": self.name, "id": self.id}
        doc.update(protect(entry, passphrase) if passphrase else {"protection": "none", **entry})
        atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), 0o600, replace=False)

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> RecipientKey:
        """The private key in `path`.

        Raises
        ------
        KeyringError
            Missing, readable by others, damaged, of another format, or protected and no or a wrong passphrase.
        """
        path = Path(path)
        doc = read_key_file(path, "recipient key", KEY_FORMAT, FORMAT_VERSION, "aepacs recipient init")
        try:
            protection = doc.get("protection")
            if protection == "scrypt-aes256gcm":
                entry = unprotect(path, doc, passphrase, "recipient key")
            elif protection == "none":
                entry = doc
            else:
                raise ValueError(f"unknown protection {protection!r}")
            raw = base64.b64decode(str(entry["private_key"]).encode("ascii"), validate=True)
            key = cls(check_name(str(doc["name"])), X25519PrivateKey.from_private_bytes(raw))
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyringError(f"{path}: recipient key damaged ({exc})") from None
        if doc.get("id") != key.id:
            raise KeyringError(f"{path}: recipient key damaged (its id is not its key's)")
        return key


__all__ = ["Recipient", "RecipientKey", "check_name", "fingerprint"]
