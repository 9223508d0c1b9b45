"""The query index: patient / study / series / instance rows (SQLAlchemy Core; tables in :mod:`.schema`).

SQLite in WAL mode with ``synchronous=FULL`` by default, or PostgreSQL
(``postgresql+psycopg://``) for several processes or nodes: the same Core
statements; unique keys decide between concurrent writers (the loser reads
again), row locks order the study's modality list, and the key and blob swaps
are compare-and-swap updates. Each instance row points at its sealed blob
(content key, size), names its codec and KEK version, and keeps the SHA-256
of the original stream so a re-sent identical instance is recognised.

Writers take SQLite's write lock at the start of their transaction
(``BEGIN IMMEDIATE``), so concurrent writers queue on the busy timeout
instead of failing half-way.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, Row, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from aepacs.dicom.records import INSTANCE_FIELDS, PATIENT_FIELDS, SERIES_FIELDS, STUDY_FIELDS, InstanceRecord
from aepacs.errors import StoreError
from aepacs.store import migrate
from aepacs.store.atomic import private_dir, private_file
from aepacs.store.schema import (
    OBJECT_NAMES,
    OBJECT_TABLES,
    fold,
    instances,
    patients,
    pending_blobs,
    series,
    studies,
)


@dataclass(frozen=True)
class BlobRef:
    """Where an instance's sealed blob is and how it was sealed."""

    codec: str
    kek_version: int
    blob_key: str
    blob_size: int
    source_size: int
    source_sha256: str
    psnr: float | None = None
    ssim: float | None = None


#: How often :meth:`Index.add` tries again after another writer inserted a row it was about to
_RETRIES = 8
#: PostgreSQL's deadlock-detected and serialization-failure states: the transaction may simply be run again
_TRANSIENT = ("40P01", "40001")
#: Outcomes of :meth:`Index.add`.
ADDED, SAME, CONFLICT = "added", "same", "conflict"


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN
    cur = dbapi_conn.cursor()
    # busy_timeout first, so that switching to WAL waits for a lock another process holds
    for pragma in ("busy_timeout=60000", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        for attempt in range(200):
            try:
                cur.execute(f"PRAGMA {pragma}")
                break
            except sqlite3.OperationalError as exc:
                # two processes switching a new database to WAL together: SQLite answers one
                # "locked" at once (deadlock avoidance skips the busy handler); try again
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.01 + 0.002 * attempt)
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.pop("aepacs_write", False) else "BEGIN")


def shown_url(url: str) -> str:
    """`url` as logs and messages may show it: any password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable database URL)"


def make_engine(url: str) -> Engine:
    """The SQLAlchemy engine of the index at `url`; SQLite with WAL, full sync and write transactions that
    take the write lock at BEGIN (:func:`writer`); its file owner-only from the first byte (patient data;
    SQLite gives -wal/-shm the file's mode)."""
    path = sqlite_path(url)
    if path is not None:
        private_dir(path.parent)
        private_file(path)
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def writer(engine: Engine) -> Connection:
    """A connection whose transactions write (SQLite: ``BEGIN IMMEDIATE``)."""
    conn = engine.connect()
    conn.info["aepacs_write"] = True
    return conn


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None: another engine, or in memory)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix):] in ("", ":memory:") or "mode=memory" in url:
        return None
    return Path(url[len(prefix):].split("?", 1)[0])


def _object_table(name: str) -> Table:
    """The object table called `name` (``instances`` or ``attachments``)."""
    for table in OBJECT_TABLES:
        if table.name == name:
            return table
    raise StoreError(f"index: no object table {name!r}")


class Index:
    """The archive's query index.

    Parameters
    ----------
    url : str
        SQLAlchemy database URL (``sqlite:////abs/path/index.sqlite3``).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        # level keys already in the table -> primary key; rows are never renumbered, so this
        # cache only saves look-ups (ingest of a series hits the same three rows each time)
        self._pks: dict[tuple[str, tuple[Any, ...]], int] = {}
        self.shown = shown_url(url)
        try:
            self.engine: Engine = make_engine(url)
            # as a write transaction from the start: two processes creating the tables in deferred
            # transactions would both read, then one would fail its lock upgrade at once
            for attempt in range(100):
                try:
                    with self._writer() as conn, conn.begin():
                        migrate.prepare(conn, self.shown)
                    break
                except OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.02)
        except SQLAlchemyError as exc:
            raise StoreError(f"index {self.shown}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ------------------------------------------------------------
    def _writer(self) -> Connection:
        return writer(self.engine)

    def _get_or_insert(self, conn: Connection, table: Table, where: dict[str, Any],
                       values: dict[str, Any]) -> tuple[int, bool]:
        """Return (primary key, whether inserted now)."""
        cache_key = (table.name, tuple(where.values()))
        pk = self._pks.get(cache_key)
        if pk is not None:
            return pk, False
        cond = [table.c[k] == v for k, v in where.items()]
        found = conn.execute(select(table.c.pk).where(*cond)).scalar()
        inserted = found is None
        if inserted:
            key = conn.execute(table.insert().values(**values)).inserted_primary_key
            assert key is not None
            found = key[0]
        assert found is not None
        return int(found), inserted

    def _remember(self, *entries: tuple[Table, dict[str, Any], int]) -> None:
        if len(self._pks) > 100_000:
            self._pks.clear()
        for table, where, pk in entries:
            self._pks[(table.name, tuple(where.values()))] = pk

    def add(self, rec: InstanceRecord, ref: BlobRef) -> str:
        """Index an instance whose blob is already durable.

        Returns
        -------
        str
            ``"added"``; ``"same"`` when that SOP Instance UID is indexed with
            the same original bytes; ``"conflict"`` when it is indexed with
            different bytes (nothing is changed then).
        """
        who = {"patient_id": rec.patient_id, "issuer_of_patient_id": rec.issuer_of_patient_id}
        study_key, series_key = {"study_uid": rec.study_uid}, {"series_uid": rec.series_uid}
        known = [self._pks.get((t.name, tuple(k.values()))) for t, k in
                 ((patients, who), (studies, study_key), (series, series_key))]
        if None not in known:
            outcome = self._add_to_known_series(rec, ref, cast(int, known[2]))
            if outcome is not None:
                return outcome
        for attempt in range(_RETRIES):
            try:
                with self._writer() as conn, conn.begin():
                    existing = conn.execute(select(instances.c.source_sha256)
                                            .where(instances.c.sop_uid == rec.sop_uid)).scalar()
                    if existing is not None:
                        return SAME if existing == ref.source_sha256 else CONFLICT
                    patient_pk, _ = self._get_or_insert(conn, patients, who, {
                        **rec.values(PATIENT_FIELDS), "patient_name_fold": fold(rec.patient_name)})
                    study_pk, _ = self._get_or_insert(conn, studies, study_key,
                                                      {**rec.values(STUDY_FIELDS), "patient_pk": patient_pk})
                    series_pk, new_series = self._get_or_insert(conn, series, series_key,
                                                                {**rec.values(SERIES_FIELDS), "study_pk": study_pk})
                    if new_series:
                        self._refresh_modalities(conn, study_pk)
                    conn.execute(instances.insert().values(
                        **rec.values(INSTANCE_FIELDS), series_pk=series_pk, stored_at=time.time(),
                        **asdict(ref)))
                self._remember((patients, who, patient_pk), (studies, study_key, study_pk),
                               (series, series_key, series_pk))  # only once committed
                return ADDED
            except (IntegrityError, OperationalError) as exc:
                # another writer (process or node) added the same patient, study, series or instance
                # between our read and our insert, or PostgreSQL broke a deadlock between two writers:
                # read again, now seeing it (READ COMMITTED)
                retry = isinstance(exc, IntegrityError) or getattr(exc.orig, "sqlstate", None) in _TRANSIENT
                if not retry or attempt == _RETRIES - 1:
                    raise StoreError(f"index: cannot add {rec.sop_uid} ({type(exc).__name__}: {exc})") from None
            except SQLAlchemyError as exc:
                raise StoreError(f"index: cannot add {rec.sop_uid} ({type(exc).__name__}: {exc})") from None
        raise AssertionError("unreachable")

    def _add_to_known_series(self, rec: InstanceRecord, ref: BlobRef, series_pk: int) -> str | None:
        """:meth:`add` for the common case, the next instance of a series this process has indexed: one
        ``INSERT … ON CONFLICT DO NOTHING`` (on PostgreSQL in autocommit: one round trip instead of four);
        the patient, study and series rows exist, and the study's modality list already has the series'.
        None: the series row is gone (the caller then runs the whole transaction)."""
        pg = self.engine.dialect.name == "postgresql"
        statement = (postgresql if pg else sqlite).insert(instances).on_conflict_do_nothing(
            index_elements=[instances.c.sop_uid]).returning(instances.c.pk)
        row = {**rec.values(INSTANCE_FIELDS), "series_pk": series_pk, "stored_at": time.time(), **asdict(ref)}
        try:
            if pg:
                with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    added = conn.execute(statement, row).first() is not None
            else:
                with self._writer() as conn, conn.begin():
                    added = conn.execute(statement, row).first() is not None
        except IntegrityError:
            self._pks.clear()
            return None
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot add {rec.sop_uid} ({type(exc).__name__}: {exc})") from None
        if added:
            return ADDED
        existing = self.source_sha256(rec.sop_uid)
        return SAME if existing == ref.source_sha256 else CONFLICT

    def _refresh_modalities(self, conn: Connection, study_pk: int) -> None:
        # the study row first (PostgreSQL: FOR NO KEY UPDATE, which the series' foreign-key locks do not
        # block; SQLite's writers are serial already), so that two writers adding series to one study take
        # turns, and the second sees the first's series
        conn.execute(select(studies.c.pk).where(studies.c.pk == study_pk).with_for_update(key_share=True))
        mods = conn.execute(select(series.c.modality).where(series.c.study_pk == study_pk)
                            .distinct()).scalars().all()
        conn.execute(update(studies).where(studies.c.pk == study_pk)
                     .values(modalities_in_study="\\".join(sorted(m for m in mods if m))))

    # -- reading ------------------------------------------------------------
    def _joined(self) -> Any:
        return (instances.join(series, instances.c.series_pk == series.c.pk)
                .join(studies, series.c.study_pk == studies.c.pk)
                .join(patients, studies.c.patient_pk == patients.c.pk))

    def find(self, *, patient_id: str | Sequence[str] | None = None,
             study_uid: str | Sequence[str] | None = None,
             series_uid: str | Sequence[str] | None = None,
             sop_uid: str | Sequence[str] | None = None) -> list[Row[Any]]:
        """Instances matching every given identifier (a value or a list of values).

        Rows carry the attributes of all four levels (instance, series,
        study, patient) under their column names.
        """
        cols = [c for t in (instances, series, studies, patients) for c in t.c
                if c.name != "pk" and not c.name.endswith("_pk")]
        q = select(*cols).select_from(self._joined())
        for column, value in ((patients.c.patient_id, patient_id), (studies.c.study_uid, study_uid),
                              (series.c.series_uid, series_uid), (instances.c.sop_uid, sop_uid)):
            if value is None:
                continue
            q = q.where(column == value) if isinstance(value, str) else q.where(column.in_(list(value)))
        q = q.order_by(studies.c.study_uid, series.c.series_number, series.c.series_uid,
                       instances.c.instance_number, instances.c.sop_uid)
        with self.engine.connect() as conn:
            return [row for row in conn.execute(q)]

    def source_sha256(self, sop_uid: str) -> str | None:
        """SHA-256 of the original bytes archived under `sop_uid`, or None (a cheap existence check)."""
        with self.engine.connect() as conn:
            return conn.execute(select(instances.c.source_sha256).where(instances.c.sop_uid == sop_uid)).scalar()

    def get(self, sop_uid: str) -> Row[Any] | None:
        """The instance row of `sop_uid`, or None."""
        rows = self.find(sop_uid=sop_uid)
        return rows[0] if rows else None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(instances)).scalar() or 0)

    def blob_keys(self) -> Iterator[str]:
        """Every blob key an instance or attachment row references."""
        with self.engine.connect() as conn:
            for table in OBJECT_TABLES:
                yield from conn.execute(select(table.c.blob_key)).scalars()

    # -- key rotation (aepacs rekey) ---------------------------------------------
    @staticmethod
    def _rekey_condition(table: Table, active: int, sealed_before: float | None) -> Any:
        # (version 0: a blind archive's object, sealed to recipients: no KEK rekeys it; they re-wrap it)
        cond = table.c.kek_version != active
        if sealed_before is not None:
            cond = or_(cond, func.coalesce(table.c.sealed_at, table.c.stored_at) < sealed_before)
        return and_(table.c.kek_version != 0, cond)

    def rekey_count(self, active: int, *, sealed_before: float | None = None, table: str = "instances") -> int:
        """How many objects of `table` :meth:`rekey_candidates` would select in all."""
        t = _object_table(table)
        q = select(func.count()).select_from(t).where(self._rekey_condition(t, active, sealed_before))
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def rekey_candidates(self, active: int, *, sealed_before: float | None = None, after_pk: int = 0,
                         limit: int = 500, table: str = "instances") -> list[Row[Any]]:
        """Objects of `table` (``instances`` or ``attachments``) to rekey, in primary-key order after `after_pk`.

        Those whose key slot is not under KEK `active`; with `sealed_before`
        (epoch s) also those whose data key is older than that. Rows carry
        ``pk, sop_uid`` (the object's name: an attachment's object UID), ``blob_key, blob_size,
        kek_version, key_slot`` and ``kind`` (the table).
        """
        t = _object_table(table)
        return self._batch(t, self._rekey_condition(t, active, sealed_before), after_pk, limit)

    def blind_candidates(self, *, after_pk: int = 0, limit: int = 500) -> list[Row[Any]]:
        """A blind archive's instances (sealed to recipients: key version 0), in primary-key order after
        `after_pk` (rows as :meth:`rekey_candidates`): what ``aepacs rekey --export-slots`` lists."""
        return self._batch(instances, instances.c.kek_version == 0, after_pk, limit)

    # -- bulk re-encoding (aepacs reencode) --------------------------------------
    @staticmethod
    def _recode_condition(codec: str) -> Any:
        return and_(instances.c.codec == codec, instances.c.psnr.is_(None))

    def recode_count(self, codec: str) -> tuple[int, int]:
        """Instances coded by `codec`: (lossless, lossy); only the lossless ones are re-encoded."""
        q = (select(instances.c.psnr.is_(None), func.count()).where(instances.c.codec == codec)
             .group_by(instances.c.psnr.is_(None)))
        with self.engine.connect() as conn:
            counts = {bool(exact): int(n) for exact, n in conn.execute(q)}
        return counts.get(True, 0), counts.get(False, 0)

    def recode_candidates(self, codec: str, *, after_pk: int = 0, limit: int = 500) -> list[Row[Any]]:
        """Lossless instances coded by `codec`, in primary-key order after `after_pk` (rows as
        :meth:`rekey_candidates`)."""
        return self._batch(instances, self._recode_condition(codec), after_pk, limit)

    def _batch(self, table: Table, cond: Any, after_pk: int, limit: int) -> list[Row[Any]]:
        q = (select(table.c.pk, OBJECT_NAMES[table.name].label("sop_uid"), table.c.blob_key, table.c.blob_size,
                    table.c.kek_version, table.c.key_slot, literal(table.name).label("kind"))
             .where(cond, table.c.pk > after_pk).order_by(table.c.pk).limit(limit))
        with self.engine.connect() as conn:
            return list(conn.execute(q).all())

    def blob_of(self, name: str, table: str = "instances") -> str | None:
        """The blob key the object `name` of `table` points at now, or None (gone)."""
        t = _object_table(table)
        with self.engine.connect() as conn:
            return conn.execute(select(t.c.blob_key).where(OBJECT_NAMES[table] == name)).scalar()

    def swap_slots(self, swaps: Sequence[tuple[str, str, int, bytes, int]], table: str = "instances") -> set[str]:
        """Install rewrapped key slots, each only if its row is still as read.

        Parameters
        ----------
        swaps : sequence of (name, blob_key, old_version, slot, new_version)
            ``name``: the object's SOP Instance UID (an attachment's object UID).
        table : {"instances", "attachments"}

        Returns
        -------
        set of str
            The objects switched (the others changed meanwhile).
        """
        t, ident = _object_table(table), OBJECT_NAMES[table]
        stmt = (update(t)
                .where(ident == bindparam("b_uid"), t.c.blob_key == bindparam("b_key"),
                       t.c.kek_version == bindparam("b_old"))
                .values(key_slot=bindparam("b_slot"), kek_version=bindparam("b_new")))
        params = [{"b_uid": u, "b_key": k, "b_old": o, "b_slot": s, "b_new": n} for u, k, o, s, n in swaps]
        try:
            with self._writer() as conn, conn.begin():
                matched = conn.execute(stmt, params).rowcount if params else 0
                if matched == len(params):
                    return {u for u, *_ in swaps}
                # some rows changed meanwhile: see which ones now hold the slot written here
                mine = {u: s for u, _, _, s, _ in swaps}
                rows = conn.execute(select(ident, t.c.key_slot).where(ident.in_(list(mine)))).all()
                done = {u for u, slot in rows if slot is not None and bytes(slot) == mine[u]}
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot switch key slots ({type(exc).__name__}: {exc})") from None
        return done

    def swap_blobs(self, swaps: Sequence[tuple[str, str, str, int, int, str]], owner: str,
                   table: str = "instances") -> set[str]:
        """Point each row at its new blob if it still points at the old one (compare and swap).

        Parameters
        ----------
        swaps : sequence of (name, old_key, new_key, new_size, new_version, codec)
        owner : str
            The process the old blobs are left pending for.
        table : {"instances", "attachments"}

        In the same transaction, each switched row's new blob leaves the
        pending list and its old blob joins it, to be removed next.

        Returns
        -------
        set of str
            The objects switched.
        """
        t, ident = _object_table(table), OBJECT_NAMES[table]
        now, done = time.time(), set()
        try:
            with self._writer() as conn, conn.begin():
                for name, old_key, new_key, new_size, new_version, codec in swaps:
                    result = conn.execute(update(t).where(ident == name, t.c.blob_key == old_key).values(
                        blob_key=new_key, blob_size=new_size, kek_version=new_version, key_slot=None,
                        sealed_at=now, codec=codec))
                    if result.rowcount != 1:
                        continue
                    done.add(name)
                    conn.execute(delete(pending_blobs).where(pending_blobs.c.blob_key.in_([new_key, old_key])))
                    conn.execute(pending_blobs.insert().values(blob_key=old_key, sop_uid=name, owner=owner,
                                                               created=now))
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot switch blobs ({type(exc).__name__}: {exc})") from None
        return done

    def add_pending(self, entries: Sequence[tuple[str, str]], owner: str) -> None:
        """Record, before they are written, blobs ``(blob_key, sop_uid)`` that may end up unreferenced."""
        if not entries:
            return
        now = time.time()
        try:
            with self._writer() as conn, conn.begin():
                conn.execute(delete(pending_blobs).where(pending_blobs.c.blob_key.in_([k for k, _ in entries])))
                conn.execute(pending_blobs.insert(), [{"blob_key": k, "sop_uid": u, "owner": owner, "created": now}
                                                      for k, u in entries])
        except SQLAlchemyError as exc:
            raise StoreError(f"index: cannot record pending blobs ({type(exc).__name__}: {exc})") from None

    def pending(self) -> list[Row[Any]]:
        """The pending blobs: ``blob_key, sop_uid, owner, created``."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(pending_blobs)).all())

    def referenced(self, blob_key: str) -> bool:
        """Whether any instance or attachment row points at `blob_key`."""
        with self.engine.connect() as conn:
            return any(conn.execute(select(table.c.pk).where(table.c.blob_key == blob_key).limit(1)).first()
                       is not None for table in OBJECT_TABLES)

    def drop_pending(self, *blob_keys: str) -> None:
        """Forget pending blobs (after they were removed or found referenced)."""
        if not blob_keys:
            return
        with self._writer() as conn, conn.begin():
            conn.execute(delete(pending_blobs).where(pending_blobs.c.blob_key.in_(list(blob_keys))))

    def kek_versions(self) -> dict[int, int]:
        """Objects (instances and attachments) per KEK version their key slot is under."""
        counts: dict[int, int] = {}
        with self.engine.connect() as conn:
            for table in OBJECT_TABLES:
                for v, n in conn.execute(select(table.c.kek_version, func.count()).group_by(table.c.kek_version)):
                    counts[int(v)] = counts.get(int(v), 0) + int(n)
        return counts

    def studies(self) -> list[Row[Any]]:
        """One row per study: UID, patient, date, modalities, instance count."""
        q = (select(studies.c.study_uid, patients.c.patient_id, studies.c.study_date,
                    studies.c.modalities_in_study, func.count(instances.c.pk).label("instances"))
             .select_from(self._joined()).group_by(studies.c.pk, patients.c.pk)
             .order_by(studies.c.study_uid))
        with self.engine.connect() as conn:
            return list(conn.execute(q).all())
