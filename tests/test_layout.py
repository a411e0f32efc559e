"""The layout's rules, checked on the source with ``ast`` (nothing is imported): imports flow one way, by stage.

- bertgen/ imports nothing from experiments/ or analysis/, and none of the three imports transformers (the test
  oracle only);
- experiments/ and analysis/ have no import cycle (imports inside functions count: a lazy import is still a
  dependency), no import of another module's private name, and no re-export (a module-level import the module does
  not use: importers import from the owner);
- experiments/ imports by stage (docs/architecture.md): system, config <- data <- grid <- recipes, tracking, cli.py
  (the entry points' shared plumbing) <- launch; the smoke assets are imported only by the grid loader and the launcher, through smoke/assets.py, and the
  heavy pretraining (smoke/pretrain.py) only by smoke/assets.py when the assets must be built; experiments/ never
  imports analysis/.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bertgen", "experiments", "analysis")

# experiments/ stages, lowest first: a module may import its own stage and lower ones
# (cli.py, the entry points' shared plumbing: imported by the entry points of recipes, tracking and launch; it imports
# config and tracking.store only)
STAGE_RANK = {"system": 0, "config": 0, "data": 1, "grid": 2, "recipes": 3, "tracking": 3, "smoke": 3, "cli": 3,
              "launch": 4}
HEAVY = {"torch", "mlflow", "datasets"}  # over a second each to import (one core): may be imported lazily
SMOKE_IMPORTERS = {"grid", "launch"}  # the only stages outside smoke/ that may import it (smoke/assets.py alone)
# Lazy edges that would close a cycle, allowed for the stated reason (and only these)
ALLOWED_LAZY = {
    ("experiments.smoke.assets", "experiments.smoke.pretrain"): "the pretraining (torch, tokenizers, bertgen's models) "
    "is imported only when the smoke assets must be built; the launcher and the grid loader import assets for paths",
}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    module: str  # the imported module (a submodule when ``from package import submodule``)
    name: str | None  # the imported name, None when the module itself is imported
    lazy: bool  # inside a function
    line: int

    def where(self) -> str:
        return f"{self.importer.replace('.', '/')}.py:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def sources(*packages: str) -> dict[str, ast.Module]:
    return {module_name(path): ast.parse(path.read_text(encoding="utf-8"), str(path))
            for package in packages for path in sorted((ROOT / package).rglob("*.py"))}


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(name: str, tree: ast.Module) -> list[Import]:
    """Every import of the module (``if TYPE_CHECKING:`` blocks left out: they never run)."""
    package = name if ROOT.joinpath(*name.split("."), "__init__.py").is_file() else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(name, alias.name, None, lazy, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if is_module(sub):
                        found.append(Import(name, sub, None, lazy, child.lineno))
                    else:
                        found.append(Import(name, base, alias.name, lazy, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


ALL = sources(*PACKAGES)
IMPORTS = {name: imports_of(name, tree) for name, tree in ALL.items()}
HARNESS = sorted(n for n in ALL if n.split(".")[0] in ("experiments", "analysis"))


def stage(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "experiments" or len(parts) < 2:
        return None
    return parts[1] if parts[1] != "__main__" else None


def test_bertgen_imports_neither_the_harness_nor_transformers():
    bad = [f"{i.where()}: imports {i.module}" for name in ALL for i in IMPORTS[name]
           if i.module.split(".")[0] == "transformers"
           or (name.startswith("bertgen") and i.module.split(".")[0] in ("experiments", "analysis"))]
    assert not bad, "\n".join(bad)


def test_experiments_never_imports_analysis():
    bad = [f"{i.where()}: imports {i.module}" for name in HARNESS if name.startswith("experiments")
           for i in IMPORTS[name] if i.module.split(".")[0] == "analysis"]
    assert not bad, "\n".join(bad)


def test_no_private_name_imported_across_modules():
    bad = [f"{i.where()}: {i.name} from {i.module}" for name in HARNESS for i in IMPORTS[name]
           if i.name and i.name.startswith("_") and i.module.split(".")[0] in PACKAGES and i.module != name]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in HARNESS}
    for name in HARNESS:
        for i in IMPORTS[name]:
            if i.module in graph and i.module != name and not (i.lazy and (name, i.module) in ALLOWED_LAZY):
                graph[name].add(i.module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    found = cycles(_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def stage_inversions(imports: dict[str, list[Import]]) -> list[str]:
    """Each import of a later stage (or of the smoke assets from outside grid/ and launch/), one line each."""
    bad = []
    for name, found in sorted(imports.items()):
        own = stage(name)
        if own is None:
            continue
        for i in found:
            other = stage(i.module)
            if other is None or other == own:
                continue
            if other == "smoke":
                if own not in SMOKE_IMPORTERS or i.module != "experiments.smoke.assets":
                    bad.append(f"{i.where()}: {own} imports {i.module} (only grid/ and launch/, via smoke/assets.py)")
            elif STAGE_RANK[other] > STAGE_RANK[own]:
                bad.append(f"{i.where()}: {own} imports the later stage {other} ({i.module})")
    return bad


def test_stage_inversion_finder():
    """config importing data (the inversions issue 22 removed) is found; data importing config is not."""
    back = Import("experiments.config.cell", "experiments.data.sources", "SPEC_KEYS", False, 3)
    forward = Import("experiments.data.sources", "experiments.config.data_spec", "SPEC_KEYS", False, 4)
    assert stage_inversions({back.importer: [back], forward.importer: [forward]}) == [
        "experiments/config/cell.py:3: config imports the later stage data (experiments.data.sources)"]


def test_experiments_imports_by_stage():
    bad = stage_inversions({name: IMPORTS[name] for name in HARNESS})
    pretrain = [f"{i.where()}" for name in HARNESS for i in IMPORTS[name]
                if i.module == "experiments.smoke.pretrain" and name != "experiments.smoke.assets"]
    assert not bad and not pretrain, "\n".join(bad + [f"{p}: imports the heavy smoke/pretrain.py" for p in pretrain])


def unused_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Module-level imported names the module never reads: re-exports (``__init__`` and ``__all__`` aside)."""
    bound: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom)
                                                                   and node.module == "__future__"):
            for alias in node.names:
                bound[(alias.asname or alias.name).split(".")[0]] = node.lineno
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    annotations = [n.annotation for n in ast.walk(tree) if isinstance(n, (ast.arg, ast.AnnAssign)) and n.annotation]
    annotations += [n.returns for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and n.returns]
    annotations += [n.value for n in tree.body if isinstance(n, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
    for annotation in annotations:  # names in string annotations and __all__
        for node in ast.walk(annotation):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.update(re.findall(r"\w+", node.value))
    return sorted((name, line) for name, line in bound.items() if name not in used)


def test_unused_import_finder():
    assert unused_imports(ast.parse("from a import b, c\nimport d\nprint(b)\nx: 'd'")) == [("c", 1)]
    assert unused_imports(ast.parse("import e\nFILE = 'e.txt'")) == [("e", 1)]
    assert unused_imports(ast.parse('"""Docs naming b."""\nfrom a import b')) == [("b", 2)]


@pytest.mark.parametrize("name", [n for n in HARNESS if n.startswith("experiments") and not n.endswith("__init__")])
def test_no_reexports(name):
    if ALL[name].body and Path(*name.split(".")).name == "__init__":
        pytest.skip("a package's __init__")
    unused = unused_imports(ALL[name])
    assert not unused, f"{name}: imported and never used (a re-export? import it from its owner): {unused}"


def heavy_loads() -> dict[str, set[str]]:
    """The HEAVY libraries each module loads when imported (its module-level imports, transitively)."""
    loads: dict[str, set[str]] = {}

    def visit(name: str, seen: frozenset[str]) -> set[str]:
        if name not in loads:
            found = set()
            for i in IMPORTS.get(name, ()):
                if i.lazy:
                    continue
                if i.module.split(".")[0] in HEAVY or i.module == "safetensors.torch":
                    found.add("torch" if i.module == "safetensors.torch" else i.module.split(".")[0])
                elif i.module in ALL and i.module not in seen:
                    found |= visit(i.module, seen | {i.module})
            loads[name] = found
        return loads[name]

    for name in ALL:
        visit(name, frozenset({name}))
    return loads


def test_imports_at_module_top_unless_they_keep_a_heavy_library_out():
    """An import inside a function is allowed only where it keeps torch, mlflow or datasets (seconds each to import)
    out of a module that does not load them otherwise (the CLIs' --help, the grid loader), or is the smoke
    pretraining (ALLOWED_LAZY)."""
    loads = heavy_loads()
    bad = []
    for name in HARNESS:
        if not name.startswith("experiments"):
            continue
        for i in IMPORTS[name]:
            if not i.lazy or (name, i.module) in ALLOWED_LAZY:
                continue
            top = i.module.split(".")[0]
            brings = ({top} if top in HEAVY else {"torch"} if i.module == "safetensors.torch" else loads.get(i.module, set()))
            if not brings - loads[name]:
                bad.append(f"{i.where()}: {i.module} inside a function (move it to the top)")
    assert not bad, "\n".join(bad)
