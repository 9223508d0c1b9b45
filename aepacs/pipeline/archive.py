"""The archive: configuration, keyring, blob store and index opened together."""

from __future__ import annotations

import logging
import time

from aepacs.audit import AuditTrail
from aepacs.config import Config
from aepacs.crypto.keyring import Keyring, passphrase_from_env
from aepacs.store.blobs import open_store
from aepacs.store.atomic import private_dir
from aepacs.store.index import Index


log = logging.getLogger("aepacs.archive")

#: A blob younger than this may belong to a write still on its way to the index.
ORPHAN_MIN_AGE_S = 3600.0


def load_keyring(config: Config) -> Keyring:
    """Load the configured keyring, with its passphrase from the configured variable."""
    return Keyring.load(config.keyring_path, passphrase_from_env(config.keyring.passphrase_env))


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
        self.keyring = keyring or load_keyring(config)
        self.store = open_store(config.store_location)
        self.index = Index(config.index_url)
        self.audit = AuditTrail.for_config(config)

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
