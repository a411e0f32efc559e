"""The paper's Tables 1–7 rebuilt from MLflow runs, each cell showing ours, the paper's number and the difference.

    python -m analysis.tables [--tracking-uri URI] [--experiment NAME] [--grid NAME] [--table N|gpt2|all]
                              [--format markdown|latex|csv] [--out DIR] [--n-boot B]

How a cell is computed (tables 2–7):

1. **Runs**: finished child runs whose task, scheme, size, variant (init-layers ablation) and data fraction match
   the cell. Runs that differ only in their seed form a *group*; when several groups match (e.g. a learning-rate
   sweep, or a smoke and a full grid in one store) the group with the best mean dev score is taken (the primary
   metric on dev if logged, else the lowest dev loss) — model selection on dev, never on test — and a note says so.
2. **Ours**: mean, sample standard deviation and number of the seeds' logged test scores (``test_<metric>``).
3. **95 % CI**: percentile bootstrap over test examples of the seed-mean score, from the runs' predictions.jsonl
   and ``experiments.data.metrics`` per-example statistics (:mod:`analysis.stats`).
4. **Significance**: in each column the scheme with the best mean is compared with every other scheme by a paired
   bootstrap on the test examples both were scored on; ``†`` marks a scheme significantly below the best
   (one-sided p < alpha, default 0.05; no correction for multiple comparisons). The best is shown in bold.
5. **Paper / Δ**: the paper's number (``analysis/paper_numbers``) and ours − paper. Cells without runs show "—".

Table 1 needs no runs: it counts the parameters of the schemes themselves (``bertgen.schemes.parameter_counts``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from experiments.cli import EXIT_OK, entry_point
from experiments.config.tasks import TASKS as HARNESS_TASKS

from . import paper, schema, stats
from .cells import (CELL_COLUMNS, CellData, TableResult, cell_record, closing_notes, compute_cell, mark_significance,
                    table_runs, task_baseline)
from .gpt2_tuning import build_gpt2_tuning_table
from .runs import RunStore, add_tracking_uri
from .table_specs import BASELINE_ROWS, NOT_RUN_NOTE, TABLES, Row, TableSpec
from .table_render import DEFAULT_FORMAT, FORMATS, SUFFIX, render


# ---------------------------------------------------------------------------------------------------------------------
# Table 1: parameter counts (no runs)


@lru_cache(maxsize=1)
def _our_parameter_counts() -> tuple[dict[str, dict[str, float]], str | None]:
    """``{scheme: {total_params_M: ..., ...}}`` from bertgen.schemes, or ``({}, reason)`` when it is unavailable.

    Cached: building the ten base-size models, even on the meta device, takes seconds."""
    try:
        from bertgen.schemes import parameter_counts
    except ImportError as err:
        return {}, f"bertgen.schemes.parameter_counts is not available ({err})"
    raw = parameter_counts(size="base")
    out = {}
    for scheme, counts in raw.items():
        if isinstance(counts, (int, float)):  # today's bertgen.schemes: the total only
            counts = {"total": counts}
        elif not isinstance(counts, dict):
            counts = vars(counts)
        mapped = {}
        for name, value in counts.items():
            key = schema.PARAMETER_COUNT_KEYS.get(name)
            if key is not None:
                mapped[key] = float(value) / 1e6
        out[schema.canonical_scheme(scheme)] = mapped
    return out, None


def build_parameter_table() -> TableResult:
    spec = TABLES[1]
    numbers = paper.paper_numbers()
    ours, reason = _our_parameter_counts()
    systems = list(dict.fromkeys(list(numbers[numbers.table == 1].system) + sorted(ours, key=scheme_order)))
    records = []
    for system in systems:
        row = Row(system)
        for col in spec.columns:
            value = ours.get(system, {}).get(col.metric)
            paper_v = paper.paper_value(1, system, row.size, row.variant, "parameters", col.testset, 1.0, col.metric)
            records.append(cell_record(spec, row, col, value=value, sd=float("nan"), n=1 if value is not None else 0,
                                   paper_v=paper_v))
    notes = list(spec.notes) + ([f"Ours unavailable: {reason}."] if reason else [])
    reported = {k for counts in ours.values() for k in counts}
    not_reported = [c.label for c in spec.columns if c.metric not in reported]
    if ours and not_reported:
        notes.append(f"bertgen.schemes.parameter_counts reports no {', '.join(not_reported)} counts: those columns show only the paper.")
    return TableResult(spec, pd.DataFrame.from_records(records, columns=list(CELL_COLUMNS)), notes)


# ---------------------------------------------------------------------------------------------------------------------
# Tables 2–7


def scheme_order(system: str) -> tuple[int, str]:
    return (schema.SCHEME_ORDER.index(system) if system in schema.SCHEME_ORDER else len(schema.SCHEME_ORDER), system)


def _row_order(row: Row) -> tuple:
    """Scheme order, then size, then the full scheme before its variants."""
    return (scheme_order(row.system), row.size, row.variant != schema.DEFAULT_VARIANT, row.variant)


def _rows(spec: TableSpec, store: RunStore | None) -> list[Row]:
    """The paper's rows in the paper's order, then rows only we have (extra schemes, sizes or variants)."""
    numbers = paper.paper_numbers()
    ordered = [Row(s, z, v) for s, z, v in numbers[numbers.table == spec.number][["system", "size", "variant"]]
               .itertuples(index=False)]
    ours: list[Row] = []
    if store is not None and not store.runs.empty:
        runs = table_runs(spec, store)
        found = {Row(s, z, v) for s, z, v in runs[["scheme", "size", "variant"]].itertuples(index=False)}
        if spec.ablation:  # each ablated scheme also needs its full reference row (a layer selection's is the
            # paper's base row: its own size is the selection's, experiments.config.model_size)
            found |= {Row(r.system, r.size) for r in found if not r.variant.startswith(("first_", "layers_"))}
        ours = sorted(found, key=_row_order)
    baseline = _baseline_row(spec)
    if baseline is not None and any(r.is_scheme for r in ours):
        ours.append(baseline)
    rows = list(dict.fromkeys(ordered + ours))
    if spec.ablation:  # group each scheme's variants together (stable: the paper's order within a scheme)
        rows.sort(key=lambda r: _row_order(r)[:3])
    return rows


def decoding_notes(spec: TableSpec) -> list[str]:
    """Whose decoding settings the table's tasks use: the paper states beam 4 and α = 0.6 for WMT only (§4.3)."""
    tasks = [HARNESS_TASKS[t] for t in spec.tasks if t in HARNESS_TASKS and not HARNESS_TASKS[t].synthetic]
    if not tasks:
        return []
    settings = sorted({(t.beam_size, t.length_penalty_alpha) for t in tasks})
    shown = "; ".join(f"beam {beam}, length penalty α = {alpha:g}" for beam, alpha in settings)
    penalty = "GNMT's ((5+|Y|)/6)^α, our reading of the paper's α"
    if all(t.name.startswith("wmt") for t in tasks):
        return [f"Decoding: {shown} ({penalty}), as the paper states for WMT (§4.3)."]
    return [f"Decoding: {shown} ({penalty}): the paper states these for WMT only (§4.3); for "
            f"{', '.join(schema.TASKS[t.name].label for t in tasks)} they are our choice (docs/paper-settings.md)."]


def _baseline_row(spec: TableSpec) -> Row | None:
    """The table's trivial-baseline row, when each of its tasks has one (Tables 2, 3: copy source; 5: lead)."""
    labels = {BASELINE_ROWS.get(task_baseline(task)) for task in spec.tasks}
    if spec.ablation or len(labels) != 1 or None in labels:
        return None
    return Row(labels.pop())


GPT2_TUNING = "gpt2"  # Section 5's GPT-2 tuning (analysis.gpt2_tuning): stated in the text, not a numbered table
ALL_TABLES = (*sorted(TABLES), GPT2_TUNING)  # what --table all (and the default) builds


def build_table(number: int, store: RunStore | None = None, *, n_boot: int = stats.DEFAULT_N_BOOT,
                alpha: float = stats.DEFAULT_ALPHA) -> TableResult:
    """Build Table ``number`` (1–7, or ``"gpt2"``) from ``store`` (``None``: only the paper's column is filled, except
    Table 1)."""
    if number == GPT2_TUNING:
        return build_gpt2_tuning_table(store, n_boot=n_boot, alpha=alpha)
    if number not in TABLES:
        raise ValueError(f"table {number}: expected one of {sorted(TABLES)}")
    if number == 1:
        return build_parameter_table()
    spec = TABLES[number]
    notes: list[str] = list(spec.notes) + decoding_notes(spec)
    rows = _rows(spec, store)
    if any(r.is_scheme and r.size not in schema.PAPER_SIZES.values() for r in rows):
        notes.append("A size (L<layers>-H<hidden>) or budget in a row's name marks runs of a model size or a number "
                     "of updates other than the paper's 12/24-layer runs: the paper's number is set beside none of "
                     "them, unless the paper reports that very size (Table 6's 10 layers of BERT-Large).")
    notes += [f"{row.label}: {schema.NO_PAPER_NUMBER[row.variant]}." for row in rows
              if row.variant in schema.NO_PAPER_NUMBER]
    by_column: dict[str, list[CellData]] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for col in spec.columns:
            for row in rows:
                if store is None:
                    paper_v = paper.paper_value(spec.number, row.system, row.size, row.variant, col.task, col.testset,
                                                col.data_fraction, col.paper_key)
                    by_column.setdefault(col.key, []).append(CellData(row, cell_record(spec, row, col, paper_v=paper_v), []))
                else:
                    by_column.setdefault(col.key, []).append(compute_cell(spec, store, row, col, notes, n_boot, alpha))
            mark_significance(by_column[col.key], col, alpha, n_boot)
    notes += closing_notes(store, caught, n_boot, alpha, "column's best")
    records = [c.record for col in spec.columns for c in by_column[col.key]]
    if any(record["not_run"] for record in records):
        notes.append(NOT_RUN_NOTE)
    return TableResult(spec, pd.DataFrame.from_records(records, columns=list(CELL_COLUMNS)), notes, n_boot, alpha)


def build_tables(numbers: Iterable[int], store: RunStore | None, **kwargs) -> dict[int, TableResult]:
    return {n: build_table(n, store, **kwargs) for n in numbers}


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def parse_tables(text: str) -> list[int | str]:
    if text == "all":
        return list(ALL_TABLES)
    try:
        numbers = [t if t == GPT2_TUNING else int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--table {text!r}: expected 1-7, {GPT2_TUNING}, a comma list, or 'all'") from None
    bad = [n for n in numbers if n not in ALL_TABLES]
    if bad:
        raise argparse.ArgumentTypeError(f"--table {text!r}: no table {bad}; expected numbers in 1-7, {GPT2_TUNING} "
                                         "or 'all'")
    return numbers


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    add_tracking_uri(parser)
    parser.add_argument("--experiment", default=None, help="MLflow experiment name (default: all experiments)")
    parser.add_argument("--grid", default=None, help="only runs of this grid (tag 'grid')")
    parser.add_argument("--n-boot", type=int, default=stats.DEFAULT_N_BOOT, help="bootstrap resamples")
    parser.add_argument("--alpha", type=float, default=stats.DEFAULT_ALPHA, help="significance level / 1 - CI level")


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.tables", description=__doc__.split("\n\n")[0])
    add_store_arguments(parser)
    parser.add_argument("--table", type=parse_tables, default=list(ALL_TABLES),
                        help=f"1-7, {GPT2_TUNING} (Section 5's GPT-2 tuning), a comma list, or all")
    parser.add_argument("--format", choices=FORMATS, default=DEFAULT_FORMAT)
    parser.add_argument("--out", type=Path, default=None, help="write table<N>.<md|tex|csv> here instead of stdout")
    args = parser.parse_args(argv)
    store = None
    if any(n != 1 for n in args.table):
        store = RunStore(args.tracking_uri, args.experiment, args.grid)
    for number in args.table:
        text = render(build_table(number, store, n_boot=args.n_boot, alpha=args.alpha), args.format)
        if args.out is None:
            sys.stdout.write(text + "\n")
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"table{number}.{SUFFIX[args.format]}"
            path.write_text(text, encoding="utf-8")
            print(path)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
