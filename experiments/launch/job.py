"""The submitit job that runs one cell (:class:`CellJob`), and the training entry point it calls.

:class:`CellJob` is what executors run. It is a ``submitit.helpers.Checkpointable``: on preemption or timeout submitit
calls :meth:`CellJob.checkpoint`, which returns a ``DelayedSubmission`` of the job itself; the requeued job calls
``train_cell`` again, which resumes from ``<cell dir>/checkpoints/last``. The job owns the MLflow child run's life
cycle (RUNNING → FINISHED / FAILED), logs through :class:`experiments.tracking.runs.CellLogger` (which never lets a
tracking outage kill training) and records a failure's traceback as ``traceback.txt``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import submitit
import torch

from ..config.cell import CELL_CONFIG_FILE, CellConfig, to_dict
from ..config.validate import one_line
from ..grid.identity import (DONE_FILE, EXTRA_PREDICTIONS_GLOB, METRICS_FILE, PREDICTIONS_FILE, TRACEBACK_FILE,
                             cell_dir, cell_label)
from ..system.disk import atomic_write_text
from ..tracking import runs as tracking


# Test hook: a callable used instead of experiments.recipes.train.train_cell in this process (debug executor, tests).
TRAIN_FN: Callable[[dict, Path, Any], dict] | None = None


# Same, for executors that run cells in other processes: "module:function".
TRAIN_FN_ENV = "BERTGEN_TRAIN_FN"


def resolve_train_fn() -> Callable[[dict, Path, Any], dict]:
    """The training entry point: the in-process hook, else $BERTGEN_TRAIN_FN, else experiments.recipes.train.train_cell."""
    if TRAIN_FN is not None:
        return TRAIN_FN
    spec = os.environ.get(TRAIN_FN_ENV, "experiments.recipes.train:train_cell")
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"${TRAIN_FN_ENV}: expected 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


LOG_LINKS = {"job.out": "stdout", "job.err": "stderr"}  # in the cell folder → this job's submitit log files


def link_job_logs(out_dir: Path) -> dict[str, str]:
    """Point ``<cell dir>/job.out`` and ``job.err`` at the running submitit job's log files (the Slurm array task's,
    the local process's), so a cell's logs are found from its id; returns them as tags (``log_stdout`` ...). A
    requeued job moves the links to its own logs. Outside a submitit job nothing happens."""
    try:
        paths = submitit.JobEnvironment().paths
    except (RuntimeError, KeyError):  # not in a job; the debug executor's (in this process) has no log folder
        return {}
    tags = {}
    for name, attr in LOG_LINKS.items():
        target = Path(getattr(paths, attr)).resolve()
        link = out_dir / name
        try:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        except OSError:  # a file system without symlinks: the tag still says where the log is
            pass
        tags[f"log_{attr}"] = str(target)
    return tags


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted (submitit redirects it per job)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_job_logging() -> None:
    """INFO lines of the harness (``experiments.*``, ``bertgen``) to stderr with a time stamp, once per job process:
    a job's log then carries the training progress lines even without a terminal (Slurm). Only in a process of its
    own (a local or Slurm job: ``SUBMITIT_FOLDER`` is set): the debug executor runs cells in the caller's process,
    whose logging is the caller's."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderr) for h in root.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    for name in ("experiments", "bertgen"):
        logging.getLogger(name).setLevel(logging.INFO)


def _job_environment() -> tuple[dict[str, str], int]:
    """(tags naming the scheduler's job, global rank) of the current submitit job; ({}, 0) outside one.

    A Slurm job is ``slurm_job_id`` (``<array id>_<index>`` for array tasks, what squeue accepts); any other
    submitit job (local: a pid, debug: an object id) is ``submitit_job_id``, so it is never mistaken for Slurm's.
    """
    try:
        env = submitit.JobEnvironment()
        job_id, rank = str(env.job_id), env.global_rank
    except RuntimeError:  # not inside a submitit job
        job_id, rank = "", 0
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return {"slurm_job_id": f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"}, rank
    if os.environ.get("SLURM_JOB_ID"):
        return {"slurm_job_id": os.environ["SLURM_JOB_ID"]}, rank
    return ({"submitit_job_id": job_id} if job_id else {}), rank


class CellJob(submitit.helpers.Checkpointable):
    """Runs one cell and reports it to its MLflow child run; requeued by submitit on preemption/timeout.

    ``run_id`` is the child run the launcher created (status SCHEDULED) so that a relaunch finds it by its
    ``cell_id`` tag instead of making a duplicate. ``raise_on_failure`` is off for the debug executor, whose job
    object would otherwise open pdb on the exception; the failure is then in the returned result and in MLflow.
    ``num_threads`` caps torch's intra-op threads to the CPUs the executor gave the cell. The cell is typed; its
    JSON form (:func:`experiments.config.cell.to_dict`) is what leaves the job: ``cell.json`` and the training entry
    point's argument.
    """

    def __init__(self, cell: CellConfig, tracking_uri: str, run_id: str, launch_dir: str | os.PathLike,
                 raise_on_failure: bool = True, num_threads: int | None = None):
        self.cell = cell
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.launch_dir = str(launch_dir)
        self.raise_on_failure = raise_on_failure
        self.num_threads = num_threads
        self.requeues = 0
        self._logger = None  # live only inside the running process; never pickled

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_logger"] = None
        return state

    @property
    def out_dir(self) -> Path:
        return cell_dir(self.cell)

    # -- submitit -------------------------------------------------------------------------------------------------
    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on SIGUSR2 (preemption, timeout): requeue this very job; training resumes from disk.

        Any save hook train_cell registered on the logger (``logger.on_preempt(fn)``) runs first, so the resumed job
        loses at most the steps since that save rather than since the last periodic checkpoint.
        """
        self.requeues += 1
        if self._logger is not None:
            self._logger.preempted(self.requeues)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __call__(self) -> dict:
        os.chdir(self.launch_dir)  # relative checkpoint/data paths in the grid are relative to the launch dir
        if self.num_threads:
            # torch's default (every core of the node) oversubscribes CPUs shared with other cells or users
            torch.set_num_threads(self.num_threads)
        out_dir = self.out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        configure_job_logging()
        job_tags, rank = _job_environment()
        if rank == 0:
            job_tags.update(link_job_logs(out_dir))
        if rank != 0:  # other ranks of a multi-task job train; only rank 0 talks to MLflow
            resolve_train_fn()(to_dict(self.cell), out_dir, tracking.NullLogger())
            return {"cell_id": self.cell.cell_id, "status": "RANK", "metrics": {}}

        logger = tracking.CellLogger(self.tracking_uri, self.run_id, out_dir)
        self._logger = logger
        logger.start(host=socket.gethostname(), pid=os.getpid(), job_tags=job_tags)
        try:
            cell_json = json.dumps(to_dict(self.cell), indent=2, sort_keys=True)
            atomic_write_text(out_dir / CELL_CONFIG_FILE, cell_json + "\n")
            metrics = self._train_or_reuse(out_dir, logger)
        except BaseException as err:  # noqa: BLE001 - every way out is recorded, then re-raised where it should be
            return self._fail(err, logger)
        logger.finish_success(metrics, [out_dir / CELL_CONFIG_FILE, out_dir / PREDICTIONS_FILE,
                                        *sorted(out_dir.glob(EXTRA_PREDICTIONS_GLOB)), out_dir / METRICS_FILE])
        self._logger = None
        return {"cell_id": self.cell.cell_id, "status": "FINISHED", "metrics": metrics}

    def _train_or_reuse(self, out_dir: Path, logger: Any) -> dict[str, float]:
        done = out_dir / DONE_FILE
        if done.is_file():
            record = json.loads(done.read_text())
            if record.get("cell_id") == self.cell.cell_id:
                return {k: float(v) for k, v in record["metrics"].items()}
        metrics = resolve_train_fn()(to_dict(self.cell), out_dir, logger)
        if not isinstance(metrics, dict):
            raise TypeError(f"train_cell returned {type(metrics).__name__}, expected a dict of test metrics")
        metrics = {k: float(v) for k, v in metrics.items()}
        atomic_write_text(done, json.dumps({"cell_id": self.cell.cell_id, "metrics": metrics}, indent=2) + "\n")
        return metrics

    def _fail(self, err: BaseException, logger: Any) -> dict:
        out_dir = self.out_dir
        reason = one_line(err)
        if isinstance(err, SystemExit) and self.requeues:
            # submitit's preemption handler exits after requeueing: the run goes on in the next job.
            logger.interrupted(f"requeued after preemption/timeout (#{self.requeues})", status="RUNNING")
            raise err
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            logger.interrupted(reason, status="KILLED")
            raise err
        trace = "".join(traceback.format_exception(err))
        try:
            atomic_write_text(out_dir / TRACEBACK_FILE, trace)
        except OSError:  # the disk that made the cell fail is full: the traceback goes to the job's log instead
            (out_dir / TRACEBACK_FILE).unlink(missing_ok=True)  # not an earlier attempt's in its place
            print(trace, file=sys.stderr)
        logger.finish_failure(reason, [out_dir / CELL_CONFIG_FILE, out_dir / TRACEBACK_FILE])
        self._logger = None
        print(f"cell {self.cell.cell_id} ({cell_label(self.cell)}) FAILED: {reason}", file=sys.stderr)
        if self.raise_on_failure:
            raise err
        return {"cell_id": self.cell.cell_id, "status": "FAILED", "metrics": {}, "reason": reason}
