"""Declarative validation of TOML tables into dataclasses.

Every section of the config is a dataclass; ``from_table`` checks each key
against the field's type annotation and raises :class:`ConfigError` naming the
file, the dotted key and the problem. Unknown keys are errors too (a typo must
not silently fall back to a default).

Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``,
``list[str]``, ``list[int]``, ``dict[str, Any]`` (passed through), ``X | None``,
and nested dataclasses. Field metadata ``{"min": .., "max": .., "help": ..}``
adds range checks and documentation.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem: which file, which key, what is wrong."""

    def __init__(self, file: str | Path | None, key: str, problem: str) -> None:
        self.file = str(file) if file is not None else "<config>"
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: {key}: {problem}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, file: str | Path | None, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for a in args:
            try:
                return _convert(a, value, file, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(file, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(file, key, f"expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(file, key, f"expected {_type_name(tp)}, got {type(value).__name__}")
        (item,) = get_args(tp)
        return [_convert(item, v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(file, key, f"expected a table, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(file, key, f"expected a table, got {type(value).__name__}")
        return from_table(typing.cast(type, tp), value, file, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(file, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(file, key, f"unsupported type {tp!r} in schema")  # pragma: no cover


def from_table(cls: type[T], table: dict[str, Any], file: str | Path | None = None, prefix: str = "") -> T:
    """Validate ``table`` against dataclass ``cls`` and build it."""
    if not dataclasses.is_dataclass(cls):  # pragma: no cover
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls, include_extras=False)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = (prefix + ".") if prefix else ""
    unknown = sorted(set(table) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(file, where + unknown[0], f"unknown key (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(file, where + name, "required key is missing")
            continue
        key = where + name
        v = _convert(hints[name], table[name], file, key)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(v, int | float) and not isinstance(v, bool):
            if lo is not None and v < lo:
                raise ConfigError(file, key, f"must be >= {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise ConfigError(file, key, f"must be <= {hi}, got {v!r}")
        kwargs[name] = v
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        problem = check()
        if problem:
            k, msg = problem
            raise ConfigError(file, where + k, msg)
    return obj


def doc_table(cls: type) -> list[tuple[str, str, str, str]]:
    """(key, type, default as TOML, help) rows for documentation."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = _toml(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _toml(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints[f.name]), default, str(f.metadata.get("help", ""))))
    return rows


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "(unset)"
    if dataclasses.is_dataclass(value):
        return "(table)"
    return repr(value)


def opt(default: Any, help: str = "", min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field with documentation and a range."""
    meta: dict[str, Any] = {"help": help}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if isinstance(default, list | dict):
        d = default
        return dataclasses.field(default_factory=lambda: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
