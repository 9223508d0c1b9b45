"""Configuration: one YAML file laid over the embedded default, validated on load.

The embedded default is ``configs/default.yaml``; it holds every key and its
default value, so this module holds none. A site file names only what it
changes. Validation (:mod:`.schema`) rejects unknown keys and wrong types with
a message that names the key (``codec.zstd_level: expected an integer, got
'high'``); routes are :mod:`.routes`.

The data directory (``home``) is ``$AEPACS_HOME`` when set, else the
``home`` key, else ``~/.aepacs``; every relative path is resolved against it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aepacs.config.routes import STANDARD_CODECS, Route
from aepacs.config.schema import build, merge
from aepacs.errors import ConfigError

#: The embedded default configuration file (``configs/default.yaml``; ``aepacs/configs``
#: links to it so that it ships inside the package).
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"

HOME_ENV = "AEPACS_HOME"
CONFIG_ENV = "AEPACS_CONFIG"

LOSSLESS_CODECS = STANDARD_CODECS


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class IndexConfig:
    url: str


@dataclass(frozen=True)
class StoreConfig:
    path: str
    min_free_mb: int = field(metadata={"range": (0, 10**9)})
    endpoint_url: str | None
    region: str | None


@dataclass(frozen=True)
class KeyringConfig:
    path: str
    passphrase_env: str


@dataclass(frozen=True)
class CodecConfig:
    lossless: str = field(metadata=_choices(*LOSSLESS_CODECS))
    zstd_level: int = field(metadata={"range": (1, 22)})


@dataclass(frozen=True)
class RekeyConfig:
    full_after_days: float = field(metadata={"range": (0, 100_000)})
    workers: int = field(metadata={"range": (0, 1024)})


@dataclass(frozen=True)
class IngestConfig:
    on_conflict: str = field(metadata=_choices("keep-first", "reject"))
    workers: int = field(metadata={"range": (0, 256)})
    spool_path: str
    max_sequence_depth: int = field(metadata={"range": (1, 128)})
    max_lag_s: float = field(metadata={"range": (0, 86_400)})


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool
    certificate: str | None
    private_key: str | None
    ca: str | None
    require_client_certificate: bool


@dataclass(frozen=True)
class ServerConfig:
    ae_title: str
    bind: str
    port: int = field(metadata={"range": (1, 65535)})
    max_associations: int = field(metadata={"range": (1, 1000)})
    max_pdu: int = field(metadata={"range": (0, 2**32 - 1)})
    allowed_calling_aets: list[str]
    move_destinations: dict[str, list[Any]] = field(metadata={"destinations": True})
    retrieve_as: str = field(metadata=_choices("sealed", "decoded"))
    tls: TlsConfig


@dataclass(frozen=True)
class WebConfig:
    port: int = field(metadata={"range": (0, 65535)})
    bind: str
    tokens_sha256: list[str]
    client_certificates: list[str]
    anonymous: bool
    cors_origins: list[str]
    max_request_mb: int = field(metadata={"range": (1, 1 << 20)})
    viewer: str


@dataclass(frozen=True)
class TransportConfig:
    identifiers: str = field(metadata=_choices("clear", "pseudonymous"))
    pseudonym_key: str
    unregistered: str = field(metadata=_choices("keyring", "refuse"))


@dataclass(frozen=True)
class ModelsConfig:
    path: str


@dataclass(frozen=True)
class LogConfig:
    level: str = field(metadata=_choices("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = field(metadata=_choices("text", "json"))


@dataclass(frozen=True)
class AuditConfig:
    path: str
    syslog: str | None


@dataclass(frozen=True)
class MetricsConfig:
    port: int = field(metadata={"range": (0, 65535)})
    bind: str


@dataclass(frozen=True)
class Config:
    """The validated configuration of one aepacs installation."""

    home: str | None
    index: IndexConfig
    store: StoreConfig
    keyring: KeyringConfig
    codec: CodecConfig
    routes: dict[str, Route] = field(metadata={"routes": True})
    ingest: IngestConfig
    rekey: RekeyConfig
    server: ServerConfig
    web: WebConfig
    transport: TransportConfig
    #: ``kek``: each stored object's data key is wrapped under the keyring's KEK; ``recipients-only`` (a
    #: blind archive): to the active registered recipients alone (:attr:`blind`).
    sealing: str = field(metadata=_choices("kek", "recipients-only"))
    models: ModelsConfig
    log: LogConfig
    audit: AuditConfig
    metrics: MetricsConfig
    #: The data directory every relative path is resolved against.
    data_dir: Path = field(default=Path("."), metadata={"derived": True})

    @property
    def blind(self) -> bool:
        """``sealing: recipients-only``: the archive stores what it cannot open (see :func:`check_sealing`)."""
        return self.sealing == "recipients-only"

    def resolve(self, path: str) -> Path:
        """Return `path` made absolute against the data directory."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else self.data_dir / p

    @property
    def index_url(self) -> str:
        """The index URL, with a relative SQLite path resolved."""
        prefix = "sqlite:///"
        url = self.index.url
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix):]
            if rest and not rest.startswith(":memory:"):
                return prefix + str(self.resolve(rest))
        return url

    @property
    def store_path(self) -> Path:
        return self.resolve(self.store.path)

    @property
    def store_location(self) -> str:
        """The blob store: a resolved local path, or the fsspec URL as configured."""
        return self.store.path if "://" in self.store.path else str(self.store_path)

    @property
    def spool_path(self) -> Path:
        return self.resolve(self.ingest.spool_path)

    @property
    def journal_path(self) -> Path:
        """The journal of a storage area under another program (the Orthanc plugin's): files not yet moved
        into the blob store and the index (:mod:`aepacs.pipeline.area_journal`)."""
        return self.data_dir / "orthanc-journal"

    @property
    def models_path(self) -> Path:
        return self.resolve(self.models.path)

    @property
    def keyring_path(self) -> Path:
        return self.resolve(self.keyring.path)

    @property
    def pseudonym_key_path(self) -> Path:
        return self.resolve(self.transport.pseudonym_key)

    @property
    def audit_path(self) -> Path:
        return self.resolve(self.audit.path)

    def route_for(self, modality: str | None) -> Route:
        """Return the route configured for `modality` (``default`` otherwise)."""
        return self.routes.get((modality or "").upper(), self.routes.get("default", Route()))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Load and validate the configuration.

    Parameters
    ----------
    path : path-like, optional
        A site configuration file laid over the embedded default. When not
        given, ``$AEPACS_CONFIG`` is used if set, else the default alone.
    overrides : mapping, optional
        Values laid over the result (as from command-line flags), in the same
        nested shape as the file.

    Returns
    -------
    Config
        The validated configuration with its data directory resolved.

    Raises
    ------
    ConfigError
        Naming the file and key that is wrong.
    """
    data = _read_yaml(DEFAULT_CONFIG_PATH)
    path = path or os.environ.get(CONFIG_ENV) or None
    try:
        if path is not None:
            data = merge(data, _read_yaml(Path(path)))
        if overrides:
            data = merge(data, overrides)
        config = build(Config, data, "")
    except ConfigError as exc:
        msg = str(exc)
        where = str(path or DEFAULT_CONFIG_PATH)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    check_sealing(config, str(path or DEFAULT_CONFIG_PATH))
    home = os.environ.get(HOME_ENV) or config.home or "~/.aepacs"
    return dataclasses.replace(config, data_dir=Path(os.path.expanduser(home)).resolve())


def check_sealing(config: Config, where: str = "configuration") -> None:
    """Refuse what a blind archive (``sealing: recipients-only``) cannot do: it holds no key that opens what
    it stores, so it cannot decode for a reader (``server.retrieve_as: decoded``, which DICOMweb follows
    too) nor send the KEK-sealed form to readers that are no recipient (``transport.unregistered:
    keyring``). (The Orthanc storage area refuses it when it starts.)

    Raises
    ------
    ConfigError
        Naming the key that conflicts.
    """
    if not config.blind:
        return
    if config.server.retrieve_as == "decoded":
        raise ConfigError(f"{where}: server.retrieve_as: decoded cannot be served by a blind archive "
                          "(sealing: recipients-only holds no key to decode with); use sealed")
    if config.transport.unregistered == "keyring":
        raise ConfigError(f"{where}: transport.unregistered: keyring cannot be served by a blind archive "
                          "(sealing: recipients-only seals to no keyring); use refuse")
