"""Another program's storage area on aepacs (Orthanc's, ``plugins/orthanc``): sealed at rest, DICOM coded behind.

The program hands over every file it stores, under its own id and content type, and asks for the same
bytes back. The data flows:

- create: check room → seal the file as it is (codec ``file``; the program's other files, small,
  compressed by zstd first: ``file+zstd``; a fresh data key, bound to :func:`attachment_uid`) → store
  → index. No plaintext reaches a disk, not even a temporary file;
- read: fetch → open (authenticated, bound to the id) → decode (SHA-256 checked) → the exact bytes;
- remove: index → blob, audited;
- compress (in the background, :mod:`aepacs.pipeline.area_jobs`): a DICOM file sealed as it came is
  coded by its modality's lossless route (a lossy route's model in its lossless mode), sealed again, stored,
  opened again and compared with the original's SHA-256, then switched in by compare-and-swap, the
  old blob removed after; the order of effects of a rekey, so a crash at any moment leaves every file
  readable and at most a pending blob for the next pass to remove.

Key rotation, retirement, the orphan sweep and backups cover these blobs as they do instances'
(the attachment rows are in :data:`aepacs.store.schema.OBJECT_TABLES`). A program's own storage
from before (``legacy``) is read until :func:`~aepacs.pipeline.area_jobs.migrate_files` has moved it here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import zstandard

from aepacs.codec.payload import decode_object
from aepacs.config.routes import Route
from aepacs.crypto.seal import SLOT_BYTES, Readable, SealedHeader, decrypt_payload, seal, unwrap_key, with_slot
from aepacs.dicom.part10 import parse
from aepacs.errors import AepacsError, CodecError, ConfigError, InputError, OpenError, StoreError
from aepacs.models.registry import config_registry
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.area_journal import PendingFiles
from aepacs.pipeline.codecs import resolver
from aepacs.pipeline.ingest import check, encode, route
from aepacs.pipeline.read_ahead import ReadAhead
from aepacs.store.atomic import sync_filesystem
from aepacs.store.attachments import Attachments
from aepacs.store.blobs import BlobStore, blob_key
from aepacs.store.index import BlobRef, sqlite_path

log = logging.getLogger("aepacs.storage_area")

#: The codec of a blob whose payload is the file itself (sealed as it came, not coded yet).
FILE = "file"
#: The codec the index records for a DICOM file sealed as it came that coding would not make smaller
#: (or that is no image the routes code): its blob is as for :data:`FILE`; the compressor passes it by.
KEPT = "file-kept"
#: The codec of a blob whose payload is the file compressed by zstd: the program's other files (Orthanc's
#: JSON summaries, its copy of each instance's header), small enough to compress as they arrive.
ZSTD_FILE = "file+zstd"
_ZSTD_LEVEL = 3
_MAX_FILE = 1 << 31  # the largest file a zstd frame may claim to hold
_REMEMBERED = 1 << 14  # files a read finds and opens without the index or the keyring (about 8 MB)
#: Orthanc's content type of a DICOM instance (``OrthancPluginContentType_Dicom``).
DICOM = 1
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: What opened a blob: its authenticated header and data key as its key slot gave them, and its first bytes
#: as stored (header and key slot: a blob whose own differ is opened afresh, so that any change to it shows).
_Opened = tuple[SealedHeader, bytes, bytes]


@dataclasses.dataclass(frozen=True)
class _Where:
    """Where a file read or moved lately is, and what opens it: a read of it again skips the index and
    the key unwrap (a blob switched or removed meanwhile is not there, or does not open: the row says)."""

    key: str | None  # its blob's content key (None: still in the journal)
    key_slot: bytes | None = dataclasses.field(repr=False)  # the index's, where it differs from the blob's
    opened: _Opened | None = dataclasses.field(repr=False)  # (held by the process that holds the keyring)
    pk: int | None = None  # its row's (where the files stored after it start)


def attachment_uid(uuid: str, content_type: int) -> str:
    """The object UID a file's blob is bound to: ``orthanc.<content type>.<uuid>``.

    Raises
    ------
    InputError
        `uuid` is not a lowercase RFC 4122 UUID or `content_type` not a small integer (a name made
        from them must not be able to reach another object).
    """
    if not isinstance(uuid, str) or not _UUID.fullmatch(uuid):
        raise InputError(f"storage area: {uuid!r} is not a file id (a UUID)")
    if not isinstance(content_type, int) or not 0 <= content_type < 1 << 16:
        raise InputError(f"storage area: content type {content_type!r} is not 0..65535")
    return f"orthanc.{content_type}.{uuid}"


def _coded(codec: str) -> bool:
    """Whether a blob of `codec` holds a coded file (one a read decodes), not the file as it came."""
    return codec not in (FILE, KEPT, ZSTD_FILE)


def lossless_route(r: Route) -> Route:
    """`r` as a lossless route: a lossy route's model in its lossless mode (what a program that expects
    its exact bytes back may be given)."""
    return dataclasses.replace(r, mode="lossless") if r.model and r.mode != "lossless" else r


class StorageArea:
    """Files of another program, kept in `archive` (see the module).

    Parameters
    ----------
    archive : Archive
        Keyring, blob store, index and audit trail.
    program : str
        Who stores the files, as audit records name it.
    legacy : Path, optional
        The program's own storage directory from before (Orthanc's ``StorageDirectory``: files at
        ``ab/cd/<uuid>``), while ``area_jobs.migrate_files`` moves it here: a file not here yet is read from it
        (and moved on the way), removed from it.
    sync : bool
        True (the default): each file is on stable storage when :meth:`create` returns (its blob, its
        directory entry and its index row). False: written through to the operating system when
        :meth:`create` returns, so that a crash of the program or of aepacs loses nothing, and made
        durable by :meth:`flush` (the program's commit point: the Orthanc plugin flushes when Orthanc
        signals a stored instance, before Orthanc answers its sender) and by a flush every `flush_s`
        seconds, so that a power cut loses at most the files of that last interval.
    flush_s : float
        Without `sync`: how often the files created meanwhile are flushed.
    journal : Path, optional
        A journal directory (the Orthanc plugin's): each new file is appended to the journal, and moved
        into the blob store and the index behind the program (:mod:`aepacs.pipeline.area_journal`);
        :meth:`replay` first moves what a killed process left there. Without it, each create writes its
        blob and its row.
    read_ahead : int
        Threads that decode coded DICOM files ahead of the program's reads, once it reads one
        (:mod:`aepacs.pipeline.read_ahead`: the cores its own thread leaves idle); 0: none.
    """

    def __init__(self, archive: Archive, program: str = "Orthanc", legacy: Path | None = None, *,
                 sync: bool = True, flush_s: float = 1.0, journal: Path | None = None, read_ahead: int = 0) -> None:
        if archive.config.blind:
            raise ConfigError(f"sealing: recipients-only: {program}'s storage area reads its files back decoded, "
                              "which a blind archive cannot do (it holds no key that opens what it stores)")
        self.archive = archive
        self.rows = Attachments(archive.index)
        self.program = program
        self.legacy = legacy
        self.sync = sync
        self._resolve = resolver(config_registry(archive.config))
        #: files read or moved lately: where their blobs are and what opens them (see _Where)
        self._where: OrderedDict[str, _Where] = OrderedDict()
        self._where_lock = threading.Lock()
        self.ahead = ReadAhead(self._decode_row, lambda pk, n: self.rows.following(pk, DICOM, limit=n), _coded,
                               workers=read_ahead) if read_ahead > 0 else None
        self.pending = PendingFiles(archive, self.rows, journal, self._forget,
                                    indexed=self._moved) \
            if journal is not None else None
        # without a journal, the file systems a sync covers: the blobs' and the SQLite index's, each once
        root = archive.store.root if isinstance(archive.store, BlobStore) else None  # (an object store syncs itself)
        devices: set[int] = set()
        self._also_sync: list[Path] = []  # (the blobs' file system is the store's own to sync)
        for place in (root, sqlite_path(archive.index.url)):
            if place is not None and (device := os.stat(place).st_dev) not in devices:
                devices.add(device)
                if place is not root:
                    self._also_sync.append(place)
        self._written = threading.Event()  # a file was created since the last flush began
        self._flushing = threading.Lock()  # one flush at a time: a caller returns once its files are synced
        self._unsynced: AepacsError | None = None  # why the last flush failed (creates refuse until one works)
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        if not sync:
            self._flusher = threading.Thread(target=self._flush_loop, args=(flush_s,), name="aepacs-flush",
                                             daemon=True)
            self._flusher.start()

    def _flush_loop(self, every: float) -> None:
        """Without `sync`: make what was created durable every `every` seconds (only when there was some)."""
        while not self._closed.wait(every):
            try:
                self.flush()
            except AepacsError as exc:
                log.error("storage area: files written but not synced: %s", exc)

    def flush(self) -> None:
        """Make every file created so far durable (the blobs, their directories and the index's log):
        one sync for all the files of every thread since the last one.

        Raises
        ------
        StoreError
            The sync failed; :meth:`create` refuses new files until a flush succeeds.
        """
        with self._flushing:  # a flush in progress may have begun before this caller's files were written
            if not self._written.is_set():
                return
            self._written.clear()
            try:
                self._sync()
            except AepacsError as exc:
                self._written.set()
                self._unsynced = exc
                raise
            self._unsynced = None

    def _sync(self) -> None:
        if self.pending is not None:  # the new files are in the journal (the mover syncs what it moves)
            self.pending.sync()
            return
        self.archive.store.sync()
        for place in self._also_sync:
            sync_filesystem(place)

    def replay(self) -> int:
        """Move into the blob store and the index what a killed process left in the journal (before
        serving the program); how many files."""
        return self.pending.replay() if self.pending is not None else 0

    def close(self) -> None:
        """Stop the flusher (without `sync`), flush a last time, and move the journal (what cannot be moved
        now stays there, synced, for the next start to replay)."""
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()
        if self.pending is not None:
            self.pending.close()
        if self.ahead is not None:
            self.ahead.close()

    def _forget(self, uid: str) -> None:
        """Remove an indexed file's row and blob (one removed while the journal moved it)."""
        row = self.rows.remove(uid)
        if row is not None:
            self.archive.store.delete(row.blob_key)

    # -- the program's three calls --------------------------------------------------------
    def create(self, uuid: str, content_type: int, data: bytes) -> None:
        """Keep `data` as file `uuid` of `content_type`, sealed; durable when this returns (or, without
        `sync`, at the next flush).

        The SHA-256 of a DICOM file is not taken here: the payload's GCM tag authenticates the file
        sealed as it came, and the compressor takes its hash before coding it.

        Raises
        ------
        InputError
            A malformed id.
        StoreFullError
            Less than ``store.min_free_mb`` free: nothing written.
        AepacsError
            Keyring, store or index failure: nothing kept (the program's store fails).
        """
        uid = attachment_uid(uuid, content_type)
        if self._unsynced is not None:  # files written before are not known to be on disk: not another
            self.flush()
        self.archive.check_room(len(data))
        codec, payload = (FILE, data) if content_type == DICOM else \
            (ZSTD_FILE, zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data))
        blob = seal(payload, object_uid=uid, study_uid="", codec=codec, keyring=self.archive.keyring)
        if self.pending is not None:  # appended; moved behind the program
            self.pending.add(uid, blob, len(data))
        else:  # blob and row written through, then made durable together by one sync of the file system,
            # where an fsync of the blob, of its directory and of the index's log would be three
            key = self.archive.store.put(blob, sync=False)
            ref = BlobRef(codec, self.archive.keyring.active_version, key, len(blob), len(data), "")
            try:
                self.rows.add(uid, content_type, ref, sync=False)
            except AepacsError:
                self.archive.store.delete(key)
                raise
        if self.sync:
            self._sync()
        else:
            self._written.set()

    def read(self, uuid: str, content_type: int) -> bytes:
        """The bytes of file `uuid` exactly as created.

        Raises
        ------
        OpenError
            Not stored, its blob missing, altered, bound to another file, or no key for it; naming it.
        """
        uid = attachment_uid(uuid, content_type)
        with self._where_lock:
            known = self._where.get(uid)
        if self.pending is not None and (journalled := self.pending.read(uid)) is not None:
            data, opened = self._unseal(uid, journalled, None, known.opened if known else None)
            self._remember(uid, _Where(None, None, opened))
            return data
        if known is not None and known.key is not None:
            if (ready := self._ready(uid, known.key, known.pk)) is not None:
                return ready
            try:
                return self._read_opened(uid, self.archive.store.view(known.key), known)
            except AepacsError:  # switched (coded, rekeyed) or removed meanwhile: the row says
                self._unremember(uid)
        for _ in range(5):  # a blob switched meanwhile: read the row again
            row = self.rows.get(uid)
            if row is None:
                legacy = self._read_legacy(uuid, uid)
                if legacy is None:
                    raise OpenError(uid, "not in the storage area")
                self._adopt(uuid, content_type, legacy)
                return legacy
            if (ready := self._ready(uid, row.blob_key, row.pk)) is not None:
                return ready
            blob = self._blob(uid, row)
            if blob is not None:
                key_slot = None if row.key_slot is None else bytes(row.key_slot)
                return self._read_opened(uid, blob, _Where(row.blob_key, key_slot, None, row.pk))
        raise OpenError(uid, "blob kept changing while being read")

    def _read_opened(self, uid: str, blob: Readable, where: _Where) -> bytes:
        """The file in `blob` (where `where` says it is), remembered for the next read; a coded DICOM file
        has the files stored after it decoded ahead."""
        data, opened = self._unseal(uid, blob, where.key_slot, where.opened)
        if opened is not where.opened:
            self._remember(uid, dataclasses.replace(where, opened=opened))
        if self.ahead is not None and where.pk is not None and _coded(opened[0].codec):
            self.ahead.after(where.pk)
        return data

    def _ready(self, uid: str, key: str, pk: int | None) -> bytes | None:
        """File `uid` as read ahead from blob `key`, if it was (and the next ones read ahead in turn)."""
        if self.ahead is None or (data := self.ahead.take(uid, key)) is None:
            return None
        if pk is not None:
            self.ahead.after(pk)
        return data

    def _decode_row(self, row: Any) -> bytes:
        """The file of `row` (a read ahead's work)."""
        key_slot = None if row.key_slot is None else bytes(row.key_slot)
        return self._open(row.object_uid, self.archive.store.view(row.blob_key), key_slot)

    def remove(self, uuid: str, content_type: int) -> None:
        """Delete file `uuid` (its row, then its blob), audited; a file not stored is logged, not an error
        (the program may remove a file whose create it saw fail)."""
        uid = attachment_uid(uuid, content_type)
        self._unremember(uid)
        if self.ahead is not None:
            self.ahead.forget(uid)
        if self.pending is not None and self.pending.remove(uid):
            self.archive.audit.record("remove", detail=f"{self.program} file {uid} (from the journal)")
            return
        row = self.rows.remove(uid)
        if row is None:
            legacy = self.legacy_path(uuid)
            if legacy is not None and legacy.is_file():
                legacy.unlink()
                self.archive.audit.record("remove", detail=f"{self.program} file {uid} (not migrated yet)")
                return
            log.warning("storage area: %s removed but not stored", uid)
            return
        self.archive.store.delete(row.blob_key)
        self.archive.audit.record("remove", detail=f"{self.program} file {uid} ({row.source_size} bytes)")

    # -- the program's storage from before ----------------------------------------------------
    def legacy_path(self, uuid: str) -> Path | None:
        """Where the program's own storage kept file `uuid` (``ab/cd/<uuid>``), or None without one."""
        if self.legacy is None:
            return None
        attachment_uid(uuid, 0)  # a UUID: the path stays inside the directory
        return self.legacy / uuid[:2] / uuid[2:4] / uuid

    def _read_legacy(self, uuid: str, uid: str) -> bytes | None:
        path = self.legacy_path(uuid)
        try:
            return path.read_bytes() if path is not None else None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OpenError(uid, f"cannot read {path}: {exc.strerror}") from None

    def _adopt(self, uuid: str, content_type: int, data: bytes) -> bool:
        """Keep a legacy file here (False: another process moved it first)."""
        try:
            self.create(uuid, content_type, data)
            return True
        except StoreError:
            if self.rows.get(attachment_uid(uuid, content_type)) is not None \
                    and self.read(uuid, content_type) == data:
                return False
            raise

    def migrate_file(self, uuid: str, content_type: int, md5: str | None = None, *, delete: bool = False) -> str:
        """Move file `uuid` from the legacy storage here; ``moved``, ``present`` (already here) or ``missing``.

        The copy is read back and compared before the legacy file is deleted (with `delete`).

        Raises
        ------
        AepacsError
            The legacy file does not match `md5` (what the program recorded), or storing failed.
        """
        uid = attachment_uid(uuid, content_type)
        path = self.legacy_path(uuid)
        if path is None:
            raise InputError("storage area: no legacy directory to migrate from")
        present = self.rows.get(uid) is not None
        data = self._read_legacy(uuid, uid)
        if data is None:
            return "present" if present else "missing"
        if md5 is not None and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
            raise OpenError(uid, f"{path} does not match the MD5 {self.program} recorded for it")
        moved = not present and self._adopt(uuid, content_type, data)
        if self.read(uuid, content_type) != data:
            raise OpenError(uid, "the sealed copy does not read back as the legacy file")
        if delete:
            path.unlink(missing_ok=True)
        return "moved" if moved else "present"

    # -- helpers --------------------------------------------------------------------------
    def _remember(self, uid: str, where: _Where) -> None:
        with self._where_lock:
            self._where[uid] = where
            self._where.move_to_end(uid)
            if len(self._where) > _REMEMBERED:
                self._where.popitem(last=False)

    def _moved(self, uid: str, key: str) -> None:
        """The journal's mover put file `uid` into the store as blob `key` (the same bytes: what opened it
        in the journal opens it there)."""
        with self._where_lock:
            known = self._where.get(uid)
        self._remember(uid, _Where(key, None, known.opened if known is not None else None))

    def _unremember(self, uid: str) -> None:
        with self._where_lock:
            self._where.pop(uid, None)

    def _blob(self, uid: str, row: Any) -> Readable | None:
        """The blob `row` points at; None when it went because the row was switched or removed meanwhile
        (by the compressor, a rekey or the program).

        Raises
        ------
        OpenError
            The blob is missing or unreadable while its row still points at it.
        """
        try:
            return self.archive.store.view(row.blob_key)
        except AepacsError as exc:
            if (now := self.rows.get(uid)) is None or now.blob_key != row.blob_key:
                return None
            raise OpenError(uid, str(exc)) from None

    def _open(self, uid: str, blob: Readable, key_slot: bytes | None) -> bytes:
        """The file in `blob`, with the index's `key_slot` (None: its own)."""
        return self._unseal(uid, blob, key_slot)[0]

    def _unseal(self, uid: str, blob: Readable, key_slot: bytes | None,
                opened: _Opened | None = None) -> tuple[bytes, _Opened]:
        """The file in `blob` and what opened it: with `opened` (what opened the same blob before), else
        with the index's `key_slot` (None: its own).

        The blob's content key is not hashed again here (a read costs that SHA-256 more than the AES-GCM): the
        payload's tag and the header's binding to `uid` already refuse any other or altered blob.
        """
        if opened is None or blob[:len(opened[2])] != opened[2]:
            stored = blob
            if key_slot is not None:
                blob = with_slot(blob, bytes(key_slot), uid)
            header, dek = unwrap_key(blob, self.archive.keyring, name=uid, expect_uid=uid)
            opened = header, dek, bytes(stored[:len(header.aad) + SLOT_BYTES])
        header, dek, _ = opened
        payload = decrypt_payload(blob, header, dek, name=uid)
        if header.codec == FILE:
            return payload, opened
        try:
            if header.codec == ZSTD_FILE:
                return zstandard.ZstdDecompressor().decompress(payload, max_output_size=_MAX_FILE), opened
            return decode_object(payload, self._resolve), opened  # its SHA-256 is checked there
        except (CodecError, zstandard.ZstdError) as exc:
            raise OpenError(uid, str(exc)) from None

    # -- the background coding ------------------------------------------------------------
    def compress(self, row: Any, owner: str) -> str:
        """Code one DICOM file sealed as it came; ``coded``, ``kept`` (nothing gained, or not an image
        the routes code: it stays sealed as it came) or ``gone`` (removed or switched meanwhile).

        Raises
        ------
        AepacsError
            Its blob does not open, the store or the index failed: the row is unchanged.
        """
        uid, archive = row.object_uid, self.archive
        blob = self._blob(uid, row)
        if blob is None:
            return "gone"
        data = self._open(uid, blob, row.key_slot)
        sha = row.source_sha256
        if not sha:  # not taken at create: recorded now, and kept when the coded blob is switched in
            sha = hashlib.sha256(data).hexdigest()
            if not self.rows.set_sha256(uid, row.blob_key, sha):
                return "gone"
        try:
            parts = parse(data)
            check(parts)
            encoded = encode(data, parts, lossless_route(route(parts, archive.config)), archive.config, sha256=sha)
        except InputError as exc:
            log.info("storage area: %s kept as it came (%s)", uid, exc)
            return self._keep(uid, row)
        if len(encoded.payload) >= len(data):
            return self._keep(uid, row)
        study = str(parts.dataset.get("StudyInstanceUID", "") or "")
        new = seal(encoded.payload, object_uid=uid, study_uid=study if study.isascii() else "",
                   codec=encoded.codec, keyring=archive.keyring)
        new_key = blob_key(new)
        archive.index.add_pending([(new_key, uid)], owner)
        archive.store.put(new)
        if hashlib.sha256(self._open(uid, archive.store.get(new_key), None)).hexdigest() != sha:
            raise OpenError(uid, "the coded blob does not open to the file")  # (encode checked it already)
        if not archive.index.swap_blobs([(uid, row.blob_key, new_key, len(new), archive.keyring.active_version,
                                          encoded.codec)], owner, table="attachments"):
            archive.store.delete(new_key)
            archive.index.drop_pending(new_key)
            return "gone"
        archive.store.delete(row.blob_key)
        archive.index.drop_pending(row.blob_key)
        return "coded"

    def _keep(self, uid: str, row: Any) -> str:
        """Record that `row`'s file stays as it came, so that no later pass codes it again."""
        return "kept" if self.rows.set_codec(uid, row.blob_key, KEPT) else "gone"


__all__ = ["DICOM", "FILE", "KEPT", "ZSTD_FILE", "StorageArea", "attachment_uid", "lossless_route"]
