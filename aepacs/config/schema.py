"""Validating a configuration against its dataclasses: merge a site file over the default, check each key."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from aepacs.config.routes import parse_route
from aepacs.errors import ConfigError

#: Mappings whose keys are data (modalities, AE titles), not schema: merged, not checked.
OPEN_MAPPINGS = ("routes", "move_destinations")


def merge(base: dict[str, Any], over: Mapping[str, Any], where: str = "") -> dict[str, Any]:
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
    elif tp is str and not isinstance(value, str):
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
        return build(tp, value, f"{name}.")  # type: ignore[arg-type]
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


def build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """An instance of the dataclass `cls` from `data`, every field checked (names start with `where`)."""
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
