"""What still needs a key version: the check before ``aepacs keys retire`` destroys one."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from aepacs.config import Config
from aepacs.crypto.seal import read_header
from aepacs.errors import AepacsError
from aepacs.pipeline.area_journal import segment_files
from aepacs.store.index import Index
from aepacs.store.journal import SUFFIX


class Wrapped(NamedTuple):
    """Objects whose data key a key version wraps, by where they are."""

    archived: int  #: in the index (instances and storage-area files)
    spooled: int  #: acknowledged by ``aepacs serve``, not yet archived
    journaled: int  #: stored by Orthanc through the storage area, not yet moved out of its journal


def still_wrapped(config: Config, version: int) -> Wrapped:
    """The objects whose data key key version `version` wraps: archived, spooled and in the Orthanc
    storage area's journal (:attr:`~aepacs.config.Config.journal_path`; only a killed Orthanc leaves
    files there, which its next start moves).

    A spool entry or journal record that cannot be read is not counted (it is not the archive's to
    open: a half-written temporary, a torn last record, or a file moved there by hand). The spool and
    the journal are read before the index: an object moved from one to the other meanwhile is in the
    index by the time it is counted, never missed by both.
    """
    journaled = _journaled(config.journal_path, version)
    spooled = 0
    if config.spool_path.is_dir():
        for entry in config.spool_path.rglob("*.aepx"):
            try:
                spooled += read_header(entry.read_bytes(), str(entry)).kek_version == version
            except (OSError, AepacsError):
                continue
    index = Index(config.index_url)
    try:
        archived = index.kek_versions().get(version, 0)
    finally:
        index.close()
    return Wrapped(archived, spooled, journaled)


def _journaled(directory: Path, version: int) -> int:
    """Files in the journal segments under `directory` sealed under `version`, as a replay would move them
    (:func:`~aepacs.pipeline.area_journal.segment_files`: tombstones applied, each header read alone)."""
    found = 0
    for segment in sorted(directory.glob(f"seg-*{SUFFIX}")) if directory.is_dir() else []:
        try:
            files, _ = segment_files(segment)
        except (OSError, AepacsError):
            continue
        found += sum(header.kek_version == version for _, header in files.values())
    return found
