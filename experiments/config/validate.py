"""Leaf checks for configuration values: ``check(value, path) -> normalised value`` or :class:`Invalid`.

Every message is one line, ``<key path>: expected <what>, got <value>``, with the nearest valid name for a typo.
The cell's fields (:mod:`experiments.config.cell`) and the grid's own keys (:mod:`experiments.grid.load`) are built from these.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from pathlib import Path
from typing import Any, Callable, Iterable

Check = Callable[[Any, str], Any]

# Bounds every value meets unless its field says otherwise: integers that JSON, MLflow params and float64 hold
# exactly, text no longer than a path may be (PATH_MAX) and without NUL bytes (no OS call takes them).
MAX_INT = 2**53
MAX_TEXT = 4096
REPR_CHARS = 80

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 6, 6, 4, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = REPR_CHARS, REPR_CHARS, 40


def short_repr(value: Any, limit: int = REPR_CHARS) -> str:
    """``repr(value)`` bounded in time and length, for error messages: containers show their first items and
    nesting levels only (a YAML "billion laughs" value is not expanded), long strings and numbers are cut with
    ``...``. Every message that quotes a value quotes it through this."""
    try:
        text = _repr.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still reported
        text = f"<{type(value).__name__}>"
    return short_text(text, limit)


def short_text(text: object, limit: int | None = 120) -> str:
    """``str(text)`` (an exception, a message) on one line, whitespace runs collapsed, cut to ``limit`` (None: not
    cut) with ``...``: how a refusal quotes what another library said."""
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def one_line(err: BaseException, limit: int = 480) -> str:
    """An exception as a failed run's reason or a refusal quotes it: its type and message, on one line, cut."""
    return short_text(f"{type(err).__name__}: {err}", limit)


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: what decides whether a folder can still be created there."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class Refusal(Exception):
    """A request the harness refuses before it starts work: bad input, a store it cannot write, a cluster that cannot
    give what is asked. ``str()`` is one line that names what and says what was expected; every entry point turns it
    into ``error: <that line>`` and exit status 2 (:func:`experiments.cli.entry_point`), never a traceback."""


class Invalid(Refusal, ValueError):
    """A value that does not fit; ``str()`` is ``<key path>: <what was expected>``."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path, self.message = path, message


def suggest(name: Any, options: Iterable[str]) -> str:
    if not isinstance(name, (str, int, float)) or len(str(name)) > 200:
        return ""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(path: str, name: Any, options: Iterable[str], what: str = "key") -> Invalid:
    options = sorted(str(o) for o in options)
    shown = str(options) if len(str(options)) <= 600 else f"{options[:12]} (and {len(options) - 12} more)"
    named = short_repr(name) if len(short_repr(name)) < 60 else short_repr(name, 24)
    return Invalid(path, f"unknown {what} {named}{suggest(name, options)}; expected one of {shown}")


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def join(path: str, key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    key = key if isinstance(key, str) and len(key) <= 60 and key.isprintable() else short_repr(key, 30)
    return f"{path}.{key}" if path else str(key)


def integer(lo: int | None = None, nullable: bool = False, hi: int | None = None) -> Check:
    """An int (not a bool) in [lo, hi]; ``hi`` defaults to MAX_INT: no field takes 10**30."""
    top = MAX_INT if hi is None else hi

    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        if (isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo)
                or value > top):
            bound = f" >= {lo}" if lo is not None else ""
            if isinstance(value, int) and not isinstance(value, bool) and value > top:
                bound += (" and" if bound else "") + f" <= {top}"
            raise Invalid(path, f"expected an integer{bound}{' or null' if nullable else ''}, got {short_repr(value)}")
        return value
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, nullable: bool = False) -> Check:
    """A finite int or float in the range (never nan or inf)."""
    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        ok = finite = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                ok = finite = math.isfinite(value) and abs(value) <= 1e300
            except OverflowError:  # an int too large for a float
                ok = finite = False
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value <= hi
        if not ok:
            low = "" if lo is None else (f" > {lo}" if lo_open else f" >= {lo}")
            high = "" if hi is None else f" <= {hi}"
            sep = " and" if low and high else ""
            kind = "number" if finite or not isinstance(value, (int, float)) else "finite number"
            raise Invalid(path, f"expected a {kind}{low}{sep}{high}{' or null' if nullable else ''}, "
                                f"got {short_repr(value)}")
        return float(value)
    return check


def boolean(nullable: bool = False) -> Check:
    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, bool):
            raise Invalid(path, f"expected true or false, got {short_repr(value)}")
        return value
    return check


def text(nullable: bool = False, pattern: re.Pattern | None = None, what: str = "text",
         max_len: int = MAX_TEXT) -> Check:
    """Non-blank text of at most ``max_len`` characters without NUL bytes (matching ``pattern`` when given)."""
    def check(value: Any, path: str) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not value.strip():
            raise Invalid(path, f"expected {what}{' or null' if nullable else ''}, got {type_name(value)} "
                                f"{short_repr(value)}")
        if len(value) > max_len:
            raise Invalid(path, f"expected {what} of at most {max_len} characters, got {len(value)} "
                                f"({short_repr(value, 40)})")
        if "\0" in value:
            raise Invalid(path, f"expected {what} without NUL bytes, got {short_repr(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise Invalid(path, f"expected {what}, got {short_repr(value)}")
        return value
    return check


def path_text(nullable: bool = False, what: str = "a path") -> Check:
    """Text for a file or directory path: no control characters (a newline would end an #SBATCH line and start a
    shell command in the job script; a NUL byte no OS call accepts)."""
    plain = text(nullable, what=what)

    def check(value: Any, path: str) -> Any:
        value = plain(value, path)
        if value is None:
            return None
        bad = sorted({repr(c) for c in value if ord(c) < 32 or ord(c) == 127})
        if bad:
            raise Invalid(path, f"expected {what} without control characters, got {short_repr(value)} (has "
                                f"{', '.join(bad[:4])})")
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
        raise Invalid(path, f"expected a probability in [0, 1), got {short_repr(value)}")
    return float(value)


def section(schema: Any, value: Any, path: str) -> Any:
    """``schema`` is a check (a leaf) or a mapping of key -> schema (a section, checked key by key)."""
    if callable(schema):
        return schema(value, path)
    if not isinstance(value, dict):
        raise Invalid(path, f"expected a mapping with keys from {sorted(schema)}, got {type_name(value)} "
                            f"{short_repr(value)}")
    out = {}
    for key, item in value.items():
        where = join(path, key)
        if not isinstance(key, str) or key not in schema:
            raise unknown(where, key, schema)
        out[key] = section(schema[key], item, where)
    return out
