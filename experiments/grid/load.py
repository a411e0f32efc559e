"""Grid files (grids/*.yaml) → validated, fully resolved cells (layout: :mod:`experiments.grid.identity`).

A grid is a YAML mapping (read with ``yaml.safe_load``)::

    name: fusion                      # default: the file name; also the Slurm job name
    description: ...
    include_grids: [fusion.yaml]      # other grid files whose cells join this one (paper.yaml); their executor,
                                      # mlflow and output_root are ignored, their checkpoints/defaults/overrides kept
    output_root: outputs              # cells write under <output_root>/cells/...; relative to the launch directory
    mlflow: {tracking_uri: null, experiment: bertgen,
             allow_network_filesystem: false}   # true: a Slurm launch may keep the embedded sqlite store on NFS,
                                      # Lustre, GPFS, BeeGFS, CIFS (refused by default: experiments.launch.guard)
    executor:
      default: null                   # slurm | local | debug; null: slurm when sbatch is on PATH, else local
      slurm: {partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min, array_parallelism, account, qos,
              constraint, nodes, tasks_per_node}
      local: {parallelism, timeout_min}
    checkpoints: {bert: bert-base-cased, roberta: roberta-base, gpt2: gpt2}   # hub ids, local directories, or
                                      # pkg:<installed package>/<dir> (resolved to that directory)
    smoke_assets: false               # true: checkpoints and the synthetic_fusion/synthetic_split data are the
                                      # project's own tiny ones (experiments.smoke.pretrain), under <output_root>/smoke_assets
    defaults: {train: {...}, decode: {...}, model: {...}, data: {...}, max_examples: {...}, data_fraction: 1.0,
               init_layers: null}     # for every cell of this file, over the paper defaults of its task
    tasks: [discofuse]                # the matrix: tasks x schemes x seeds x sweep ("all" for every task/scheme)
    schemes: all
    seeds: [1]
    sweep: {data_fraction: [1.0, 0.1, 0.01], "train.lr": [...]}   # any cell field, dotted
    include:                          # extra cells: task, scheme, seeds (default: the grid's), any cell field
      - {task: discofuse, scheme: bertShare, checkpoints: {bert: bert-large-cased}}
    exclude:                          # drop cells matching every key of one entry (values: one, a list, globs)
      - {task: wmt14_*, scheme: [robertaShare, roberta2gpt]}
    overrides:                        # per-cell settings, applied in order to the cells matching `match`
      - {match: {scheme: bertShare}, set: {train: {lr: 0.03}}}

Precedence, low to high: harness defaults < the task's paper defaults (experiments.config.tasks) < the file's
``checkpoints``/``defaults`` < the cell's own matrix/sweep/include values < the file's ``overrides`` < the including
grid's ``overrides`` < ``--set`` on the command line. ``--set`` keys that name a cell field (``train.steps=10``,
``checkpoints.bert=/path``, ``data.train=...``) apply to every cell last; any other key edits the grid document
before validation (``--set mlflow.tracking_uri=http://...``, ``--set seeds=[1,2]``, ``--set executor.slurm.qos=x``).

Every value is checked before anything runs; the first problem raises :class:`GridError`, whose message is one line:
``<file>: <key path>: <what was expected>`` with the nearest valid name for a typo. Loading never writes anything.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from bertgen.schemes import SCHEMES

from ..config import cell as config, validate as v
from ..config.cell import FAMILIES, SPLITS, CellConfig
from ..config.model_size import model_size
from ..config.tasks import TASKS
from ..config.validate import Refusal
from ..config.yaml_text import parse_sets, set_dotted
from ..smoke.assets import TASK_SPLITS, SmokeSettings, content_hash
from .document import (GLOB_CHARS, GridError, cell_matches_where, display_path, dotted_fields, lookup_dotted,
                       merge_patch, patch_from_dotted, read_yaml)
from .identity import cell_label, compute_cell_id

EXECUTORS = ("slurm", "local", "debug")
DEFAULT_EXPERIMENT = "bertgen"
SMOKE_DIR = "smoke_assets"
# The smoke assets hold one fusion and one split task, run under their own task names (experiments.config.tasks), never as
# the paper's DiscoFuse and WikiSplit.
SMOKE_TASKS = {"synthetic_fusion": "fusion", "synthetic_split": "split"}

DEFAULT_SLURM = {"partition": None, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 64, "timeout_min": 1440,
                 "array_parallelism": 64, "account": None, "qos": None, "constraint": None, "nodes": 1,
                 "tasks_per_node": 1}
DEFAULT_LOCAL = {"parallelism": 1, "timeout_min": 10080}

# Slurm values end up in #SBATCH lines; anything that could start a new line or a shell construct is refused.
_SLURM_SAFE = re.compile(r"[A-Za-z0-9_.,:+=@%/\[\]|&!*-]+")
_NAME_SAFE = re.compile(r"[A-Za-z0-9_.-]+")
_ORIGIN = "_origin"  # internal cell key while expanding: (file, entry) that made the cell


MAX_TIMEOUT_MIN = 366 * 24 * 60  # a year
MAX_SEED = config.MAX_SEED
MAX_CELLS = 100_000  # cells of one grid (the paper's is ~400); a sweep's product beyond this is a mistake


def _slurm_text(nullable: bool = True) -> v.Check:
    return v.text(nullable=nullable, pattern=_SLURM_SAFE, max_len=256,
                  what="plain text for an #SBATCH line (letters, digits and _.,:+=@%/[]|&!*-; no spaces, newlines, "
                       "quotes, ;, $, backticks or backslashes)")


def output_root_check(value: Any, path: str) -> str:
    """A directory path without control characters (it is written into #SBATCH lines) that is, or can become, a
    directory: an existing file (or /dev/null) is refused here, before anything tries to create folders in it."""
    value = v.path_text(what="a directory path")(value, path)
    if not config.check_paths.get():
        return value
    try:
        where = Path(value).expanduser().resolve()
    except (RuntimeError, OSError, ValueError) as err:  # ~nosuchuser, a symlink loop
        raise v.Invalid(path, f"expected a directory path, got {v.short_repr(value)} ({err})") from None
    probe = v.nearest_existing(where)
    if not probe.is_dir():
        what = "is a file" if probe.is_file() else "is not a directory"
        raise v.Invalid(path, f"expected a directory, {v.short_repr(str(probe), 200)} {what}")
    return value


def _count_cells(path: str, *axes: int) -> None:
    total = 1
    for n in axes:
        total *= max(n, 1)
        if total > MAX_CELLS:
            raise v.Invalid(path, f"expected at most {MAX_CELLS} cells from one matrix or include entry, this one "
                                  f"makes {total} or more")


def cell_schema() -> dict[str, Any]:
    """Cell fields a grid may set (derived from experiments.config.cell.CellConfig): nested dicts are sections (merged
    key by key), callables are leaves (replaced)."""
    return config.schema(CellConfig)


# -- the study's tables ---------------------------------------------------------------------------------------------
def scheme_families(scheme: Any) -> tuple[str, ...]:
    """Checkpoint families a scheme reads (weights or vocabulary: ``Scheme.checkpoints``); the others are nulled in
    its cells, so they cannot change its id."""
    return tuple(f for f in FAMILIES if f in tuple(scheme.checkpoints))


def smoke_asset_paths(root: Path) -> dict[str, Any]:
    """Where experiments.smoke.assets.ensure_smoke_assets(root) puts (or has put) the tiny checkpoints and tasks.

    Computed without building anything, so ``--dry-run`` and cell ids do not need the assets to exist; the launcher
    builds them and checks the manifest against these paths.
    """
    final = Path(root).resolve() / f"smoke-{content_hash(SmokeSettings())}"
    return {"root": str(final),
            "checkpoints": {family: str(final / family) for family in FAMILIES},
            "tasks": {kind: {split: str(final / "tasks" / kind / f"{split}.jsonl") for split in TASK_SPLITS}
                      for kind in sorted(set(SMOKE_TASKS.values()))}}


def smoke_asset_configs(root: Path) -> dict[str, dict[str, int]]:
    """The size of each tiny checkpoint (experiments.smoke.assets.TinySize) by its path, before it is built: the
    cells' sizes, and so their ids, are the same before and after the launcher builds the assets."""
    size = SmokeSettings().size
    dims = {"num_hidden_layers": size.num_hidden_layers, "hidden_size": size.hidden_size}
    return {path: dims for path in smoke_asset_paths(root)["checkpoints"].values()}


# -- selection ------------------------------------------------------------------------------------------------------
def cell_matches(cell: CellConfig, pattern: str) -> bool:
    """``--only``: a glob over ``task/scheme/seedN[/variant]`` (e.g. ``discofuse/bert*``), a task or scheme name,
    or a prefix of the cell id. Several patterns may be given separated by commas."""
    label = cell_label(cell)
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        if (fnmatch.fnmatchcase(label, part) or fnmatch.fnmatchcase(label, part + "/*")
                or part in (cell.task, cell.scheme) or cell.cell_id.startswith(part)):
            return True
    return False


def select(cells: list[CellConfig], only: str | None) -> list[CellConfig]:
    return cells if not only else [c for c in cells if cell_matches(c, only)]


def load_selection(path: str, sets: list[str], only: str | None,
                   check_paths: bool = True) -> tuple[Grid, list[CellConfig]]:
    """The grid and its cells that ``--only`` selects; a Refusal (one line) when it does not load or selects none."""
    grid = load_grid(path, sets, check_paths=check_paths)
    cells = select(grid.cells, only)
    if not cells:
        raise Refusal(f"{path}: --only {only!r}: no cell matches (the grid has {len(grid.cells)})")
    return grid, cells


# -- the grid ---------------------------------------------------------------------------------------------------------
@dataclass
class Grid:
    name: str
    path: Path
    output_root: Path
    tracking_uri: str | None
    experiment: str
    executor: dict[str, Any]
    cells: list[CellConfig]  # checked once by the loader, with their ids; JSON only in a job's cell.json
    smoke_root: Path | None = None  # set when some cell uses the tiny smoke assets
    allow_network_filesystem: bool = False  # mlflow.allow_network_filesystem (launch_guard.check_store_filesystem)

    @property
    def where(self) -> str:
        """The grid file as refusals name it (``display_path``)."""
        return str(display_path(self.path))


def _top_schema(cell: dict) -> dict[str, Any]:
    any_value: v.Check = lambda value, path: value  # noqa: E731 - checked by the expansion code
    return {
        "name": v.text(pattern=_NAME_SAFE, what="a name of letters, digits, _ . -", max_len=100),
        "description": v.text(max_len=20_000),
        "include_grids": any_value,
        "output_root": output_root_check,
        "mlflow": {"tracking_uri": v.path_text(nullable=True, what="a tracking URI"),
                   "experiment": v.text(what="an experiment name", max_len=250),
                   "allow_network_filesystem": v.boolean()},
        "executor": {
            "default": v.choice(EXECUTORS, nullable=True, what="executor"),
            "slurm": {"partition": _slurm_text(), "gpus_per_node": v.integer(0, hi=64),
                      "cpus_per_task": v.integer(1, hi=4096), "mem_gb": v.number(0.0, 1e6, lo_open=True),
                      "timeout_min": v.integer(1, hi=MAX_TIMEOUT_MIN), "array_parallelism": v.integer(1, hi=100_000),
                      "account": _slurm_text(), "qos": _slurm_text(), "constraint": _slurm_text(),
                      "nodes": v.integer(1, hi=100_000), "tasks_per_node": v.integer(1, hi=4096)},
            "local": {"parallelism": v.integer(1, hi=4096), "timeout_min": v.integer(1, hi=MAX_TIMEOUT_MIN)},
        },
        "checkpoints": cell["checkpoints"],
        "smoke_assets": v.boolean(),
        "defaults": cell,
        "tasks": any_value, "schemes": any_value, "seeds": any_value, "sweep": any_value,
        "include": any_value, "exclude": any_value, "overrides": any_value,
    }


class _FileExpander:
    """Expands one grid file (and, recursively, the files it includes) into unvalidated-id cells."""

    def __init__(self, schema: dict, output_root: Path, grid_name: str):
        self.schema = schema
        self.output_root = output_root
        self.grid_name = grid_name
        self.smoke_used = False

    # names ------------------------------------------------------------------------------------------------------
    def _names(self, value: Any, path: str, table: dict, what: str) -> list[str]:
        if value == "all":
            return list(table)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise v.Invalid(path, f"expected 'all' or a non-empty list of {what} names, got {v.short_repr(value)}")
        for i, name in enumerate(value):
            if name not in table:
                raise v.unknown(v.join(path, i), name, table, what)
        return list(dict.fromkeys(value))

    def _seeds(self, value: Any, path: str) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            raise v.Invalid(path, f"expected a non-empty list of integer seeds, got {v.short_repr(value)}")
        for i, seed in enumerate(value):
            v.integer(0, hi=MAX_SEED)(seed, v.join(path, i))
        if len(set(value)) != len(value):
            raise v.Invalid(path, f"expected distinct seeds, got {v.short_repr(value)}")
        return list(value)

    def _match(self, value: Any, path: str) -> dict:
        if not isinstance(value, dict) or not value:
            raise v.Invalid(path, f"expected a non-empty mapping of cell field -> value(s), got {v.short_repr(value)}")
        tables = {"task": TASKS, "scheme": SCHEMES}
        for key, wanted in value.items():
            where = v.join(path, key)
            if not isinstance(key, str):
                raise v.unknown(where, key, ["task", "scheme", "seed", *dotted_fields(self.schema)], "cell field")
            if key in tables:
                for name in (wanted if isinstance(wanted, list) else [wanted]):
                    if not (isinstance(name, str) and (GLOB_CHARS & set(name) or name in tables[key])):
                        raise v.unknown(where, name, tables[key], key)
            elif key != "seed":
                try:
                    lookup_dotted(self.schema, str(key), where)
                except v.Invalid:
                    raise v.unknown(where, key, ["task", "scheme", "seed", *dotted_fields(self.schema)],
                                   "cell field") from None
        return value

    # expansion --------------------------------------------------------------------------------------------------
    def expand(self, path: Path, doc: Any, stack: tuple[Path, ...], where: str) -> tuple[list[dict], dict]:
        """(cells of this file and its includes, this file's validated top-level values)."""
        try:
            return self._expand(path, doc, stack, where)
        except v.Invalid as err:
            raise GridError(where, err.path, err.message) from None

    def _expand(self, path: Path, doc: Any, stack: tuple[Path, ...], where: str) -> tuple[list[dict], dict]:
        if not isinstance(doc, dict):
            raise v.Invalid("", f"expected a mapping of grid keys, got {v.type_name(doc)}")
        top = v.section(_top_schema(self.schema), doc, "")
        cells: list[dict] = []
        for i, included in enumerate(self._include_grids(doc.get("include_grids"), path)):
            sub_path = included
            if sub_path in stack + (path,):
                raise v.Invalid(v.join("include_grids", i), f"expected no cycle, {sub_path.name} includes itself")
            sub_doc = read_yaml(sub_path)
            sub_cells, _ = self.expand(sub_path, sub_doc, stack + (path,), str(display_path(sub_path)))
            cells.extend(sub_cells)

        tasks_table, schemes_table = TASKS, SCHEMES
        base_patch: dict = {}
        if top.get("smoke_assets"):
            self.smoke_used = True
            paths = smoke_asset_paths(self.output_root / SMOKE_DIR)
            base_patch["checkpoints"] = dict(paths["checkpoints"])
        if "checkpoints" in top:
            base_patch = merge_patch(self.schema, base_patch, {"checkpoints": top["checkpoints"]})
        file_defaults = top.get("defaults", {})
        overrides = self._overrides(doc.get("overrides"))
        excludes = [self._match(e, v.join("exclude", i)) for i, e in enumerate(self._list(doc, "exclude"))]

        variants: list[tuple[str, str, int, dict, str]] = []  # task, scheme, seed, patch, key path for errors
        seeds = self._seeds(doc["seeds"], "seeds") if "seeds" in doc else [1]
        if "tasks" in doc or "schemes" in doc:
            if "tasks" not in doc or "schemes" not in doc:
                missing = "tasks" if "tasks" not in doc else "schemes"
                raise v.Invalid(missing, "expected both tasks and schemes for the matrix (or neither, with include)")
            tasks = self._names(doc["tasks"], "tasks", tasks_table, "task")
            schemes = self._names(doc["schemes"], "schemes", schemes_table, "scheme")
            axes = self._sweep(doc.get("sweep"), "sweep")
            _count_cells("sweep" if axes else "tasks", len(tasks), len(schemes), len(seeds),
                         *[len(values) for _, values in axes])
            for task, scheme, seed in itertools.product(tasks, schemes, seeds):
                for patch in self._combos(axes):
                    variants.append((task, scheme, seed, patch, "tasks"))
        elif "sweep" in doc:
            raise v.Invalid("sweep", "expected tasks and schemes next to a sweep")
        for i, entry in enumerate(self._list(doc, "include")):
            variants.extend(self._include_entry(entry, v.join("include", i), seeds, tasks_table, schemes_table))
        if not variants and not cells:
            raise v.Invalid("", "expected cells: tasks and schemes (the matrix), include, or include_grids")

        own: list[dict] = []
        for task, scheme, seed, patch, origin in variants:
            cell = config.paper_cell(tasks_table[task], scheme, seed, self.grid_name, str(self.output_root))
            if top.get("smoke_assets"):
                self._apply_smoke_data(cell, task, origin)
            merge_patch(self.schema, cell, base_patch)
            merge_patch(self.schema, cell, file_defaults)
            merge_patch(self.schema, cell, patch)
            cell[_ORIGIN] = (where, origin)  # which entry made it: two entries of one file must not make one cell
            own.append(cell)
        cells.extend(own)
        for match, setting in overrides:
            for cell in cells:
                if cell_matches_where(cell, match):
                    merge_patch(self.schema, cell, setting)
        cells = [c for c in cells if not any(cell_matches_where(c, e) for e in excludes)]
        return cells, top

    def _list(self, doc: dict, key: str) -> list:
        value = doc.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise v.Invalid(key, f"expected a list, got {v.type_name(value)}")
        return value

    def _include_grids(self, value: Any, path: Path) -> list[Path]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise v.Invalid("include_grids", f"expected a list of grid files, got {v.type_name(value)}")
        out = []
        for i, name in enumerate(value):
            if (not isinstance(name, str) or "\0" in name or len(name) > v.MAX_TEXT
                    or not (path.parent / name).is_file()):
                raise v.Invalid(v.join("include_grids", i), f"expected a grid file next to {path.name}, got "
                                                            f"{v.short_repr(name)}")
            out.append((path.parent / name).resolve())
        return out

    def _sweep(self, value: Any, path: str) -> list[tuple[str, list]]:
        if value is None:
            return []
        if not isinstance(value, dict) or not value:
            raise v.Invalid(path, f"expected a mapping of cell field -> list of values, got {v.short_repr(value)}")
        axes = []
        for dotted, values in value.items():
            where = v.join(path, dotted)
            validator = lookup_dotted(self.schema, str(dotted), where)
            if not isinstance(values, list) or not values:
                raise v.Invalid(where, f"expected a non-empty list of values, got {v.short_repr(values)}")
            axes.append((str(dotted), [v.section(validator, item, v.join(where, i)) for i, item in enumerate(values)]))
        return axes

    def _overrides(self, value: Any) -> list[tuple[dict, dict]]:
        out = []
        for i, entry in enumerate(self._list({"overrides": value}, "overrides")):
            where = v.join("overrides", i)
            if not isinstance(entry, dict) or set(entry) != {"match", "set"}:
                raise v.Invalid(where, f"expected a mapping with exactly 'match' and 'set', got "
                                       f"{v.short_repr(entry)}")
            out.append((self._match(entry["match"], v.join(where, "match")),
                        v.section(self.schema, entry["set"], v.join(where, "set"))))
        return out

    def _include_entry(self, entry: Any, where: str, seeds: list[int], tasks_table: dict, schemes_table: dict):
        """An extra block of cells: task(s) x scheme(s) x seeds (default: the grid's) x its own sweep, with fields."""
        if not isinstance(entry, dict) or "task" not in entry or "scheme" not in entry:
            raise v.Invalid(where, f"expected a mapping with task, scheme and optional seeds, sweep and cell fields, "
                                  f"got {v.short_repr(entry)}")
        tasks = self._names(entry["task"], v.join(where, "task"), tasks_table, "task")
        schemes = self._names(entry["scheme"], v.join(where, "scheme"), schemes_table, "scheme")
        own_seeds = self._seeds(entry["seeds"], v.join(where, "seeds")) if "seeds" in entry else seeds
        axes = self._sweep(entry.get("sweep"), v.join(where, "sweep"))
        _count_cells(where, len(tasks), len(schemes), len(own_seeds), *[len(values) for _, values in axes])
        rest = {k: value for k, value in entry.items() if k not in ("task", "scheme", "seeds", "sweep")}
        patch = v.section(self.schema, rest, where)
        return [(task, scheme, seed, merge_patch(self.schema, copy.deepcopy(patch), combo), where)
                for task, scheme, seed in itertools.product(tasks, schemes, own_seeds)
                for combo in self._combos(axes)]

    def _combos(self, axes: list[tuple[str, list]]) -> list[dict]:
        """One patch per point of the sweep's cartesian product ([{}] without a sweep)."""
        patches = []
        for combo in itertools.product(*[values for _, values in axes]):
            patch: dict = {}
            for (dotted, _), value in zip(axes, combo):
                merge_patch(self.schema, patch, patch_from_dotted(dotted, value))
            patches.append(patch)
        return patches

    def _apply_smoke_data(self, cell: dict, task: str, origin: str) -> None:
        if task not in SMOKE_TASKS:
            raise v.Invalid(origin, f"smoke_assets provides data for {sorted(SMOKE_TASKS)} only, not "
                                    f"{v.short_repr(task)}")
        files = smoke_asset_paths(self.output_root / SMOKE_DIR)["tasks"][SMOKE_TASKS[task]]
        columns = {"input": "source", "target": "target", "id": "id"}
        cell["data"] = {split: {"path": files[split], "columns": dict(columns)} for split in SPLITS}


def load_grid(path: str | os.PathLike, sets: Iterable[str] = (), check_paths: bool = True) -> Grid:
    """Read, validate and resolve a grid file into cells with ids; raises :class:`GridError` (one line)."""
    path = Path(path)
    where = str(display_path(path))
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise GridError(where, "", f"expected a mapping of grid keys, got {v.type_name(doc)}")
    token = config.check_paths.set(check_paths)
    try:
        return _load(path, where, doc, sets)
    finally:
        config.check_paths.reset(token)


def _load(path: Path, where: str, doc: dict, sets: Iterable[str]) -> Grid:
    schema = cell_schema()
    cell_sets: list[tuple[str, Any]] = []
    doc_set_keys: list[str] = []
    try:
        pairs = parse_sets(sets)
    except v.Invalid as err:  # a malformed pair: named by the flag, not the grid file
        raise GridError(err.path, "", err.message) from None
    for key, value in pairs:
        if key.split(".")[0] in schema:
            try:
                validator = lookup_dotted(schema, key, f"--set {key}")
                value = v.section(validator, value, f"--set {key}")
            except v.Invalid as err:
                raise GridError(where, err.path, err.message) from None
            cell_sets.append((key, value))
        else:
            set_dotted(doc, key, value)
            doc_set_keys.append(key)

    def fail(err: GridError) -> GridError:
        for key in doc_set_keys:
            if err.path == key or err.path.startswith(key + ".") or err.path.startswith(key + "["):
                return GridError(f"{where} (--set {key})", err.path, err.message)
        return err

    name = doc.get("name", path.stem)
    if "name" not in doc and not _NAME_SAFE.fullmatch(name):
        raise GridError(where, "name", f"expected a name of letters, digits, _ . - (the file name "
                                       f"{v.short_repr(path.stem)} is "
                                       f"not one; set name: in the grid)")
    try:  # checked first: the cells' paths are made from it
        output_root = Path(output_root_check(doc.get("output_root", config.DEFAULT_OUTPUT_ROOT), "output_root")).expanduser().resolve()
    except v.Invalid as err:
        raise fail(GridError(where, err.path, err.message)) from None
    expander = _FileExpander(schema, output_root, str(name))
    try:
        cells, top = expander.expand(path.resolve(), doc, (), where)
        for key, value in cell_sets:
            for cell in cells:
                merge_patch(schema, cell, patch_from_dotted(key, value))
        known = smoke_asset_configs(output_root / SMOKE_DIR) if expander.smoke_used else {}
        resolved = _finish(cells, where, known)
    except GridError as err:
        raise fail(err) from None

    mlflow = top.get("mlflow", {})
    executor = top.get("executor", {})
    return Grid(
        name=str(name), path=path, output_root=output_root,
        tracking_uri=mlflow.get("tracking_uri"), experiment=mlflow.get("experiment", DEFAULT_EXPERIMENT),
        executor={"default": executor.get("default"),
                  "slurm": {**DEFAULT_SLURM, **executor.get("slurm", {})},
                  "local": {**DEFAULT_LOCAL, **executor.get("local", {})}},
        cells=resolved,
        smoke_root=output_root / SMOKE_DIR if expander.smoke_used else None,
        allow_network_filesystem=bool(mlflow.get("allow_network_filesystem", False)),
    )


def _finish(cells: list[dict], where: str, known_configs: dict[str, dict]) -> list[CellConfig]:
    """Null the checkpoints a scheme does not read (and a cross-attention init it has nothing to copy from), check
    each whole cell against experiments.config.cell.CellConfig, record its model size (experiments.config.model_size;
    ``known_configs``: configs of checkpoints not built yet), give ids, dedupe. What leaves is typed: the expanded
    grid documents (``cells``) end here."""
    out: dict[str, CellConfig] = {}
    origins: dict[str, tuple[str, str] | None] = {}
    for cell in cells:
        origin = cell.pop(_ORIGIN, None)
        scheme = SCHEMES[cell["scheme"]]
        if scheme.encoder is None or scheme.decoder not in FAMILIES:
            # No warm decoder with cross-attention (random decoder, decoder-only gpt): the init has nothing to copy,
            # so the cell is the paper's scheme and keeps its id.
            cell.pop("cross_attention_init", None)
        label = cell_label(cell)  # the document's: it is not typed yet
        families = scheme_families(scheme)
        for family in FAMILIES:
            if family not in families:
                cell["checkpoints"][family] = None
            elif not cell["checkpoints"].get(family):
                raise GridError(where, f"checkpoints.{family}",
                                f"expected a checkpoint for scheme {cell['scheme']} (cell {label})")
        if cell["train"].get("steps") is None:
            task = TASKS[cell["task"]]
            raise GridError(where, "defaults.train.steps",
                            f"expected train.steps for task {cell['task']} (cell {label}): the paper trains it for "
                            f"{task.train_epochs} epochs; set the step count in the grid")
        token = config.check_paths.set(False)  # paths were checked where the grid wrote them; smoke assets may
        try:                                     # not exist yet
            typed = CellConfig.from_dict(cell, f"cell {label}")
        except v.Invalid as err:
            raise GridError(where, err.path, err.message) from None
        finally:
            config.check_paths.reset(token)
        typed = replace(typed, size=model_size(typed.scheme, asdict(typed.checkpoints), typed.model,
                                               known_configs, typed.init_layers))
        typed = replace(typed, cell_id=compute_cell_id(typed))
        first = origins.get(typed.cell_id)
        if typed.cell_id in out and origin and first and origin != first and origin[0] == first[0]:
            # the same cell from two entries of one file (a copied include line, a matrix cell listed again): a
            # mistake the dedupe below would hide. Across included grids, sharing a cell is normal (paper.yaml).
            raise GridError(origin[0], origin[1], f"expected distinct cells, {label} (id {typed.cell_id}) is "
                                                  f"already made by {first[1]}")
        origins.setdefault(typed.cell_id, origin)
        out.setdefault(typed.cell_id, typed)
    return list(out.values())
