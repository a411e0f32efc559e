"""Grid documents: reading a grid file (``read_yaml``: ``yaml.safe_load``, errors as one-line :class:`GridError`),
``--set key=value`` pairs, and the dotted-path helpers that look up, patch, merge and match cell fields.
``experiments.grid`` expands documents into cells and re-exports ``GridError``.
"""

from __future__ import annotations

import copy
import fnmatch
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import validate as v

_GLOB_CHARS = set("*?[")


class GridError(ValueError):
    """A grid that cannot run; ``str()`` is one line: ``<file>: <key path>: <expected>``."""

    def __init__(self, where: str, path: str, message: str):
        self.where, self.path, self.message = where, path, message
        super().__init__(f"{where}: {path}: {message}" if path else f"{where}: {message}")


def _lookup(schema: dict, dotted: str, path: str) -> Any:
    """The validator (or section) for a dotted cell field, e.g. ``train.lr``."""
    node: Any = schema
    walked = ""
    for part in dotted.split("."):
        walked = v.join(walked, part)
        if callable(node) or part not in node:
            options = [] if callable(node) else list(node)
            raise v.unknown(path, walked, [v.join(walked.rpartition(".")[0], o) for o in options] or ["<none>"],
                           "cell field")
        node = node[part]
    return node


def _dotted_fields(schema: dict, prefix: str = "") -> list[str]:
    """Every settable cell field as a dotted path (for suggestions)."""
    out = []
    for key, sub in schema.items():
        out.append(prefix + key)
        if isinstance(sub, dict):
            out.extend(_dotted_fields(sub, f"{prefix}{key}."))
    return out


def _patch_from_dotted(dotted: str, value: Any) -> dict:
    patch: dict = {}
    node = patch
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return patch


def _merge(schema: Any, base: dict, patch: dict) -> dict:
    """Sections merge key by key; leaves (init_layers, one split's data spec, numbers ...) are replaced."""
    for key, value in patch.items():
        sub = schema[key]
        if isinstance(sub, dict) and isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(sub, base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _get(cell: dict, dotted: str) -> Any:
    node: Any = cell
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _matches(cell: dict, match: dict) -> bool:
    for key, wanted in match.items():
        actual = _get(cell, key)
        options = wanted if isinstance(wanted, list) else [wanted]
        if not any(_equal(actual, option) for option in options):
            return False
    return True


def _equal(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, str) and _GLOB_CHARS & set(wanted):
        return actual is not None and fnmatch.fnmatchcase(str(actual), wanted)
    if isinstance(wanted, (int, float)) and isinstance(actual, (int, float)) and not isinstance(wanted, bool):
        return float(actual) == float(wanted)
    return actual == wanted


def _display(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def read_yaml(path: Path) -> Any:
    where = str(_display(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise GridError(where, "", f"cannot read the grid file ({err.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark is not None else "(yaml)"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise GridError(where, line, f"expected valid YAML ({problem})") from None


def parse_sets(sets: Iterable[str]) -> list[tuple[str, Any]]:
    """``key=value`` pairs; the value is read as YAML (``5``, ``0.1``, ``true``, ``[1, 2]``, ``null``)."""
    parsed = []
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise GridError("--set", item, "expected key=value with a dotted key, e.g. train.steps=100")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key, value))
    return parsed


def _set_dotted(doc: dict, dotted: str, value: Any) -> None:
    node = doc
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value
