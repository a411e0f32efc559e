"""Settings written as YAML text, read the same way by every entry point: a bounded ``yaml.SafeLoader``
(:func:`load_text`, used for grid files by :func:`experiments.grid.document.read_yaml`), ``--set key=value`` pairs
(:func:`parse_sets`: the launcher's, prefetch's and rehearse's through the grid loader, and
``experiments.recipes.evaluate``'s) and the dotted path a pair names (:func:`set_dotted`).
"""

from __future__ import annotations

from typing import Any, Iterable

import yaml

from . import validate as v

# What a grid file may hold (grids/paper.yaml, the largest shipped one, is a few KB and ~100 values): bounds far above
# any real grid that stop a hostile one before it costs memory or time (a 1.4 KB "billion laughs" of nested aliases
# expands to 10**9 values; 200k nested brackets overflow the composer's recursion).
MAX_YAML_BYTES = 1 << 20  # a grid file, and each --set value
MAX_DEPTH = 50  # nesting levels of mappings and lists
MAX_NODES = 200_000  # values after alias expansion (the 13-file paper grid has under 2,000)


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




def parse_sets(sets: Iterable[str]) -> list[tuple[str, Any]]:
    """``key=value`` pairs; the value is read as YAML (``5``, ``0.1``, ``true``, ``[1, 2]``, ``null``), with a grid
    file's bounds; a malformed pair is :class:`~experiments.config.validate.Invalid`, ``--set: <pair>: <expected>``."""
    parsed = []
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if (not sep or not key or any(not part for part in key.split(".")) or len(key) > 200
                or not key.isprintable()):
            raise v.Invalid("--set", f"{v.short_repr(item, 60)}: expected key=value with a dotted key, e.g. "
                                     "train.steps=100")
        if len(raw) > MAX_YAML_BYTES:
            raise v.Invalid("--set", f"{key}: expected a value of at most {MAX_YAML_BYTES} characters")
        try:
            value = load_text(raw) if raw.strip() else ""
        except YamlLimit as err:
            raise v.Invalid("--set", f"{key}: {err.problem}") from None
        except (yaml.YAMLError, ValueError):
            value = raw
        except (RecursionError, MemoryError) as err:
            raise v.Invalid("--set", f"{key}: expected a YAML value ({type(err).__name__})") from None
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
