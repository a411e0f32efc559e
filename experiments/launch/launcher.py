"""Launch a study grid: validate it, skip what is done, submit the rest, report.

    python -m experiments.launch GRID [--executor slurm|local|debug] [--dry-run] [--only PATTERN]
                                      [--set key=value ...] [--retry-failed]

1. The grid is loaded and validated (:mod:`experiments.grid.load`) and what its cells will read is checked
   (:mod:`experiments.launch.preflight`); any problem is one line on stderr and exit status 2, before anything is written
   or any MLflow run exists. ``--dry-run`` prints the cells and the compute plan and stops there; what is not there
   yet (a local data file or checkpoint, a hub checkpoint not in the cache) is a warning naming what fetches it.
2. The tracking URI must answer (:func:`experiments.tracking.store.check_tracking`), else exit status 2, nothing submitted.
3. Each selected cell is looked up by its ``cell_id`` tag in the experiment: FINISHED → skipped; FAILED → skipped
   unless ``--retry-failed``; RUNNING/SCHEDULED but no longer alive (killed launcher, dead node) → resumed in the
   same MLflow run from its last checkpoint; alive → left alone; no run → a new child run. A cell never gets a
   second run. Pending metrics a cell could not send earlier are uploaded first.
4. Executors (submitit): ``slurm`` submits one job array with the grid's Slurm parameters; ``local`` runs cells as
   local processes, ``executor.local.parallelism`` at a time; ``debug`` runs them in this process. Default: slurm
   when ``sbatch`` is on PATH, else local.
5. local/debug wait and print a results table (exit status 1 when a cell failed); slurm prints the job ids and how
   to watch them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
import signal
import threading

import submitit

from ..cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, entry_point, refuse, tracking_uri
from ..config.cell import DECODING_SECTIONS, CellConfig, to_dict
from ..config.evaluation import EvaluationError, cell_evaluation, evaluation_id
from ..config.tasks import TASKS
from ..config.validate import short_text
from ..grid.identity import cell_dir, cell_label
from ..grid.load import Grid, load_selection, smoke_asset_paths
from ..recipes.evaluate import EvaluationJob, EvaluationTracker, default_output_dir
from ..smoke.assets import ensure_smoke_assets
from ..tracking.runs import PENDING_FILE, Tracker, append_pending, cell_is_alive, cell_params, git_commit, now_ms
from ..tracking.store import check_tracking
from ..tracking.sync import sync_file
from . import compute_plan, guard as launch_guard, slurm as slurm_resources
from .job import CellJob
from .preflight import check_cells
from .text_table import format_table

DECODING_PREFIXES = tuple(f"{section}." for section in DECODING_SECTIONS)
LOCAL_POLL_S = 1.0


def decoding_view(cell: CellConfig) -> dict[str, str]:
    """The decoding settings of a cell as MLflow holds them (its params, ``decode.num_beams`` → ``"4"``)."""
    return {k: v for k, v in cell_params(cell).items() if k.startswith(DECODING_PREFIXES)}


def pick_executor(requested: str | None, grid: Grid) -> str:
    return requested or grid.executor["default"] or ("slurm" if shutil.which("sbatch") else "local")


def where_text(executor: str, grid: Grid) -> str:
    if executor == "slurm":
        s = grid.executor["slurm"]
        return f"slurm {s['partition'] or '(default partition)'} {s['nodes']}x{s['gpus_per_node']}gpu"
    if executor == "local":
        return f"local process ({grid.executor['local']['parallelism']} at a time)"
    return "this process (debug)"


def _variant(cell: CellConfig) -> str:
    parts = cell_label(cell).split("/")[3:]
    return "/".join(parts) or "-"


def dry_run_table(cells: list[CellConfig], executor: str, grid: Grid) -> str:
    where = where_text(executor, grid)
    rows = [[c.cell_id, c.task, c.scheme, str(c.seed), _variant(c), str(c.train.steps), where] for c in cells]
    return format_table(["id", "task", "scheme", "seed", "variant", "steps", "where"], rows)


def main_metrics(task: str, metrics: dict[str, float]) -> str:
    """The task's metrics in its own order (experiments.config.tasks), e.g. ``sari=88.10 exact=60.20``."""
    names = [f"test_{m}" for m in TASKS[task].metrics if f"test_{m}" in metrics]
    names = names or sorted(k for k in metrics if k.startswith("test_"))
    return " ".join(f"{n[len('test_'):]}={metrics[n]:.2f}" for n in names) or "-"


# -- planning -------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What happens to each selected cell: ``new``, ``resume``, ``retry``, ``redecode`` (submitted) or
    ``finished``, ``failed``, ``running`` (left alone). ``redecode``: the cell trained already and only its decoding
    settings changed, so its weights are decoded again (an evaluation run, experiments.recipes.evaluate), never retrained."""

    action: dict[str, str] = field(default_factory=dict)
    runs: dict[str, Any] = field(default_factory=dict)

    def submitted(self) -> list[str]:
        return [c for c, a in self.action.items() if a in ("new", "resume", "retry", "redecode")]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for action in self.action.values():
            counts[action] = counts.get(action, 0) + 1
        return ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))


def plan_cells(cells: list[CellConfig], existing: dict[str, Any], retry_failed: bool) -> Plan:
    plan = Plan()
    for cell in cells:
        cid = cell.cell_id
        run = existing.get(cid)
        plan.runs[cid] = run
        if run is None:
            plan.action[cid] = "new"
            continue
        status = run.info.status
        if status == "FINISHED":
            decoded_with = {k: v for k, v in run.data.params.items() if k.startswith(DECODING_PREFIXES)}
            plan.action[cid] = "finished" if decoded_with == decoding_view(cell) else "redecode"
        elif status == "FAILED":
            plan.action[cid] = "retry" if retry_failed else "failed"
        elif status in ("RUNNING", "SCHEDULED") and cell_is_alive(run, cell_dir(cell)):
            plan.action[cid] = "running"
        else:  # KILLED, or RUNNING/SCHEDULED with nobody behind it
            plan.action[cid] = "resume"
    return plan


def sync_pending(cells: list[CellConfig], uri: str) -> None:
    """Upload metrics a previous attempt parked on disk, so this launch sees the runs as they really are."""
    for cell in cells:
        pending = cell_dir(cell) / PENDING_FILE
        if pending.is_file():
            sent, left = sync_file(pending, uri)
            print(f"synced {sent} pending operations of {cell.cell_id}" + (f" ({left} left)" if left else ""))


def prepare_smoke_assets(grid: Grid) -> None:
    """Build the tiny checkpoints and tasks once (minutes on a CPU) and check they are where the cells expect."""
    expected = smoke_asset_paths(grid.smoke_root)
    if not Path(expected["root"], "manifest.json").is_file():
        print(f"building smoke assets under {grid.smoke_root} (tiny BERT, RoBERTa, GPT-2; once) ...", flush=True)
    manifest = ensure_smoke_assets(grid.smoke_root)
    if manifest["checkpoints"] != expected["checkpoints"] or manifest["tasks"] != expected["tasks"]:
        raise RuntimeError(f"smoke assets were built at {manifest['root']}, not where the grid expects them "
                           f"({expected['root']}); experiments.grid.load.smoke_asset_paths is out of date")


def cpu_threads(executor: str, grid: Grid) -> int | None:
    """CPU threads per cell: Slurm's cpus_per_task, or this machine's cores shared by the local cells at once."""
    if executor == "slurm":
        return grid.executor["slurm"]["cpus_per_task"]
    if executor == "local":
        return max(1, (os.cpu_count() or 1) // grid.executor["local"]["parallelism"])
    return None


# -- submission -----------------------------------------------------------------------------------------------------
def make_executor(kind: str, grid: Grid, folder: Path):
    executor = submitit.AutoExecutor(folder=folder, cluster=kind)
    name = f"bertgen-{grid.name}"
    if kind == "slurm":
        s = grid.executor["slurm"]
        executor.update_parameters(
            name=name, timeout_min=s["timeout_min"], nodes=s["nodes"], tasks_per_node=s["tasks_per_node"],
            gpus_per_node=s["gpus_per_node"], cpus_per_task=s["cpus_per_task"], mem_gb=s["mem_gb"],
            slurm_partition=s["partition"], slurm_array_parallelism=s["array_parallelism"],
            slurm_account=s["account"], slurm_qos=s["qos"], slurm_constraint=s["constraint"])
    elif kind == "local":
        executor.update_parameters(name=name, timeout_min=grid.executor["local"]["timeout_min"])
    return executor


@dataclass
class Outcome:
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def run_debug(executor, jobs: list[tuple[CellConfig, CellJob]]) -> dict[str, Outcome]:
    outcomes = {}
    for cell, job in jobs:
        result = executor.submit(job).result()
        outcomes[cell.cell_id] = Outcome(result["status"], result.get("metrics", {}), result.get("reason", ""))
    return outcomes


def run_local(executor, jobs: list[tuple[CellConfig, CellJob]], parallelism: int, tracker) -> dict[str, Outcome]:
    """Keep ``parallelism`` cells running as local processes; a process that died without reporting is FAILED."""
    outcomes: dict[str, Outcome] = {}
    queue = list(jobs)
    running: list[tuple[CellConfig, CellJob, Any]] = []
    try:
        while queue or running:
            while queue and len(running) < parallelism:
                cell, job = queue.pop(0)
                submitted = executor.submit(job)
                if job.run_id:  # an evaluation job starts its run itself
                    tracker.client.set_tag(job.run_id, "submitit_job_id", str(submitted.job_id))
                print(f"started {cell.cell_id} {cell_label(cell)} (pid {submitted.job_id}; log "
                      f"{cell_dir(cell) / 'job.err'} -> {submitted.paths.stderr})", flush=True)
                running.append((cell, job, submitted))
            time.sleep(LOCAL_POLL_S)
            for entry in [r for r in running if r[2].done()]:
                running.remove(entry)
                cell, job, submitted = entry
                outcomes[cell.cell_id] = _collect_local(cell, job, submitted, tracker)
                print(f"done    {cell.cell_id} {cell_label(cell)}: {outcomes[cell.cell_id].status}", flush=True)
    except KeyboardInterrupt:
        for _, _, submitted in running:
            submitted.cancel(check=False)
        raise
    return outcomes


def _collect_local(cell: CellConfig, job: CellJob, submitted, tracker) -> Outcome:
    try:
        result = submitted.result()
        return Outcome(result["status"], result.get("metrics", {}), result.get("reason", ""))
    except Exception as err:  # noqa: BLE001 - the cell raised (already recorded) or its process died (not yet)
        if not job.run_id:  # an evaluation job: it records its own failure in its run
            return Outcome("FAILED", {}, f"{type(err).__name__}: {err}"[:480])
        run = tracker.get_run(job.run_id)
        reason = run.data.tags.get("failure_reason", "")
        if run.info.status in ("RUNNING", "SCHEDULED"):
            stderr = Path(submitted.paths.stderr)
            tail = stderr.read_text(errors="replace").strip().splitlines()[-1:] if stderr.is_file() else []
            reason = f"worker process died ({type(err).__name__}): {tail[0] if tail else 'no stderr'}"[:480]
            tracker.mark_failed(job.run_id, reason)
            if stderr.is_file():
                tracker.client.log_artifact(job.run_id, str(stderr))
        return Outcome("FAILED", {}, reason)


def results_table(cells: list[CellConfig], plan: Plan, outcomes: dict[str, Outcome]) -> str:
    rows = []
    for cell in cells:
        cid = cell.cell_id
        action = plan.action[cid]
        if cid in outcomes:
            outcome = outcomes[cid]
            status, note = outcome.status, outcome.reason
            metrics = {k if k.startswith("test_") else f"test_{k}": v for k, v in outcome.metrics.items()}
        else:
            run = plan.runs.get(cid)
            status = {"finished": "FINISHED (done before)", "failed": "FAILED (skipped; --retry-failed)",
                      "running": "RUNNING (elsewhere)",
                      "redecoded": "FINISHED (re-decoded before)"}.get(action, action)
            metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")} if run is not None else {}
            note = run.data.tags.get("failure_reason", "") if run is not None and action == "failed" else ""
        shown = main_metrics(cell.task, metrics)
        rows.append([cid, cell.task, cell.scheme, str(cell.seed), _variant(cell), status,
                     shown + (f"  [{note[:100]}]" if note else "")])
    return format_table(["cell", "task", "scheme", "seed", "variant", "status", "test metrics"], rows)


def launch(grid: Grid, cells: list[CellConfig], executor_kind: str, retry_failed: bool, argv: list[str]) -> int:
    """Run (or submit) the cells that need it and log them under one parent run; a refusal (no store, nothing
    writable, bad pending records) is raised before the first byte is written."""
    uri = tracking_uri(grid.tracking_uri, grid.output_root)
    check_before_writing(grid, cells, uri, executor_kind)
    grid.output_root.mkdir(parents=True, exist_ok=True)
    if grid.smoke_root is not None:
        prepare_smoke_assets(grid)
    tracker = Tracker(uri, grid.experiment)
    sync_pending(cells, uri)
    plan = plan_cells(cells, tracker.cell_runs(), retry_failed)
    print(f"grid {grid.name}: {len(cells)} cells: {plan.summary()}  (MLflow: {uri}, experiment {grid.experiment})")
    redecodings = resolve_redecodings(cells, plan, uri, grid, executor_kind)
    if not redecodings and not any(plan.action[c.cell_id] in ("new", "resume", "retry") for c in cells):
        # nothing to run: report what is there, leave no empty launch run behind
        print()
        print(results_table(cells, plan, {}))
        return EXIT_FAILED if any(a == "failed" for a in plan.action.values()) else EXIT_OK

    commit = git_commit()
    host = socket.gethostname()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = tracker.start_parent(f"launch {grid.name} {stamp}", {
        "grid": grid.name, "git_commit": commit, "host": host, "executor": executor_kind,
        "command": " ".join(argv)[:5000], "cells": str(len(cells)), "submitted": str(len(plan.submitted()))})
    started: list[str] = []  # cell runs this launch created or reused: none may stay RUNNING if it dies
    outcomes: dict[str, Outcome] = {}
    try:
        log_manifest(tracker, parent, grid, cells, plan, stamp)
        jobs = cell_jobs(cells, plan, redecodings, tracker, parent, uri, grid, executor_kind, started,
                         {"git_commit": commit, "launch_host": host})
        folder = grid.output_root / "submitit" / grid.name
        if jobs:
            executor = make_executor(executor_kind, grid, folder / ("%j" if executor_kind == "slurm" else ""))
            if executor_kind == "slurm":
                return _submit_slurm(executor, jobs, tracker, parent, uri, grid)
            if executor_kind == "local":
                outcomes = run_local(executor, jobs, grid.executor["local"]["parallelism"], tracker)
            else:
                outcomes = run_debug(executor, jobs)
    except BaseException as err:  # noqa: BLE001 - Ctrl-C (a second one too), a full disk, a server gone
        _abandon(tracker, parent, started, err, uri, grid.output_root)
        if isinstance(err, KeyboardInterrupt):
            print("interrupted; every run of this launch is marked KILLED; relaunch the same command to resume",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        if isinstance(err, OSError):
            return refuse(f"{grid.output_root}: {type(err).__name__}: {short_text(err, 200)}; runs of this launch "
                          "marked FAILED")
        raise
    failed = [c for c in cells if (outcomes[c.cell_id].status if c.cell_id in outcomes
                                   else plan.action[c.cell_id]) in ("FAILED", "failed")]
    close_parent(tracker, parent, "FAILED" if failed else "FINISHED", {"failed_cells": str(len(failed))}, uri,
                 grid.output_root)
    print()
    print(results_table(cells, plan, outcomes))
    print(f"\nMLflow: mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"\nMLflow: {uri}")
    return EXIT_FAILED if failed else EXIT_OK


def check_before_writing(grid: Grid, cells: list[CellConfig], uri: str, executor_kind: str) -> None:
    """Every refusal a launch can meet before its first byte: the store answers and may be used from where the
    cells run, the folders it writes can be written, the cells' pending records can be read."""
    check_tracking(uri)
    launch_guard.check_store_filesystem(grid, uri, executor_kind)
    launch_guard.check_writable(grid)
    launch_guard.check_pending(grid, cells)


def log_manifest(tracker, parent: str, grid: Grid, cells: list[CellConfig], plan: Plan, stamp: str) -> None:
    """``<output_root>/launches/<grid>-<stamp>.json`` (the grid, its cells, the plan) and the grid file, as
    artifacts of the launch's run; the cells in their JSON form (``cell.json``'s)."""
    manifest = grid.output_root / "launches" / f"{grid.name}-{stamp}.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    record = {"grid": str(grid.path), "cells": [to_dict(c) for c in cells], "plan": plan.action}
    manifest.write_text(json.dumps(record, indent=2) + "\n")
    tracker.client.log_artifact(parent, str(manifest))
    if grid.path.is_file():
        tracker.client.log_artifact(parent, str(grid.path))


def cell_jobs(cells: list[CellConfig], plan: Plan, redecodings: dict[str, EvaluationJob], tracker, parent: str,
              uri: str, grid: Grid, executor_kind: str, started: list[str],
              tags: dict[str, str]) -> list[tuple[CellConfig, CellJob | EvaluationJob]]:
    """The job of each cell the plan runs: its re-decoding, or training in a new or reused MLflow run tagged with
    ``tags`` (a reused one with its git_commit only), appended to ``started`` as soon as it exists, so that an
    interrupted launch closes it."""
    jobs: list[tuple[CellConfig, CellJob | EvaluationJob]] = []
    for cell in cells:
        cid = cell.cell_id
        action = plan.action[cid]
        if action == "redecode":
            jobs.append((cell, redecodings[cid]))
            continue
        if action == "new":
            run_id = tracker.create_cell_run(cell, cell_label(cell), parent, dict(tags))
        elif action in ("resume", "retry"):
            run_id = tracker.reuse_cell_run(plan.runs[cid], parent, action, {"git_commit": tags["git_commit"]})
        else:
            continue
        started.append(run_id)
        jobs.append((cell, CellJob(cell, uri, run_id, Path.cwd(), raise_on_failure=executor_kind != "debug",
                                   num_threads=cpu_threads(executor_kind, grid))))
    return jobs


def _abandon(tracker, parent: str, started: list[str], err: BaseException, uri: str, output_root: Path) -> None:
    """End every run this launch started that is still RUNNING/SCHEDULED, and its own run: KILLED after an
    interrupt, FAILED after an error. Idempotent (a run a cell already closed is left as it is) and deaf to further
    Ctrl-C while it works; what the tracking server does not take is parked in ``<output_root>/launches``."""

    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
    reason = f"launch ended by {type(err).__name__}: {short_text(err, 200)}".rstrip(": ")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        for run_id in [*started, parent]:
            try:
                run = tracker.get_run(run_id)
                if run.info.status not in ("RUNNING", "SCHEDULED"):
                    continue
                tracker.client.set_tag(run_id, "failure_reason" if status == "FAILED" else "interrupted", reason)
                tracker.client.set_terminated(run_id, status=status)
            except Exception:  # noqa: BLE001 - the server is gone too: park the closing for experiments.tracking.sync
                try:
                    append_pending(output_root / "launches", uri, run_id,
                                   [{"op": "status", "status": status, "end_time": now_ms()}])
                except OSError:
                    pass
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def resolve_redecodings(cells: list[CellConfig], plan: Plan, uri: str, grid: Grid,
                        executor_kind: str) -> dict[str, EvaluationJob]:
    """The evaluation job of each ``redecode`` cell; one whose evaluation finished before becomes ``redecoded``
    (with that run, whose scores the results table shows)."""
    jobs: dict[str, EvaluationJob] = {}
    evaluations = None
    for cell in cells:
        cid = cell.cell_id
        if plan.action[cid] != "redecode":
            continue
        evaluations = evaluations or EvaluationTracker(uri, grid.experiment)
        job, done = redecoding_job(cell, evaluations, uri, grid, executor_kind)
        if job is None:  # done before, or its folder is gone (said so): left as it is
            plan.action[cid] = "redecoded" if done is not None else "finished"
            plan.runs[cid] = done or plan.runs[cid]
        else:
            jobs[cid] = job
    return jobs


def redecoding_job(cell: CellConfig, evaluations: EvaluationTracker, uri: str, grid: Grid,
                   executor_kind: str) -> tuple[EvaluationJob | None, Any]:
    """(the evaluation job that decodes a finished cell with its new decoding settings, None) or, when that
    evaluation finished before, (None, its run). A cell whose directory is gone cannot be re-decoded: the launch
    says so and leaves the cell as it is."""
    try:
        config = cell_evaluation(cell, cell_dir(cell))
        done = evaluations.finished(evaluation_id(config))
    except EvaluationError as err:
        print(f"note: {cell.cell_id} ({cell_label(cell)}): cannot re-decode ({err}); left as it is")
        return None, None
    if done is not None:
        return None, done
    return EvaluationJob(config, str(default_output_dir(config)), uri, grid.experiment,
                         num_threads=cpu_threads(executor_kind, grid)), None


def close_parent(tracker, parent: str, status: str, tags: dict[str, str], uri: str, output_root: Path) -> None:
    """End the launch's run. The cells ran for hours: if the tracking server is down by now, their results are
    already parked on disk, and so is this: the closing goes into ``<output_root>/launches/pending_metrics.jsonl``,
    which ``python -m experiments.tracking.sync`` uploads with the cells' (instead of a traceback after minutes of retries)."""
    try:
        check_tracking(uri)
        tracker.finish_parent(parent, status, tags)
        return
    except Exception as err:  # noqa: BLE001 - unreachable now, or failed half-way: park it either way
        reason = f"{type(err).__name__}: {short_text(err, 200)}"
    append_pending(output_root / "launches", uri, parent,
                   [{"op": "tags", "tags": tags}, {"op": "status", "status": status, "end_time": now_ms()}])
    print(f"warning: the tracking server did not answer at the end ({reason}); what it missed is on disk: run "
          f"python -m experiments.tracking.sync {output_root}", file=sys.stderr)


def _submit_slurm(executor, jobs: list[tuple[CellConfig, CellJob]], tracker, parent: str, uri: str,
                  grid: Grid) -> int:
    try:
        with contextlib.redirect_stderr(io.StringIO()) as said, executor.batch():  # submitit echoes sbatch's stderr
            submitted = [executor.submit(job) for _, job in jobs]
    except Exception as err:  # noqa: BLE001 - sbatch refused (FailedJobError) or could not run: one line, no runs
        removed = _withdraw_runs(jobs, tracker, parent, slurm_resources.submission_error(err))
        return refuse(f"sbatch refused the job array: {slurm_resources.submission_error(err) or said.getvalue()}; "
                      f"nothing was submitted ({removed} MLflow runs of this launch removed)")
    rows = []
    for (cell, job), sub in zip(jobs, submitted):
        if job.run_id:
            tracker.client.set_tag(job.run_id, "slurm_job_id", str(sub.job_id))
        rows.append([str(sub.job_id), cell.cell_id, cell_label(cell)])
    tracker.finish_parent(parent, "FINISHED", {"slurm_jobs": ",".join(str(s.job_id) for s in submitted)[:5000]})
    print(format_table(["slurm job", "cell", "label"], rows))
    array = str(submitted[0].job_id).split("_")[0]
    print(f"\nsubmitted {len(submitted)} cells as Slurm job array {array} "
          f"(at most {grid.executor['slurm']['array_parallelism']} at a time)")
    print(f"watch:   squeue -j {array}    logs: <cell dir>/job.err once a cell starts "
          f"({grid.output_root}/cells/<task>/<scheme>/<cell id>; all: {grid.output_root / 'submitit' / grid.name})")
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else uri
    print(f"MLflow:  {ui}\nrelaunch the same command to resume interrupted cells (finished ones are skipped)")
    return EXIT_OK


def _withdraw_runs(jobs: list[tuple[CellConfig, CellJob]], tracker, parent: str, reason: str) -> int:
    """After a refused submission: the cell runs this launch created and its own run are deleted (a relaunch starts
    clean), runs it had reused (resume/retry) are KILLED again, so the next launch resumes them."""
    removed = 0
    for _, job in jobs:
        if not job.run_id:
            continue
        run = tracker.get_run(job.run_id)
        if run.data.tags.get("relaunch_reason"):
            tracker.client.set_tag(job.run_id, "submission_error", reason[:480])
            tracker.client.set_terminated(job.run_id, status="KILLED")
        else:
            tracker.client.delete_run(job.run_id)
            removed += 1
    tracker.client.delete_run(parent)
    return removed + 1


# -- command line ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.launch", description="Run a study grid (grids/*.yaml) with MLflow tracking.",
        epilog="Examples:\n  python -m experiments.launch grids/smoke.yaml --executor local\n"
               "  python -m experiments.launch grids/fusion.yaml --dry-run --only 'discofuse/bert*'\n"
               "  python -m experiments.launch grids/mini_wikisplit.yaml --set train.steps=50 "
               "--set checkpoints.bert=/path/to/bert",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path, help="grid file (grids/*.yaml)")
    parser.add_argument("--executor", choices=("slurm", "local", "debug"),
                        help="where cells run (default: the grid's, else slurm when sbatch exists, else local)")
    parser.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    parser.add_argument("--only", metavar="PATTERN",
                        help="only cells whose task/scheme/seedN[/variant] matches this glob, whose task or scheme is "
                             "this name, or whose id starts with it (comma-separated alternatives)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                        help="override a grid value (value read as YAML); cell fields (train.steps=10, "
                             "checkpoints.bert=DIR, data.train=FILE) apply to every cell last")
    parser.add_argument("--retry-failed", action="store_true", help="rerun cells whose MLflow run FAILED")
    parser.add_argument("--gpu", choices=sorted(compute_plan.GPUS), default=compute_plan.DEFAULT_GPU,
                        help="the GPU --dry-run's compute plan is estimated for (default: %(default)s)")
    return parser


@entry_point(unexpected=True)  # whatever nothing below foresaw: one line, exit status 2, never a traceback
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # a dry run shows the plan whatever is not there yet (warned below); a launch refuses it here
    grid, cells = load_selection(args.grid, args.sets, args.only, check_paths=not args.dry_run)
    # what the cells will read (checkpoints, vocabularies, data), before anything is written or submitted
    launch_guard.check_json_files(grid, cells)
    notes, warnings = check_cells(grid, cells, dry_run=args.dry_run)
    launch_guard.check_decoding(grid, cells)
    for note in notes:
        print(f"note: {note}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    executor = pick_executor(args.executor, grid)
    if executor == "slurm":
        slurm_resources.launch_check(grid, args.dry_run)  # refused when the cluster cannot give what it asks for
    if args.dry_run:
        print(dry_run_table(cells, executor, grid))
        print(f"\n{compute_plan.grid_costs(cells, grid, args.gpu).report()}")  # per cell and a total line
        print(f"\n{len(cells)} of {len(grid.cells)} cells; outputs under {grid.output_root}/cells/<task>/<scheme>/<id>")
        return EXIT_OK
    return launch(grid, cells, executor, args.retry_failed, ["python", "-m", "experiments.launch",
                                                             *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
