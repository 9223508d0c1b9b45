"""What still needs a key version: the check before ``aepacs keys retire`` destroys one."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from aepacs.config import Config
from aepacs.crypto.seal import HEAD_BYTES, read_header
from aepacs.errors import AepacsError
from aepacs.store.index import Index
from aepacs.store.journal import BLOB, SUFFIX, Entry, read_entry, records


class Wrapped(NamedTuple):
    """Objects whose data key a key version wraps, by where they are."""

    archived: int  #: in the index (instances and storage-area files)
    spooled: int  #: acknowledged by ``aepacs serve``, not yet archived
    journaled: int  #: stored by Orthanc through the storage area, not yet moved out of its journal

    def __bool__(self) -> bool:
        return any(self)


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
    """Files in the journal segments under `directory` sealed under `version` and not removed after (a
    tombstone), as a replay would move them (each header read alone)."""
    found = 0
    for segment in sorted(directory.glob(f"seg-*{SUFFIX}")) if directory.is_dir() else []:
        versions: dict[str, int] = {}  # object UID -> the KEK version of its last blob in the segment
        try:
            for kind, _, where in records(segment):
                if kind == BLOB and isinstance(where, Entry):
                    header = read_header(read_entry(where, HEAD_BYTES), str(segment), total=where.length)
                    versions[header.object_uid] = header.kek_version
                else:
                    versions.pop(str(where), None)
        except (OSError, AepacsError):
            continue
        found += sum(v == version for v in versions.values())
    return found
