"""Every task's runs at a glance, each score beside the task's trivial baseline: what ``make smoke`` prints at the end.

The paper's Tables 2-7 (:mod:`analysis.tables`) only have the paper's tasks and settings; this summary has every task
a store holds, synthetic stand-ins included (under their own names, never set beside the paper's numbers), and for
each (scheme, variant) the test metrics with 95% bootstrap intervals over the test examples, the last measured dev
source gap (how much the model reads its input, experiments.recipes.diagnostics) and the task's trivial baseline (copy the
source, lead sentences) scored on the same examples.

    python -m analysis.summary --tracking-uri sqlite:///outputs/mlflow.db [--experiment bertgen-mini]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np
import pandas as pd

from experiments.cli import EXIT_OK, entry_point
from experiments.config.tasks import TASKS as HARNESS_TASKS

from . import paper, schema, stats
from .runs import RunStore, add_tracking_uri, align, metric_score
from .table_specs import BASELINE_ROWS
from .tables import scheme_order

SOURCE_GAP = "source_gap"  # experiments.recipes.diagnostics: logged as dev_source_gap at each evaluation


def _interval_text(interval: stats.Interval) -> str:
    return f"{interval.point:.1f} [{interval.low:.1f}, {interval.high:.1f}]"


def _score(store: RunStore, run_ids: Sequence[str], metric: str, n_boot: int) -> str:
    rows = [store.example_rows(run_id, schema.DEFAULT_TESTSET, [metric]) for run_id in run_ids]
    rows = [r for r in rows if r is not None]
    if rows:
        return _interval_text(stats.bootstrap_ci(align(rows, metric), metric_score(metric), n_boot=n_boot))
    logged = store.scores[store.scores.run_id.isin(run_ids) & (store.scores.metric == metric)
                          & (store.scores.testset == schema.DEFAULT_TESTSET)].value
    return f"{logged.mean():.1f}" if len(logged) else "—"


def _source_gap(store: RunStore, run_ids: Sequence[str]) -> str:
    gaps = []
    for run_id in run_ids:
        history = store.dev_history(run_id, f"dev_{SOURCE_GAP}")
        if len(history):
            gaps.append(float(history.sort_values("step").value.iloc[-1]))
    return f"{np.mean(gaps):.2f}" if gaps else "—"


def task_summary(store: RunStore, task: str, n_boot: int = stats.DEFAULT_N_BOOT) -> pd.DataFrame:
    """One row per (scheme, size, variant) of ``task`` plus its baseline row: seeds, test metrics with CIs, source
    gap."""
    harness_task = HARNESS_TASKS.get(task)
    metrics = list(harness_task.metrics) if harness_task else sorted(store.scores.metric.unique())
    runs = store.runs[store.runs.task == task]
    records = []
    keys = sorted({tuple(k) for k in runs[["scheme", "size", "variant", "data_fraction"]].itertuples(index=False)},
                  key=lambda k: (scheme_order(k[0]), k[1], k[2], -k[3]))
    for scheme, size, variant, fraction in keys:
        same = runs[(runs.scheme == scheme) & (runs["size"] == size) & (runs.variant == variant)
                    & (runs.data_fraction == fraction)]
        label = scheme + schema.size_label(size)
        label += f" ({paper.variant_label(variant)})" if variant != schema.DEFAULT_VARIANT else ""
        label += f" [{fraction:.0%} data]" if fraction != 1.0 else ""
        # Runs of other settings (train.steps ...) are rows of their own, never seeds of one row.
        settings = {g: schema.group_params(g) for g in sorted(same.group.unique())}
        differing = sorted(k for k in set().union(*settings.values())
                           if len({p.get(k) for p in settings.values()}) > 1)
        for group, params in sorted(settings.items(), key=lambda item: [item[1].get(k, "") for k in differing]):
            run_ids = list(same[same.group == group].sort_values("start_time").run_id)
            shown = ", ".join(f"{k}={params.get(k, '-')}" for k in differing[:3])
            record = {"system": label + (f" [{shown}]" if shown else ""), "seeds": len(run_ids)}
            record.update({metric: _score(store, run_ids, metric, n_boot) for metric in metrics})
            record["dev source gap"] = _source_gap(store, run_ids)
            records.append(record)
    baseline = harness_task.baseline if harness_task else None
    if baseline is not None and len(runs):
        latest = runs.sort_values("start_time").run_id.iloc[-1]
        rows = store.baseline_rows(latest, schema.DEFAULT_TESTSET, metrics, baseline)
        if rows is not None:
            name = BASELINE_ROWS[baseline] if baseline == "copy_source" else baseline.replace("_", "-")
            record = {"system": f"{name} (no model)", "seeds": 0}
            record.update({m: _interval_text(stats.bootstrap_ci([rows[m]], metric_score(m), n_boot=n_boot))
                           for m in metrics})
            record["dev source gap"] = "—"
            records.append(record)
    return pd.DataFrame.from_records(records)


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def render_summary(store: RunStore, n_boot: int = stats.DEFAULT_N_BOOT) -> str:
    blocks = []
    for task in sorted(store.runs.task.unique(), key=lambda t: (HARNESS_TASKS.get(t) is None, t)):
        info = schema.TASKS.get(task)
        harness_task = HARNESS_TASKS.get(task)
        title = f"{info.label if info else task} — task {task}"
        if harness_task is not None and harness_task.synthetic:
            title += " (synthetic stand-in: not comparable with the paper)"
        table = task_summary(store, task, n_boot)
        blocks.append(f"### {title}\n\n{_markdown(table)}")
    note = (f"Test metrics: point estimate [95% bootstrap CI over test examples, {n_boot} resamples], seed-mean when "
            "a row has several seeds. dev source gap: dev loss with other examples' sources minus with its own, at "
            "the last evaluation (nats; ~0 = the model ignores its input).")
    return "\n\n".join(blocks + [note]) if blocks else "no finished cell runs in this store"


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.summary", description=__doc__.split("\n\n")[0])
    add_tracking_uri(parser)
    parser.add_argument("--experiment", help="only this MLflow experiment (default: all)")
    parser.add_argument("--grid", help="only runs of this grid")
    parser.add_argument("--n-boot", type=int, default=stats.DEFAULT_N_BOOT, help="bootstrap resamples")
    args = parser.parse_args(argv)
    store = RunStore(args.tracking_uri, experiment=args.experiment, grid=args.grid)
    print(render_summary(store, args.n_boot))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
