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
   and ``experiments.metrics`` per-example statistics (:mod:`analysis.stats`).
4. **Significance**: in each column the scheme with the best mean is compared with every other scheme by a paired
   bootstrap on the test examples both were scored on; ``†`` marks a scheme significantly below the best
   (one-sided p < alpha, default 0.05; no correction for multiple comparisons). The best is shown in bold.
5. **Paper / Δ**: the paper's number (``analysis/paper_numbers``) and ours − paper. Cells without runs show "—".

Table 1 needs no runs: it counts the parameters of the schemes themselves (``bertgen.schemes.parameter_counts``).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from experiments.tasks import TASKS as HARNESS_TASKS

from . import paper, schema, stats
from .table_specs import BASELINE_ROWS, GOLD, NOT_RUN_NOTE, TABLES, Column, Row, TableSpec, not_run_reason
# Rendering (markdown, LaTeX, CSV) lives in analysis.table_render; render and wide are imported from here too.
from .table_render import DEFAULT_FORMAT, FORMATS, SIG_MARK, SUFFIX, render, wide  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from .runs import RunStore



@dataclass
class TableResult:
    """A built table: one long-form row per (row, column) cell, plus notes to print under it."""

    spec: TableSpec
    cells: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    n_boot: int = stats.DEFAULT_N_BOOT
    alpha: float = stats.DEFAULT_ALPHA


CELL_COLUMNS = (
    "table", "row", "system", "size", "variant", "column", "column_label", "task", "testset", "data_fraction",
    "metric", "mean", "sd", "n", "ci_low", "ci_high", "ci_point", "n_examples", "paper", "diff", "is_best",
    "p_vs_best", "mark", "run_ids", "groups_matching", "not_run",
)  # fmt: skip


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
            records.append(_record(spec, row, col, value=value, sd=float("nan"), n=1 if value is not None else 0,
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
        runs = _table_runs(spec, store)
        found = {Row(s, z, v) for s, z, v in runs[["scheme", "size", "variant"]].itertuples(index=False)}
        if spec.ablation:  # each ablated scheme also needs its full reference row (a layer selection's is the
            # paper's base row: its own size is the selection's, experiments.model_size)
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


def _task_baseline(task: str) -> str | None:
    harness_task = HARNESS_TASKS.get(task)
    return harness_task.baseline if harness_task is not None else None


def _baseline_row(spec: TableSpec) -> Row | None:
    """The table's trivial-baseline row, when each of its tasks has one (Tables 2, 3: copy source; 5: lead)."""
    labels = {BASELINE_ROWS.get(_task_baseline(task)) for task in spec.tasks}
    if spec.ablation or len(labels) != 1 or None in labels:
        return None
    return Row(labels.pop())


def _table_runs(spec: TableSpec, store: RunStore) -> pd.DataFrame:
    runs = store.runs[store.runs.task.isin(spec.tasks)]
    if spec.ablation:
        fractions = {c.data_fraction for c in spec.columns}
        return runs[runs.data_fraction.isin(fractions) & ((runs.variant != schema.DEFAULT_VARIANT)
                    | runs.scheme.isin(runs[runs.variant != schema.DEFAULT_VARIANT].scheme))]
    # The full schemes, the same schemes trained with another cross-attention init, and the released checkpoints
    # evaluated without training (rows of their own, marked).
    setting = runs.variant.str.startswith(schema.CROSS_ATTENTION_VARIANT_PREFIX)
    return runs[(runs.variant == schema.DEFAULT_VARIANT) | setting | runs.variant.isin(schema.RELEASED_VARIANTS)
                | runs.variant.isin(spec.variants)]


def _primary_metric(task: str, store: RunStore) -> str | None:
    if task in HARNESS_TASKS:
        return HARNESS_TASKS[task].primary_metric
    info = schema.TASKS.get(task)
    return info.primary_metric if info else None


def dev_criterion(store: RunStore, task: str, run_ids: Iterable[str]) -> tuple[str, bool] | None:
    """``(dev metric, higher is better)`` the runs can be compared on: the task's primary metric when logged on dev,
    else the dev loss (what train_cell selects its checkpoint by); ``None`` without dev scores."""
    dev = store.dev_final[store.dev_final.run_id.isin(list(run_ids))]
    primary = _primary_metric(task, store)
    if primary is not None and (dev.metric == primary).any():
        return primary, True
    if (dev.metric == schema.DEV_LOSS).any():
        return schema.DEV_LOSS, False
    return None


def _best_dev(store: RunStore, run_id: str, metric: str, higher: bool) -> float | None:
    """The run's best dev value over training (the checkpoint it was tested with), or ``None``."""
    keys = store.dev_final[(store.dev_final.run_id == run_id) & (store.dev_final.metric == metric)].key
    if not len(keys):
        return None
    values = store.dev_history(run_id, keys.iloc[0]).value
    return float(values.max() if higher else values.min()) if len(values) else None


def _select_runs(store: RunStore, row: Row, col: Column) -> tuple[pd.DataFrame, int, str | None]:
    """The runs (one per seed) of the group that fills this cell, the number of matching groups, and a note."""
    runs = store.runs
    if not store.has_runs(col.task, row.system, row.size, row.variant):
        return runs.iloc[0:0], 0, None
    match = runs[(runs.task == col.task) & (runs.scheme == row.system) & (runs["size"] == row.size)
                 & (runs.variant == row.variant) & ((runs.data_fraction - col.data_fraction).abs() < 1e-9)]
    if match.empty:
        return match, 0, None
    groups = list(dict.fromkeys(match.group))
    chosen, note = groups[0], None
    if len(groups) > 1:
        criterion = dev_criterion(store, col.task, match.run_id)
        ranking = []
        for group in groups:
            members = match[match.group == group]
            score = -math.inf
            if criterion is not None:
                metric, higher = criterion
                values = [v for v in (_best_dev(store, r, metric, higher) for r in members.run_id) if v is not None]
                if values:
                    score = float(np.mean(values)) * (1 if higher else -1)
            ranking.append((score, members.start_time.max(), group))
        ranking.sort(reverse=True)
        chosen = ranking[0][2]
        how = f"best dev {criterion[0]}" if math.isfinite(ranking[0][0]) else "most recent (no dev scores)"
        note = f"{row.label} / {col.label}: {len(groups)} run groups match; took the {how}"
    selected = match[match.group == chosen].sort_values("start_time")
    with_seed = selected[selected.seed.notna()].drop_duplicates("seed", keep="last")
    return pd.concat([with_seed, selected[selected.seed.isna()]]), len(groups), note


@dataclass
class _CellData:
    """What significance testing needs from a computed cell."""

    row: Row
    record: dict
    rows_per_run: list[dict]  # example_rows dicts ({"ids": ..., metric: ...}) of the seeds


def _compute_cell(spec: TableSpec, store: RunStore, row: Row, col: Column, notes: list[str],
                  n_boot: int, alpha: float) -> _CellData:
    from .runs import align, metric_score

    paper_v = paper.paper_value(spec.number, row.system, row.size, row.variant, col.task, col.testset,
                                col.data_fraction, col.paper_key)
    empty = _CellData(row, _record(spec, row, col, paper_v=paper_v), [])
    if col.metric == "human_score":
        return empty
    if row.system == GOLD:
        return _gold_cell(spec, store, row, col, paper_v, n_boot, alpha) or empty
    if row.system in BASELINE_ROWS.values():
        return _baseline_cell(spec, store, row, col, n_boot, alpha) or empty
    if not row.is_scheme:
        return empty
    selected, n_groups, note = _select_runs(store, row, col)
    if selected.empty:
        return empty
    if note:
        notes.append(note)
    if (selected.data_variant == "full").any():
        full = (f"{row.label} / {col.label}: trained and tested on the hub's full data (data.variant: full), not the "
                f"paper's ({getattr(HARNESS_TASKS.get(col.task), 'paper_data', None) or 'its own data'}).")
        if full not in notes:
            notes.append(full)
    text_metric = col.metric in schema.TEXT_METRICS
    logged = store.scores[(store.scores.testset == col.testset) & (store.scores.metric == col.metric)]
    values, rows_per_run = [], []
    for run_id in selected.run_id:
        rows = store.example_rows(run_id, col.testset, [col.metric]) if _wants_rows(col.metric) else None
        if rows is not None:
            rows_per_run.append(rows)
        hit = logged[logged.run_id == run_id].value
        if len(hit) and not text_metric:
            values.append(float(hit.iloc[-1]))
        elif rows is not None:  # not logged (text statistics, or an older run): compute it from the predictions
            values.append(metric_score(col.metric)(rows[col.metric]))
    if not values:
        return empty
    summary = stats.summarize_seeds(values)
    interval = None
    if rows_per_run:
        interval = stats.bootstrap_ci(align(rows_per_run, col.metric), metric_score(col.metric), n_boot=n_boot,
                                      alpha=alpha)
    record = _record(spec, row, col, value=summary.mean, sd=summary.sd, n=summary.n, paper_v=paper_v,
                     interval=interval, run_ids=list(selected.run_id), groups=n_groups)
    return _CellData(row, record, rows_per_run)


def _wants_rows(metric: str) -> bool:
    """Whether per-example rows exist for a metric (the harness' registry, or our text statistics)."""
    if metric in schema.TEXT_METRICS:
        return True
    from experiments import metrics as harness_metrics

    return metric in harness_metrics.METRICS


def _gold_cell(spec: TableSpec, store: RunStore, row: Row, col: Column, paper_v: float | None, n_boot: int,
               alpha: float) -> _CellData | None:
    """Table 7's Gold row: the reference summaries' own length and repetition, from any run's predictions."""
    if col.metric not in schema.TEXT_METRICS:
        return None
    from .runs import metric_score

    candidates = store.runs[store.runs.task == col.task].sort_values("start_time", ascending=False)
    for run_id in candidates.run_id:
        rows = store.gold_rows(run_id, col.testset, [col.metric])
        if rows is not None:
            interval = stats.bootstrap_ci([rows[col.metric]], metric_score(col.metric), n_boot=n_boot, alpha=alpha)
            record = _record(spec, row, col, value=interval.point, sd=float("nan"), n=1, paper_v=paper_v,
                             interval=interval, run_ids=[run_id], groups=1)
            return _CellData(row, record, [])
    return None


def _baseline_cell(spec: TableSpec, store: RunStore, row: Row, col: Column, n_boot: int,
                   alpha: float) -> _CellData | None:
    """A trivial baseline's score on the test examples of the column's latest run (the sources are in its
    predictions file), with its bootstrap CI. Not a contender for the column's best."""
    baseline = _task_baseline(col.task)
    if baseline is None or col.metric in schema.TEXT_METRICS:
        return None
    from .runs import metric_score

    runs = _table_runs(spec, store)
    candidates = runs[(runs.task == col.task) & (runs.data_fraction == col.data_fraction)]
    for run_id in candidates.sort_values("start_time", ascending=False).run_id:
        rows = store.baseline_rows(run_id, col.testset, [col.metric], baseline)
        if rows is not None:
            interval = stats.bootstrap_ci([rows[col.metric]], metric_score(col.metric), n_boot=n_boot, alpha=alpha)
            record = _record(spec, row, col, value=interval.point, sd=float("nan"), n=1, interval=interval,
                             run_ids=[run_id], groups=1)
            return _CellData(row, record, [])
    return None


def _record(spec: TableSpec, row: Row, col: Column, *, value: float | None = None, sd: float = float("nan"),
            n: int = 0, paper_v: float | None = None, interval: stats.Interval | None = None,
            run_ids: Sequence[str] = (), groups: int = 0) -> dict:
    mean = float("nan") if value is None else float(value)
    paper_value = float("nan") if paper_v is None else float(paper_v)
    return dict(
        table=spec.number, row=row.label, system=row.system, size=row.size, variant=row.variant, column=col.key,
        column_label=col.label, task=col.task, testset=col.testset, data_fraction=col.data_fraction,
        metric=col.metric, mean=mean, sd=sd, n=n,
        ci_low=interval.low if interval else float("nan"), ci_high=interval.high if interval else float("nan"),
        ci_point=interval.point if interval else float("nan"), n_examples=interval.n_examples if interval else 0,
        paper=paper_value, diff=mean - paper_value, is_best=False, p_vs_best=float("nan"), mark="",
        run_ids=",".join(run_ids), groups_matching=groups,
        # why no cell runs this row (table_specs.NOT_RUN_REASONS), printed in place of ours
        not_run=(not_run_reason(spec.number, row.system, row.size, row.variant, col.metric) or "")
        if value is None else "",
    )


def _mark_significance(cells: list[_CellData], col: Column, alpha: float, n_boot: int) -> None:
    """Bold the column's best scheme (all of them on a tie); ``†`` every scheme significantly below it (paired
    bootstrap against the best)."""
    if col.metric in schema.HIGHER_IS_BETTER_EXCEPT:
        return
    from .runs import align, metric_score

    contenders = [c for c in cells if c.rows_per_run and np.isfinite(c.record["mean"]) and c.row.system != GOLD]
    if len(contenders) < 2:
        return
    best = max(contenders, key=lambda c: c.record["mean"])
    for c in contenders:  # ties share the bold
        c.record["is_best"] = c.record["mean"] == best.record["mean"]
    score = metric_score(col.metric)
    for other in contenders:
        if other.record["is_best"]:
            continue
        try:
            aligned = align(best.rows_per_run + other.rows_per_run, col.metric)
        except ValueError:  # no shared examples: not comparable
            continue
        k = len(best.rows_per_run)
        test = stats.paired_bootstrap(aligned[:k], aligned[k:], score, n_boot=n_boot)
        other.record["p_vs_best"] = test.p_value
        if test.p_value < alpha:
            other.record["mark"] = SIG_MARK


GPT2_TUNING = "gpt2"  # Section 5's GPT-2 tuning (analysis.gpt2_tuning): stated in the text, not a numbered table
ALL_TABLES = (*sorted(TABLES), GPT2_TUNING)  # what --table all (and the default) builds


def closing_notes(store: RunStore | None, caught: Iterable, n_boot: int, alpha: float, best: str) -> list[str]:
    """The notes under every table: warnings raised while building it, what was left out, how to read ours
    (``best``: what the bold marks)."""
    notes = sorted({str(w.message) for w in caught})
    if store is None:
        notes.append("No tracking store: only the paper's numbers are shown.")
    elif store.skipped:
        notes.append(f"{len(store.skipped)} unfinished run(s) left out (e.g. {store.skipped[0]}).")
    notes.append(f"Ours: mean ± sd over seeds (n), [95% bootstrap CI over test examples, {n_boot} resamples]; "
                 f"bold: {best}; {SIG_MARK}: below it with paired-bootstrap p < {alpha:g}.")
    return notes


def build_table(number: int, store: RunStore | None = None, *, n_boot: int = stats.DEFAULT_N_BOOT,
                alpha: float = stats.DEFAULT_ALPHA) -> TableResult:
    """Build Table ``number`` (1–7, or ``"gpt2"``) from ``store`` (``None``: only the paper's column is filled, except
    Table 1)."""
    if number == GPT2_TUNING:
        from .gpt2_tuning import build_gpt2_tuning_table  # it builds its cells with this module's functions

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
    by_column: dict[str, list[_CellData]] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for col in spec.columns:
            for row in rows:
                if store is None:
                    paper_v = paper.paper_value(spec.number, row.system, row.size, row.variant, col.task, col.testset,
                                                col.data_fraction, col.paper_key)
                    by_column.setdefault(col.key, []).append(_CellData(row, _record(spec, row, col, paper_v=paper_v), []))
                else:
                    by_column.setdefault(col.key, []).append(_compute_cell(spec, store, row, col, notes, n_boot, alpha))
            _mark_significance(by_column[col.key], col, alpha, n_boot)
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
    parser.add_argument("--tracking-uri", default=None,
                        help=f"MLflow tracking URI (default: ${schema.TRACKING_URI_ENV}, else {schema.DEFAULT_TRACKING_URI})")
    parser.add_argument("--experiment", default=None, help="MLflow experiment name (default: all experiments)")
    parser.add_argument("--grid", default=None, help="only runs of this grid (tag 'grid')")
    parser.add_argument("--n-boot", type=int, default=stats.DEFAULT_N_BOOT, help="bootstrap resamples")
    parser.add_argument("--alpha", type=float, default=stats.DEFAULT_ALPHA, help="significance level / 1 - CI level")


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
        from .runs import RunStore

        try:
            store = RunStore(args.tracking_uri, args.experiment, args.grid)
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
    for number in args.table:
        text = render(build_table(number, store, n_boot=args.n_boot, alpha=args.alpha), args.format)
        if args.out is None:
            sys.stdout.write(text + "\n")
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"table{number}.{SUFFIX[args.format]}"
            path.write_text(text, encoding="utf-8")
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
