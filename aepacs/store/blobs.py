"""Content-addressed store of sealed blobs in a local directory.

A blob's key is the SHA-256 of its bytes; it lives at ``ab/cd/<key>.aepx``
(65,536 leaf folders, so millions of objects never crowd one directory).
Writes are atomic (:mod:`aepacs.store.atomic`): a blob is written in
``.tmp/`` and renamed into place, so readers see a whole blob or none, and a
failed write leaves nothing behind. Temporary files of killed writers are
swept from ``.tmp/`` when a store is opened.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

from aepacs.errors import StoreError, StoreFullError
from aepacs.store.atomic import atomic_write, sweep_temporaries

SUFFIX = ".aepx"


def blob_key(blob: bytes) -> str:
    """Return the content key (SHA-256, hex) of `blob`."""
    return hashlib.sha256(blob).hexdigest()


class BlobStore:
    """A directory of sealed blobs addressed by content.

    Parameters
    ----------
    root : Path
        The store directory; created (mode 0700) when missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sweep()

    def path_for(self, key: str) -> Path:
        """Where the blob with `key` lives."""
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise StoreError(f"invalid blob key {key!r}")
        return self.root / key[:2] / key[2:4] / f"{key}{SUFFIX}"

    def check_free(self, incoming: int, reserve: int) -> None:
        """Refuse new data that would leave less than `reserve` bytes free.

        Raises
        ------
        StoreFullError
            Naming the store and how much is free.
        """
        st = os.statvfs(self.root)
        free = st.f_bavail * st.f_frsize
        if free - incoming < reserve:
            raise StoreFullError(f"{self.root}: {free / 1e6:.0f} MB free, below the "
                                 f"{reserve / 1e6:.0f} MB reserve; refusing new data")

    def put(self, blob: bytes) -> str:
        """Store `blob` durably and return its key (a no-op when already there)."""
        key = blob_key(blob)
        path = self.path_for(key)
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, blob, mode=0o600, replace=False, tmp_dir=self.tmp)
        return key

    def get(self, key: str) -> bytes:
        """Return the blob with `key`.

        Raises
        ------
        StoreError
            When it is missing or unreadable.
        """
        try:
            return self.path_for(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {key} missing from {self.root}") from None
        except OSError as exc:
            raise StoreError(f"blob {key}: {exc.strerror}") from None

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the blob with `key` (no error when already gone)."""
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            pass

    def keys(self, older_than: float | None = None) -> Iterator[str]:
        """Every stored key (walks the tree); with `older_than`, only blobs last written before it (epoch s)."""
        for dirpath, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.endswith(SUFFIX) and len(name) == 64 + len(SUFFIX):
                    if older_than is not None:
                        try:
                            if os.stat(os.path.join(dirpath, name)).st_mtime >= older_than:
                                continue
                        except FileNotFoundError:
                            continue
                    yield name[:64]

    def sweep(self) -> int:
        """Remove temporary files left by killed writers on this host; return how many."""
        return sweep_temporaries(self.tmp)
