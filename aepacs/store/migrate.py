"""The index schema's version: Alembic migrations, applied by ``aepacs db upgrade`` (SQLite and PostgreSQL alike).

:func:`prepare` runs whenever an :class:`~aepacs.store.index.Index` opens: a
new (empty) database gets the whole schema; one at this release's revision is
used as it is; one made by an older release -- an earlier revision, or an
index from before migrations (no version table) -- is refused with the
command that upgrades it, so that one node of several never changes a shared
schema under the others. :func:`upgrade` is that command. On PostgreSQL a
transaction-scoped advisory lock makes concurrent upgrades (several nodes
starting on a new database) take turns.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from aepacs.errors import StoreError
from aepacs.store.schema import ADDED_COLUMNS, instances

__all__ = ["BASELINE", "head", "prepare", "revision", "upgrade"]

log = logging.getLogger("aepacs.index")
logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-step lines; one of ours says what changed

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: the revision of the schema the releases before migrations made
BASELINE = "0001"
#: the advisory lock PostgreSQL migrations hold ("aepacs" in ASCII)
_LOCK = 0x61657061637300


def _config(conn: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


@functools.cache
def _known() -> frozenset[str]:
    """Every revision this release's migrations define."""
    return frozenset(s.revision for s in _script().walk_revisions())


def head() -> str:
    """The schema revision this release needs."""
    found = _script().get_current_head()
    assert found is not None
    return found


def revision(conn: Connection) -> str | None:
    """The database's schema revision: an Alembic revision, ``"legacy"`` for an index made before
    migrations, or None for an empty database."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables:
        return MigrationContext.configure(conn).get_current_revision()
    return "legacy" if "instances" in tables else None


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})


def _adopt_legacy(conn: Connection) -> None:
    """An index from before migrations: add the columns added in place since, then call it the baseline."""
    have = {c["name"] for c in inspect(conn).get_columns("instances")}
    for name in ADDED_COLUMNS:
        if name not in have:
            kind = instances.c[name].type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE instances ADD COLUMN {name} {kind}"))
    command.stamp(_config(conn), BASELINE)


def upgrade(conn: Connection) -> tuple[str | None, str]:
    """Bring the schema on `conn` (in a transaction) to :func:`head`; returns (revision before, after).

    Raises
    ------
    StoreError
        The database holds a revision this release does not know (a newer release's).
    """
    _lock(conn)
    before = revision(conn)
    if before not in (None, "legacy") and before not in _known():
        raise StoreError(f"index schema is at revision {before}, which this release does not know "
                         f"(its newest is {head()}): a newer aepacs made it")
    if before == "legacy":
        _adopt_legacy(conn)
    command.upgrade(_config(conn), "head")
    log.info("index schema upgraded: %s -> %s", before or "empty", head())
    return before, head()


def prepare(conn: Connection, url: str) -> None:
    """Make a new database's schema; accept one at :func:`head`; refuse an older one (see the module).

    Raises
    ------
    StoreError
        An index older or newer than this release: the message says what to run.
    """
    _lock(conn)
    now = revision(conn)
    if now is None:
        command.upgrade(_config(conn), "head")
        log.info("index %s: a new database, schema created at revision %s", url, head())
        return
    if now != "legacy" and now not in _known():
        raise StoreError(f"index {url} is at schema revision {now}, which this release does not know (its "
                         f"newest is {head()}): a newer aepacs made it")
    if now != head():
        older = "made before schema migrations" if now == "legacy" else f"at schema revision {now}"
        raise StoreError(f"index {url} is {older}; this release needs revision {head()}: "
                         "stop the archive (every node) and run `aepacs db upgrade`, then start it again")
