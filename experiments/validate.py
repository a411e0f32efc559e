"""Leaf checks for configuration values: ``check(value, path) -> normalised value`` or :class:`Invalid`.

Every message is one line, ``<key path>: expected <what>, got <value>``, with the nearest valid name for a typo.
The cell's fields (:mod:`experiments.config`) and the grid's own keys (:mod:`experiments.grid`) are built from these.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Iterable

Check = Callable[[Any, str], Any]


class Invalid(ValueError):
    """A value that does not fit; ``str()`` is ``<key path>: <what was expected>``."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message


def suggest(name: Any, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(path: str, name: Any, options: Iterable[str], what: str = "key") -> Invalid:
    options = list(options)
    return Invalid(path, f"unknown {what} {name!r}{suggest(name, options)}; expected one of {sorted(options)}")


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def integer(lo: int | None = None, nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo):
            bound = f" >= {lo}" if lo is not None else ""
            raise Invalid(path, f"expected an integer{bound}{' or null' if nullable else ''}, got {value!r}")
        return value
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value <= hi
        if not ok:
            low = "" if lo is None else (f" > {lo}" if lo_open else f" >= {lo}")
            high = "" if hi is None else f" <= {hi}"
            sep = " and" if low and high else ""
            raise Invalid(path, f"expected a number{low}{sep}{high}{' or null' if nullable else ''}, got {value!r}")
        return float(value)
    return check


def boolean(nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, bool):
            raise Invalid(path, f"expected true or false, got {value!r}")
        return value
    return check


def text(nullable: bool = False, pattern: re.Pattern | None = None, what: str = "text") -> Check:
    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not value.strip():
            raise Invalid(path, f"expected {what}{' or null' if nullable else ''}, got {type_name(value)} {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            raise Invalid(path, f"expected {what}, got {value!r}")
        return value
    return check


def choice(options: Iterable[str], nullable: bool = False, what: str = "value") -> Check:
    options = tuple(options)

    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        if value not in options:
            raise unknown(path, value, options, what)
        return value
    return check


def probability(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise Invalid(path, f"expected a probability in [0, 1), got {value!r}")
    return float(value)


def section(schema: Any, value: Any, path: str) -> Any:
    """``schema`` is a check (a leaf) or a mapping of key -> schema (a section, checked key by key)."""
    if callable(schema):
        return schema(value, path)
    if not isinstance(value, dict):
        raise Invalid(path, f"expected a mapping with keys from {sorted(schema)}, got {type_name(value)} {value!r}")
    out = {}
    for key, item in value.items():
        where = join(path, key)
        if key not in schema:
            raise unknown(where, key, schema)
        out[key] = section(schema[key], item, where)
    return out
