"""Configuration: one YAML file laid over the embedded default, validated on load.

The embedded default is ``configs/default.yaml``; it holds every key and its
default value, so this module holds none. A site file names only what it
changes. Validation rejects unknown keys and wrong types with a message that
names the key (``codec.zstd_level: expected an integer, got 'high'``).

The data directory (``home``) is ``$AEPACS_HOME`` when set, else the
``home`` key, else ``~/.aepacs``; every relative path is resolved against it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from aepacs.errors import ConfigError

#: The embedded default configuration file (``configs/default.yaml``; ``aepacs/configs``
#: links to it so that it ships inside the package).
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "configs" / "default.yaml"

HOME_ENV = "AEPACS_HOME"
CONFIG_ENV = "AEPACS_CONFIG"

LOSSLESS_CODECS = ("jpegls", "zstd")
MODES = ("lossy", "lossless")


@dataclass(frozen=True)
class Route:
    """Where one modality's images go: ``lossless`` (standard codecs) or a registry model.

    Written in a config as ``lossless``, ``MODEL[@VERSION]:MODE`` or a mapping
    with ``model``, ``mode`` and optionally ``gain``, ``target_psnr``,
    ``min_psnr`` and ``min_ssim`` (the quality gate of a lossy route).
    """

    model: str | None = None
    mode: str = "lossless"
    gain: int | None = None
    target_psnr: float | None = None
    min_psnr: float = 40.0
    min_ssim: float = 0.95

    @property
    def name(self) -> str:
        return "lossless" if self.model is None else f"{self.model}:{self.mode}"


_ROUTE_KEYS = {"model": str, "mode": str, "gain": int, "target_psnr": float, "min_psnr": float, "min_ssim": float}


def parse_route(name: str, value: Any) -> Route:
    """Validate one ``routes`` entry (see :class:`Route`)."""
    if value == "lossless":
        return Route()
    if isinstance(value, str):
        model, sep, mode = value.rpartition(":")
        if not sep:
            raise ConfigError(f"{name}: {value!r} is not lossless, MODEL[@VERSION]:MODE or a mapping")
        value = {"model": model, "mode": mode}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected lossless, MODEL[@VERSION]:MODE or a mapping, got {value!r}")
    unknown = sorted(set(value) - set(_ROUTE_KEYS))
    if unknown or "model" not in value:
        raise ConfigError(f"{name}: {'unknown keys ' + ', '.join(unknown) if unknown else 'model missing'}")
    kwargs: dict[str, Any] = {}
    for key, tp in _ROUTE_KEYS.items():
        if value.get(key) is not None:
            v = value[key]
            if tp is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, tp) or isinstance(v, bool):
                raise ConfigError(f"{name}.{key}: expected {tp.__name__}, got {v!r}")
            kwargs[key] = v
    if kwargs.get("mode", "lossy") not in MODES:
        raise ConfigError(f"{name}.mode: {kwargs['mode']!r} is not one of {', '.join(MODES)}")
    kwargs.setdefault("mode", "lossy")
    from aepacs.models.registry import ModelError, parse_ref

    try:
        parse_ref(kwargs["model"])
    except ModelError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return Route(**kwargs)


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class IndexConfig:
    url: str


@dataclass(frozen=True)
class StoreConfig:
    path: str
    min_free_mb: int = field(metadata={"range": (0, 10**9)})


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
class TransportConfig:
    identifiers: str = field(metadata=_choices("clear", "pseudonymous"))
    pseudonym_key: str


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
    transport: TransportConfig
    models: ModelsConfig
    log: LogConfig
    audit: AuditConfig
    metrics: MetricsConfig
    #: The data directory every relative path is resolved against.
    data_dir: Path = field(default=Path("."), metadata={"derived": True})

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


#: Mappings whose keys are data (modalities, AE titles), not schema: merged, not checked.
OPEN_MAPPINGS = ("routes", "move_destinations")


def _merge(base: dict[str, Any], over: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """`over` laid over `base`; every unknown key is reported at once (not only the first)."""
    unknown: list[str] = []
    out = _merge_into(base, over, where, unknown)
    if unknown:
        raise ConfigError("; ".join(unknown))
    return out


def _merge_into(base: dict[str, Any], over: Mapping[str, Any], where: str, unknown: list[str]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        name = f"{where}{key}"
        if key not in base:
            known = ", ".join(sorted(base)) or "none"
            unknown.append(f"{name}: unknown key (known here: {known})")
            continue
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a mapping, got {value!r}")
            out[key] = ({**base[key], **value} if key in OPEN_MAPPINGS
                        else _merge_into(base[key], value, f"{name}.", unknown))
        else:
            out[key] = value
    return out


def _check_scalar(name: str, value: Any, tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def _check_destination(name: str, value: Any) -> list[Any]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[0], str)
            or isinstance(value[1], bool) or not isinstance(value[1], int) or not 1 <= value[1] <= 65535):
        raise ConfigError(f"{name}: expected [host, port], got {value!r}")
    return [value[0], value[1]]


def _check_field(f: dataclasses.Field[Any], tp: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return _build(tp, value, f"{name}.")  # type: ignore[arg-type]
    if typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        if f.metadata.get("destinations"):
            return {str(k): _check_destination(f"{name}.{k}", v) for k, v in value.items()}
        if f.metadata.get("routes"):
            return {str(k).upper() if k != "default" else "default": parse_route(f"{name}.{k}", v)
                    for k, v in value.items()}
        allowed = f.metadata.get("value_choices")
        checked = {}
        for k, v in value.items():
            _check_scalar(f"{name}.{k}", v, str)
            if allowed and v not in allowed:
                raise ConfigError(f"{name}.{k}: {v!r} is not one of {', '.join(allowed)}")
            checked[str(k).upper() if k != "default" else "default"] = v
        return checked
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [_check_scalar(f"{name}[{i}]", v, str) for i, v in enumerate(value)]
    value = _check_scalar(name, value, tp)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    lo_hi = f.metadata.get("range")
    if lo_hi and not lo_hi[0] <= value <= lo_hi[1]:
        raise ConfigError(f"{name}: {value} is outside {lo_hi[0]}..{lo_hi[1]}")
    return value


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("derived"):
            continue
        name = f"{where}{f.name}"
        if f.name not in data:
            raise ConfigError(f"{name}: missing")
        kwargs[f.name] = _check_field(f, hints[f.name], data[f.name], name)
    return cls(**kwargs)


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
            data = _merge(data, _read_yaml(Path(path)))
        if overrides:
            data = _merge(data, overrides)
        config = _build(Config, data, "")
    except ConfigError as exc:
        msg = str(exc)
        where = str(path or DEFAULT_CONFIG_PATH)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    home = os.environ.get(HOME_ENV) or config.home or "~/.aepacs"
    return dataclasses.replace(config, data_dir=Path(os.path.expanduser(home)).resolve())
