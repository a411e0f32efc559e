"""Cells logging to a real ``mlflow server`` (sqlite backend, 127.0.0.1) that goes away.

The cells are launched with ``python -m experiments.launch --executor local`` (one process each, all at once) and
train with integration_helpers.scripted_train_cell: a stand-in whose metric stream is known in advance (three
metrics at every step, values that differ per cell and step), so "nothing lost" is checked value by value. What is
under test is the path those metrics take — experiments.tracking.runs.CellLogger with its default settings, the launcher,
experiments.tracking.sync — not training, which tests/test_slurm_integration.py runs for real.

1. Outage in the middle: the server is stopped for ~30 s while three cells log; they go on training, and what they
   buffered reaches the server after it is back while they are still running; at the end every metric is there
   exactly once and nothing was parked on disk.
2. Outage at the end: the server is stopped before the cells finish and stays down; they finish anyway, park what
   they could not send in ``pending_metrics.jsonl`` (so does the launcher, for its own run), and
   ``python -m experiments.tracking.sync`` uploads all of it once the server is back — twice run, nothing doubled.
3. ``experiments.tracking.sync`` uploads only files of the cell directory a pending file sits in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.config.cell import to_dict
from experiments.grid.identity import cell_dir
from experiments.grid.load import load_grid
from experiments.tracking.runs import PENDING_FILE
from integration_helpers import (CONTROL_ENV, REPO, MlflowServer, metric_steps, mlflow_template, scripted_metrics,
                                 scripted_test_metrics, subprocess_env, wait_until)

pytestmark = pytest.mark.slow

SCHEMES = ("bert2bert", "bertShare", "gpt")
OUTAGE_S = 30.0
METRICS = ("loss", "lr", "tokens_per_s")


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    srv = MlflowServer(tmp_path_factory.mktemp("faults-mlflow"), mlflow_template(request, tmp_path_factory))
    srv.start()
    yield srv
    srv.stop()


class Study:
    """A grid of three scripted cells logging to the server, launched as a background process."""

    def __init__(self, root: Path, server: MlflowServer, experiment: str, steps: int, pace_s: float = 0.0,
                 hold_at: int | None = None, until_release: bool = False):
        from mlflow.tracking import MlflowClient

        self.root, self.server, self.experiment, self.steps = root, server, experiment, steps
        self.control = root / "control"
        self.control.mkdir(parents=True)
        (self.control / "pace_s").write_text(str(pace_s))
        if hold_at is not None:
            (self.control / "hold_at").write_text(str(hold_at))
        if until_release:
            (self.control / "run_until_release").write_text("")
        self.grid = root / "grid.yaml"
        self.grid.write_text(yaml.safe_dump({
            "name": "faults", "output_root": str(root / "out"),
            "mlflow": {"tracking_uri": server.uri, "experiment": experiment},
            "executor": {"local": {"parallelism": len(SCHEMES), "timeout_min": 30}},
            "tasks": ["discofuse"], "schemes": list(SCHEMES), "seeds": [1],
            "defaults": {"train": {"steps": steps}, "data": {"variant": "full"}},  # fake training reads no data
        }))
        self.cells = load_grid(self.grid).cells
        self.client = MlflowClient(server.uri)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = subprocess_env(BERTGEN_TRAIN_FN="integration_helpers:scripted_train_cell",
                             **{CONTROL_ENV: str(self.control)})
        self.out = open(self.root / "launcher.log", "w")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen([sys.executable, "-m", "experiments.launch", str(self.grid), "--executor",
                                      "local"], cwd=REPO, env=env, stdout=self.out, stderr=subprocess.STDOUT)

    def finish(self, timeout_s: float = 300) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout_s)
        self.out.close()
        return code, (self.root / "launcher.log").read_text()

    def progress(self) -> dict[str, int]:
        out = {}
        for cell in self.cells:
            file = cell_dir(cell) / "progress"
            try:
                out[cell.scheme] = int(file.read_text())
            except (OSError, ValueError):
                out[cell.scheme] = 0
        return out

    def all_at_least(self, step: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"launcher exited early: {(self.root / 'launcher.log').read_text()[-3000:]}")
        return min(self.progress().values()) >= step

    def runs(self, role: str = "cell") -> dict[str, object]:
        exp = self.client.get_experiment_by_name(self.experiment)
        runs = self.client.search_runs([exp.experiment_id], f"tags.role = '{role}'") if exp else []
        return {r.data.tags.get("scheme", "launch"): r for r in runs}

    def assert_every_metric_arrived_once(self) -> None:
        """Every step the cells logged (their progress files say how many), every metric, once, with its value."""
        runs, logged = self.runs(), self.progress()
        assert sorted(runs) == sorted(SCHEMES)
        for cell in self.cells:
            run = runs[cell.scheme]
            assert run.info.status == "FINISHED", (cell.scheme, run.info.status)
            for key in METRICS:
                expected = [(step, scripted_metrics(to_dict(cell), step)[key]) for step in range(1, logged[cell.scheme] + 1)]
                assert metric_steps(self.client, run.info.run_id, key) == expected, (cell.scheme, key)
            test = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
            assert test == {f"test_{k}": v for k, v in scripted_test_metrics(to_dict(cell)).items()}
            assert {f.path for f in self.client.list_artifacts(run.info.run_id)} == \
                {"cell.json", "predictions.jsonl", "metrics.json"}


def test_an_outage_in_the_middle_loses_nothing_and_the_backlog_goes_out_while_cells_run(server, tmp_path):
    """The cells log ten steps a second until the test releases them, which it does only once everything they
    logged during the outage is on the server: so that backlog was sent by the running cells, not at their end."""
    study = Study(tmp_path, server, "outage-middle", steps=5000, pace_s=0.1, until_release=True)
    study.start()
    wait_until(lambda: study.all_at_least(20), 180, "every cell to pass step 20")

    stopped_ms = int(time.time() * 1000)
    stopped_at = time.monotonic()
    server.stop()
    at_stop = study.progress()
    wait_until(lambda: study.all_at_least(max(at_stop.values()) + 50), 60, "cells to keep training in the outage")
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at)))
    server.start()
    restarted_ms = int(time.time() * 1000)
    restarted_at = time.monotonic()
    at_restart = study.progress()

    def outage_steps_arrived():
        runs = study.runs()
        return all(len(metric_steps(study.client, runs[s].info.run_id, "loss")) >= at_restart[s] for s in SCHEMES)

    # CellLogger backs off 5, 10, 20, 40 s between tries while the server is away: at most ~80 s to the next try
    wait_until(outage_steps_arrived, 240, "the steps logged during the outage to reach the server", interval_s=1.0)
    statuses = {s: r.info.status for s, r in study.runs().items()}
    assert set(statuses.values()) == {"RUNNING"}, statuses  # delivered by the live cells
    print(f"\n[mlflow] outage {(restarted_at - stopped_at):.0f} s; backlog on the server "
          f"{time.monotonic() - restarted_at:.0f} s after the restart")

    (study.control / "release").write_text("")
    code, log = study.finish()
    assert code == 0, log
    study.assert_every_metric_arrived_once()
    for cell in study.cells:
        assert not (cell_dir(cell) / PENDING_FILE).exists()  # sent by the live run, nothing parked
        # metrics were logged (client-side timestamps) while the server was away: training did not wait for it
        stamps = [m.timestamp for m in study.client.get_metric_history(study.runs()[cell.scheme].info.run_id,
                                                                       "loss")]
        assert sum(stopped_ms < t < restarted_ms for t in stamps) >= 50
    assert study.runs("launch")["launch"].info.status == "FINISHED"


def test_still_down_at_the_end_the_cells_park_their_metrics_and_sync_uploads_them(server, tmp_path):
    steps, hold = 30, 10
    study = Study(tmp_path, server, "outage-end", steps, hold_at=hold)
    study.start()
    wait_until(lambda: study.all_at_least(hold), 180, f"every cell to reach step {hold}")
    server.stop()
    (study.control / "release").write_text("")
    code, log = study.finish()
    assert code == 0, log  # the cells finished, the launcher says where their results are
    assert "the tracking server did not answer at the end" in log and "python -m experiments.tracking.sync" in log
    assert "Traceback" not in log
    pending = [cell_dir(cell) / PENDING_FILE for cell in study.cells] + \
        [study.root / "out" / "launches" / PENDING_FILE]
    assert all(p.is_file() for p in pending), [str(p) for p in pending if not p.is_file()]
    parked = [json.loads(line) for line in pending[0].read_text().splitlines()]
    assert parked[-1]["op"] == "status" and parked[-1]["status"] == "FINISHED"
    assert sum(len(op["rows"]) for op in parked if op["op"] == "metrics") >= (steps - hold) * len(METRICS)

    server.start()
    assert {r.info.status for r in study.runs().values()} == {"RUNNING"}  # before the sync: still incomplete
    sync = [sys.executable, "-m", "experiments.tracking.sync", str(study.root / "out")]
    proc = subprocess.run(sync, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any(p.exists() for p in pending)
    study.assert_every_metric_arrived_once()
    assert study.runs("launch")["launch"].info.status == "FINISHED"
    again = subprocess.run(sync, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 operations sent, 0 left" in again.stdout
    study.assert_every_metric_arrived_once()  # nothing doubled


def test_sync_uploads_only_files_of_the_cell_directory(server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    experiment = client.create_experiment("sync-paths")
    run_id = client.create_run(experiment).info.run_id
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for the tracking server")
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "metrics.json").write_text("{}")
    records = [{"op": "artifact", "path": str(cell / "metrics.json"), "artifact_path": None},
               {"op": "artifact", "path": str(cell / ".." / "elsewhere" / "secret.txt"), "artifact_path": None}]
    (cell / PENDING_FILE).write_text("".join(json.dumps({"tracking_uri": server.uri, "run_id": run_id, **r}) + "\n"
                                             for r in records))
    proc = subprocess.run([sys.executable, "-m", "experiments.tracking.sync", str(cell)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert f"{cell / PENDING_FILE}:2: artifact" in line and "is outside" in line and "nothing was uploaded" in line
    assert client.list_artifacts(run_id) == []
    assert (cell / PENDING_FILE).is_file()  # kept as it was, for a person to look at
