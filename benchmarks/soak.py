"""Soak: does a cell's memory stay flat over thousands of updates? (A benchmark to run by hand, not a timed test.)

    python benchmarks/soak.py [--steps 2000] [--eval-every 50] [--checkpoint-every 50] [--num-workers 1] [--out DIR]

One tiny cell (bert2bert on the synthetic fusion task, the tiny checkpoints of experiments.smoke.pretrain's quick
settings) is launched the way a study runs — ``python -m experiments.launch grids/smoke.yaml --executor local``, a
cell process of its own, MLflow in the embedded sqlite store under ``--out`` — for ``--steps`` updates with the
periodic work of a week-long run at a high rate: the dev loss, the input-use probe and dev decoding every
``--eval-every`` updates, a checkpoint every ``--checkpoint-every``, a metric flush to MLflow every few seconds, a
data loader whose worker processes restart every epoch (40 examples: an epoch is 5 updates).

The cell trains with experiments.recipes.train.train_cell through :func:`train_cell_sampling_memory`, which records at every
logged step (``--log-every``) the cell process's resident set (VmRSS), its data-loader workers' and the number of
Python objects the garbage collector tracks, in ``<cell dir>/memory.csv``. The report is RSS over time and its
slope, a least-squares line through the samples after ``--warmup`` of the run (allocator arenas and caches fill
first), in MB per 1,000 updates; also written to ``<out>/soak.json``. ``--tracemalloc`` adds the 15 allocation sites
that grew most between the end of the warm-up and the end (slower: use it to find a leak the slope shows).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEMORY_FILE = "memory.csv"
TRACEMALLOC_FILE = "tracemalloc.txt"
TRACEMALLOC_ENV = "BERTGEN_SOAK_TRACEMALLOC"  # the step after which the cell takes its first snapshot


# -- in the cell process ----------------------------------------------------------------------------------------------
def _rss_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children() -> list[int]:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


class MemorySampler:
    """The cell's logger, passed through; each ``loss`` log appends a row to memory.csv."""

    def __init__(self, inner, out_dir: Path, steps: int):
        self.inner = inner
        self.steps = steps
        self.file = open(Path(out_dir) / MEMORY_FILE, "a", newline="")  # noqa: SIM115 - one per cell process
        self.writer = csv.writer(self.file)
        if self.file.tell() == 0:
            self.writer.writerow(["step", "seconds", "rss_mb", "workers_rss_mb", "workers", "gc_objects"])
        self.started = time.monotonic()
        snapshot_after = os.environ.get(TRACEMALLOC_ENV)
        self.snapshot_after = int(snapshot_after) if snapshot_after else None
        self.first_snapshot = None
        self.out_dir = Path(out_dir)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.inner.log_metrics(metrics, step)
        if "loss" not in metrics:
            return
        workers = _children()
        self.writer.writerow([step, f"{time.monotonic() - self.started:.1f}", f"{_rss_mb():.2f}",
                              f"{sum(_rss_mb(p) for p in workers):.2f}", len(workers), len(gc.get_objects())])
        self.file.flush()
        if self.snapshot_after is not None:
            self._tracemalloc(step)

    def _tracemalloc(self, step: int) -> None:
        import tracemalloc

        if self.first_snapshot is None and step >= self.snapshot_after:
            self.first_snapshot = tracemalloc.take_snapshot()
        elif self.first_snapshot is not None and step == self.steps:
            top = tracemalloc.take_snapshot().compare_to(self.first_snapshot, "lineno")[:15]
            (self.out_dir / TRACEMALLOC_FILE).write_text(f"step {step} vs step {self.snapshot_after}:\n"
                                                         + "\n".join(str(s) for s in top) + "\n")

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def train_cell_sampling_memory(cell: dict, out_dir: Path, logger) -> dict:
    """experiments.recipes.train.train_cell with :class:`MemorySampler` around its logger (``$BERTGEN_TRAIN_FN``)."""
    from experiments.recipes.train import train_cell

    if os.environ.get(TRACEMALLOC_ENV):
        import tracemalloc

        tracemalloc.start(10)
    return train_cell(cell, out_dir, MemorySampler(logger, out_dir, cell["train"]["steps"]))


# -- the report -------------------------------------------------------------------------------------------------------
def slope_per_1000(rows: list[dict], key: str, from_step: int) -> float:
    """Least-squares slope of ``key`` over the steps from ``from_step`` on, per 1,000 steps."""
    import numpy as np

    points = [(r["step"], r[key]) for r in rows if r["step"] >= from_step]
    if len(points) < 3:
        return float("nan")
    steps, values = np.array(points, dtype=float).T
    return float(np.polyfit(steps, values, 1)[0] * 1000)


def report(rows: list[dict], steps: int, warmup: float) -> dict:
    from_step = int(steps * warmup)
    summary = {
        "steps": steps, "samples": len(rows), "fit_from_step": from_step,
        "rss_mb_first": rows[0]["rss_mb"], "rss_mb_at_fit_start": next(r["rss_mb"] for r in rows
                                                                       if r["step"] >= from_step),
        "rss_mb_last": rows[-1]["rss_mb"], "rss_mb_peak": max(r["rss_mb"] for r in rows),
        "rss_slope_mb_per_1000_updates": slope_per_1000(rows, "rss_mb", from_step),
        "workers_rss_slope_mb_per_1000_updates": slope_per_1000(rows, "workers_rss_mb", from_step),
        "gc_objects_slope_per_1000_updates": slope_per_1000(rows, "gc_objects", from_step),
        "seconds": rows[-1]["seconds"],
    }
    return summary


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: (int(v) if k in ("step", "workers", "gc_objects") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(fh)]


# -- the launch -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/soak.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--steps", type=int, default=2000, help="updates (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=50, help="dev loss, input use, dev decoding (default: "
                                                                   "%(default)s)")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="default: %(default)s")
    parser.add_argument("--log-every", type=int, default=10, help="metrics and a memory sample (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, default=1, help="data-loader workers (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of the run left out of the fit "
                                                                  "(default: %(default)s)")
    parser.add_argument("--tracemalloc", action="store_true", help="report the allocation sites that grew most")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bertgen-soak"), help="default: %(default)s")
    args = parser.parse_args(argv)

    from experiments.smoke.assets import SmokeSettings, ensure_smoke_assets

    out = args.out.resolve()
    if (out / "outputs").exists():
        raise SystemExit(f"{out / 'outputs'} exists; pass another --out (a soak starts from nothing)")
    assets = ensure_smoke_assets(out / "assets", SmokeSettings.quick())
    files = assets["tasks"]["fusion"]
    sets = [f"checkpoints.{family}={path}" for family, path in assets["checkpoints"].items()]
    sets += [f"data.{split}=" + json.dumps({"path": path, "columns": {"input": "source", "target": "target",
                                                                      "id": "id"}}) for split, path in files.items()]
    sets += ["smoke_assets=false", f"output_root={out / 'outputs'}", "mlflow.experiment=soak",
             f"train.steps={args.steps}", "train.batch_size=8", f"train.eval_every={args.eval_every}",
             f"train.checkpoint_every={args.checkpoint_every}", f"train.log_every={args.log_every}",
             f"train.num_workers={args.num_workers}", "train.eval_examples=8", "train.dev_decode_examples=8",
             # one torch thread, as the tests' cells (the local executor gives a cell cores / parallelism threads)
             f"executor.local.parallelism={os.cpu_count() or 1}", "executor.local.timeout_min=600"]
    command = [sys.executable, "-m", "experiments.launch", "grids/smoke.yaml", "--executor", "local", "--only",
               "synthetic_fusion/bert2bert"] + [item for s in sets for item in ("--set", s)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "benchmarks")]),
               BERTGEN_TRAIN_FN="soak:train_cell_sampling_memory", OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    if args.tracemalloc:
        env[TRACEMALLOC_ENV] = str(int(args.steps * args.warmup))
    print(f"soak: {args.steps} updates, eval/decode every {args.eval_every}, checkpoint every "
          f"{args.checkpoint_every}, {args.num_workers} loader worker(s); outputs under {out}", flush=True)
    started = time.monotonic()
    launch = subprocess.run(command, cwd=REPO, env=env)
    if launch.returncode != 0:
        print(f"soak: the launch exited with {launch.returncode}", file=sys.stderr)
        return launch.returncode
    (memory,) = (out / "outputs" / "cells").rglob(MEMORY_FILE)
    rows = read_rows(memory)
    summary = report(rows, args.steps, args.warmup)
    summary.update(command=" ".join(["python", "benchmarks/soak.py", *(argv if argv is not None else sys.argv[1:])]),
                   wall_seconds=round(time.monotonic() - started, 1))
    print("\n  step  seconds  RSS MB  workers MB  gc objects")
    for row in rows[:: max(1, len(rows) // 12)] + rows[-1:]:
        print(f"{row['step']:6d} {row['seconds']:8.0f} {row['rss_mb']:7.1f} {row['workers_rss_mb']:11.1f} "
              f"{row['gc_objects']:11d}")
    print(f"\nRSS slope from step {summary['fit_from_step']}: {summary['rss_slope_mb_per_1000_updates']:+.2f} MB per "
          f"1,000 updates (workers {summary['workers_rss_slope_mb_per_1000_updates']:+.2f}; gc objects "
          f"{summary['gc_objects_slope_per_1000_updates']:+.0f}); RSS {summary['rss_mb_at_fit_start']:.1f} -> "
          f"{summary['rss_mb_last']:.1f} MB, peak {summary['rss_mb_peak']:.1f} MB")
    tracemalloc_report = memory.parent / TRACEMALLOC_FILE
    if tracemalloc_report.is_file():
        print("\n" + tracemalloc_report.read_text())
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
