"""Typed training-method options: a frozen `Options` dataclass per method, filled from `--opt key=value`.

Every field is declared with `option(default, help)`. `parse_options` is the one place raw values (CLI
strings, JSON values from a config, Python objects) become the field's type; an unknown key or a value
that does not convert is refused in one line. `describe_options` lists the fields for `--list-methods`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

Converter = Callable[[Any], Any]  # raw value -> typed value; raises ValueError("must be ..., got ...")
OptionsT = TypeVar("OptionsT", bound="MethodOptions")

_TRUE = ("1", "true", "yes", "on", "y")
_FALSE = ("0", "false", "no", "off", "n")


@dataclass(frozen=True)
class MethodOptions:
    """Base of every method's `Options`: frozen fields, each declared with `option(default, help)`."""


def option(
    default: Any, help: str, *, minimum: int | None = None, parse: Converter | None = None, kind: str | None = None
) -> Any:
    """A documented option field: `minimum` bounds an int, `parse` replaces the type's converter, `kind` its label."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "parse": parse, "kind": kind})


def to_float(value: Any) -> float:
    """A number (CLI options arrive as strings)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None


def to_int(value: Any, minimum: int | None = None) -> int:
    """An integral number ("3" and 3.0 are 3), optionally at least `minimum`."""
    try:
        f = float(value)
        if f != int(f):
            raise ValueError
        out = int(f)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"must be an integer, got {value!r}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"must be >= {minimum}, got {out}")
    return out


def to_bool(value: Any) -> bool:
    """A bool: bools, 0/1 and true/false/yes/no/on/off/y/n strings."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def to_str(value: Any) -> str:
    """A string; a number (a JSON-decoded CLI value such as a file named 1) is turned back into text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"must be a string, got {value!r}")


def to_float_tuple(value: Any) -> tuple[float, ...]:
    """At least one number: a number, a list or a comma-separated string."""
    if isinstance(value, (int, float)):
        return (to_float(value),)
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if items is None:
        raise ValueError(f"must be comma-separated numbers, got {value!r}")
    out = tuple(to_float(v) for v in items if str(v).strip() != "")
    if not out:
        raise ValueError("needs at least one number")
    return out


def to_str_tuple(value: Any) -> tuple[str, ...]:
    """Non-empty strings: a list or a comma-separated string (None is the empty tuple)."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if items is None:
        raise ValueError(f"must be comma-separated names, got {value!r}")
    return tuple(str(v).strip() for v in items if str(v).strip())


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))


def _choice(choices: tuple[str, ...]) -> Converter:
    def convert(value: Any) -> str:
        s = str(value).lower()
        if s not in choices:
            raise ValueError(f"must be {' or '.join(repr(c) for c in choices)}, got {value!r}")
        return s

    return convert


def _optional(inner: Converter) -> Converter:
    return lambda value: None if _is_none(value) else inner(value)


def _non_none(hint: Any) -> tuple[Any, bool]:
    """(the hint without None, whether None was allowed)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = tuple(a for a in get_args(hint) if a is not type(None))
        if len(args) == 1:
            return args[0], len(args) < len(get_args(hint))
        raise TypeError(f"option type {hint!r} needs a parse= converter")
    return hint, False


def _type_converter(hint: Any, minimum: int | None) -> Converter:
    base, nullable = _non_none(hint)
    conv: Converter
    if get_origin(base) is Literal:
        conv = _choice(tuple(str(c) for c in get_args(base)))
    elif get_origin(base) is tuple and get_args(base)[1:] == (Ellipsis,):
        elem = get_args(base)[0]
        conv = {float: to_float_tuple, str: to_str_tuple}.get(elem) or _unsupported(hint)
    elif base is bool:
        conv = to_bool
    elif base is int:
        conv = lambda v: to_int(v, minimum)
    elif base in (float, str):
        conv = to_float if base is float else to_str
    else:
        conv = _unsupported(hint)
    return _optional(conv) if nullable else conv


def _unsupported(hint: Any) -> Converter:
    raise TypeError(f"option type {hint!r} needs a parse= converter")


def _type_label(hint: Any) -> str:
    base, nullable = _non_none(hint)
    if get_origin(base) is Literal:
        label = "|".join(str(c) for c in get_args(base))
    elif get_origin(base) is tuple:
        label = f"{get_args(base)[0].__name__},..."
    else:
        label = getattr(base, "__name__", str(base))
    return f"{label}|none" if nullable else label


@dataclass(frozen=True)
class OptionInfo:
    """One option as `--list-methods` shows it: name, type label, default, help and its converter."""

    name: str
    kind: str
    default: Any
    help: str
    convert: Converter


def describe_options(cls: type[MethodOptions]) -> list[OptionInfo]:
    """The fields of an `Options` dataclass in declaration order, with their converters."""
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        convert = meta.get("parse") or _type_converter(hints[f.name], meta.get("minimum"))
        out.append(
            OptionInfo(
                f.name, meta.get("kind") or _type_label(hints[f.name]), f.default, str(meta.get("help", "")), convert
            )
        )
    return out


def parse_options(cls: type[OptionsT], method: str, raw: Mapping[str, Any]) -> OptionsT:
    """`cls` filled from `raw` (missing keys keep their defaults); one-line ValueError naming the method otherwise."""
    infos = {i.name: i for i in describe_options(cls)}
    unknown = sorted(set(raw) - set(infos))
    if unknown:
        known = ", ".join(infos) or "none"
        raise ValueError(f"method {method!r}: unknown option(s) {', '.join(unknown)} (known: {known})")
    values = {}
    for key, value in raw.items():
        try:
            values[key] = infos[key].convert(value)
        except ValueError as exc:
            raise ValueError(f"method {method!r}: option {key} {exc}") from None
    return cls(**values)


def format_value(value: Any) -> str:
    """A default as a user would type it after `--opt key=`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(format_value(v) for v in value) if value else '""'
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
