"""Routes: which codec each modality's images go to (the ``routes`` section)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aepacs.codec.learned.base import MODES
from aepacs.errors import ConfigError
from aepacs.models.registry import ModelError, parse_ref

#: the standard lossless codecs for native pixels a route (or ``codec.lossless``) may name
STANDARD_CODECS = ("jpegls", "htj2k", "jpegxl", "zstd")


@dataclass(frozen=True)
class Route:
    """Where one modality's images go: a standard lossless codec or a registry model.

    Written in a config as ``lossless`` (the site's ``codec.lossless``), a
    standard codec by name (``jpegls``, ``htj2k``, ``jpegxl``, ``zstd``),
    ``MODEL[@VERSION]:MODE`` or a mapping with ``model``, ``mode`` and
    optionally ``gain``, ``target_psnr``, ``min_psnr`` and ``min_ssim`` (the
    quality gate of a lossy route).
    """

    model: str | None = None
    #: the standard codec of a route without a model (None: the site's ``codec.lossless``)
    codec: str | None = None
    mode: str = "lossless"
    gain: int | None = None
    target_psnr: float | None = None
    min_psnr: float = 40.0
    min_ssim: float = 0.95

    @property
    def name(self) -> str:
        if self.model is None:
            return self.codec or "lossless"
        return f"{self.model}:{self.mode}"


_ROUTE_KEYS = {"model": str, "mode": str, "gain": int, "target_psnr": float, "min_psnr": float, "min_ssim": float}


def parse_route(name: str, value: Any) -> Route:
    """Validate one ``routes`` entry (see :class:`Route`)."""
    if value == "lossless":
        return Route()
    if value in STANDARD_CODECS:
        return Route(codec=value)
    if isinstance(value, str):
        model, sep, mode = value.rpartition(":")
        if not sep:
            raise ConfigError(f"{name}: {value!r} is not lossless, {', '.join(STANDARD_CODECS)}, "
                              "MODEL[@VERSION]:MODE or a mapping")
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
    try:
        parse_ref(kwargs["model"])
    except ModelError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return Route(**kwargs)
