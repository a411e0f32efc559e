"""Does bf16 training follow fp32? Runs of the same cells that differ only in ``train.bf16``, side by side.

    python -m analysis.precision [--experiment bertgen-bf16] [--tracking-uri URI] [--out bf16_curves.png]

For each task and scheme it prints the final train loss, final dev loss and test score of each precision (mean
over seeds), with the fp32 seed-to-seed spread next to the fp32-bf16 difference: "within noise" means the
difference is no larger than what another seed gives. The figure has one panel per scheme: the train loss
(logged every ``train.log_every`` updates) of every run, fp32 solid and bf16 dashed, one colour per seed.
``grids/bf16_check.yaml`` trains such a set of runs on the smoke task.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.cli import EXIT_OK, entry_point
from experiments.config.validate import Refusal

from .runs import RunStore, add_tracking_uri

PRECISION_PARAM = "train.bf16"


def precision_runs(store: RunStore) -> pd.DataFrame:
    """The store's cell runs with their precision ("fp32" or "bf16") and final train/dev loss."""
    rows = []
    for run in store.runs.itertuples():
        data = store.run_data(run.run_id)
        setting = data.params.get(PRECISION_PARAM)
        if setting is None:
            continue
        precision = "bf16" if data.tags.get("bf16", setting) in ("True", "true") else "fp32"
        rows.append(dict(run_id=run.run_id, task=run.task, scheme=run.scheme, seed=run.seed, precision=precision,
                         train_loss=data.metrics.get("loss", np.nan), dev_loss=data.metrics.get("dev_loss", np.nan)))
    return pd.DataFrame(rows, columns=["run_id", "task", "scheme", "seed", "precision", "train_loss", "dev_loss"])


def comparison(store: RunStore, runs: pd.DataFrame) -> pd.DataFrame:
    """Per task, scheme and measure: fp32 mean, bf16 mean, their difference and the fp32 spread over seeds."""
    scores = store.scores[store.scores.run_id.isin(runs.run_id) & (store.scores.testset == "test")]
    primary = scores.pivot_table(index="run_id", columns="metric", values="value")
    merged = runs.set_index("run_id").join(primary, how="left")
    measures = ["train_loss", "dev_loss"] + [m for m in ("sari", "exact", "bleu", "rougeL") if m in merged.columns]
    out = []
    for (task, scheme), group in merged.groupby(["task", "scheme"]):
        for measure in measures:
            fp32 = group[group.precision == "fp32"][measure].dropna()
            bf16 = group[group.precision == "bf16"][measure].dropna()
            if fp32.empty or bf16.empty:
                continue
            out.append(dict(task=task, scheme=scheme, measure=measure, seeds=len(fp32), fp32=fp32.mean(),
                            bf16=bf16.mean(), difference=bf16.mean() - fp32.mean(),
                            fp32_seed_spread=fp32.max() - fp32.min() if len(fp32) > 1 else np.nan))
    return pd.DataFrame(out)


def curves_figure(store: RunStore, runs: pd.DataFrame):
    """Train loss against step per scheme: fp32 solid, bf16 dashed, one colour per seed."""
    from .plots import new_figure

    schemes = sorted(runs.scheme.unique())
    fig = new_figure((4.6 * len(schemes), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(schemes), sharey=True))
    seeds = sorted(runs.seed.unique())
    colors = {seed: f"C{i}" for i, seed in enumerate(seeds)}
    for ax, scheme in zip(axes, schemes):
        for run in runs[runs.scheme == scheme].itertuples():
            history = store.dev_history(run.run_id, "loss")
            ax.plot(history.step, history.value, color=colors[run.seed], lw=1.2,
                    ls="-" if run.precision == "fp32" else "--", label=f"{run.precision}, seed {run.seed}")
        ax.set_title(scheme)
        ax.set_xlabel("update")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("train loss (per target token)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="bertgen-bf16", help="MLflow experiment (default: bertgen-bf16)")
    add_tracking_uri(parser)
    parser.add_argument("--out", type=Path, default=None, help="write the curves to this PNG")
    args = parser.parse_args(argv)
    store = RunStore(args.tracking_uri, experiment=args.experiment)
    runs = precision_runs(store)
    if runs.empty or set(runs.precision) != {"fp32", "bf16"}:
        raise Refusal(f"experiment {args.experiment}: needs finished runs in both fp32 and bf16 (have "
                      f"{sorted(set(runs.precision))}); run grids/bf16_check.yaml")
    table = comparison(store, runs)
    with pd.option_context("display.width", 160, "display.max_rows", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    if args.out:
        from .plots import to_png

        args.out.write_bytes(to_png(curves_figure(store, runs)))
        print(f"wrote {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
