"""The archive: configuration, keyring, blob store and index opened together."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from aepacs.audit import AuditTrail
from aepacs.config import Config
from aepacs.crypto.keyring import Keyring, passphrase_from_env
from aepacs.crypto.recipients import Recipient
from aepacs.errors import KeyringError, SealError
from aepacs.store.atomic import private_dir
from aepacs.store.blobs import open_store
from aepacs.store.index import Index
from aepacs.store.query import find, retrieve_rows
from aepacs.store.recipients import RecipientRows

log = logging.getLogger("aepacs.archive")

#: A blob younger than this may belong to a write still on its way to the index.
ORPHAN_MIN_AGE_S = 3600.0


def load_keyring(config: Config) -> Keyring:
    """Load the configured keyring, with its passphrase from the configured variable."""
    return Keyring.load(config.keyring_path, passphrase_from_env(config.keyring.passphrase_env))


def spool_keyring(config: Config) -> Keyring:
    """A blind archive's keyring (``sealing: recipients-only``): it seals only the spool's entries while they
    wait, so a missing one is made afresh, unless the spool still holds entries it sealed.

    Raises
    ------
    KeyringError
        Missing while spooled instances need it, or present and unreadable.
    """
    path = config.keyring_path
    if path.exists():
        return load_keyring(config)
    waiting = len(list(config.spool_path.glob("*.aepx"))) if config.spool_path.is_dir() else 0
    if waiting:
        raise KeyringError(f"{path}: missing, and the spool holds {waiting} acknowledged instances sealed under "
                           "it: restore it (a blind archive's keyring seals its spool entries)")
    log.warning("blind archive: no keyring at %s; a new one is made for the spool's entries (stored objects are "
                "sealed to recipients alone)", path)
    return Keyring.create(path, passphrase_from_env(config.keyring.passphrase_env))


class Archive:
    """Everything a data flow needs to reach; the thin I/O shell around the pure parts.

    Parameters
    ----------
    config : Config
        The validated configuration.
    keyring : Keyring, optional
        Defaults to the configured keyring file.
    """

    def __init__(self, config: Config, keyring: Keyring | None = None) -> None:
        self.config = config
        private_dir(config.data_dir)
        self.keyring = keyring or (spool_keyring(config) if config.blind else load_keyring(config))
        self.store = open_store(config.store_location, endpoint_url=config.store.endpoint_url,
                                region=config.store.region)
        self.index = Index(config.index_url)
        self.audit = AuditTrail.for_config(config)

    def seal_recipients(self) -> tuple[Recipient, ...]:
        """Whom a blind archive (``sealing: recipients-only``) seals what it stores to: every active registered
        recipient, read afresh (a revocation or an addition takes effect at the next object); none for an
        archive that seals under its KEK.

        Raises
        ------
        SealError
            A blind archive with no active recipient: nothing it stored could ever be opened.
        """
        if not self.config.blind:
            return ()
        found = tuple(Recipient(r.name, bytes(r.public_key)) for r in RecipientRows(self.index).all()
                      if r.revoked_at is None)
        if not found:
            raise SealError("this blind archive (sealing: recipients-only) has no active recipient to seal to "
                            "('aepacs recipients add'): nothing it stored could be opened")
        return found

    def check_room(self, nbytes: int, *, acknowledged: bool = False) -> None:
        """Refuse `nbytes` more unless ``store.min_free_mb`` stays free.

        An acknowledged instance may use half the reserve: its admission left
        room for it (:meth:`aepacs.pipeline.spool.Spool.admission_need`), and
        archiving it frees its spool entry.

        Raises
        ------
        StoreFullError
        """
        reserve = self.config.store.min_free_mb * 1_000_000
        self.store.check_free(nbytes, reserve // 2 if acknowledged else reserve)

    def source_sha256(self, sop_uid: str) -> str | None:
        """The SHA-256 of the archived instance `sop_uid` as received, or None when it is not archived."""
        return self.index.source_sha256(sop_uid)

    def find(self, identifier: Dataset, *, ae_title: str = "", offset: int = 0,
             limit: int | None = None) -> Iterator[Dataset]:
        """C-FIND and QIDO-RS: one response identifier per match, paged by `offset` and `limit`
        (:func:`aepacs.store.query.find`)."""
        return find(self.index, identifier, ae_title=ae_title, offset=offset, limit=limit)

    def selection(self, identifier: Dataset) -> list[Any]:
        """C-GET / C-MOVE: the index rows of the instances `identifier` selects."""
        return retrieve_rows(self.index, identifier)

    def sweep_orphans(self, min_age_s: float = ORPHAN_MIN_AGE_S) -> int:
        """Remove blobs that no index row references and that are older than `min_age_s`.

        Such blobs are left by a crash between a blob write and its index row.
        Young blobs are kept: they may belong to a write still in flight.

        Returns
        -------
        int
            How many blobs were removed.
        """
        candidates = set(self.store.keys(older_than=time.time() - min_age_s))
        if not candidates:
            return 0
        orphans = candidates - set(self.index.blob_keys())
        for key in orphans:
            self.store.delete(key)
        if orphans:
            log.info("removed %d unreferenced blobs from %s", len(orphans), self.store.root)
        return len(orphans)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
