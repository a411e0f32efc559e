"""Grid documents: reading a grid file (``read_yaml``: the bounded loader of :mod:`experiments.config.yaml_text`,
errors as one-line :class:`GridError`) and the dotted-path helpers that look up, patch, merge and match cell fields.
``experiments.grid.load`` expands documents into cells.
"""

from __future__ import annotations

import copy
import fnmatch
from pathlib import Path
from typing import Any

import yaml

from ..config import validate as v
from ..config.yaml_text import MAX_YAML_BYTES, YamlLimit, load_text

GLOB_CHARS = set("*?[")
MAX_MESSAGE = 1000  # characters of one error line (values in it are already cut by validate.short_repr)


class GridError(v.Refusal, ValueError):
    """A grid that cannot run; ``str()`` is one line: ``<file>: <key path>: <expected>``."""

    def __init__(self, where: str, path: str, message: str):
        self.where, self.path, self.message = where, path, message
        super().__init__(v.short_text(f"{where}: {path}: {message}" if path else f"{where}: {message}", MAX_MESSAGE))


def lookup_dotted(schema: dict, dotted: str, path: str) -> Any:
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


def dotted_fields(schema: dict, prefix: str = "") -> list[str]:
    """Every settable cell field as a dotted path (for suggestions)."""
    out = []
    for key, sub in schema.items():
        out.append(prefix + key)
        if isinstance(sub, dict):
            out.extend(dotted_fields(sub, f"{prefix}{key}."))
    return out


def patch_from_dotted(dotted: str, value: Any) -> dict:
    patch: dict = {}
    node = patch
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return patch


def merge_patch(schema: Any, base: dict, patch: dict) -> dict:
    """Sections merge key by key; leaves (init_layers, one split's data spec, numbers ...) are replaced."""
    for key, value in patch.items():
        sub = schema[key]
        if isinstance(sub, dict) and isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_patch(sub, base[key], value)
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


def cell_matches_where(cell: dict, match: dict) -> bool:
    for key, wanted in match.items():
        actual = _get(cell, key)
        options = wanted if isinstance(wanted, list) else [wanted]
        if not any(_equal(actual, option) for option in options):
            return False
    return True


def _equal(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, str) and GLOB_CHARS & set(wanted):
        return actual is not None and fnmatch.fnmatchcase(str(actual), wanted)
    if isinstance(wanted, (int, float)) and isinstance(actual, (int, float)) and not isinstance(wanted, bool):
        return float(actual) == float(wanted)
    return actual == wanted


def display_path(path: Path) -> Path:
    """A file as refusals name it: relative to the working directory where it is below it, else as given."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def read_yaml(path: Path) -> Any:
    """A grid file's document: at most MAX_YAML_BYTES of strict UTF-8, read with the bounded loader (:func:`experiments.config.yaml_text.load_text`). Every
    problem is a one-line :class:`GridError` naming the file and the line."""
    where = str(display_path(path))
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise GridError(where, "", f"cannot read the grid file ({getattr(err, 'strerror', None) or err}); "
                                   "expected a readable YAML file") from None
    if len(data) > MAX_YAML_BYTES:
        raise GridError(where, "", f"the grid file is larger than {MAX_YAML_BYTES} bytes; expected a YAML grid "
                                   "(the shipped ones are a few KB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise GridError(where, f"line {line}", f"not valid UTF-8 (byte {err.start}); expected a UTF-8 text file")\
            from None
    return parse_yaml(text, where)


def parse_yaml(text: str, where: str, path: str = "") -> Any:
    """``text`` as a bounded YAML document; :class:`GridError` (``where``, ``path`` or the line) when it is not."""
    try:
        return load_text(text)
    except YamlLimit as err:
        mark = err.problem_mark
        raise GridError(where, path or (f"line {mark.line + 1}" if mark is not None else ""), err.problem) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = path or (f"line {mark.line + 1}" if mark is not None else "(yaml)")
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise GridError(where, line, f"expected valid YAML ({v.short_text(problem)})") from None
    except (ValueError, RecursionError, MemoryError) as err:  # e.g. an integer of more than 4300 digits
        raise GridError(where, path or "(yaml)", f"expected valid YAML values ({type(err).__name__}: "
                                                 f"{v.short_text(err)})") from None
