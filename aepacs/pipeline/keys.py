"""What still needs a key version: the check before ``aepacs keys retire`` destroys one."""

from __future__ import annotations

from aepacs.config import Config
from aepacs.crypto.seal import read_header
from aepacs.errors import AepacsError
from aepacs.store.index import Index


def still_wrapped(config: Config, version: int) -> tuple[int, int]:
    """(archived objects, spooled entries) whose data key key version `version` wraps.

    A spool entry that cannot be read is not counted (it is not the archive's to
    open: a half-written temporary, or a file moved there by hand).
    """
    index = Index(config.index_url)
    try:
        in_index = index.kek_versions().get(version, 0)
    finally:
        index.close()
    spooled = 0
    if config.spool_path.is_dir():
        for entry in config.spool_path.rglob("*.aepx"):
            try:
                spooled += read_header(entry.read_bytes(), str(entry)).kek_version == version
            except (OSError, AepacsError):
                continue
    return in_index, spooled
