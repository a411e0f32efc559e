"""Figures of the study, beside the paper's numbers (matplotlib, Agg backend, PNG and PDF).

    python -m analysis.plots [--tracking-uri URI] [--experiment NAME] [--grid NAME] [--out DIR] [--formats png pdf]

* ``bars_<task>``: every scheme's score per metric — ours (bar with the 95 % bootstrap CI as whiskers) beside the
  paper's value; a scheme without runs has only its paper bar.
* ``curves_<task>``: dev score against the training step (the task's primary metric if logged on dev, else the dev
  loss train_cell logs), one line per scheme (mean over seeds at the steps all seeds logged; band = min–max).
* ``discofuse_fraction``: SARI against the fraction of DiscoFuse training data (1/10/100 %), per scheme; ours solid
  with CI whiskers, the paper's dashed.
* ``xsum_length_repetition``: Table 7 as bars — summary length and % of summaries repeating a content word.

Figures are plain ``matplotlib.figure.Figure`` objects drawn on an Agg canvas, never through ``pyplot``: no global
backend switch, no figure registry to leak memory in long notebooks, and identical output headless or interactive.

All numbers come from :func:`analysis.tables.build_table`, so a figure never disagrees with its table.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments.cli import EXIT_OK, entry_point

from . import schema, stats
from .table_specs import Column, Row
from .cells import TableResult, dev_criterion, select_runs
from .runs import RunStore
from .tables import add_store_arguments, build_table

DEFAULT_OUT = Path("outputs/figures")
DEFAULT_FORMATS = ("png", "pdf")
OURS_COLOR, PAPER_COLOR = "#1f77b4", "#bbbbbb"
SCHEME_COLORS = dict(zip(schema.SCHEME_ORDER, matplotlib.colormaps["tab10"].colors))


def new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of a figure (what the notebook displays)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()

# Which table columns each task's bar chart shows.
TASK_BARS: dict[str, tuple[int, tuple[str, ...]]] = {
    "discofuse": (2, ("exact_100", "sari_100")),
    "wikisplit": (3, ("exact", "sari", "bleu")),
    "wmt14_en_de": (4, ("ende_2014", "ende_2016")),
    "wmt14_de_en": (4, ("deen_2014", "deen_2016")),
    "gigaword": (5, ("gigaword_r1", "gigaword_r2", "gigaword_rl")),
    "cnn_dailymail": (5, ("cnn_dailymail_r1", "cnn_dailymail_r2", "cnn_dailymail_rl")),
    "xsum": (5, ("xsum_r1", "xsum_r2", "xsum_rl")),
}


def _scheme_cells(result: TableResult, column: str) -> pd.DataFrame:
    """The scheme rows of one column in the canonical scheme order: the paper's base-size schemes, and every other
    row that was run (another size or budget, a variant such as bert2bert's cross-attention init) under its own
    label, beside no paper bar unless the paper has that very row."""
    cells = result.cells
    paper_row = (cells["size"] == schema.DEFAULT_SIZE) & (cells.variant == schema.DEFAULT_VARIANT)
    ran = np.isfinite(cells["mean"])
    sub = cells[(cells.column == column) & cells.system.isin(schema.SCHEME_ORDER)
                & ((paper_row & (ran | np.isfinite(cells["paper"]))) | ran)]
    return (sub.assign(order=sub.system.map(schema.SCHEME_ORDER.index), own=~paper_row.loc[sub.index])
            .sort_values(["order", "own", "row"], kind="stable"))


def _whiskers(sub: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars from the bootstrap CI (zero where there is none, clipped at 0 if the logged mean
    falls outside the recomputed interval)."""
    low = np.clip(sub["mean"] - sub["ci_low"], 0, None).fillna(0).to_numpy()
    high = np.clip(sub["ci_high"] - sub["mean"], 0, None).fillna(0).to_numpy()
    return np.vstack([low, high])


def _paired_bars(ax, sub: pd.DataFrame, title: str) -> None:
    x = np.arange(len(sub))
    width = 0.4
    ours = sub["mean"].to_numpy()
    ax.bar(x - width / 2, np.nan_to_num(ours), width, color=OURS_COLOR, label="ours (95% CI)")
    has_ci = np.isfinite(sub["ci_low"].to_numpy()) & np.isfinite(ours)
    if has_ci.any():  # whiskers only where there is an interval (no predictions → no CI, not a zero-width one)
        ax.errorbar((x - width / 2)[has_ci], ours[has_ci], yerr=_whiskers(sub[has_ci]), fmt="none", ecolor="black",
                    capsize=3, lw=1)
    ax.bar(x + width / 2, np.nan_to_num(sub["paper"].to_numpy()), width, color=PAPER_COLOR, label="paper")
    for xi, value in zip(x, ours):
        if not np.isfinite(value):
            ax.text(xi - width / 2, 0, "no run", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(x, sub.row, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _grid(n: int, width: float = 4.8, height: float = 3.8) -> tuple[Figure, np.ndarray]:
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = new_figure((width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat[:n]


def task_bars(tables: dict[int, TableResult], task: str) -> Figure | None:
    """Grouped bars (ours with CI whiskers, paper) of every scheme for each of the task's reported numbers."""
    number, column_keys = TASK_BARS[task]
    result = tables.get(number)
    if result is None:
        return None
    labels = {c.key: c.label for c in result.spec.columns}
    panels = [(labels[k], _scheme_cells(result, k)) for k in column_keys]
    panels = [(label, sub) for label, sub in panels if len(sub)]
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    for ax, (label, sub) in zip(axes, panels):
        _paired_bars(ax, sub, label)
    _figure_legend(fig, axes[0], f"{schema.TASKS[task].label if task in schema.TASKS else task}: ours vs. the paper")
    return fig


def _figure_legend(fig: Figure, ax, title: str) -> None:
    """Title left, legend right, both above the panels, so the legend can never cover a bar."""
    fig.suptitle(title, fontsize=12, x=0.01, ha="left")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))


def learning_curves(store: RunStore, task: str) -> Figure | None:
    """Dev score against step, one line per scheme (full variant, all data): the task's primary metric if the runs
    logged it on dev, else the dev loss train_cell logs."""

    task_runs = store.runs[store.runs.task == task]
    criterion = dev_criterion(store, task, task_runs.run_id)
    if criterion is None:
        return None
    metric = criterion[0]
    dev = store.dev_final[store.dev_final.metric == metric]
    runs = task_runs[task_runs.run_id.isin(dev.run_id)]
    fig = new_figure((7.5, 4.5))
    ax = fig.subplots()
    column = Column("dev", "dev", task, metric)
    for scheme in sorted(runs.scheme.unique(), key=lambda s: (s not in schema.SCHEME_ORDER, schema.SCHEME_ORDER.index(s) if s in schema.SCHEME_ORDER else 0, s)):
        selected, _, _ = select_runs(store, Row(scheme), column)
        histories = []
        for run_id in selected.run_id:
            keys = dev[dev.run_id == run_id].key
            if len(keys):
                histories.append(store.dev_history(run_id, keys.iloc[0]).groupby("step").value.last())
        if not histories:
            continue
        joined = pd.concat(histories, axis=1, join="inner").sort_index()
        color = SCHEME_COLORS.get(scheme)
        ax.plot(joined.index, joined.mean(axis=1), marker="o", ms=3, color=color, label=f"{scheme} (n={len(histories)})")
        if len(histories) > 1:
            ax.fill_between(joined.index, joined.min(axis=1), joined.max(axis=1), color=color, alpha=0.15, lw=0)
    if not ax.lines:
        return None
    name = "loss (teacher-forced)" if metric == schema.DEV_LOSS else metric
    ax.set_xlabel("training step")
    ax.set_ylabel(f"dev {name}")
    ax.set_title(f"{schema.TASKS[task].label if task in schema.TASKS else task}: dev {name} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def data_fraction_plot(table2: TableResult) -> Figure | None:
    """DiscoFuse SARI against training-data fraction per scheme: ours solid (CI whiskers), paper dashed."""
    columns = [c for c in table2.spec.columns if c.metric == "sari"]
    cells = table2.cells[table2.cells.column.isin([c.key for c in columns]) & table2.cells.system.isin(schema.SCHEME_ORDER)
                         & (table2.cells["size"] == schema.DEFAULT_SIZE)]
    ours_schemes = [s for s in schema.SCHEME_ORDER if np.isfinite(cells[cells.system == s]["mean"]).any()]
    if not ours_schemes:
        return None
    fig = new_figure((7.5, 4.8))
    ax = fig.subplots()
    for scheme in ours_schemes:
        sub = cells[cells.system == scheme].sort_values("data_fraction")
        color = SCHEME_COLORS.get(scheme)
        x = sub.data_fraction * 100
        have = np.isfinite(sub["mean"])
        ax.errorbar(x[have], sub["mean"][have], yerr=_whiskers(sub[have]), color=color, marker="o", ms=4, capsize=3,
                    label=f"{scheme} (ours)")
        if np.isfinite(sub.paper).any():
            ax.plot(x, sub.paper, color=color, ls="--", marker="x", ms=4, alpha=0.7, label=f"{scheme} (paper)")
    ax.set_xscale("log")
    ax.set_xticks([1, 10, 100], ["1%", "10%", "100%"])
    ax.set_xlabel("fraction of DiscoFuse training data")
    ax.set_ylabel("SARI (test)")
    ax.set_title("DiscoFuse: SARI vs. training data (solid: ours, dashed: paper)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def xsum_plot(table7: TableResult) -> Figure | None:
    """Table 7 as two bar panels: average length and repetition rate, ours (CI) beside the paper's."""
    cells = table7.cells[table7.cells.column.isin(["length", "repetition"])]
    if not np.isfinite(cells["mean"]).any():
        return None
    fig = new_figure((10, 4))
    axes = fig.subplots(1, 2)
    for ax, key, ylabel in ((axes[0], "length", "words per summary"), (axes[1], "repetition", "% summaries")):
        sub = cells[(cells.column == key) & (np.isfinite(cells["mean"]) | np.isfinite(cells.paper))]
        _paired_bars(ax, sub, {"length": "average summary length", "repetition": "repeat a content word"}[key])
        ax.set_ylabel(ylabel)
    _figure_legend(fig, axes[0], "BBC XSum: length and repetition (paper: 40 documents; ours: whole test set)")
    return fig


def save(fig: Figure, out_dir: Path, name: str, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=150 if fmt == "png" else None, bbox_inches="tight")
        paths.append(path)
    return paths


def input_use_curves(store: RunStore, task: str) -> Figure | None:
    """Dev source gap (experiments.recipes.diagnostics: dev loss with other examples' sources minus with its own) against
    step, one line per run: a line that stays at 0 is a model that ignores its input."""
    task_runs = store.runs[store.runs.task == task].sort_values(["scheme", "variant", "seed"])
    fig = new_figure((7.5, 4.5))
    ax = fig.subplots()
    for run in task_runs.itertuples(index=False):
        history = store.dev_history(run.run_id, "dev_source_gap")
        if not len(history):
            continue
        history = history.groupby("step").value.last()
        label = run.scheme + (f" ({run.variant})" if run.variant != schema.DEFAULT_VARIANT else "")
        ax.plot(history.index, history.values, marker="o", ms=3, color=SCHEME_COLORS.get(run.scheme),
                ls="-" if run.variant == schema.DEFAULT_VARIANT else "--", label=f"{label} seed {run.seed}")
    if not ax.lines:
        return None
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("dev source gap (nats)")
    ax.set_title(f"{schema.TASKS[task].label if task in schema.TASKS else task}: does the model read its input?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def make_figures(store: RunStore, tables: dict[int, TableResult] | None = None, *,
                 n_boot: int = stats.DEFAULT_N_BOOT) -> dict[str, Figure]:
    """Every figure the store's runs support, by name (tasks without runs get none)."""
    needed = sorted({n for n, _ in TASK_BARS.values()} | {2, 7})
    tables = dict(tables or {})
    for number in needed:
        if number not in tables:
            tables[number] = build_table(number, store, n_boot=n_boot)
    figures: dict[str, Figure] = {}
    tasks_with_runs = set(store.runs.task)
    for task in TASK_BARS:
        if task in tasks_with_runs:
            if (fig := task_bars(tables, task)) is not None:
                figures[f"bars_{task}"] = fig
            if (fig := learning_curves(store, task)) is not None:
                figures[f"curves_{task}"] = fig
    for task in sorted(tasks_with_runs):
        if task not in TASK_BARS and (fig := learning_curves(store, task)) is not None:  # synthetic, own name
            figures[f"curves_{task}"] = fig
        if (fig := input_use_curves(store, task)) is not None:
            figures[f"input_use_{task}"] = fig
    if (fig := data_fraction_plot(tables[2])) is not None:
        figures["discofuse_fraction"] = fig
    if (fig := xsum_plot(tables[7])) is not None:
        figures["xsum_length_repetition"] = fig
    return figures


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.plots", description=__doc__.split("\n\n")[0])
    add_store_arguments(parser)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS), choices=["png", "pdf", "svg"])
    args = parser.parse_args(argv)
    store = RunStore(args.tracking_uri, args.experiment, args.grid)
    figures = make_figures(store, n_boot=args.n_boot)
    if not figures:
        print(f"no runs to plot in {store.tracking_uri}")
    for name, fig in figures.items():
        for path in save(fig, args.out, name, args.formats):
            print(path)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
