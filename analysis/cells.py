"""One cell of a results table computed from MLflow runs: the runs that fill it, ours (mean ± sd over seeds), the 95 %
bootstrap CI, the paper's number, and the column's best and significance marks.

The numbered tables (:mod:`analysis.tables`) and Section 5's GPT-2 tuning (:mod:`analysis.gpt2_tuning`) both build
their cells here; how a cell is computed is told in :mod:`analysis.tables`' docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd

from experiments.config.tasks import TASKS as HARNESS_TASKS

from . import paper, schema, stats
from .table_render import SIG_MARK
from .table_specs import BASELINE_ROWS, GOLD, Column, Row, TableSpec, not_run_reason

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


def task_baseline(task: str) -> str | None:
    harness_task = HARNESS_TASKS.get(task)
    return harness_task.baseline if harness_task is not None else None


def table_runs(spec: TableSpec, store: RunStore) -> pd.DataFrame:
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


def select_runs(store: RunStore, row: Row, col: Column) -> tuple[pd.DataFrame, int, str | None]:
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
class CellData:
    """What significance testing needs from a computed cell."""

    row: Row
    record: dict
    rows_per_run: list[dict]  # example_rows dicts ({"ids": ..., metric: ...}) of the seeds


def compute_cell(spec: TableSpec, store: RunStore, row: Row, col: Column, notes: list[str],
                  n_boot: int, alpha: float) -> CellData:
    from .runs import align, metric_score

    paper_v = paper.paper_value(spec.number, row.system, row.size, row.variant, col.task, col.testset,
                                col.data_fraction, col.paper_key)
    empty = CellData(row, cell_record(spec, row, col, paper_v=paper_v), [])
    if col.metric == "human_score":
        return empty
    if row.system == GOLD:
        return _gold_cell(spec, store, row, col, paper_v, n_boot, alpha) or empty
    if row.system in BASELINE_ROWS.values():
        return _baseline_cell(spec, store, row, col, n_boot, alpha) or empty
    if not row.is_scheme:
        return empty
    selected, n_groups, note = select_runs(store, row, col)
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
    record = cell_record(spec, row, col, value=summary.mean, sd=summary.sd, n=summary.n, paper_v=paper_v,
                     interval=interval, run_ids=list(selected.run_id), groups=n_groups)
    return CellData(row, record, rows_per_run)


def _wants_rows(metric: str) -> bool:
    """Whether per-example rows exist for a metric (the harness' registry, or our text statistics)."""
    if metric in schema.TEXT_METRICS:
        return True
    from experiments.data import metrics as harness_metrics

    return metric in harness_metrics.METRICS


def _gold_cell(spec: TableSpec, store: RunStore, row: Row, col: Column, paper_v: float | None, n_boot: int,
               alpha: float) -> CellData | None:
    """Table 7's Gold row: the reference summaries' own length and repetition, from any run's predictions."""
    if col.metric not in schema.TEXT_METRICS:
        return None
    from .runs import metric_score

    candidates = store.runs[store.runs.task == col.task].sort_values("start_time", ascending=False)
    for run_id in candidates.run_id:
        rows = store.gold_rows(run_id, col.testset, [col.metric])
        if rows is not None:
            interval = stats.bootstrap_ci([rows[col.metric]], metric_score(col.metric), n_boot=n_boot, alpha=alpha)
            record = cell_record(spec, row, col, value=interval.point, sd=float("nan"), n=1, paper_v=paper_v,
                             interval=interval, run_ids=[run_id], groups=1)
            return CellData(row, record, [])
    return None


def _baseline_cell(spec: TableSpec, store: RunStore, row: Row, col: Column, n_boot: int,
                   alpha: float) -> CellData | None:
    """A trivial baseline's score on the test examples of the column's latest run (the sources are in its
    predictions file), with its bootstrap CI. Not a contender for the column's best."""
    baseline = task_baseline(col.task)
    if baseline is None or col.metric in schema.TEXT_METRICS:
        return None
    from .runs import metric_score

    runs = table_runs(spec, store)
    candidates = runs[(runs.task == col.task) & (runs.data_fraction == col.data_fraction)]
    for run_id in candidates.sort_values("start_time", ascending=False).run_id:
        rows = store.baseline_rows(run_id, col.testset, [col.metric], baseline)
        if rows is not None:
            interval = stats.bootstrap_ci([rows[col.metric]], metric_score(col.metric), n_boot=n_boot, alpha=alpha)
            record = cell_record(spec, row, col, value=interval.point, sd=float("nan"), n=1, interval=interval,
                             run_ids=[run_id], groups=1)
            return CellData(row, record, [])
    return None


def cell_record(spec: TableSpec, row: Row, col: Column, *, value: float | None = None, sd: float = float("nan"),
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


def mark_significance(cells: list[CellData], col: Column, alpha: float, n_boot: int) -> None:
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

