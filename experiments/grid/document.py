"""Grid documents: reading a grid file (``read_yaml``: ``yaml.safe_load``, errors as one-line :class:`GridError`),
``--set key=value`` pairs, and the dotted-path helpers that look up, patch, merge and match cell fields.
``experiments.grid.load`` expands documents into cells and re-exports ``GridError``.
"""

from __future__ import annotations

import copy
import fnmatch
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..config import validate as v

GLOB_CHARS = set("*?[")


# What a grid file may hold (grids/paper.yaml, the largest shipped one, is a few KB and ~100 values): bounds far above
# any real grid that stop a hostile one before it costs memory or time (a 1.4 KB "billion laughs" of nested aliases
# expands to 10**9 values; 200k nested brackets overflow the composer's recursion).
MAX_GRID_BYTES = 1 << 20  # a grid file, and each --set value
MAX_DEPTH = 50  # nesting levels of mappings and lists
MAX_NODES = 200_000  # values after alias expansion (the 13-file paper grid has under 2,000)
MAX_MESSAGE = 1000  # characters of one error line (values in it are already cut by validate.short_repr)


class GridError(v.Refusal, ValueError):
    """A grid that cannot run; ``str()`` is one line: ``<file>: <key path>: <expected>``."""

    def __init__(self, where: str, path: str, message: str):
        self.where, self.path, self.message = where, path, message
        super().__init__(v.short_text(f"{where}: {path}: {message}" if path else f"{where}: {message}", MAX_MESSAGE))


class YamlLimit(yaml.YAMLError):
    """A grid document over one of the bounds above, or with a duplicate key (``problem`` says which)."""

    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build Python objects) that also refuses what safe_load accepts silently or
    pays for without bound: a key twice in one mapping (safe_load keeps the last, so a typo'd override vanishes),
    nesting deeper than MAX_DEPTH, more than MAX_NODES values once aliases are expanded, and recursive aliases.
    Sizes are counted while composing (an alias adds the size of what it names, computed once), so the check costs
    the size of the text, not of the expansion."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise YamlLimit("expected no recursive alias (an alias inside the value it names)", mark)
            return node
        mark = self.peek_event().start_mark
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimit(f"expected at most {MAX_DEPTH} levels of nesting", mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        sizes = [self._sizes[id(c)] for c in children]
        count = 1 + sum(s[0] for s in sizes)
        depth = 1 + max((s[1] for s in sizes), default=0)
        if count > MAX_NODES:
            raise YamlLimit(f"expected at most {MAX_NODES} values once aliases are expanded, this one holds "
                            f"{count} or more", mark)
        if depth > MAX_DEPTH:
            raise YamlLimit(f"expected at most {MAX_DEPTH} levels of nesting once aliases are expanded", mark)
        self._sizes[id(node)] = (count, depth)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults`: merged keys may be overridden, as YAML means
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise YamlLimit(f"expected each key once in a mapping, {v.short_repr(key, 60)} is given twice "
                                        f"(line {seen[key].line + 1} and here)", key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: safe_load's own error follows
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_text(text: str) -> Any:
    """The document in ``text`` read with :class:`BoundedLoader`; raises yaml.YAMLError (YamlLimit for a bound)."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
    """A grid file's document: at most MAX_GRID_BYTES of strict UTF-8, read with :class:`BoundedLoader`. Every
    problem is a one-line :class:`GridError` naming the file and the line."""
    where = str(display_path(path))
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_GRID_BYTES + 1)
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise GridError(where, "", f"cannot read the grid file ({getattr(err, 'strerror', None) or err}); "
                                   "expected a readable YAML file") from None
    if len(data) > MAX_GRID_BYTES:
        raise GridError(where, "", f"the grid file is larger than {MAX_GRID_BYTES} bytes; expected a YAML grid "
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


def parse_sets(sets: Iterable[str]) -> list[tuple[str, Any]]:
    """``key=value`` pairs; the value is read as YAML (``5``, ``0.1``, ``true``, ``[1, 2]``, ``null``), with the
    grid file's bounds."""
    parsed = []
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if (not sep or not key or any(not part for part in key.split(".")) or len(key) > 200
                or not key.isprintable()):
            raise GridError("--set", v.short_repr(item, 60), "expected key=value with a dotted key, e.g. "
                                                               "train.steps=100")
        if len(raw) > MAX_GRID_BYTES:
            raise GridError("--set", key, f"expected a value of at most {MAX_GRID_BYTES} characters")
        try:
            value = load_text(raw) if raw.strip() else ""
        except YamlLimit as err:
            raise GridError("--set", key, err.problem) from None
        except (yaml.YAMLError, ValueError):
            value = raw
        except (RecursionError, MemoryError) as err:
            raise GridError("--set", key, f"expected a YAML value ({type(err).__name__})") from None
        parsed.append((key, value))
    return parsed


def set_dotted(doc: dict, dotted: str, value: Any) -> None:
    """``doc[a][b][c] = value`` for ``a.b.c``, making (or replacing with) mappings on the way."""
    node = doc
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value
