"""MLflow bookkeeping for the study: where runs go, one parent run per launch, one child run per cell.

Where: the tracking URI is, in order, the grid's ``mlflow.tracking_uri`` (``--set mlflow.tracking_uri=...`` edits
it), ``$MLFLOW_TRACKING_URI``, else an embedded store ``sqlite:///<output_root>/mlflow.db`` with artifacts beside it
in ``<output_root>/mlartifacts`` (``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`` shows it). The launcher
checks the URI answers before it submits anything (:func:`check_tracking`).

What a cell run holds:
- tags ``role=cell``, ``cell_id``, ``task``, ``scheme``, ``seed``, ``grid``, ``git_commit``, ``host``, ``pid``,
  ``slurm_job_id`` (Slurm; ``submitit_job_id`` for the local and debug executors), ``mlflow.parentRunId``;
- params: the resolved cell config flattened with dots (``train.lr``, ``checkpoints.bert`` ...);
- metrics over steps as train_cell logs them (``loss``, ``lr``, ``tokens_per_s``, ``dev_<metric>``) and the final
  test metrics once, named ``test_<metric>`` (``test_sari``, ``test_exact``, ``test_rouge1``, ``test_bleu``), and
  ``test_<split>_<metric>`` for a task's extra test sets (``test_newstest2016_bleu_uncased``);
- artifacts ``cell.json``, ``predictions.jsonl`` (``predictions_<split>.jsonl`` per extra test set),
  ``metrics.json``; for a failure ``traceback.txt`` and the tag
  ``failure_reason`` (one line; a NaN loss shows up here as the error train_cell raised).

A tracking server that blips must not kill a week-long run: :class:`CellLogger` queues every operation, sends it in
batches, backs off while the server is down, and at the end writes whatever it could not send to
``<cell dir>/pending_metrics.jsonl`` (one JSON operation per line, with run id and tracking URI), which
``python -m experiments.tracking.sync DIR`` uploads later.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable
import importlib.metadata as metadata
import platform

from ..system import disk as disk_space

# Re-exported: where runs go (URI, store, health check) lives in tracking_store, imported from here.
from ..config.validate import short_text
from .store import experiment_id_for, mlflow_client, quiet_http_retries

# mlflow is imported where it is used: importing it takes ~3 s (measured here), which launch --dry-run, grid
# validation and every test that never tracks would pay for nothing.

PENDING_FILE = "pending_metrics.jsonl"
HEARTBEAT_FILE = "heartbeat.json"
ROLE_TAG = "role"
PARENT_TAG = "mlflow.parentRunId"
ACTIVE_STATUSES = ("RUNNING", "SCHEDULED")
MAX_BATCH_METRICS = 1000  # MLflow's log_batch limit
MAX_BATCH_TAGS = 100


# -- helpers ------------------------------------------------------------------------------------------------------
def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict → ``{"train.lr": "0.05", ...}``; lists and None as JSON text, so they read back unambiguously."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        elif isinstance(value, str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def cell_params(cell: Any) -> dict[str, str]:
    """A typed cell's MLflow params (experiments.config.cell.CellConfig): its JSON form, what ``cell.json`` holds,
    flattened (``train.lr``, ``decode.num_beams`` ...). The one place a cell becomes params: its run, the launcher's
    comparison of decoding settings, the paper grid's coverage."""
    from ..config.cell import to_dict  # lazy: the typed cell loads torch, which this module does not otherwise

    return flatten(to_dict(cell))


def git_commit(repo: Path | None = None) -> str:
    """HEAD of the project's repository, ``-dirty`` when tracked files changed; ``unknown`` outside git."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=20)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Packages whose versions can change a run's numbers (recorded as tags ``version_<name>``).
VERSIONED_PACKAGES = ("torch", "tokenizers", "sentencepiece", "safetensors", "datasets", "sacrebleu", "rouge-score",
                      "mlflow", "submitit", "numpy")


def environment_tags() -> dict[str, str]:
    """What a run ran on: python and package versions, CUDA/cuDNN and GPU name (``cpu`` without one), whether the
    working tree had uncommitted changes (``git_dirty``), the CPU's native bf16 (CPU runs)."""

    import torch  # lazy: loads torch (~3 s), which this module does not otherwise

    tags = {"version_python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            tags[f"version_{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"version_{package}"] = "not installed"
    tags["version_cuda"] = torch.version.cuda or "none"
    tags["version_cudnn"] = str(torch.backends.cudnn.version()) if torch.cuda.is_available() else "none"
    tags["gpu"] = (f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}" if torch.cuda.is_available()
                   else "cpu")
    from ..recipes.distributed import USE_TF32  # lazy: loads torch (~3 s), which this module does not otherwise

    tags["tf32"] = str(torch.cuda.is_available() and USE_TF32).lower()  # what init_distributed sets on a GPU
    commit = git_commit()
    tags["git_dirty"] = "unknown" if commit == "unknown" else str(commit.endswith("-dirty")).lower()
    return tags


def now_ms() -> int:
    return int(time.time() * 1000)


# -- launcher side ------------------------------------------------------------------------------------------------
class Tracker:
    """The launcher's view of one experiment: finds cell runs by ``cell_id``, creates and reuses them."""

    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.client = mlflow_client(uri)
        self.experiment_id = experiment_id_for(self.client, uri, experiment)

    def start_parent(self, name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, tags={ROLE_TAG: "launch", **tags}, run_name=name)
        return run.info.run_id

    def cell_runs(self) -> dict[str, Any]:
        """Every cell run of the experiment by ``cell_id`` (the newest when several exist, which should not happen)."""
        found: dict[str, Any] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=f"tags.{ROLE_TAG} = 'cell'",
                                           max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
            for run in page:
                cell_id = run.data.tags.get("cell_id")
                if cell_id:
                    found[cell_id] = run
            token = page.token
            if not token:
                return found

    def create_cell_run(self, cell: Any, label: str, parent_id: str, tags: dict[str, str]) -> str:
        """The SCHEDULED child run of a typed cell (experiments.config.cell.CellConfig): tags by which the launcher
        and the tables find it, params of :func:`cell_params`."""
        from mlflow.entities import Param  # lazy: import cost (module imports)

        run_tags = {ROLE_TAG: "cell", PARENT_TAG: parent_id, "cell_id": cell.cell_id, "task": cell.task,
                    "scheme": cell.scheme, "seed": str(cell.seed), "grid": cell.grid, "attempts": "0", **tags}
        if cell.size:  # experiments.config.model_size: the tables' row key (also a param, with the whole cell)
            run_tags["size"] = cell.size
        run = self.client.create_run(self.experiment_id, tags=run_tags, run_name=label)
        self.client.update_run(run.info.run_id, status="SCHEDULED")
        params = [Param(k, v) for k, v in sorted(cell_params(cell).items())]
        for start in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        return run.info.run_id

    def reuse_cell_run(self, run: Any, parent_id: str, why: str, tags: dict[str, str]) -> str:
        """Point an existing run at this launch and mark it SCHEDULED again (resume or retry); params stay."""
        run_id = run.info.run_id
        previous = run.data.tags.get(PARENT_TAG)
        attempts = run.data.tags.get("attempts", "0")
        attempts = str(int(attempts) + 1) if attempts.isdigit() else "1"
        for key, value in {PARENT_TAG: parent_id, "relaunch_reason": why, "previous_parent_run": previous or "",
                           "attempts": attempts, **tags}.items():
            self.client.set_tag(run_id, key, value)
        self.client.update_run(run_id, status="SCHEDULED")
        return run_id

    def mark_failed(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, "failure_reason", reason)
        self.client.set_terminated(run_id, status="FAILED")

    def finish_parent(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status=status)

    def get_run(self, run_id: str) -> Any:
        return self.client.get_run(run_id)


def cell_is_alive(run: Any, out_dir: Path, stale_after_s: float = 1800.0) -> bool:
    """Whether a RUNNING/SCHEDULED cell run is really still going (else it was interrupted and may be resumed).

    Slurm jobs are asked of ``squeue``; a process on this host is probed by pid; anything else counts as alive
    while its heartbeat file is younger than ``stale_after_s``.
    """
    tags = run.data.tags
    job_id = tags.get("slurm_job_id", "")
    if job_id and _which("squeue"):
        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                 timeout=30)
            return out.returncode == 0 and bool(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    if tags.get("host") == socket.gethostname() and tags.get("pid", "").isdigit():
        pid = int(tags["pid"])
        if pid == os.getpid():  # the launcher itself (debug executor): a cell it is not running now is not alive
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if tags.get("host") or job_id or tags.get("submitit_job_id"):
        beat = out_dir / HEARTBEAT_FILE
        return beat.is_file() and time.time() - beat.stat().st_mtime < stale_after_s
    return False  # SCHEDULED by a launcher that never got it started


def _which(cmd: str) -> bool:
    return shutil.which(cmd) is not None


# -- cell side ----------------------------------------------------------------------------------------------------
class NullLogger:
    """What non-zero ranks of a multi-task job get: train_cell may call it freely."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def on_preempt(self, fn: Callable[[], None]) -> None:
        pass


class CellLogger:
    """The ``logger`` train_cell receives; it never raises because of the tracking server.

    Every call becomes an operation in a queue (``metrics``, ``tags``, ``artifact``, ``status``). The queue is sent
    when it holds ``flush_every`` metrics, when ``flush_interval_s`` passed, or right away for anything but metrics;
    a failed send keeps the queue and waits ``backoff_s`` (doubling up to ``max_backoff_s``) before the next try. At
    the end :meth:`close` tries ``final_retries`` more times and writes what is left to ``pending_metrics.jsonl``.
    """

    def __init__(self, uri: str, run_id: str, out_dir: Path, *, flush_every: int = 200, flush_interval_s: float = 10.0,
                 backoff_s: float = 5.0, max_backoff_s: float = 300.0, final_retries: int = 3,
                 final_retry_wait_s: float = 1.0, max_queued_metrics: int = 100_000, client: Any = None):
        quiet_http_retries()
        self.uri = uri
        self.run_id = run_id
        self.out_dir = Path(out_dir)
        self.client = client if client is not None else mlflow_client(uri)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.final_retries = final_retries
        self.final_retry_wait_s = final_retry_wait_s
        self.max_queued_metrics = max_queued_metrics
        self.queue: list[dict[str, Any]] = []
        self.queued_metrics = 0
        self.failures = 0
        self.next_attempt = 0.0
        self.last_flush = time.monotonic()
        self.last_beat = 0.0
        self.spilled = 0
        self.last_error = ""
        self.disk_full = False  # whether the last failed send was the store's disk being full
        self.spill_error = ""
        self._preempt_hooks: list[Callable[[], None]] = []
        self._artifacts: set[tuple[str, str | None, int]] = set()
        self.job_tags: dict[str, str] = {}

    # -- the contract with train_cell --------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = now_ms()
        rows = [[str(k), float(v), stamp, int(step)] for k, v in metrics.items()]
        self.queue.append({"op": "metrics", "rows": rows})
        self.queued_metrics += len(rows)
        self._heartbeat()
        if self.queued_metrics > self.max_queued_metrics:
            self._spill(lambda op: op["op"] == "metrics")
        self.maybe_flush()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._queue_artifact(Path(path), artifact_path)
        self.maybe_flush(force=True)

    def _queue_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Queue a file unless this very version of it (same mtime) is already queued or sent."""
        if not path.is_file():
            return
        path = path.resolve()
        version = (str(path), artifact_path, path.stat().st_mtime_ns)
        if version in self._artifacts:
            return
        self._artifacts.add(version)
        self.queue.append({"op": "artifact", "path": str(path), "artifact_path": artifact_path})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.queue.append({"op": "tags", "tags": {str(k): str(v) for k, v in tags.items()}})
        self.maybe_flush(force=True)

    def on_preempt(self, fn: Callable[[], None]) -> None:
        """Register a save function that :meth:`preempted` calls before the job is requeued (optional for train)."""
        self._preempt_hooks.append(fn)

    def checkpointed(self) -> None:
        """train_cell wrote a checkpoint: what was logged so far is sent now (unless the store is down and backing
        off: then it stays queued, as in any outage). A job killed without warning (SIGKILL, a dead node) then loses
        no metric of a step its checkpoint covers, which the resumed run would not log again."""
        self.maybe_flush(force=True)

    # -- life cycle (called by CellJob) ------------------------------------------------------------------------
    def start(self, host: str, pid: int, job_tags: dict[str, str]) -> None:
        tags = {"host": host, "pid": str(pid), "git_commit": git_commit(), **environment_tags(), **job_tags}
        self.queue.append({"op": "status", "status": "RUNNING"})
        self.queue.append({"op": "tags", "tags": tags})
        self._heartbeat(force=True)
        self.maybe_flush(force=True)

    def preempted(self, count: int) -> None:
        for hook in self._preempt_hooks:
            try:
                hook()
            except Exception as err:  # noqa: BLE001 - a failed emergency save must not block the requeue
                print(f"preemption save hook failed: {err}", file=sys.stderr)
        # Only queue here: this runs inside a signal handler, possibly in the middle of a flush. submitit exits
        # right after the requeue; CellJob catches that exit and closes the logger.
        self.queue.append({"op": "tags", "tags": {"requeues": str(count)}})

    def finish_success(self, test_metrics: dict[str, float], artifacts: Iterable[Path]) -> None:
        rows = {name if name.startswith("test_") else f"test_{name}": value for name, value in test_metrics.items()}
        self.log_metrics(rows, step=0)
        for path in artifacts:
            self._queue_artifact(Path(path))
        self.queue.append({"op": "tags", "tags": {"failure_reason": ""}})
        self.close(final_status="FINISHED")

    def finish_failure(self, reason: str, artifacts: Iterable[Path]) -> None:
        for path in artifacts:
            self._queue_artifact(Path(path))
        self.queue.append({"op": "tags", "tags": {"failure_reason": reason}})
        self.close(final_status="FAILED")

    def interrupted(self, reason: str, status: str) -> None:
        self.queue.append({"op": "tags", "tags": {"interrupt_reason": reason}})
        self.close(final_status=None if status == "RUNNING" else status)

    def close(self, final_status: str | None) -> int:
        """Send everything (a few tries), then park what is left in pending_metrics.jsonl; returns that count."""
        if final_status is not None:
            self.queue.append({"op": "status", "status": final_status, "end_time": now_ms()})
        for attempt in range(self.final_retries + 1):
            if self.flush():
                break
            if attempt < self.final_retries:
                time.sleep(self.final_retry_wait_s * (2 ** attempt))
        left = len(self.queue)
        if left:
            who = "the disk" if self.disk_full else "the tracking server"
            if self._spill(lambda op: True):
                print(f"{who} did not take everything ({self.last_error}); {self.spilled} operations kept in "
                      f"{self.out_dir / PENDING_FILE}: run python -m experiments.tracking.sync {self.out_dir}", file=sys.stderr)
            else:  # the job's log is all that is left: the reason at least is there
                print(f"{who} did not take {left} operations ({self.last_error}) and they could not be kept on disk "
                      f"either ({self.spill_error}); lost: {short_text(json.dumps(self.queue), 2000)}", file=sys.stderr)
        elif self.spilled:
            self._send({"op": "tags", "tags": {"pending_sync": str(self.spilled)}}, swallow=True)
        return left

    # -- sending ----------------------------------------------------------------------------------------------
    def maybe_flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if now < self.next_attempt:
            return
        due = force or self.queued_metrics >= self.flush_every or now - self.last_flush >= self.flush_interval_s
        if due:
            self.flush()

    def flush(self) -> bool:
        """Send the queue in order; on the first failure keep the rest and schedule the next try. True when empty."""
        self.last_flush = time.monotonic()
        while self.queue:
            batch, count = _take_batch(self.queue)
            try:
                send_operations(self.client, self.run_id, batch)
            except Exception as err:  # noqa: BLE001 - the server's failure is never training's failure
                self.failures += 1
                self.disk_full = disk_space.says_disk_full(err)
                self.last_error = f"{type(err).__name__}: {short_text(err, 480)}"
                delay = min(self.max_backoff_s, self.backoff_s * (2 ** min(self.failures - 1, 16)))
                self.next_attempt = time.monotonic() + delay
                return False
            del self.queue[:count]
            self.queued_metrics = sum(len(op["rows"]) for op in self.queue if op["op"] == "metrics")
            self.failures = 0
            self.next_attempt = 0.0
        return True

    def _send(self, op: dict, swallow: bool) -> None:
        try:
            send_operations(self.client, self.run_id, [op])
        except Exception:  # noqa: BLE001
            if not swallow:
                raise

    def _spill(self, which: Callable[[dict], bool]) -> bool:
        """Move the queued operations ``which`` selects to the pending file; False (all kept queued) when it cannot
        be written (a full disk: the cell's own next write says so and ends it)."""
        keep, spill = [], []
        for op in self.queue:
            (spill if which(op) else keep).append(op)
        try:
            append_pending(self.out_dir, self.uri, self.run_id, spill)
        except OSError as err:
            self.spill_error = short_text(err, 300)
            return False
        self.spilled += len(spill)
        self.queue = keep
        self.queued_metrics = sum(len(op["rows"]) for op in self.queue if op["op"] == "metrics")
        return True

    def _heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_beat < 30.0:
            return
        self.last_beat = now
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / HEARTBEAT_FILE).write_text(json.dumps(
                {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "run_id": self.run_id}))
        except OSError:
            pass


def _take_batch(queue: list[dict]) -> tuple[list[dict], int]:
    """The longest prefix of consecutive metric operations (sent as one log_batch), or the single next operation."""
    if queue[0]["op"] != "metrics":
        return queue[:1], 1
    count = 0
    rows = 0
    for op in queue:
        if op["op"] != "metrics" or (count and rows + len(op["rows"]) > MAX_BATCH_METRICS * 10):
            break
        count += 1
        rows += len(op["rows"])
    return queue[:count], count


def send_operations(client: Any, run_id: str, ops: list[dict]) -> None:
    """Apply queued operations to a run (shared by CellLogger and experiments.tracking.sync). Raises on any failure."""
    from mlflow.entities import Metric, RunTag  # lazy: import cost (module imports)

    metrics = [Metric(key, float(value), int(stamp), int(step))
               for op in ops if op["op"] == "metrics" for key, value, stamp, step in op["rows"]]
    for start in range(0, len(metrics), MAX_BATCH_METRICS):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_BATCH_METRICS], synchronous=True)
    for op in ops:
        kind = op["op"]
        if kind == "metrics":
            continue
        if kind == "tags":
            tags = [RunTag(k, v) for k, v in op["tags"].items()]
            for start in range(0, len(tags), MAX_BATCH_TAGS):
                client.log_batch(run_id, tags=tags[start:start + MAX_BATCH_TAGS], synchronous=True)
        elif kind == "artifact":
            if Path(op["path"]).is_file():
                _log_artifact(client, run_id, Path(op["path"]), op.get("artifact_path"))
        elif kind == "status":
            if op["status"] in ACTIVE_STATUSES:
                client.update_run(run_id, status=op["status"])
            else:
                client.set_terminated(run_id, status=op["status"], end_time=op.get("end_time"))
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")


def _log_artifact(client: Any, run_id: str, path: Path, artifact_path: str | None) -> None:
    """``client.log_artifact``; a full disk under the store's artifacts is a :class:`disk_space.DiskFullError` that
    names where the file was going (a local store) or the server that said so."""
    try:
        client.log_artifact(run_id, str(path), artifact_path)
    except Exception as err:  # noqa: BLE001 - told apart below; anything else re-raised as it was
        try:
            location = client.get_run(run_id).info.artifact_uri or ""
        except Exception:  # noqa: BLE001 - the store is gone altogether: said by the original error
            location = ""
        local = location.startswith("file:")
        where = Path(urllib.parse.unquote(urllib.parse.urlparse(location).path)) if local else location or path
        full = disk_space.disk_full_error(err, where, path.stat().st_size if local else None,
                                          f"the MLflow artifact {path.name}")
        if full is None:
            raise
        raise full from err


def append_pending(out_dir: Path, uri: str, run_id: str, ops: list[dict]) -> None:
    """Append operations to ``<out_dir>/pending_metrics.jsonl``, each line self-contained (uri, run id, op).

    All of them or none: a write that fails (a full disk: :class:`disk_space.DiskFullError`) cuts the file back to
    what it held, so no half line is left for experiments.tracking.sync to set aside."""
    if not ops:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PENDING_FILE
    data = "".join(json.dumps({"tracking_uri": uri, "run_id": run_id, **op}) + "\n" for op in ops).encode("utf-8")
    with disk_space.writing(path, len(data), f"{len(ops)} tracking operations"), open(path, "ab", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            written = 0
            while written < len(data):
                written += fh.write(data[written:])
            os.fsync(fh.fileno())
        except BaseException:
            os.ftruncate(fh.fileno(), size)
            raise
