"""Typed TOML configuration: dataclass sections with a help string per field (TRL style).

``load_config(ConfigType, path)`` reads a TOML file into nested dataclasses and refuses unknown
keys, missing required keys and wrong types with a ``ConfigError`` naming the file, the key and
the fix. Relative paths in a config are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import operator
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from mor_secure.errors import MorError

T = TypeVar("T")


class ConfigError(MorError, ValueError):
    """A configuration file is missing, unreadable or invalid; the message says how to fix it."""


def field(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    path: bool = False,
    default_factory: Any = dataclasses.MISSING,
    choices: Iterable[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with a help string; ``path=True`` resolves it against the config's folder.

    ``choices`` and the bounds ``ge``/``gt``/``le``/``lt`` declare the values it accepts: a ``Section``
    checks them when it is built (from a file or in code), and `mor client init` writes them in its template.
    """
    metadata = {
        "help": help,
        "path": path,
        "choices": tuple(choices) if choices is not None else None,
        "bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None},
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def accepted(f: dataclasses.Field) -> str:
    """The values field ``f`` accepts, in words ("" when it declares none): "one of 'a', 'b'", ">= 1, < 2"."""
    choices = f.metadata.get("choices")
    if choices is not None:
        return "one of " + ", ".join(repr(c) for c in choices)
    return ", ".join(f"{_BOUNDS[k][1]} {v:g}" for k, v in f.metadata.get("bounds", {}).items())


def check_fields(obj: Any) -> None:
    """``ConfigError`` naming the first field of dataclass ``obj`` outside its declared choices or bounds
    (a list is checked item by item; None, where a field allows it, means unset)."""
    for f in dataclasses.fields(obj):
        choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds") or {}
        if choices is None and not bounds:
            continue
        value = getattr(obj, f.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None:
                continue
            if choices is not None and item not in choices:
                raise ConfigError(f"{f.name} must be {accepted(f)}, got {item!r}")
            if any(not test(item, limit) for test, limit in ((_BOUNDS[k][0], v) for k, v in bounds.items())):
                raise ConfigError(f"{f.name} must be {accepted(f)}, got {item!r}")


class Section:
    """Base of the config dataclasses: building one checks every field's declared choices and bounds.
    A section with checks across fields adds them in ``__post_init__`` after calling this one."""

    def __post_init__(self) -> None:
        check_fields(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str, base: Path, is_path: bool) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert paths and nested sections."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for option in options:
            try:
                return _coerce(value, option, where, base, is_path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table ([{where}]), got {type(value).__name__}")
        return _build(tp, value, where, base)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} ({value!r})")
        items = [_coerce(v, item_tp, f"{where}[{i}]", base, is_path) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path or is_path:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string, got {type(value).__name__}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {type(value).__name__} ({value!r})")
    return value


def _build(cls: type[T], data: dict[str, Any], where: str, base: Path) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(
            f"unknown key(s) {', '.join(repr(u) for u in unknown)} in {where or 'the top level'}; known keys: {known}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key, base, f.metadata.get("path", False))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key!r}: {f.metadata.get('help', '')}")
        elif f.metadata.get("path") and isinstance(f.default, (str, Path)) and f.default:
            kwargs[name] = _coerce(str(f.default), hints[name], key, base, True)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a section's own checks (``Section``) name the key, not the section
        raise ConfigError(f"[{where}] {exc}" if where else str(exc)) from exc


def load_config(cls: type[T], path: str | Path) -> T:
    """Read ``path`` (TOML) into ``cls``; every problem becomes a ``ConfigError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: config file not found; pass --config with the path of a TOML "
            "file (`mor client init` writes a commented one)"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return _build(cls, data, "", path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) rows for every field, recursing into sections; used for commented configs."""
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = typing.get_type_hints(cls)[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, prefix=f"{key}."))
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        limits = accepted(f)
        rows.append((key, default, f.metadata.get("help", "") + (f" Accepts {limits}." if limits else "")))
    return rows


@dataclasses.dataclass
class TLSConfig:
    """Where a party finds its PKI material; shared by the client and coordinator configs."""

    ca: Path = field(help="CA certificate (PEM) that every peer's certificate must chain to.", path=True)
    cert: Path = field(help="This party's certificate (PEM), issued by the CA.", path=True)
    key: Path = field(help="This party's private key (PEM, mode 0600); it never leaves this machine.", path=True)
    crl: Path = field(
        help="Certificate revocation list (PEM) from the CA; checked fail-closed. "
        "Renew it with `mor certs crl` before it goes stale.",
        path=True,
    )
    ca_fingerprint: str = field(
        "", help="Pinned SHA-256 fingerprint of the CA certificate ('sha256:...'); empty disables the pin."
    )
