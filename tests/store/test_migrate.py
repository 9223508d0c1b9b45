"""The index schema's migrations (Alembic): a new index, an index of the release before them, the command."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom.data import get_testdata_file

from aepacs.audit import read
from aepacs.config import load_config
from aepacs.errors import StoreError
from aepacs.pipeline.archive import Archive, load_keyring
from aepacs.pipeline.retrieve import fetch
from aepacs.store import migrate
from aepacs.store.index import Index, make_engine, writer
from aepacs.store.schema import metadata
from tests.conftest import run_cli

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy-archive"
#: the pydicom test files the legacy archive was made from (its README)
SOURCES = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "JPEG2000.dcm", "rtplan.dcm")


def test_a_new_index_gets_the_schema_the_queries_expect(new_index_url: Callable[[], str]) -> None:
    url = new_index_url()
    Index(url).close()
    engine = make_engine(url)
    with engine.connect() as conn:
        assert migrate.revision(conn) == migrate.head()
        # what the migrations made is what schema.py describes (SQLite keeps INTEGER for BIGINT)
        diffs = [d for d in compare_metadata(MigrationContext.configure(conn), metadata)
                 if not (conn.dialect.name == "sqlite" and isinstance(d, list) and d[0][0] == "modify_type")]
    engine.dispose()
    assert diffs == []


def _legacy(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    shutil.copytree(LEGACY, home, ignore=shutil.ignore_patterns("README.txt"))
    for path in [home, *home.rglob("*")]:  # owner-only, as the archive made them (a checkout makes 0644)
        path.chmod(0o700 if path.is_dir() else 0o600)
    return home


def test_an_index_of_the_release_before_upgrades_and_every_object_opens(tmp_path: Path) -> None:
    home = _legacy(tmp_path)
    env = {"AEPACS_HOME": str(home), "AEPACS_CONFIG": ""}
    assert "made before schema migrations" in run_cli("db", "current", env=env, check=True).stdout
    refused = run_cli("export", "--study", pydicom.dcmread(get_testdata_file("CT_small.dcm")).StudyInstanceUID,
                      "-o", str(tmp_path / "early"), env=env)
    assert refused.returncode != 0 and "aepacs db upgrade" in refused.stderr  # never used half-upgraded
    out = run_cli("db", "upgrade", env=env, check=True).stdout
    assert f"made before schema migrations -> revision {migrate.head()}" in out
    assert f"at revision {migrate.head()} already" in run_cli("db", "upgrade", env=env, check=True).stdout
    assert any(r["event"] == "schema-change" for r in read(home / "audit.jsonl"))
    config = dataclasses.replace(load_config(), data_dir=home)
    with Archive(config, load_keyring(config)) as archive:
        assert archive.index.count() == len(SOURCES)
        for name in SOURCES:  # every object opens, byte for byte (the learned CT and MR ones included)
            original = Path(get_testdata_file(name)).read_bytes()
            uid = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True).SOPInstanceUID
            assert fetch(archive, uid) == original, name


def test_a_legacy_index_gains_the_columns_added_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    Index(url).close()
    db = sqlite3.connect(tmp_path / "old.sqlite3")
    db.execute("DROP TABLE alembic_version")  # an index of the first releases: no version table,
    for column in ("key_slot", "sealed_at", "psnr"):  # and without the columns added since
        db.execute(f"ALTER TABLE instances DROP COLUMN {column}")
    db.execute("DROP INDEX ix_patients_patient_name_fold")  # and without what later revisions added
    db.execute("ALTER TABLE patients DROP COLUMN patient_name_fold")
    db.execute("DROP TABLE attachments")
    db.execute("DROP TABLE recipients")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="made before schema migrations.*aepacs db upgrade"):
        Index(url)
    engine = make_engine(url)
    with writer(engine) as conn, conn.begin():
        assert migrate.upgrade(conn) == ("legacy", migrate.head())
    engine.dispose()
    index = Index(url)
    assert index.rekey_count(1, sealed_before=1e12) == 0  # reads sealed_at
    index.close()


def test_an_index_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.sqlite3'}"
    Index(url).close()
    db = sqlite3.connect(tmp_path / "new.sqlite3")
    db.execute("UPDATE alembic_version SET version_num = '9999'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="9999, which this release does not know"):
        Index(url)
    engine = make_engine(url)
    with pytest.raises(StoreError, match="newer aepacs"), writer(engine) as conn, conn.begin():
        migrate.upgrade(conn)
    engine.dispose()


def test_the_database_password_never_shows(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:  # nothing listens there: the error names the URL
        Index("postgresql+psycopg://aepacs:s3cret@127.0.0.1:1/aepacs?connect_timeout=2")
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


def test_the_db_command_on_postgresql(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = postgres_server.database()
    config = tmp_path / "config.yaml"
    config.write_text(f"index:\n  url: {url}\n")
    env = {"AEPACS_HOME": str(tmp_path / "home"), "AEPACS_CONFIG": str(config)}
    assert "empty (no schema yet)" in run_cli("db", "current", env=env, check=True).stdout
    assert f"empty (no schema yet) -> revision {migrate.head()}" in run_cli("db", "upgrade", env=env, check=True).stdout
    now = run_cli("db", "current", env=env, check=True).stdout
    assert f"revision {migrate.head()}; this release needs revision {migrate.head()}" in now
    index = Index(url)  # opens as it is
    assert index.count() == 0
    index.close()
