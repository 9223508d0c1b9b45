"""Content-addressed store of sealed blobs: a local directory, or any fsspec URL.

A blob's key is the SHA-256 of its bytes; it lives at ``ab/cd/<key>.aepx``
(65,536 leaf folders, so millions of objects never crowd one directory).
Writes are atomic (:mod:`aepacs.store.atomic`): a blob is written in
``.tmp/`` and renamed into place, so readers see a whole blob or none, and a
failed write leaves nothing behind. Temporary files of killed writers are
swept from ``.tmp/`` when a store is opened.

:func:`open_store` takes a path or a URL: a path or ``file://`` URL gives
the local store (atomic renames, fsync); any other fsspec URL
(``s3://bucket/prefix``, ``gcs://...``, ``memory://...``) gives
:class:`FsspecBlobStore`, whose object puts are atomic by the storage's own
rules. Both have the same methods, so the data flows and ``aepacs rekey``
workers on other machines use either unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aepacs.errors import StoreError
from aepacs.store.atomic import atomic_write, check_free, private_dir, sweep_temporaries, sync_filesystem

SUFFIX = ".aepx"
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # (Linux: the pages mapped at once, not faulted in one by one)


def blob_key(blob: bytes | bytearray) -> str:
    """Return the content key (SHA-256, hex) of `blob`."""
    return hashlib.sha256(blob).hexdigest()


def _relative(key: str) -> str:
    """Where the blob with `key` lives below a store's root: ``ab/cd/<key>.aepx``."""
    if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        raise StoreError(f"invalid blob key {key!r}")
    return f"{key[:2]}/{key[2:4]}/{key}{SUFFIX}"


def _key_of(name: str) -> str | None:
    """The blob key a file name stands for, or None for anything else in the tree."""
    return name[:64] if name.endswith(SUFFIX) and len(name) == 64 + len(SUFFIX) else None


class BlobStore:
    """A directory of sealed blobs addressed by content.

    Parameters
    ----------
    root : Path
        The store directory; created (mode 0700) when missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = private_dir(self.root / ".tmp")
        self.sweep()

    def path_for(self, key: str) -> Path:
        """Where the blob with `key` lives."""
        return self.root / _relative(key)

    def check_free(self, incoming: int, reserve: int) -> None:
        """Refuse new data that would leave less than `reserve` bytes free.

        Raises
        ------
        StoreFullError
            Naming the store and how much is free.
        """
        check_free(self.root, incoming, reserve)

    def put(self, blob: bytes | bytearray, *, sync: bool = True) -> str:
        """Store `blob` and return its key (a no-op when already there).

        Durable on return; with ``sync=False`` only once :meth:`sync` has
        returned (a batch writer syncs once for many blobs).
        """
        key = blob_key(blob)
        path = self.path_for(key)
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, blob, mode=0o600, replace=False, tmp_dir=self.tmp, sync=sync)
        return key

    def sync(self) -> None:
        """Make every blob written with ``sync=False`` (and its directory entry) durable."""
        sync_filesystem(self.root)

    def get(self, key: str) -> bytes:
        """Return the blob with `key`.

        Raises
        ------
        StoreError
            When it is missing or unreadable.
        """
        return self._read(key, None)

    def view(self, key: str) -> memoryview:
        """The blob with `key`, mapped from its file read-only (for a read that decrypts it at once: no copy of
        it is made, where :meth:`get` copies it out of the page cache into a fresh allocation, which costs
        more than the decryption). Blob files are never written in place (a blob is renamed into place
        whole), so the mapping holds what was there. Raises as :meth:`get`."""
        try:
            with open(self.path_for(key), "rb", buffering=0) as f:
                if not os.fstat(f.fileno()).st_size:
                    return memoryview(b"")
                return memoryview(mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ))
        except FileNotFoundError:
            raise StoreError(f"blob {key} missing from {self.root}") from None
        except OSError as exc:
            raise StoreError(f"blob {key}: {exc.strerror}") from None

    def read_prefix(self, key: str, size: int) -> bytes:
        """The first `size` bytes of the blob with `key` (a header read; raises as :meth:`get`)."""
        return self._read(key, size)

    def _read(self, key: str, size: int | None) -> bytes:
        try:
            with open(self.path_for(key), "rb") as f:
                return f.read() if size is None else f.read(size)
        except FileNotFoundError:
            raise StoreError(f"blob {key} missing from {self.root}") from None
        except OSError as exc:
            raise StoreError(f"blob {key}: {exc.strerror}") from None

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def delete(self, key: str) -> None:
        """Remove the blob with `key` (no error when already gone)."""
        with contextlib.suppress(FileNotFoundError):
            self.path_for(key).unlink()

    def keys(self, older_than: float | None = None) -> Iterator[str]:
        """Every stored key (walks the tree); with `older_than`, only blobs last written before it (epoch s)."""
        for dirpath, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                key = _key_of(name)
                if key is None:
                    continue
                if older_than is not None:
                    try:
                        if os.stat(os.path.join(dirpath, name)).st_mtime >= older_than:
                            continue
                    except FileNotFoundError:
                        continue
                yield key

    def sweep(self) -> int:
        """Remove temporary files left by killed writers on this host; return how many."""
        return sweep_temporaries(self.tmp)


class FsspecBlobStore:
    """The same content-addressed layout on any fsspec filesystem (object storage).

    A put is one PUT of the whole blob under its content key, which S3 and its
    kind make visible whole or not at all. On S3 the request carries the
    blob's MD5 (``Content-MD5``: the service refuses a body that arrives
    different) and the ETag it answers must be that MD5; elsewhere the stored
    size is checked. A put that fails half-way leaves nothing visible; a crash
    between a put and its index row leaves an orphan that
    :meth:`aepacs.pipeline.archive.Archive.sweep_orphans` removes.

    Parameters
    ----------
    url : str
        ``PROTOCOL://ROOT`` (credentials come from the protocol's usual
        environment: ``AWS_*`` variables or ``~/.aws`` for S3).
    endpoint_url, region : str, optional
        For ``s3://``: an S3-compatible service (MinIO, Ceph) and its region.
    """

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None) -> None:
        import fsspec  # noqa: PLC0415 -- only object-storage sites need it

        self.url = url
        self.s3 = url.startswith(("s3://", "s3a://"))
        options: dict[str, Any] = {}
        if self.s3:
            # no listing cache: other nodes add and remove blobs under the same prefix
            options = {"use_listings_cache": False, "skip_instance_cache": True}
            if endpoint_url:
                options["endpoint_url"] = endpoint_url
            if region:
                options["client_kwargs"] = {"region_name": region}
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            raise StoreError(f"{url}: {exc} (pip install 'aepacs[scale]')") from None
        self.root = root.rstrip("/")

    def path_for(self, key: str) -> str:
        return f"{self.root}/{_relative(key)}"

    def check_free(self, incoming: int, reserve: int) -> None:
        """Object storage has no free-space figure to check."""

    def put(self, blob: bytes | bytearray, *, sync: bool = True) -> str:
        key = blob_key(blob)
        path = self.path_for(key)
        try:
            if self.s3:  # one request: an existing blob has these very bytes, so writing it again is harmless
                md5 = hashlib.md5(blob, usedforsecurity=False).digest()
                answer = self.fs.pipe_file(path, bytes(blob), ContentMD5=base64.b64encode(md5).decode())
                etag = str((answer or {}).get("ETag", "")).strip('"')
                if etag != md5.hex():
                    raise StoreError(f"{self.url}: blob {key} stored with ETag {etag!r}, not its MD5 {md5.hex()}")
            elif not self.fs.exists(path):
                self.fs.pipe_file(path, bytes(blob))
                size = int(self.fs.info(path)["size"])
                if size != len(blob):
                    raise StoreError(f"{self.url}: blob {key} stored as {size} bytes, not {len(blob)}")
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot write blob {key} ({exc})") from None
        return key

    def sync(self) -> None:
        """Object puts are durable when they return."""

    def get(self, key: str) -> bytes:
        return self._read(key, None)

    def view(self, key: str) -> memoryview:
        """As :meth:`get` (each object read is a fresh download anyway)."""
        return memoryview(self._read(key, None))

    def read_prefix(self, key: str, size: int) -> bytes:
        return self._read(key, size)

    def _read(self, key: str, size: int | None) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.path_for(key), start=None if size is None else 0, end=size))
        except FileNotFoundError:
            raise StoreError(f"blob {key} missing from {self.url}") from None
        except OSError as exc:
            raise StoreError(f"blob {key}: {exc}") from None

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path_for(key)))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path_for(key))

    def keys(self, older_than: float | None = None) -> Iterator[str]:
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            key = _key_of(path.rsplit("/", 1)[-1])
            if key is None or (older_than is not None and _mtime(info) >= older_than):
                continue
            yield key

    def sweep(self) -> int:
        """Object puts leave no temporaries."""
        return 0


def _mtime(info: dict[str, Any]) -> float:
    """Last-modified time (epoch s) from an fsspec info dict; now when the backend gives none."""
    for name in ("mtime", "LastModified", "last_modified", "created", "updated"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return time.time()


AnyBlobStore = BlobStore | FsspecBlobStore


def open_store(location: str | Path, *, endpoint_url: str | None = None, region: str | None = None) -> AnyBlobStore:
    """The blob store at `location`: a path or ``file://`` URL (local), or any other fsspec URL (`endpoint_url`
    and `region`: an S3-compatible service's, for ``s3://``)."""
    text = str(location)
    if "://" not in text:
        return BlobStore(Path(text))
    if text.startswith("file://"):
        return BlobStore(Path(text[len("file://"):]))
    return FsspecBlobStore(text, endpoint_url=endpoint_url, region=region)
