"""Benchmark the index at archive sizes: the queries a PACS sends most, and ingest, on SQLite and PostgreSQL.

Fills an index (the real schema, made by its migrations) with synthetic rows in realistic proportions
(about 100 instances a series, 4 series a study, 2 studies a patient; study dates over ten years;
surnames drawn from a list), by bulk load (executemany on SQLite, COPY on PostgreSQL), then times, at
each size, through the archive's own query code (:func:`aepacs.store.query.find` and
:func:`~aepacs.store.query.retrieve_rows`):

- C-FIND by PatientID, by AccessionNumber, by StudyDate range (a week) with ModalitiesInStudy, by
  PatientName prefix (``SMITH*``), all instances of a series, and a series' C-GET selection;
- ingest: ``Index.add`` of new instances of new series, one transaction each (transactions/s).

Each query's time is the median of several runs with different keys. The figures to compare are the
growth from the smallest size to the largest (target: at most 3x for the keyed queries) and
PostgreSQL's ingest against SQLite's (target: >= 0.8x), measured in the same run.

Usage::

    python bench/index.py [--rows 10000 1000000] [--engines sqlite postgresql] [--dir DIR]

PostgreSQL: a throwaway cluster is started here (as the tests do) unless ``--postgres URL`` names one.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import text
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aepacs.dicom.records import InstanceRecord  # noqa: E402
from aepacs.store.index import BlobRef, Index  # noqa: E402
from aepacs.store.query import find, retrieve_rows  # noqa: E402
from aepacs.store.schema import fold  # noqa: E402
from tests.store.test_query_plans import search_identifier  # noqa: E402

PER_SERIES, PER_STUDY, PER_PATIENT = 100, 4, 2
SURNAMES = ["SMITH", "JONES", "MULLER", "GARCIA", "NGUYEN", "KOWALSKI", "ROSSI", "DUBOIS", "TANAKA", "OKAFOR",
            "SILVA", "JOHANSSON", "EVANS", "SCHMIDT", "KIM", "PATEL", "MARTIN", "NOVAK", "BROWN", "LOPEZ"]
ROOT = "1.2.826.0.1.3680043.9.8"


def sizes(instances: int) -> tuple[int, int, int]:
    series = max(1, instances // PER_SERIES)
    studies = max(1, series // PER_STUDY)
    return series, studies, max(1, studies // PER_PATIENT)


def _date(k: int) -> str:
    day = (k * 7919) % 3650  # ten years, spread
    y, d = 2016 + day // 365, day % 365
    return f"{y}{1 + d // 31 % 12:02d}{1 + d % 28:02d}"


def rows(instances: int) -> dict[str, Iterator[tuple[Any, ...]]]:
    """The four tables' rows (generators, in primary-key order)."""
    n_series, n_studies, n_patients = sizes(instances)
    return {
        "patients": ((p + 1, f"P{p:09d}", "", f"{SURNAMES[p % len(SURNAMES)]}^{p}", fold(
            f"{SURNAMES[p % len(SURNAMES)]}^{p}"), "19600101", "O") for p in range(n_patients)),
        "studies": ((s + 1, s % n_patients + 1, f"{ROOT}.1.{s}", _date(s), "101500", f"A{s:010d}", "1", "CT",
                     "", "CT\\MR") for s in range(n_studies)),
        "series": ((r + 1, r % n_studies + 1, f"{ROOT}.2.{r}", ("CT", "MR")[r % 2], 1, "", "")
                   for r in range(n_series)),
        "instances": ((i + 1, i // PER_SERIES % n_series + 1, f"{ROOT}.3.{i}", "1.2.840.10008.5.1.4.1.1.2", i % 100,
                       "1.2.840.10008.1.2.1", 512, 512, 1, "ae:ct@6", 1, f"{i:064x}", 200_000, 524_288,
                       f"{i:064x}", 1.7e9) for i in range(instances)),
    }


COLUMNS = {
    "patients": "pk, patient_id, issuer_of_patient_id, patient_name, patient_name_fold, patient_birth_date, "
                "patient_sex",
    "studies": "pk, patient_pk, study_uid, study_date, study_time, accession_number, study_id, study_description, "
               "referring_physician_name, modalities_in_study",
    "series": "pk, study_pk, series_uid, modality, series_number, series_description, body_part_examined",
    "instances": "pk, series_pk, sop_uid, sop_class_uid, instance_number, transfer_syntax_uid, rows, columns, "
                 "number_of_frames, codec, kek_version, blob_key, blob_size, source_size, source_sha256, stored_at",
}


def secondary_indexes(cur: Any, dialect: str) -> list[tuple[str, str]]:
    """(name, CREATE statement) of the indexes that back no key or unique constraint: dropped for a bulk
    load and built again after it (sorting once beats inserting millions of keys one by one)."""
    if dialect == "postgresql":
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                    "AND indexname NOT IN (SELECT conname FROM pg_constraint)")
    else:  # SQLite's unique constraints are its automatic indexes, which have no SQL
        cur.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    return [(name, sql) for name, sql in cur.fetchall()]


def fill(index: Index, instances: int) -> float:
    """Bulk-load `instances` rows (and their series, studies, patients); seconds taken."""
    started = time.perf_counter()
    dialect = index.engine.dialect.name
    raw = index.engine.raw_connection()
    try:
        cur = raw.cursor()
        if dialect == "sqlite":
            cur.execute("PRAGMA cache_size = -4000000")  # 4 GB of page cache for the unique keys' inserts
            cur.execute("BEGIN")  # the index's connections leave transactions to the caller
        built_after = secondary_indexes(cur, dialect)
        for name, _ in built_after:
            cur.execute(f"DROP INDEX {name}")
        for table, generated in rows(instances).items():
            cols = COLUMNS[table]
            total = {"instances": instances}.get(table)
            if dialect == "postgresql":
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for row in tqdm(generated, desc=f"COPY {table}", total=total, unit="row", leave=False):
                        copy.write_row(row)
            else:
                marks = ", ".join("?" * len(cols.split(",")))
                batch: list[tuple[Any, ...]] = []
                for row in tqdm(generated, desc=f"insert {table}", total=total, unit="row", leave=False):
                    batch.append(row)
                    if len(batch) >= 50_000:
                        cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", batch)
                        batch = []
                cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", batch)
        for _, create in tqdm(built_after, desc="indexes", unit="index", leave=False):
            cur.execute(create)
        raw.commit()
        if dialect == "postgresql":
            for table in COLUMNS:  # sequences past the loaded keys, statistics for the planner
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), (SELECT max(pk) FROM {table}))")
            raw.commit()
            raw.driver_connection.autocommit = True  # type: ignore[union-attr]
            cur.execute("VACUUM ANALYZE")
            raw.driver_connection.autocommit = False  # type: ignore[union-attr]  # as the pool lent it
        else:
            cur.execute("ANALYZE")
            raw.commit()
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    return time.perf_counter() - started


def _week(day: str) -> str:
    """A date range of a week from `day` (YYYYMMDD-YYYYMMDD)."""
    return f"{day}-{day[:6]}{min(28, int(day[6:]) + 6):02d}"


#: the QIDO-RS page size of the paged search (a worklist's first page)
PAGE = 25


def searches(instances: int, rng: random.Random) -> dict[str, tuple[Callable[[], Dataset], int | None]]:
    """Each search: a maker of its identifier (a new key each call) and its limit (None: all matches)."""
    n_series, n_studies, n_patients = sizes(instances)
    return {
        "PatientID": (lambda: search_identifier("PATIENT", PatientID=f"P{rng.randrange(n_patients):09d}"), None),
        "AccessionNumber": (lambda: search_identifier(
            "STUDY", AccessionNumber=f"A{rng.randrange(n_studies):010d}"), None),
        "StudyDate week + Modality": (lambda: search_identifier(
            "STUDY", StudyDate=_week(_date(rng.randrange(n_studies))), ModalitiesInStudy="CT"), None),
        "PatientName prefix": (lambda: search_identifier(
            "PATIENT", PatientName=f"{rng.choice(SURNAMES)}^{rng.randrange(1, 10)}*"), None),
        f"PatientName prefix, limit {PAGE}": (lambda: search_identifier(
            "PATIENT", PatientName=f"{rng.choice(SURNAMES)}*"), PAGE),
        "series' instances": (lambda: search_identifier(
            "IMAGE", SeriesInstanceUID=f"{ROOT}.2.{rng.randrange(n_series)}", SOPInstanceUID=""), None),
    }


def time_queries(index: Index, instances: int, repeats: int = 7) -> tuple[dict[str, float], dict[str, float]]:
    """Median milliseconds per query (and a series' C-GET selection), and median matches; after one
    untimed pass with other keys (an archive in service has its index's hot pages in memory)."""
    rng = random.Random(7)
    out, matches = {}, {}
    for name, (make, limit) in searches(instances, rng).items():
        times, counts = [], []
        for run in range(repeats + 1):
            identifier = make()
            t = time.perf_counter()
            found = list(find(index, identifier, limit=limit))
            if run:
                times.append(time.perf_counter() - t)
                counts.append(len(found))
        out[name], matches[name] = statistics.median(times) * 1e3, statistics.median(counts)
    n_series, n_studies = sizes(instances)[:2]
    times = []
    for run in range(repeats + 1):
        r = rng.randrange(n_series)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = f"{ROOT}.1.{r % n_studies}"
        identifier.SeriesInstanceUID = f"{ROOT}.2.{r}"
        t = time.perf_counter()
        matches["series C-GET selection"] = len(retrieve_rows(index, identifier))
        if run:
            times.append(time.perf_counter() - t)
    out["series C-GET selection"] = statistics.median(times) * 1e3
    return out, matches


def ingest_rate(index: Index, count: int) -> float:
    """Index.add transactions/s at this size: new instances of new series (50 each) of an existing study."""
    base = InstanceRecord(**{f.name: "" for f in dataclasses.fields(InstanceRecord)})  # type: ignore[arg-type]
    base = dataclasses.replace(base, patient_id="P000000000", patient_name="SMITH^0", study_uid=f"{ROOT}.1.0",
                               modality="CT", series_number=None, instance_number=None, rows=None, columns=None,
                               number_of_frames=None, sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    tag = time.time_ns()
    t = time.perf_counter()
    for i in range(count):
        rec = dataclasses.replace(base, series_uid=f"{ROOT}.4.{tag}.{i // 50}", sop_uid=f"{ROOT}.5.{tag}.{i}")
        index.add(rec, BlobRef("ae:ct@6", 1, f"{tag:032x}{i:032x}", 10, 20, f"{i:064x}"))
    return count / (time.perf_counter() - t)


def ingest_rates(indexes: dict[str, Index], rounds: int = 5, count: int = 500) -> dict[str, float]:
    """Median transactions/s of each engine over `rounds` rounds that take the engines in turn (so that
    the machine's noise falls on all of them alike)."""
    seen: dict[str, list[float]] = {engine: [] for engine in indexes}
    for _ in range(rounds):
        for engine, index in indexes.items():
            seen[engine].append(ingest_rate(index, count))
    return {engine: statistics.median(rates) for engine, rates in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite files and the cluster live")
    parser.add_argument("--postgres", metavar="URL", help="an existing PostgreSQL server (a database is made)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aepacs-bench-index-", dir=args.dir))
    cluster = None
    if "postgresql" in args.engines and not args.postgres:
        from tests.postgres import start_postgres  # the tests' throwaway cluster (fsync off: a bench, not a PACS)

        cluster = start_postgres()
    results: dict[tuple[str, int], dict[str, float]] = {}
    found: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for n in args.rows:
            indexes: dict[str, Index] = {}
            for engine in args.engines:
                if engine == "sqlite":
                    url = f"sqlite:///{work}/index-{n}.sqlite3"
                else:
                    url = cluster.database() if cluster else args.postgres
                index = indexes[engine] = Index(url)
                loaded = fill(index, n)
                if engine == "postgresql":
                    with index.engine.begin() as conn:
                        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
                else:
                    size = (work / f"index-{n}.sqlite3").stat().st_size
                figures, found[(engine, n)] = time_queries(index, n)
                figures["load s"], figures["size MB"] = loaded, (size or 0) / 1e6
                results[(engine, n)] = figures
            for engine, rate in ingest_rates(indexes).items():
                results[(engine, n)]["ingest tx/s"] = rate
            for engine, index in indexes.items():
                index.close()
                if engine == "sqlite" and n != max(args.rows):
                    (work / f"index-{n}.sqlite3").unlink()
                print(f"{engine:10} {n:>10,} instances: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in results[(engine, n)].items()), flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    small, large = min(args.rows), max(args.rows)
    print(f"\n| query | engine | {small:,}: ms (matches) | {large:,}: ms (matches) | growth |")
    print("|---|---|---:|---:|---:|")
    for engine in args.engines:
        for name, ms in results[(engine, small)].items():
            if name in ("ingest tx/s", "load s", "size MB"):
                continue
            big = results[(engine, large)][name]
            few, many = found[(engine, small)][name], found[(engine, large)][name]
            print(f"| {name} | {engine} | {ms:.2f} ({few:g}) | {big:.2f} ({many:g}) | {big / ms:.2f}x |")
    if set(args.engines) == {"sqlite", "postgresql"}:
        for n in args.rows:
            pg, lite = results[("postgresql", n)]["ingest tx/s"], results[("sqlite", n)]["ingest tx/s"]
            print(f"ingest at {n:,}: PostgreSQL {pg:.0f} tx/s, SQLite {lite:.0f} tx/s: {pg / lite:.2f}x")


if __name__ == "__main__":
    main()
