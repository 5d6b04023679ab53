"""Typed, frozen config sections: the field helper and the loader that checks a TOML tree against them.

Every option is a dataclass field made with :func:`opt`, which carries its documentation and range. The loader
rejects unknown keys, wrong types and out-of-range values with an error naming ``file: section.key``, before
anything starts. Pure cores may take their section object as a parameter; nothing reaches config globally.
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad config: names the file and the dotted key."""


def opt(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, choices: tuple | None = None) -> Any:
    """A documented config field with an optional range or choice set."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples, not lists/dicts, as defaults of frozen config fields")
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(value, a, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: {key}: expected {len(args)} items, got {len(value)}")
        return tuple(_check_value(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{key}] must be a table, got {type(value).__name__}")
        return build_section(tp, value, key, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: {key}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: {key}: unsupported option type {_type_name(tp)}")


def _check_range(value: Any, meta: dict, key: str, where: str) -> None:
    choices = meta.get("choices")
    if choices is not None:
        items = value if isinstance(value, tuple) else (value,)
        for v in items:
            if v not in choices:
                raise ConfigError(f"{where}: {key}: {v!r} is not one of {', '.join(map(repr, choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for name, bad in (("ge", lambda v, b: v < b), ("gt", lambda v, b: v <= b),
                          ("le", lambda v, b: v > b), ("lt", lambda v, b: v >= b)):
            bound = meta.get(name)
            if bound is not None and bad(value, bound):
                sym = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[name]
                raise ConfigError(f"{where}: {key}: must be {sym} {bound}, got {value!r}")


def build_section(cls: type, raw: dict, prefix: str, where: str) -> Any:
    """Build a frozen dataclass section from a TOML table, checking keys, types and ranges."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        dotted = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        raise ConfigError(f"{where}: unknown key(s) {dotted}; known: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            value = _check_value(raw[name], hints[name], key, where)
            _check_range(value, dict(f.metadata), key, where)
            kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: [{prefix}] {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as e:
            raise ConfigError(f"{where}: [{prefix}] {e}" if prefix else f"{where}: {e}") from None
    return obj


def load_toml(path: str | Path) -> dict:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every option, used to check that config.toml documents them all."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(describe(hints[f.name], key))
        else:
            out.append((key, f.default, f.metadata.get("doc", "")))
    return out
