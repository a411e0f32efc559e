"""Does the paper grid hold every experiment? Each row of the paper's Tables 2–7 (and of the Section 5 ablations that
Table 6 lays out) must map to a cell of ``grids/paper.yaml`` — the same (scheme, size, variant, task, data fraction)
key the tables fill it by — or to a stated reason why no cell can (``table_specs.NOT_RUN_REASONS`` / ``NOT_RUN_METRICS``:
another paper's system, the unreleased En+De BERT, a human evaluation).

    python -m analysis.coverage [GRID]      # prints the uncovered rows; exit status 1 if there are any
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from experiments.cli import EXIT_FAILED, EXIT_OK, entry_point
from experiments.config.cell import CellConfig
from experiments.tracking.runs import cell_params

from . import paper, schema
from .table_specs import NOT_RUN_METRICS, not_run_reason

PAPER_GRID = Path(__file__).resolve().parents[1] / "grids" / "paper.yaml"
TABLES = tuple(range(2, 8))


def cell_row_key(cell: CellConfig) -> tuple[str, str, str, str, float]:
    """(scheme, size, variant, task, data fraction) of a grid cell, as the tables key its runs: the cell's params
    (its size and budget among them) read by ``schema.run_fields``, which is how its MLflow run will be read."""
    fields = schema.run_fields("grid cell", {schema.TAG_TASK: cell.task, schema.TAG_SCHEME: cell.scheme},
                               cell_params(cell))
    return fields.scheme, fields.size, fields.variant, fields.task, round(fields.data_fraction, 9)


def coverage(cells: Iterable[CellConfig], numbers: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's rows of Tables 2–7 with ``cell`` (a cell of ``cells`` fills it) and ``reason`` (why none can);
    ``numbers``: ``paper.paper_numbers()`` of the CSVs to check (the repository's copies by default)."""
    numbers = paper.paper_numbers() if numbers is None else numbers
    keys = {cell_row_key(cell) for cell in cells}
    rows = numbers[numbers.table.isin(TABLES)].copy()
    # a metric no run can compute (the human score) is not filled by the cell that runs its system
    rows["cell"] = [(s, z, v, t, round(f, 9)) in keys and m not in NOT_RUN_METRICS for s, z, v, t, f, m in
                    rows[["system", "size", "variant", "task", "data_fraction", "metric"]].itertuples(index=False)]
    rows["reason"] = [not_run_reason(t, s, z, v, m) or "" for t, s, z, v, m in
                      rows[["table", "system", "size", "variant", "metric"]].itertuples(index=False)]
    return rows


def uncovered(cells: Iterable[CellConfig], numbers: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows with neither a cell nor a reason (what a complete paper grid has none of)."""
    rows = coverage(cells, numbers)
    return rows[~rows.cell & (rows.reason == "")]


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    from experiments.grid.load import load_grid

    parser = argparse.ArgumentParser(prog="python -m analysis.coverage", description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", nargs="?", type=Path, default=PAPER_GRID, help="grid file (default: grids/paper.yaml)")
    args = parser.parse_args(argv)
    missing = uncovered(load_grid(args.grid, check_paths=False).cells)
    for row in missing.itertuples():
        print(f"Table {row.table}: {row.paper_model} / {row.paper_task} / {row.paper_metric}: no cell, no reason")
    print(f"{len(missing)} paper row(s) without a cell or a stated reason", file=sys.stderr)
    return EXIT_FAILED if len(missing) else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
