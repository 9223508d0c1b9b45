"""The recipient rows of the index: whom the archive seals what it sends to (``aepacs recipients``).

Each row holds a recipient's X25519 public key (its id is the key's fingerprint), the name the archive
knows it by, and what identifies it when it retrieves: the AE title it calls as, the SHA-256 of its
DICOMweb bearer token. Revoking sets ``revoked_at``; the row stays. Keys are checked and used above
this layer (:mod:`aepacs.crypto.recipients`); here they are bytes.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from aepacs.errors import StoreError
from aepacs.store.index import Index, writer
from aepacs.store.schema import recipients


class RecipientRows:
    """The recipient rows of `index`."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def add(self, name: str, recipient_id: str, public_key: bytes, *, aet: str | None = None,
            token_sha256: str | None = None) -> None:
        """Register a recipient.

        Raises
        ------
        StoreError
            The name or the key is registered already (revoked or not), the AE title or token belongs to
            another recipient still active, or the index failed.
        """
        try:
            with writer(self.index.engine) as conn, conn.begin():
                for label, column, value in ((f"AE title {aet}", recipients.c.aet, aet),
                                             ("that DICOMweb token", recipients.c.token_sha256, token_sha256)):
                    other = conn.execute(select(recipients.c.name).where(
                        column == value, recipients.c.revoked_at.is_(None))).first() if value else None
                    if other is not None:
                        raise StoreError(f"recipients: {label} already identifies active recipient {other.name}")
                conn.execute(insert(recipients).values(
                    name=name, recipient_id=recipient_id, public_key=public_key, aet=aet,
                    token_sha256=token_sha256, added_at=time.time()))
        except IntegrityError:
            raise StoreError(f"recipients: {name} or its key is registered already "
                             "(a revoked name or key is not reused)") from None
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot add recipient {name} ({type(exc).__name__})") from None

    def all(self) -> list[Row[Any]]:
        """Every recipient, active and revoked, by name."""
        with self.index.engine.connect() as conn:
            return list(conn.execute(select(recipients).order_by(recipients.c.name)).all())

    def revoke(self, name: str) -> bool:
        """Revoke `name` from now on; False when there is no such active recipient."""
        try:
            with writer(self.index.engine) as conn, conn.begin():
                return conn.execute(update(recipients).where(recipients.c.name == name,
                                                             recipients.c.revoked_at.is_(None))
                                    .values(revoked_at=time.time())).rowcount == 1
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot revoke recipient {name} ({type(exc).__name__})") from None

    def named(self, name: str) -> Row[Any] | None:
        """The recipient called `name`, revoked or not."""
        with self.index.engine.connect() as conn:
            return conn.execute(select(recipients).where(recipients.c.name == name)).first()

    def find(self, *, aet: str | None = None, token_sha256: str | None = None) -> Row[Any] | None:
        """The recipient identified by AE title `aet` or token hash `token_sha256`, revoked or not (the
        caller tells the two apart: a revoked one is refused, not treated as unknown); the active one first."""
        clauses = [recipients.c.aet == aet] if aet else []
        clauses += [recipients.c.token_sha256 == token_sha256] if token_sha256 else []
        if not clauses:
            return None
        with self.index.engine.connect() as conn:
            return conn.execute(select(recipients).where(or_(*clauses))
                                .order_by(recipients.c.revoked_at.is_not(None), recipients.c.pk.desc())).first()


__all__ = ["RecipientRows"]
