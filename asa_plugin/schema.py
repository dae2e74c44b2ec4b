"""Typed validation of config sections into dataclasses.

Each field may carry metadata: ``help`` (one line), ``ge``/``gt``/``le``/``lt`` bounds (``why``:
the reason for them, shown with a value out of bounds) and ``choices``. Errors name the file and the
``section.key`` and say what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from asa_plugin.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ``TypeError``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise TypeError
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(value, option)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_coerce(v, inner) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError


def _check_range(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if value is None or isinstance(value, (list, str, bool)):
        if "choices" in meta and value not in meta["choices"] and value is not None:
            return f"must be one of {', '.join(map(str, meta['choices']))}"
        return None
    checks = (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
              ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<"))
    for key, ok, sym in checks:
        if key in meta and not ok(value, meta[key]):
            return f"must be {sym} {meta[key]}"
    return None


NONE_WORD = "none"
"""How ``None`` is written to TOML (which has no null) for a field whose default is not ``None``."""


def _optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def toml_values(obj: Any) -> dict[str, Any]:
    """A config dataclass's values for a TOML file that loads back to an equal object.

    A ``None`` that is the field's default is left out (loading restores it); any other ``None``
    is written as ``"none"``, which :func:`build` reads back as ``None`` for that optional field.
    """
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            if f.default is None:
                continue
            value = NONE_WORD
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def build(cls: type, data: typing.Mapping[str, Any], *, section: str, source: str) -> Any:
    """Validate ``data`` against dataclass ``cls`` and return an instance.

    Raises :class:`ConfigError` naming ``source`` and ``section.key`` for unknown keys, wrong
    types and out-of-range values.
    """
    if not isinstance(data, typing.Mapping):
        raise ConfigError(f"{source}: [{section}] must be a table of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key {section}.{unknown[0]}; allowed keys in [{section}]: "
                          f"{', '.join(sorted(fields)) or '(none)'}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if value == NONE_WORD and _optional(tp) and fields[name].default is not None:
            value = None  # written by toml_values: TOML has no null
        try:
            kwargs[name] = _coerce(value, tp)
        except TypeError:
            raise ConfigError(f"{source}: {section}.{name} must be {_type_name(tp)}, got {value!r}") from None
        problem = _check_range(kwargs[name], fields[name].metadata)
        if problem:
            why = fields[name].metadata.get("why")
            raise ConfigError(f"{source}: {section}.{name} {problem}, got {value!r}" + (f" ({why})" if why else ""))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: [{section}] {exc}") from None


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for each field: the config reference."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def option(default: Any = dataclasses.MISSING, *, help: str = "", **meta: Any) -> Any:  # noqa: A002
    """A dataclass field with validation metadata (``ge``, ``gt``, ``le``, ``lt``, ``choices``)."""
    metadata = {"help": help, **meta}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
