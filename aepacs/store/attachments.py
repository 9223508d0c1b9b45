"""The attachment rows of the index: files another program keeps in aepacs (Orthanc's storage area).

Each row names a file by ``object_uid`` (its program's id and content type, which its sealed blob
is bound to) and points at that blob as an instance row does. Rows are written once, switched to a
coded or re-sealed blob by compare-and-swap (:meth:`aepacs.store.index.Index.swap_blobs` with
``table="attachments"``, as a rekey's), and deleted when the program removes the file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from aepacs.errors import StoreError
from aepacs.store.index import BlobRef, Index, writer
from aepacs.store.schema import attachments

_INSERT = attachments.insert()
_GET = select(attachments).where(attachments.c.object_uid == bindparam("uid"))  # built once: every read


def _pragma(conn: Connection, pragma: str) -> None:
    """Set an SQLite pragma on the driver's connection: outside any transaction (SQLite refuses some in one)."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.cursor().execute(f"PRAGMA {pragma}")


class Attachments:
    """The attachment rows of `index`.

    Parameters
    ----------
    index : Index
        The archive's index (its engine and write transactions).
    """

    def __init__(self, index: Index) -> None:
        self.index = index

    def add(self, object_uid: str, content_type: int, ref: BlobRef, *, sync: bool = True) -> None:
        """Index a new attachment whose blob is already written (`ref`: as an instance's, without quality).

        Durable when this returns; with ``sync=False`` on SQLite, once the file system holding the
        database is synced (committed to the write-ahead log without its fsync: it survives a crash of the
        process, and one sync of the file system covers it and the blob together). PostgreSQL's commits
        are durable.

        Raises
        ------
        StoreError
            That object UID is already indexed, or the index failed.
        """
        row = {k: v for k, v in asdict(ref).items() if k in attachments.c}
        row.update(object_uid=object_uid, content_type=content_type, stored_at=time.time())
        sqlite = self.index.engine.dialect.name == "sqlite"
        try:
            with writer(self.index.engine) as conn:
                if not sync and sqlite:
                    _pragma(conn, "synchronous=NORMAL")
                try:
                    with conn.begin():
                        conn.execute(_INSERT, row)
                finally:
                    if not sync and sqlite:
                        _pragma(conn, "synchronous=FULL")
        except IntegrityError:
            raise StoreError(f"attachment {object_uid} is already stored") from None
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot add attachment {object_uid} ({type(exc).__name__})") from None

    def add_many(self, rows: list[tuple[str, int, BlobRef]]) -> None:
        """Index new attachments whose blobs are durable, in one transaction (durable on return); a row
        already there (a journal replayed after a crash) is kept as it is.

        Raises
        ------
        StoreError
            The index failed.
        """
        now = time.time()
        values = [{**{k: v for k, v in asdict(ref).items() if k in attachments.c},
                   "object_uid": uid, "content_type": content_type, "stored_at": now}
                  for uid, content_type, ref in rows]
        try:
            with writer(self.index.engine) as conn, conn.begin():
                conn.execute(_INSERT, values)
            return
        except IntegrityError:  # some were there: one by one, keeping those
            pass
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot add {len(rows)} attachments ({type(exc).__name__})") from None
        for uid, content_type, ref in rows:
            try:
                self.add(uid, content_type, ref)
            except StoreError:
                if self.get(uid) is None:
                    raise

    def get(self, object_uid: str) -> Row[Any] | None:
        """The row of `object_uid`, or None."""
        with self.index.engine.connect() as conn:
            return conn.execute(_GET, {"uid": object_uid}).first()

    def remove(self, object_uid: str) -> Row[Any] | None:
        """Delete the row of `object_uid`; the row as it was (its blob is the caller's to delete), or None."""
        try:
            with writer(self.index.engine) as conn, conn.begin():
                row = conn.execute(select(attachments).where(attachments.c.object_uid == object_uid)).first()
                if row is not None:
                    conn.execute(delete(attachments).where(attachments.c.pk == row.pk))
                return row
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot remove attachment {object_uid} ({type(exc).__name__})") from None

    def set_codec(self, object_uid: str, blob_key: str, codec: str) -> bool:
        """Record `codec` for the row of `object_uid` if it still points at `blob_key` (compare and swap)."""
        return self._update(object_uid, blob_key, codec=codec)

    def set_sha256(self, object_uid: str, blob_key: str, sha256: str) -> bool:
        """Record the file's SHA-256 (taken by the compressor) if the row still points at `blob_key`."""
        return self._update(object_uid, blob_key, source_sha256=sha256)

    def _update(self, object_uid: str, blob_key: str, **values: Any) -> bool:
        try:
            with writer(self.index.engine) as conn, conn.begin():
                return conn.execute(update(attachments).where(
                    attachments.c.object_uid == object_uid, attachments.c.blob_key == blob_key)
                    .values(**values)).rowcount == 1
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot update attachment {object_uid} ({type(exc).__name__})") from None

    def stored_before(self, when: float, *, batch: int = 1000) -> Iterator[Any]:
        """Every row stored before `when` (epoch s): ``pk, object_uid, content_type``, by primary key."""
        after = 0
        while True:
            with self.index.engine.connect() as conn:
                rows = conn.execute(select(attachments.c.pk, attachments.c.object_uid, attachments.c.content_type)
                                    .where(attachments.c.stored_at < when, attachments.c.pk > after)
                                    .order_by(attachments.c.pk).limit(batch)).all()
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].pk

    def count(self, codec: str | None = None, content_type: int | None = None) -> int:
        """Attachments in all, or those whose blob is coded by `codec`, or of `content_type`."""
        q = select(func.count()).select_from(attachments)
        if codec is not None:
            q = q.where(attachments.c.codec == codec)
        if content_type is not None:
            q = q.where(attachments.c.content_type == content_type)
        with self.index.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def following(self, pk: int, content_type: int, *, limit: int) -> list[Row[Any]]:
        """Up to `limit` rows of `content_type` stored after the row `pk` (in primary-key order: as they came)."""
        q = (select(attachments).where(attachments.c.pk > pk, attachments.c.content_type == content_type)
             .order_by(attachments.c.pk).limit(limit))
        with self.index.engine.connect() as conn:
            return list(conn.execute(q).all())

    def coded_by(self, codec: str, content_type: int, *, after_pk: int = 0, limit: int = 100,
                 stored_before: float | None = None) -> list[Row[Any]]:
        """Attachments of `content_type` whose blob is coded by `codec`, in primary-key order after `after_pk`
        (with `stored_before`: only those stored before then, epoch s)."""
        q = (select(attachments).where(attachments.c.codec == codec, attachments.c.content_type == content_type,
                                       attachments.c.pk > after_pk)
             .order_by(attachments.c.pk).limit(limit))
        if stored_before is not None:
            q = q.where(attachments.c.stored_at < stored_before)
        with self.index.engine.connect() as conn:
            return list(conn.execute(q).all())


__all__ = ["Attachments"]
