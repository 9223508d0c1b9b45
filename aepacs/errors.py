"""Exception hierarchy.

Every error aepacs raises on purpose derives from :class:`AepacsError`; the
command line turns those into one line naming the object and the problem.
Messages never contain key material or pixel data.
"""

from __future__ import annotations

from typing import Any


class AepacsError(Exception):
    """Base class of all deliberate aepacs errors.

    Every subclass pickles as it is, whatever its ``__init__`` takes: worker
    processes send their errors back pickled, and one that cannot be rebuilt
    breaks the whole pool (a tampered spool entry once did, on every try).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[AepacsError], args: tuple[Any, ...], state: dict[str, Any]) -> AepacsError:
    """An unpickled error: its message and attributes as raised, without calling its ``__init__``."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigError(AepacsError):
    """The configuration is invalid; the message names the offending key."""


class KeyringError(AepacsError):
    """The keyring is missing, unreadable, too open or lacks a key version."""


class MissingKeyError(KeyringError):
    """The keyring does not hold the key-encryption key version asked for."""

    def __init__(self, version: int) -> None:
        super().__init__(f"keyring has no key version {version}")
        self.version = version


class SealError(AepacsError):
    """A sealed object could not be created."""


class OpenError(AepacsError):
    """A sealed object could not be opened: tampered, truncated or wrong key.

    Parameters
    ----------
    name : str
        What identifies the object to a person (path, SOP Instance UID).
    reason : str
        What is wrong with it.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class CodecError(AepacsError):
    """A codec cannot encode or decode the pixel data it was given."""


class InputError(AepacsError):
    """The input is not a DICOM instance aepacs can archive (cannot be understood)."""


class DatasetMismatch(InputError):
    """The dataset contradicts itself or its request: no SOP Instance UID, a UID
    other than the one announced, pixel data not matching Rows x Columns x ...
    (DICOM status 0xA900)."""


class RecipientRefused(AepacsError):
    """A requester may not be sent sealed objects: its recipient is revoked, or it has none and the site
    seals only to recipients (``transport.unregistered: refuse``)."""


class StoreError(AepacsError):
    """The blob store or the index failed."""


class StoreFullError(StoreError):
    """The blob store refuses new data (disk full); nothing was written."""


class PathError(AepacsError):
    """A file name built from data would lead outside its directory; nothing was written."""
