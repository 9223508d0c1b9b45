"""Whom an outgoing sealed object is sealed to: the registered recipient behind an AE title or a token.

:func:`recipient_for` looks the requester up in the index's recipient rows (``aepacs recipients``): a
registered, active recipient gets every object sealed to its own public key
(:func:`aepacs.crypto.seal.seal_to`); a revoked one is refused at once; one not registered gets the
archive's KEK-sealed form or a refusal, as ``transport.unregistered`` says.
"""

from __future__ import annotations

from typing import Any

from aepacs.crypto.recipients import Recipient
from aepacs.errors import RecipientRefused
from aepacs.pipeline.archive import Archive
from aepacs.store.recipients import RecipientRows


def recipient_for(archive: Archive, *, aet: str | None = None, token_sha256: str | None = None) -> Recipient | None:
    """The recipient objects sent to this requester are sealed to; None: the archive's own KEK-sealed form.
    With neither `aet` nor `token_sha256` (``export --sealed`` without ``--recipient``): what
    ``transport.unregistered`` allows.

    Raises
    ------
    RecipientRefused
        The requester's recipient is revoked, or it has none and ``transport.unregistered`` is ``refuse``.
    """
    row = RecipientRows(archive.index).find(aet=aet.strip() if aet else None, token_sha256=token_sha256)
    who = f"AE title {aet.strip()}" if aet else "that DICOMweb token" if token_sha256 else "a reader named nowhere"
    if row is not None:
        return _active(row, f"recipient {row.name} ({who})")
    if archive.config.transport.unregistered == "refuse":
        raise RecipientRefused(f"{who} is no registered recipient and this archive seals only to recipients "
                               "('aepacs recipients add'; transport.unregistered)")
    return None


def recipient_named(archive: Archive, name: str) -> Recipient:
    """The active recipient called `name` (``aepacs export --sealed --recipient NAME``).

    Raises
    ------
    RecipientRefused
        No recipient has that name, or it is revoked.
    """
    row = RecipientRows(archive.index).named(name)
    if row is None:
        raise RecipientRefused(f"no recipient {name} ('aepacs recipients list')")
    return _active(row, f"recipient {name}")


def _active(row: Any, who: str) -> Recipient:
    """The recipient of index row `row` (`who` names it), refused when it is revoked."""
    if row.revoked_at is not None:
        raise RecipientRefused(f"{who} is revoked: nothing is sealed to it")
    return Recipient(row.name, bytes(row.public_key))


__all__ = ["recipient_for", "recipient_named"]
