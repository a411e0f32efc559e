"""What the integration tests share: the Slurm and MLflow-server fixtures' machinery, bounded waiting, the tiny
smoke assets, and the stand-in training functions cells run in other processes.

This file is importable by cell processes (local executor, Slurm jobs): the tests put ``tests/`` on ``PYTHONPATH``
and name a function here in ``$BERTGEN_TRAIN_FN`` (``integration_helpers:scripted_train_cell``).

Everything that waits here waits for a bounded time and says what it was waiting for when it gives up; the only
network traffic is to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# -- CI policy ------------------------------------------------------------------------------------------------------
def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def slurm_required() -> bool:
    """CI provides a cluster (``.ci/run``: ``scripts/slurm_cluster.sh up``) and says so; then a missing one fails."""
    return in_ci() or os.environ.get("BERTGEN_SLURM_CLUSTER", "").lower() in ("1", "true", "yes")


def slurm_answers(timeout_s: float = 20.0) -> tuple[bool, str]:
    """(whether ``sinfo`` reports a usable node, what it said)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False, "sinfo/sbatch are not installed (scripts/slurm_cluster.sh install)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as err:
        return False, f"sinfo failed ({err})"
    states = proc.stdout.split()
    usable = [s for s in states if s.rstrip("*~#!%$@^-") in ("idle", "mixed", "allocated", "completing")]
    if proc.returncode != 0 or not usable:
        return False, f"sinfo: {(proc.stderr or proc.stdout).strip()[:200] or 'no usable node'}"
    return True, f"nodes: {' '.join(states)}"


def require_slurm() -> None:
    ok, why = slurm_answers()
    if ok:
        return
    message = f"no Slurm cluster answers ({why}); start one with scripts/slurm_cluster.sh up DIR"
    if slurm_required():
        pytest.fail(message + " -- CI=true or BERTGEN_SLURM_CLUSTER=1 says one must be there")
    pytest.skip(message)


def stand_in_sbatch(tmp_path: Path, monkeypatch, action: str, job_id: int) -> None:
    """Put a stand-in ``sbatch`` first on PATH: it runs the shell ``action`` (``$1`` is the submitted script) and
    answers as Slurm does, with ``job_id``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\n{action}\necho \"Submitted batch job {job_id}\"\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


# -- waiting ----------------------------------------------------------------------------------------------------------
def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25,
               on_timeout: Callable[[], str] | None = None) -> Any:
    """Call ``predicate`` until it returns something truthy (returned) or ``timeout_s`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}" +
                                 (f"\n{detail}" if detail else ""))
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for launchers and cells: the repository and these helpers importable, one thread each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


# -- MLflow -----------------------------------------------------------------------------------------------------------
def mlflow_template(request, tmp_path_factory) -> Path:
    """A sqlite store with MLflow's schema, built once and kept in pytest's cache (running every migration takes
    seconds; the same key as tests/test_launch.py uses), or in this session's temporary directory without one."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = f"mlflow-template-{mlflow.__version__}"
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir(name) if cache is not None else tmp_path_factory.getbasetemp() / name
    folder.mkdir(parents=True, exist_ok=True)
    template = folder / "mlflow.db"
    if not template.is_file():
        building = template.with_suffix(".building")
        building.unlink(missing_ok=True)
        MlflowClient(f"sqlite:///{building}").search_experiments()
        building.replace(template)
    return template


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a sqlite backend; it can be stopped and started again on the same
    port and store (an outage). Its processes form one process group, started here and ended here by that id."""

    def __init__(self, root: Path, template: Path | None = None, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "mlflow.db"
        if template is not None and not self.db.exists():
            shutil.copy(template, self.db)
        self.artifacts = self.root / "artifacts"
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:  # noqa: S310 - loopback
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self, timeout_s: float = 180.0) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        log = open(self.root / f"server-{self.starts}.log", "wb")  # noqa: SIM115 - closed with the process
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        env = subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = subprocess.Popen(
            [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{self.db}",
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited with {self.proc.returncode}: {self.log_tail()}")
            return self.healthy()

        wait_until(up, timeout_s, f"mlflow server on {self.uri}", interval_s=0.3, on_timeout=self.log_tail)

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the server's process group (SIGTERM, then SIGKILL) and wait until the port no longer answers."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=timeout_s / 2)
                # the uvicorn worker is a child in the same group; wait for the group to be empty
                wait_until(lambda: not _group_alive(pgid), timeout_s / 2, f"process group {pgid} to exit")
                break
            except (subprocess.TimeoutExpired, AssertionError):
                continue
        self.proc = None
        wait_until(lambda: not self.healthy(), timeout_s, f"{self.uri} to stop answering")

    def log_tail(self) -> str:
        logs = sorted(self.root.glob("server-*.log"))
        return logs[-1].read_text(errors="replace")[-2000:] if logs else ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metric_steps(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# -- smoke assets -----------------------------------------------------------------------------------------------------
def quick_assets(tmp_path_factory) -> dict:
    """The reduced tiny checkpoints and tasks, built once per session where tests/test_train.py builds them."""
    from experiments.smoke.assets import SmokeSettings, ensure_smoke_assets

    return ensure_smoke_assets(tmp_path_factory.getbasetemp() / "smoke-assets", SmokeSettings.quick())


def data_spec(path: str) -> dict:
    return {"path": path, "columns": {"input": "source", "target": "target", "id": "id"}}


def tiny_cell(assets: dict, output_root: Path, scheme: str = "bert2bert", cell_id: str | None = None,
              **train: Any) -> dict:
    """A complete cell (the layout of experiments.grid.identity) on the tiny fusion task: seconds of training."""
    settings = {"steps": 8, "batch_size": 8, "grad_accum": 1, "lr": 3e-3, "warmup_steps": 2, "schedule": "linear",
                "max_grad_norm": 1.0, "bf16": False, "eval_every": 4, "checkpoint_every": 4, "eval_examples": 8,
                "num_workers": 0, "log_every": 1}
    settings.update(train)
    return {
        "cell_id": cell_id or f"tiny-{scheme}", "grid": "tests", "task": "discofuse", "scheme": scheme, "seed": 5,
        "checkpoints": dict(assets["checkpoints"]),
        "data": {split: data_spec(path) for split, path in assets["tasks"]["fusion"].items()},
        "data_fraction": 1.0, "max_examples": {"train": None, "validation": None, "test": None},
        "model": {}, "init_layers": None, "train": settings,
        "decode": {"num_beams": 2, "length_penalty": 0.6, "length_penalty_style": "gnmt", "max_new_tokens": 12},
        "output_root": str(output_root),
    }


# -- training stand-ins run by cell processes -------------------------------------------------------------------------
CONTROL_ENV = "BERTGEN_TEST_CONTROL"  # a directory the test and scripted cells talk through
FAIL_SCHEME_ENV = "BERTGEN_TEST_FAIL_SCHEME"  # train_cell_failing_for: the scheme whose cells raise
FAIL_AT_STEP = 10


def scripted_metrics(cell: dict, step: int) -> dict[str, float]:
    """What the scripted cell logs at ``step``: values the test can recompute (no two cells or steps alike)."""
    salt = sum(map(ord, cell["scheme"]))
    return {"loss": 10.0 / step + salt * 1e-3, "lr": 1e-4 * step, "tokens_per_s": float(1000 + step + salt)}


def scripted_test_metrics(cell: dict) -> dict[str, float]:
    return {"sari": 40.0 + len(cell["scheme"]), "exact": 5.0}


def scripted_train_cell(cell: dict, out_dir: Path, logger) -> dict[str, float]:
    """A training stand-in with a known metric stream: ``scripted_metrics`` at every step, paced by
    ``$BERTGEN_TEST_CONTROL/pace_s`` (seconds a step), writing ``progress`` (the step reached) into its cell
    directory. It runs ``train.steps`` steps, or, when the control directory holds ``run_until_release``, until the
    file ``release`` appears there (``train.steps`` at most). When ``hold_at`` holds a step number it stops at that
    step until ``release`` appears (at most 300 s). Either way a test can change the world (stop the tracking
    server) at a known point and know exactly which steps were logged."""
    control = Path(os.environ[CONTROL_ENV])
    pace = float((control / "pace_s").read_text()) if (control / "pace_s").is_file() else 0.0
    hold_at = int((control / "hold_at").read_text()) if (control / "hold_at").is_file() else None
    until_release = (control / "run_until_release").is_file()
    out_dir = Path(out_dir)
    for step in range(1, cell["train"]["steps"] + 1):
        logger.log_metrics(scripted_metrics(cell, step), step)
        (out_dir / "progress").write_text(str(step))
        if until_release and (control / "release").exists():
            break
        if step == hold_at:
            deadline = time.monotonic() + 300
            while not (control / "release").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{control / 'release'} did not appear within 300 s")
                time.sleep(0.1)
        if pace:
            time.sleep(pace)
    metrics = scripted_test_metrics(cell)
    (out_dir / "predictions.jsonl").write_text(json.dumps({"id": "0", "prediction": "a b"}) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps({"test": metrics}))
    return metrics


class _FailingLogger:
    """Passes everything to the cell's logger; raises once training reports step FAIL_AT_STEP."""

    def __init__(self, inner):
        self.inner = inner

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)
        if "loss" in metrics and step >= FAIL_AT_STEP:
            raise RuntimeError(f"injected failure at training step {step} (tests/integration_helpers.py)")

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def train_cell_failing_for(cell: dict, out_dir: Path, logger) -> dict[str, float]:
    """experiments.recipes.train.train_cell, except that cells of ``$BERTGEN_TEST_FAIL_SCHEME`` raise mid-training."""
    from experiments.recipes.train import train_cell

    if cell["scheme"] == os.environ.get(FAIL_SCHEME_ENV):
        logger = _FailingLogger(logger)
    return train_cell(cell, out_dir, logger)


PACE_ENV = "BERTGEN_TEST_PACE_S"  # train_cell_paced: seconds slept at each logged training step


class _PacedLogger:
    """Passes everything to the cell's logger; sleeps after each training-loss log."""

    def __init__(self, inner, pace_s: float):
        self.inner, self.pace_s = inner, pace_s

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)
        if "loss" in metrics:
            time.sleep(self.pace_s)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def train_cell_paced(cell: dict, out_dir: Path, logger) -> dict[str, float]:
    """experiments.recipes.train.train_cell slowed down by ``$BERTGEN_TEST_PACE_S`` seconds at every logged step, so that a
    test can act on a tiny cell (seconds of training on a quiet machine) in the middle of its training; the cell,
    its id and its numbers are unchanged."""
    from experiments.recipes.train import train_cell

    return train_cell(cell, out_dir, _PacedLogger(logger, float(os.environ.get(PACE_ENV, "0"))))
