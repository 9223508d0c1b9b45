"""Versioned key-encryption keys (KEK) in a file only its owner may read.

The keyring holds 256-bit KEKs numbered 1, 2, ...; the newest is the active
one, used to wrap the data key of every new sealed object. ``rotate`` adds a
version and keeps the old ones, so objects sealed earlier still open.

The file is JSON. With a passphrase (taken from an environment variable,
never from the command line) the list of keys is itself sealed with
AES-256-GCM under a key derived by scrypt; the KDF parameters are the
associated data. The file is created with mode 0600 and refused when group
or others may read it. Writes are atomic (readers need no lock), serialised by a
lock on the keyring's directory, and keep the file's owner when root makes them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from Crypto.Cipher import AES
from Crypto.Protocol.KDF import scrypt
from Crypto.Random import get_random_bytes

from aepacs.errors import KeyringError, MissingKeyError
from aepacs.store.atomic import atomic_write, private_dir

FORMAT = "aepacs-keyring"
FORMAT_VERSION = 1
KEY_BYTES = 32
#: scrypt cost: 2**15 x 8 x 1 takes ~0.1 s and 32 MiB, once per process.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class KeyVersion:
    """One key-encryption key. Its ``repr`` never shows the key."""

    version: int
    created: str
    key: bytes = field(repr=False)


def check_private(path: Path, what: str = "keyring") -> None:
    """Refuse `path` (a `what`) when anyone but its owner may read or write it.

    Raises
    ------
    KeyringError
        Naming the file, its mode and the fix.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyringError(
            f"{path}: {what} is accessible by group or others (mode {mode:04o}); "
            f"run 'chmod 600 {path}'")


def read_key_file(path: Path, what: str, fmt: str, version: int, create: str) -> dict[str, Any]:
    """The JSON document of an owner-only key file (a `what`, format `fmt` of `version`; made by `create`).

    Raises
    ------
    KeyringError
        Missing, readable by others, not JSON, of another format or version.
    """
    if not path.exists():
        raise KeyringError(f"{path}: no {what}; create one with '{create}'")
    check_private(path, what)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyringError(f"{path}: {what} unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise KeyringError(f"{path}: not an aepacs {what}")
    if doc.get("version") != version:
        raise KeyringError(f"{path}: {what} format version {doc.get('version')} not supported")
    return doc


def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    key: bytes = scrypt(passphrase, salt, KEY_BYTES, N=n, r=r, p=p)
    return key


class Keyring:
    """A loaded keyring.

    Use :meth:`create` or :meth:`load`; both take the passphrase as bytes or
    ``None`` for an unprotected file.
    """

    def __init__(self, path: Path, keys: dict[int, KeyVersion], passphrase: bytes | None) -> None:
        self.path = path
        self._keys = dict(keys)
        self._passphrase = passphrase
        self._seen = _signature(path)

    def __repr__(self) -> str:
        return f"Keyring({str(self.path)!r}, versions={self.versions}, protected={self.protected})"

    # -- queries ---------------------------------------------------------
    @property
    def versions(self) -> list[int]:
        """All key versions held, oldest first."""
        return sorted(self._keys)

    @property
    def active_version(self) -> int:
        """The newest version: the one new objects are sealed under (versions are never reused)."""
        if not self._keys:
            raise KeyringError(f"{self.path}: keyring holds no key")
        return max(self._keys)

    @property
    def protected(self) -> bool:
        return self._passphrase is not None

    def info(self) -> list[KeyVersion]:
        """The key versions, oldest first (use their metadata, not their keys)."""
        return [self._keys[v] for v in self.versions]

    def kek(self, version: int) -> bytes:
        """Return the key-encryption key of `version`.

        Raises
        ------
        MissingKeyError
            When the keyring does not hold that version.
        """
        try:
            return self._keys[version].key
        except KeyError:
            raise MissingKeyError(version) from None

    def refresh(self) -> bool:
        """Reload the file if another process rotated or retired a key since it was read.

        Long-running processes (``aepacs serve``, its workers, rekey workers)
        call this before sealing and when a key version is missing, so a
        rotation takes effect without a restart and a retired key is gone.
        A stat when nothing changed.

        Returns
        -------
        bool
            Whether the keys were reloaded.
        """
        seen = _signature(self.path)
        if seen is None or seen == self._seen:
            return False
        fresh = Keyring.load(self.path, self._passphrase)  # no lock: writers replace the file atomically
        self._keys, self._seen = fresh._keys, fresh._seen
        return True

    # -- persistence -----------------------------------------------------
    @classmethod
    def create(cls, path: Path, passphrase: bytes | None = None) -> Keyring:
        """Create a keyring file holding key version 1.

        Raises
        ------
        KeyringError
            When `path` already exists (a keyring is never overwritten).
        """
        path = Path(path)
        private_dir(path.parent)
        with _locked(path):
            if path.exists():
                raise KeyringError(f"{path}: keyring already exists; not overwriting it")
            ring = cls(path, {1: _new_key(1)}, passphrase)
            ring._save()
        return ring

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> Keyring:
        """Load a keyring file, checking its permissions first.

        Raises
        ------
        KeyringError
            Missing, too open, damaged, or protected and no/wrong passphrase.
        """
        path = Path(path)
        doc = read_key_file(path, "keyring", FORMAT, FORMAT_VERSION, "aepacs keys init")
        try:
            if doc.get("protection") == "scrypt-aes256gcm":
                entries = unprotect(path, doc, passphrase)
            elif doc.get("protection") == "none":
                entries = doc["keys"]
                passphrase = None
            else:
                raise KeyringError(f"{path}: unknown keyring protection {doc.get('protection')!r}")
            keys = {}
            for e in entries:
                key = _unb64(cast(str, e["key"]))  # a wrong type fails below as damage
                if len(key) != KEY_BYTES:
                    raise ValueError("key of wrong length")
                version = int(cast(str, e["version"]))
                keys[version] = KeyVersion(version, str(e["created"]), key)
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyringError(f"{path}: keyring damaged ({exc})") from None
        return cls(path, keys, passphrase)

    def rotate(self) -> int:
        """Add a new key version, make it active and save; old versions stay.

        The file is re-read under the lock first, so concurrent rotations
        each add their own version.

        Returns
        -------
        int
            The new active version.
        """
        with _locked(self.path):
            current = Keyring.load(self.path, self._passphrase)
            self._keys = current._keys
            version = (max(self._keys) if self._keys else 0) + 1
            self._keys[version] = _new_key(version)
            self._save()
        return version

    def retire(self, version: int) -> None:
        """Destroy key `version`: remove it from the keyring file for good.

        The caller checks first that nothing is still wrapped under it
        (``aepacs keys retire`` asks the index and the spool). The file is
        rewritten atomically; the active version cannot be retired.

        Raises
        ------
        KeyringError
            When `version` is not held or is the active one.
        """
        with _locked(self.path):
            current = Keyring.load(self.path, self._passphrase)
            self._keys = current._keys
            if version not in self._keys:
                raise KeyringError(f"{self.path}: no key version {version} to retire")
            if version == max(self._keys):
                raise KeyringError(f"{self.path}: key version {version} is the active one; rotate first")
            del self._keys[version]
            self._save()

    def _save(self) -> None:
        entries = [{"version": k.version, "created": k.created, "key": _b64(k.key)}
                   for k in self.info()]
        doc: dict[str, object] = {"format": FORMAT, "version": FORMAT_VERSION}
        if self._passphrase is None:
            doc.update(protection="none", keys=entries)
        else:
            doc.update(protect(entries, self._passphrase))
        atomic_write(self.path, json.dumps(doc, indent=1).encode("utf-8") + b"\n", mode=0o600,
                     owner=_owner_to_keep(self.path))
        self._seen = _signature(self.path)


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the keyring file is replaced (atomic writes give a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _new_key(version: int) -> KeyVersion:
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return KeyVersion(version, created, get_random_bytes(KEY_BYTES))


def _kdf_aad(kdf: dict[str, object]) -> bytes:
    return json.dumps(kdf, sort_keys=True, separators=(",", ":")).encode("ascii")


def protect(entries: object, passphrase: bytes) -> dict[str, object]:
    """`entries` (JSON-able) sealed under a passphrase: scrypt, then AES-256-GCM with the KDF parameters as
    associated data; the document's ``protection``, ``kdf``, ``nonce`` and ``sealed`` fields."""
    salt = get_random_bytes(16)
    kdf = {"name": "scrypt", "salt": _b64(salt), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
    nonce = get_random_bytes(12)
    cipher = AES.new(_derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P), AES.MODE_GCM, nonce=nonce)
    cipher.update(_kdf_aad(kdf))
    ct, tag = cipher.encrypt_and_digest(json.dumps(entries).encode("utf-8"))
    return {"protection": "scrypt-aes256gcm", "kdf": kdf, "nonce": _b64(nonce), "sealed": _b64(ct + tag)}


def unprotect(path: Path, doc: dict[str, object], passphrase: bytes | None, what: str = "keyring") -> Any:
    """What :func:`protect` sealed in `doc` (read from `path`, a `what`).

    Raises
    ------
    KeyringError
        No passphrase, a wrong one, or a damaged file.
    """
    if passphrase is None:
        raise KeyringError(f"{path}: {what} is passphrase-protected and no passphrase was given")
    kdf = doc["kdf"]
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
        raise KeyringError(f"{path}: unknown key derivation")
    key = _derive(passphrase, _unb64(kdf["salt"]), int(kdf["n"]), int(kdf["r"]), int(kdf["p"]))
    blob = _unb64(str(doc["sealed"]))
    cipher = AES.new(key, AES.MODE_GCM, nonce=_unb64(str(doc["nonce"])))
    cipher.update(_kdf_aad(kdf))
    try:
        plain = cipher.decrypt_and_verify(blob[:-16], blob[-16:])
    except ValueError:
        raise KeyringError(f"{path}: wrong passphrase or {what} damaged") from None
    return json.loads(plain)


def _owner_to_keep(path: Path) -> tuple[int, int] | None:
    """Who must own the rewritten keyring: its current owner (else its directory's), when root writes it.

    ``keys rotate`` run by root for a server running as ``aepacs`` would otherwise
    leave a root-owned 0600 file the server can no longer read.
    """
    if os.geteuid() != 0:
        return None
    st = path.stat() if path.exists() else path.parent.stat()
    return None if (st.st_uid, st.st_gid) == (0, 0) else (st.st_uid, st.st_gid)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of the keyring at `path` by a lock on its directory.

    The directory, not a lock file: a lock file left by root (``keys init`` run
    as root) would be one the server's user cannot open. Readers take no lock:
    every write replaces the file atomically.
    """
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def passphrase_from_env(variable: str) -> bytes | None:
    """Return the passphrase held in environment `variable`, or None when unset/empty."""
    value = os.environ.get(variable)
    return value.encode("utf-8") if value else None
