"""The archive: configuration, keyring, blob store and index opened together."""

from __future__ import annotations

from aepacs.config import Config
from aepacs.crypto.keyring import Keyring, passphrase_from_env
from aepacs.store.blobs import BlobStore
from aepacs.store.index import Index


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
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.keyring = keyring or load_keyring(config)
        self.store = BlobStore(config.store_path)
        self.index = Index(config.index_url)

    def close(self) -> None:
        self.index.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
