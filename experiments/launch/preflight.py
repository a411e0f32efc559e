"""Pre-flight: what the selected cells will read, checked at launch before anything is written or submitted.

Grid validation (:mod:`experiments.grid.load`) checks the grid's values and that local paths exist. What is *in* those
paths is checked here, once per distinct checkpoint, cell shape and data source, so that a cell that could only fail
is refused at launch (one line, exit status 2, no MLflow run, no output directory) instead of on a node an hour later:

- checkpoints (local directories): ``config.json`` readable, with a ``model_type`` of the family its field names (a
  GPT-2 checkpoint given as ``checkpoints.bert`` is refused); the vocabulary beside it has exactly the checkpoint's
  ``vocab_size`` ids and the special tokens the scheme uses; the weights are complete — every safetensors file's
  header is parsed and must cover the whole file (truncated or corrupt files are caught without reading the
  tensors); a ``pytorch_model.bin`` alone is read with ``torch.load(weights_only=True)``, so a pickle that would run
  code is refused, not run; each checkpoint and its tokenizer are read once (``bertgen.schemes.read_checkpoint``),
  and the cell's model is built from them on the meta device by the builder the job uses
  (``experiments.recipes.build.build_model``: size overrides, ``init_layers``, ``cross_attention_init``), so the
  checks and messages are the ones the cell will meet.
- data (local files): read by the loader the cell uses (:func:`experiments.data.sources.load_split`): present, UTF-8, not
  empty, with the columns the cell reads. A file over ``FULL_READ_BYTES`` is checked for UTF-8 over its whole length
  and loaded on its first ``HEAD_LINES`` lines.
- lengths: examples longer than the model can read are truncated by the cell, not refused; they are counted here (on
  up to ``COUNT_EXAMPLES`` examples of each split) and returned as notes, which the launcher prints.
- paths that reach the job script: the output root may hold no control characters (it is written into ``#SBATCH``
  lines, where a newline would start a shell command), and the grid name must not be only dots (it names folders).

Hub checkpoints are resolved (:func:`experiments.launch.prefetch.check_hub`): found in the local HF cache, or, online, on
the hub; with ``HF_HUB_OFFLINE=1`` one that is not cached is refused (``python -m experiments.launch.prefetch GRID`` fetches
them). Hub datasets are not looked at, nor are the project's own smoke assets when the launcher has yet to build
them.

A dry run (``dry_run=True``) only looks: a local data file or checkpoint directory that is not there yet, and a hub
checkpoint not in the local cache (also with ``HF_HUB_OFFLINE=1``), are warnings naming what to fetch and the command
that fetches it, and the rest of what is there is checked as for a launch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from safetensors import safe_open

from bertgen import schemes
from bertgen.checkpoint import SAFE_INDEX, SAFE_WEIGHTS, TORCH_WEIGHTS, is_local_reference, read_state_dict
from bertgen.families import FAMILIES

from ..config.cell import SPLITS, CellConfig
from ..config.data_spec import archive_for
from ..config.tasks import get_task
from ..config.validate import short_text
from ..data.batches import tokenize_split
from ..data.local_files import load_local_split, quiet_datasets, spec_files
from ..grid.document import GridError
from ..grid.identity import cell_label
from ..grid.load import Grid
from ..recipes.build import build_model, length_limits
from .prefetch import check_hub

COUNT_EXAMPLES = 20_000


def _expecting(message: str, what: str) -> str:
    """Every refusal says what was expected; messages from the loaders that do not, get it appended."""
    return message if "expected" in message else f"{message}; expected {what}"


class Preflight:
    """Checks cells one by one, remembering what it has checked; raises GridError on the first problem."""

    def __init__(self, grid: Grid, dry_run: bool = False):
        self.grid = grid
        self.dry_run = dry_run
        self.warnings: list[str] = []  # dry run: what is not there yet (a launch refuses it)
        self.where = grid.where
        self.smoke_root = grid.smoke_root.resolve() if grid.smoke_root is not None else None
        # (family, directory) -> its checkpoint, read once: one tokenizer object per vocabulary, so lengths are
        # counted once whatever the cells that share it
        self.checkpoints: dict[tuple[str, str], schemes.Checkpoint] = {}
        self.weights_checked: set[Path] = set()
        self.built: dict[str, Any] = {}  # cell shape -> (input tokenizer, output tokenizer, length limits)
        self.specs: dict[str, schemes.SchemeSpec] = {}  # cell shape -> what its build read (warm start, loading report)
        self.data: dict[str, Any] = {}  # data key -> raw dataset
        self.counted: set[str] = set()
        self.notes: list[str] = []

    def fail(self, field: str, message: str, cell: CellConfig | None = None) -> GridError:
        suffix = f" (cell {cell_label(cell)})" if cell is not None else ""
        return GridError(self.where, field, message + suffix)

    # -- the grid itself ------------------------------------------------------------------------------------------
    def check_paths(self) -> None:
        root = str(self.grid.output_root)
        bad = sorted({repr(c) for c in root if ord(c) < 32 or ord(c) == 127})
        if bad:
            raise self.fail("output_root", f"expected a directory path without control characters, got {root!r} "
                                           f"(has {', '.join(bad)}; it is written into the job script)")
        if not self.grid.name.strip("."):
            raise self.fail("name", f"expected a name with a letter or digit, got {self.grid.name!r}")

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def _pending_smoke(self, path: Path) -> bool:
        """A smoke asset the launcher builds later (trusted: the project writes it itself)."""
        return (self.smoke_root is not None and not path.exists()
                and path.resolve().is_relative_to(self.smoke_root))

    def checkpoint(self, cell: CellConfig, family: str) -> schemes.Checkpoint | None:
        """The checked checkpoint of ``family`` for ``cell``, read as the cell will read it
        (``bertgen.schemes.read_checkpoint``), None when not local."""
        ref = getattr(cell.checkpoints, family)
        if not ref or not is_local_reference(ref):
            return None
        directory = Path(ref).expanduser()
        if self._pending_smoke(directory) or self._not_there_yet(f"checkpoints.{family}", directory):
            return None
        key = (family, str(directory.resolve()))
        if key not in self.checkpoints:
            field = f"checkpoints.{family}"
            wanted = f"a {family} checkpoint ({FAMILIES[family].expected_model_types})"
            try:
                checkpoint = schemes.read_checkpoint(family, str(directory), scheme=cell.scheme)
            except schemes.WrongFamily as err:
                raise self.fail(field, f"{err.where} has model_type {err.model_type!r}; expected {wanted} for "
                                       f"scheme {cell.scheme}", cell) from None
            except (ValueError, OSError) as err:
                raise self.fail(field, _expecting(short_text(err, None), wanted + " with its tokenizer files"), cell) \
                    from None
            if checkpoint.tokens.tokenizer is None:
                raise self.fail(field, f"{directory}: no tokenizer files; expected the tokenizer files beside the "
                                       "checkpoint", cell)
            self._check_weights(directory, field, cell)
            self.checkpoints[key] = checkpoint
        return self.checkpoints[key]

    def _check_weights(self, directory: Path, field: str, cell: CellConfig) -> None:
        directory = directory.resolve()
        if directory in self.weights_checked:
            return
        if (directory / SAFE_WEIGHTS).is_file():
            files = [directory / SAFE_WEIGHTS]
        elif (directory / SAFE_INDEX).is_file():
            try:
                index = json.loads((directory / SAFE_INDEX).read_text(encoding="utf-8"))
                files = [directory / name for name in sorted(set(index["weight_map"].values()))]
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise self.fail(field, f"{directory / SAFE_INDEX}: expected a safetensors index with a weight_map "
                                       f"({type(err).__name__}: {short_text(err, None)})", cell) from None
        elif (directory / TORCH_WEIGHTS).is_file():
            try:  # weights_only=True: tensors and plain containers only; a pickle that runs code is refused
                read_state_dict(directory)
            except ValueError as err:
                raise self.fail(field, f"{short_text(err, None)}; expected tensors only (or convert it to "
                                       "model.safetensors)", cell) from None
            files = []
        else:
            raise self.fail(field, f"{directory}: no {SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS}; expected the "
                                   "checkpoint's weights", cell)
        for file in files:
            self._check_safetensors(file, field, cell)
        self.weights_checked.add(directory)

    def _check_safetensors(self, file: Path, field: str, cell: CellConfig) -> None:
        if not file.is_file():
            raise self.fail(field, f"{file}: missing; expected a safetensors file", cell)
        try:  # parses the header and checks the tensors it lists cover the file exactly; reads no tensor data
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: the same to the user
            raise self.fail(field, f"{file}: truncated or corrupt ({short_text(err, None)}); expected a complete "
                                   "safetensors file", cell) from None

    def _not_there_yet(self, field: str, path: Path) -> bool:
        """A dry run's warning for a local file or checkpoint directory that does not exist yet (True); a launch
        meets it in the checks below."""
        if not self.dry_run or path.exists():
            return False
        archive = archive_for(path)
        how = (f"fetch it with: python -m experiments.launch.prefetch {self.where} ({archive.name}, "
               f"{archive.size / 1e9:.1f} GB, from its authors)" if archive is not None
               else "create it or point the grid elsewhere")
        warning = f"{self.where}: {field}: {path} does not exist yet; {how}"
        if warning not in self.warnings:
            self.warnings.append(warning)
        return True

    # -- the model a cell builds ----------------------------------------------------------------------------------
    def build(self, cell: CellConfig) -> tuple | None:
        """(input tokenizer, output tokenizer, (max source, max target) tokens) of the cell's model, built on the meta
        device from its checked checkpoints by the builder the job uses (``experiments.recipes.build.build_model``);
        None when one of them is not local (a hub id)."""
        families = [f for f in FAMILIES if getattr(cell.checkpoints, f)]
        checkpoints = {family: self.checkpoint(cell, family) for family in families}
        if any(checkpoint is None for checkpoint in checkpoints.values()):
            return None
        key = json.dumps([cell.scheme, cell.task, asdict(cell.checkpoints), cell.model, cell.init_layers,
                          cell.cross_attention_init], sort_keys=True)
        if key in self.built:
            return self.built[key]
        field = "model" if cell.model else "init_layers" if cell.init_layers else "checkpoints"
        try:
            model, self.specs[key], input_tokenizer, output_tokenizer = build_model(cell, "meta", sources=checkpoints)
        except (ValueError, TypeError, OSError) as err:
            raise self.fail(field, _expecting(short_text(err, None), f"a cell {cell.scheme} can build from its "
                                                              "checkpoints"), cell) from None
        self.built[key] = (input_tokenizer, output_tokenizer, length_limits(model, get_task(cell.task)))
        return self.built[key]

    # -- data -----------------------------------------------------------------------------------------------------
    def split_data(self, cell: CellConfig, split: str) -> tuple[str, Any] | None:
        """(key, raw dataset) of one split of the cell as the cell will load it; None for hub data."""
        spec = getattr(cell.data, split)
        if spec is None:
            return None
        files = spec_files(spec)
        if any(self._pending_smoke(f) for f in files) or any(
                [self._not_there_yet(f"data.{split}", f) for f in files]):
            return None
        fraction = cell.data_fraction if split == "train" else None
        limit = getattr(cell.max_examples, split)
        key = json.dumps([cell.task, split, spec, fraction, limit], sort_keys=True)
        if key not in self.data:
            field = f"data.{split}"
            try:
                self.data[key] = load_local_split(cell.task, split, spec, fraction, limit)
            except (ValueError, OSError) as err:
                raise self.fail(field, _expecting(short_text(err, None), f"{split} examples of task {cell.task} "
                                                         "with the columns the data spec names"), cell) from None
        return key, self.data[key]

    def count_truncation(self, cell: CellConfig, split: str, key: str, raw: Any, built: tuple) -> None:
        """A note when some of the split's examples are longer than the model reads (the cell truncates them)."""
        input_tokenizer, output_tokenizer, (max_source, max_target) = built
        count_key = json.dumps([key, id(input_tokenizer), id(output_tokenizer), max_source, max_target])
        if count_key in self.counted:
            return
        self.counted.add(count_key)
        sample = raw.select(range(min(len(raw), COUNT_EXAMPLES)))
        _, report = tokenize_split(sample, input_tokenizer, max_source, max_target)
        target_report = report if output_tokenizer is input_tokenizer else \
            tokenize_split(sample, output_tokenizer, max_source, max_target)[1]
        sources, targets = report.source_truncated, target_report.target_truncated
        if sources or targets:
            of = f"of {len(sample)}" if len(sample) == len(raw) else f"of the first {len(sample)} (of {len(raw)})"
            self.notes.append(f"{cell_label(cell)}: data.{split}: {sources} {of} sources longer than {max_source} "
                              f"tokens and {targets} targets longer than {max_target} tokens will be truncated")

    # -- everything -----------------------------------------------------------------------------------------------
    def run(self, cells: list[CellConfig]) -> list[str]:
        for cell in cells:
            missing = cell.missing_paper_data()
            if missing is not None:
                raise self.fail(*missing, cell)
        self.check_paths()
        todo = []
        for cell in cells:
            built = self.build(cell)
            for split in SPLITS:
                found = self.split_data(cell, split)
                if found is not None and built is not None:
                    todo.append((cell, split, *found, built))
        with quiet_datasets():  # every check has passed: counting may print nothing but its notes
            for cell, split, key, raw, built in todo:
                self.count_truncation(cell, split, key, raw, built)
        return self.notes


def check_cells(grid: Grid, cells: list[CellConfig], dry_run: bool = False) -> tuple[list[str], list[str]]:
    """Check what ``cells`` will read (module docstring); raises :class:`GridError` (one line) on the first problem.
    Returns (notes on examples that will be truncated, a dry run's warnings on what is not there yet)."""
    preflight = Preflight(grid, dry_run)
    with quiet_datasets():
        notes = preflight.run(cells)
    # hub checkpoints resolve: offline (HF_HUB_OFFLINE=1) against the local cache
    return notes, preflight.warnings + check_hub(grid, cells, dry_run)


