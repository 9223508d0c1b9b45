"""The storage area's jobs behind its program: coding what came in, migrating, sweeping.

- :func:`compress_pending` / :func:`follow` (``aepacs orthanc-compress [--follow]``): each DICOM file
  still sealed as it came, once old enough, coded by :meth:`StorageArea.compress`, crash-safely;
- :func:`migrate_files` (``aepacs orthanc-migrate``): the program's own storage from before moved in;
- :func:`sweep_unknown` (``aepacs orthanc-sweep``): files the program handed over but never committed.

Each goes file by file, counts the outcomes, and logs a failure by name without stopping the rest.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm import tqdm

from aepacs.errors import AepacsError
from aepacs.pipeline.codecs import warm_up
from aepacs.pipeline.rekey_batch import owner_id, recover
from aepacs.pipeline.storage_area import DICOM, FILE, StorageArea, attachment_uid
from aepacs.pipeline.workers import run_in_background

log = logging.getLogger("aepacs.storage_area")


def pending_rows(area: StorageArea, *, batch: int = 100, age_s: float = 0.0) -> Iterator[Any]:
    """The DICOM files still sealed as they came (stored at least `age_s` seconds ago), oldest first."""
    after, before = 0, time.time() - age_s
    while rows := area.rows.coded_by(FILE, DICOM, after_pk=after, limit=batch, stored_before=before):
        yield from rows
        after = rows[-1].pk


def _each(items: Iterable[Any], work: Callable[[Any], str], *, what: Callable[[Any], str], verb: str,
          limit: int | None, progress: bool, total: int | None = None) -> Counter[str]:
    """``work(item)`` for each of the first `limit` items, counted by the outcome it names; an item that
    raises counts as ``failed`` and is logged (``what(item)`` names it), the others go on."""
    counts: Counter[str] = Counter()
    for item in tqdm(itertools.islice(items, limit), total=total, unit="file", desc=verb, disable=not progress):
        try:
            counts[work(item)] += 1
        except AepacsError as exc:
            counts["failed"] += 1
            log.error("storage area: %s not %s: %s", what(item), verb, exc)
    return counts


def compress_pending(area: StorageArea, *, limit: int | None = None, progress: bool = False,
                     age_s: float = 0.0) -> Counter[str]:
    """Code the DICOM files of the storage area still sealed as they came (one pass, oldest first), those
    stored at least `age_s` seconds ago.

    Blobs left pending by a compressor that died are removed first. Returns how many were ``coded``,
    ``kept``, ``gone`` or ``failed`` (logged with the reason; the next pass tries them again).
    """
    recover(area.archive)
    owner = owner_id()
    return _each(pending_rows(area, age_s=age_s), lambda row: area.compress(row, owner),
                 what=lambda row: row.object_uid, verb="coded", limit=limit, progress=progress,
                 total=area.rows.count(FILE) if progress else None)


def migrate_files(area: StorageArea, files: Iterable[tuple[str, int, str | None]], *, delete: bool = False,
                  limit: int | None = None, progress: bool = False) -> Counter[str]:
    """Move the program's legacy files (``(uuid, content type, MD5 or None)``, as the program lists them)
    into the storage area (``aepacs orthanc-migrate``), with the program running on the storage area
    (``MigrateFrom``): each one copied, read back and compared, then (`delete`) its plaintext removed.
    Resumable: a file already here counts as ``present``. Returns counts of ``moved``, ``present``,
    ``missing`` (gone meanwhile) and ``failed`` (logged; the legacy file is kept).
    """
    return _each(files, lambda f: area.migrate_file(*f, delete=delete), what=lambda f: f"{f[0]} (type {f[1]})",
                 verb="migrated", limit=limit, progress=progress)


#: A sweep refuses, unless forced, to remove more than this share of the rows (a wrong program URL
#: would otherwise look like every file being unknown).
SWEEP_MAX_SHARE = 0.01


def sweep_unknown(area: StorageArea, known: Iterable[tuple[str, int]], *, min_age_s: float = 3600.0,
                  force: bool = False) -> int:
    """Remove the files the program does not know (``aepacs orthanc-sweep``): those it handed to
    :meth:`StorageArea.create` but never committed (it was killed between the two, or its transaction
    failed), older than `min_age_s`. Returns how many were removed (each audited).

    Raises
    ------
    AepacsError
        The program lists no file at all, or more than :data:`SWEEP_MAX_SHARE` of the rows would go,
        and not `force`: nothing removed.
    """
    names = {attachment_uid(uuid, content_type) for uuid, content_type in known}
    unknown = [row for row in area.rows.stored_before(time.time() - min_age_s) if row.object_uid not in names]
    total = area.rows.count()
    if not force and unknown and (not names or len(unknown) > max(10, SWEEP_MAX_SHARE * total)):
        raise AepacsError(f"storage area: {len(unknown)} of {total} files are unknown to {area.program}: "
                          "is that the right one? Nothing removed (force it if it is)")
    for row in unknown:
        _, content_type, uuid = row.object_uid.split(".", 2)
        area.remove(uuid, int(content_type))
    return len(unknown)


def follow(area: StorageArea, *, interval: float = 1.0, parent: int | None = None,
           stop: threading.Event | None = None, age_s: float = 0.0) -> Counter[str]:
    """Code new DICOM files as the program stores them (``aepacs orthanc-compress --follow``), once they
    are `age_s` seconds old: a pass whenever one is waiting, else a look every `interval` seconds; at
    idle priority, so the program's own work comes first. Returns when `stop` is set or process `parent`
    is gone (the program it codes for was stopped or killed: a half-coded file is safe, the next pass
    clears what it left).

    A file read often while it is new (a study being reported) is best left as it came for a while:
    reading it back then costs a blob read and AES-GCM, where a coded one costs its decoder.
    """
    run_in_background()
    warm_up(area.archive.config)
    recover(area.archive)  # what a compressor killed mid-file left pending
    total: Counter[str] = Counter()
    while not (stop is not None and stop.is_set()) and (parent is None or os.getppid() == parent):
        waiting = area.rows.coded_by(FILE, DICOM, limit=1, stored_before=time.time() - age_s)
        counts = compress_pending(area, limit=50, age_s=age_s) if waiting else Counter()
        total.update(counts)
        if not counts["coded"]:  # nothing waiting, or only files that failed: look again later
            time.sleep(interval)
    return total


__all__ = ["SWEEP_MAX_SHARE", "compress_pending", "follow", "migrate_files", "pending_rows", "sweep_unknown"]
