"""The launcher end to end with MLflow: what gets recorded, what a relaunch skips, resumes or retries, and how
tracking outages are survived; plus the Slurm submission through a stand-in ``sbatch``.

Training is a fake (``experiments.launch.job.TRAIN_FN``) that logs a few steps and writes the files train_cell writes;
cells run with the debug executor (in this process) except in the one local-executor test. All tests share one
sqlite tracking store (creating one costs seconds) with an experiment each.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
import torch
import yaml

from experiments.launch import job as cell_job
from experiments.launch import launcher as launch
from experiments.tracking import sync
from experiments.config.cell import to_dict
from experiments.grid.identity import cell_dir
from experiments.launch.job import CellJob
from experiments.grid.load import load_grid, select
from experiments.tracking.runs import PENDING_FILE, CellLogger, Tracker
from integration_helpers import stand_in_sbatch

REPO = Path(__file__).resolve().parents[1]


# -- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tracking_db(tmp_path_factory, request) -> Path:
    """A fresh sqlite store for this session, copied from a template kept in pytest's cache (building MLflow's
    schema runs every migration and takes seconds; the template is keyed by the MLflow version)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    template = request.config.cache.mkdir(f"mlflow-template-{mlflow.__version__}") / "mlflow.db"
    if not template.is_file():
        building = template.with_suffix(".building")
        building.unlink(missing_ok=True)
        MlflowClient(f"sqlite:///{building}").search_experiments()
        building.replace(template)
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copy(template, db)
    return db


class Study:
    """One test's grid, experiment and fake trainer."""

    def __init__(self, root: Path, uri: str, experiment: str):
        self.root, self.uri, self.experiment = root, uri, experiment
        self.calls: list[dict] = []
        self.behaviour: dict[str, str] = {}  # scheme -> "nan" | "interrupt" | "ok"
        self.grid = root / "grid.yaml"
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)

    def write(self, schemes=("bert2bert", "gpt"), **extra) -> Path:
        """The grid of ``schemes`` on DiscoFuse; the fake trainer reads no data, so the hub's set (data.variant:
        full) stands in for the paper's balanced files the launch would otherwise require."""
        defaults = {"train": {"steps": 3}, **extra.pop("defaults", {})}
        defaults.setdefault("data", {"variant": "full"})
        doc = {"output_root": str(self.root / "out"), "tasks": ["discofuse"], "schemes": list(schemes),
               "seeds": [1], "defaults": defaults,
               "mlflow": {"tracking_uri": self.uri, "experiment": self.experiment}, **extra}
        self.grid.write_text(yaml.safe_dump(doc))
        return self.grid

    def train(self, cell: dict, out_dir: Path, logger) -> dict[str, float]:
        """Logs loss at steps 1..steps, resuming after the last step it checkpointed (out_dir/checkpoints/last)."""
        self.calls.append(cell)
        last = out_dir / "checkpoints" / "last"
        start = int(last.read_text()) + 1 if last.is_file() else 1
        mode = self.behaviour.get(cell["scheme"], "ok")
        for step in range(start, cell["train"]["steps"] + 1):
            logger.log_metrics({"loss": 1.0 / step, "lr": 0.01, "tokens_per_s": 100.0}, step)
            last.parent.mkdir(parents=True, exist_ok=True)
            last.write_text(str(step))
            if mode == "interrupt" and step == 2:
                self.behaviour[cell["scheme"]] = "ok"
                raise KeyboardInterrupt
            if mode == "nan" and step == 2:
                raise FloatingPointError(f"loss is NaN at step {step}")
        metrics = {"sari": 40.0 + len(cell["scheme"]), "exact": 5.0}
        (out_dir / "predictions.jsonl").write_text(json.dumps({"id": "0", "prediction": "a b"}) + "\n")
        (out_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics

    def launch(self, *args: str) -> int:
        return launch.main([str(self.grid), "--executor", "debug", *args])

    def cell_runs(self) -> list:
        exp = self.client.get_experiment_by_name(self.experiment)
        return list(self.client.search_runs([exp.experiment_id], "tags.role = 'cell'")) if exp else []

    def launches(self) -> list:
        exp = self.client.get_experiment_by_name(self.experiment)
        return list(self.client.search_runs([exp.experiment_id], "tags.role = 'launch'")) if exp else []

    def run_of(self, scheme: str):
        (run,) = [r for r in self.cell_runs() if r.data.tags["scheme"] == scheme]
        return run


@pytest.fixture
def study(tmp_path, tracking_db, monkeypatch, request) -> Study:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    s = Study(tmp_path, f"sqlite:///{tracking_db}", f"test-{name}")
    monkeypatch.setattr(cell_job, "TRAIN_FN", s.train)
    return s


def artifacts(study: Study, run) -> set[str]:
    return {f.path for f in study.client.list_artifacts(run.info.run_id)}


# -- refusing before anything happens -------------------------------------------------------------------------------
def test_invalid_grid_exits_2_from_the_command_line_and_creates_nothing(tmp_path):
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump({"output_root": str(tmp_path / "out"), "tasks": ["discofuse"],
                                    "schemes": ["bert2bret"]}))
    proc = subprocess.run([sys.executable, "-m", "experiments.launch", str(grid)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml: schemes[0]: unknown scheme 'bert2bret' (did you mean 'bert2bert'?)" in lines[0]
    assert not (tmp_path / "out").exists() and not list(REPO.glob("outputs/mlflow.db-journal"))


def test_invalid_values_refused_in_process_without_output_dir(study, capsys):
    for extra in ({"defaults": {"train": {"steps": 0}}}, {"executor": {"slurm": {"partition": "a\nb"}}}):
        study.write(**extra)
        assert study.launch() == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "grid.yaml: " in err
    assert study.launch("--set", "train.stepz=3") == 2
    assert "did you mean 'train.steps'" in capsys.readouterr().err
    assert not (study.root / "out").exists()
    assert study.client.get_experiment_by_name(study.experiment) is None  # no MLflow run, not even an experiment


def test_unreachable_tracking_server_refuses_before_submitting(study, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    study.write()
    assert study.launch("--set", f"mlflow.tracking_uri=http://127.0.0.1:{port}") == 2
    err = capsys.readouterr().err
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in err and "nothing was submitted" in err
    assert not (study.root / "out").exists() and study.calls == []


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        launch.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--executor", "--dry-run", "--only", "--set", "--retry-failed"):
        assert option in text


# -- dry run and selection ------------------------------------------------------------------------------------------
def test_dry_run_prints_the_cells_and_writes_nothing(study, capsys):
    study.write(schemes=("bert2bert", "bertShare", "gpt"), sweep={"data_fraction": [1.0, 0.1]},
                executor={"slurm": {"partition": "gpuq", "gpus_per_node": 2}})
    assert launch.main([str(study.grid), "--dry-run", "--executor", "slurm"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.split(r"\s+", out[0]) == ["id", "task", "scheme", "seed", "variant", "steps", "where"]
    rows = [line for line in out[2:] if re.match(r"[0-9a-f]{12}\s", line)]
    grid = load_grid(study.grid)
    assert len(rows) == 6 == len(grid.cells)
    for line, cell in zip(rows, grid.cells):
        fields = re.split(r"\s{2,}", line)
        assert fields[:4] == [cell.cell_id, "discofuse", cell.scheme, "1"]
        assert fields[5] == "3" and fields[6] == "slurm gpuq 1x2gpu"
    assert "df0.1" in "\n".join(rows)
    assert "6 of 6 cells" in out[-1]
    assert not (study.root / "out").exists() and study.calls == []


def test_only_selects_by_glob_name_or_id_prefix(study, capsys):
    study.write(schemes=("bert2bert", "bertShare", "gpt", "rnd2gpt"), sweep={"data_fraction": [1.0, 0.1]})
    grid = load_grid(study.grid)

    def selected(pattern: str) -> set[str]:
        return {c.cell_id for c in select(grid.cells, pattern)}

    by_scheme = lambda *names: {c.cell_id for c in grid.cells if c.scheme in names}  # noqa: E731
    assert selected("bertShare") == by_scheme("bertShare")
    assert selected("discofuse/bert*") == by_scheme("bert2bert", "bertShare")
    assert selected("*/*gpt/*/df0.1") == {c.cell_id for c in grid.cells
                                          if c.scheme in ("gpt", "rnd2gpt") and c.data_fraction == 0.1}
    one = grid.cells[3].cell_id
    assert selected(one[:6]) == {one}
    assert selected(f"gpt,{one}") == by_scheme("gpt") | {one}
    assert selected("discofuse") == {c.cell_id for c in grid.cells}
    assert launch.main([str(study.grid), "--dry-run", "--only", "gpt"]) == 0
    assert len([l for l in capsys.readouterr().out.splitlines() if re.match(r"[0-9a-f]{12}\s", l)]) == 2
    assert launch.main([str(study.grid), "--dry-run", "--only", "nothing*"]) == 2
    assert "--only 'nothing*': no cell matches" in capsys.readouterr().err


# -- launching with the debug executor ------------------------------------------------------------------------------
def test_launch_records_runs_and_relaunch_skips_finished_and_failed(study, capsys):
    study.behaviour["gpt"] = "nan"
    study.write()
    assert study.launch() == 1  # a cell failed
    out = capsys.readouterr().out
    assert re.search(r"bert2bert\s+1\s+-\s+FINISHED\s+exact=5\.00 sari=49\.00", out), out
    assert re.search(r"gpt\s+1\s+-\s+FAILED\s+-\s+\[FloatingPointError: loss is NaN at step 2\]", out), out
    assert len(study.calls) == 2

    (parent,) = study.launches()
    ok, bad = study.run_of("bert2bert"), study.run_of("gpt")
    cell = load_grid(study.grid).cells[0]
    assert ok.info.status == "FINISHED" and bad.info.status == "FAILED" and parent.info.status == "FAILED"
    tags = ok.data.tags
    assert tags["mlflow.parentRunId"] == parent.info.run_id == bad.data.tags["mlflow.parentRunId"]
    assert (tags["cell_id"], tags["task"], tags["scheme"], tags["seed"], tags["grid"]) == (
        cell.cell_id, "discofuse", "bert2bert", "1", "grid")
    assert tags["host"] == socket.gethostname() and re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", tags["git_commit"])
    assert ok.data.params["train.steps"] == "3" and ok.data.params["checkpoints.gpt2"] == "null"
    assert ok.data.params["decode.length_penalty_style"] == "gnmt"
    assert ok.data.metrics["test_sari"] == 49.0 and ok.data.metrics["test_exact"] == 5.0
    history = study.client.get_metric_history(ok.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert artifacts(study, ok) == {"cell.json", "predictions.jsonl", "metrics.json"}
    assert json.loads((cell_dir(cell) / "cell.json").read_text()) == to_dict(cell)
    assert "FloatingPointError: loss is NaN at step 2" in bad.data.tags["failure_reason"]
    assert artifacts(study, bad) == {"cell.json", "traceback.txt"}
    trace = (cell_dir(load_grid(study.grid).cells[1]) / "traceback.txt").read_text()
    assert "Traceback" in trace and "loss is NaN" in trace

    # relaunch: nothing runs again, no run is duplicated
    assert study.launch() == 1
    out = capsys.readouterr().out
    assert "2 cells: 1 failed, 1 finished" in out and "FINISHED (done before)" in out
    assert "FAILED (skipped; --retry-failed)" in out
    # ... and a launch with nothing to run leaves no empty launch run behind
    assert len(study.calls) == 2 and len(study.cell_runs()) == 2 and len(study.launches()) == 1

    # --retry-failed reruns the failed cell in its own run, which resumes from its last checkpoint
    assert study.launch("--retry-failed") == 0
    assert [c["scheme"] for c in study.calls[2:]] == ["gpt"]
    runs = study.cell_runs()
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert study.run_of("gpt").info.run_id == bad.info.run_id
    assert study.run_of("gpt").data.tags["failure_reason"] == ""
    assert study.run_of("gpt").data.tags["attempts"] == "1" and study.run_of("bert2bert").data.tags["attempts"] == "0"
    assert sorted(m.step for m in study.client.get_metric_history(bad.info.run_id, "loss")) == [1, 2, 3]


def test_interrupted_cell_resumes_in_the_same_run(study, capsys):
    study.behaviour["bertShare"] = "interrupt"
    study.write(schemes=("bertShare",), defaults={"train": {"steps": 4}})
    assert study.launch() == 130
    (run,) = study.cell_runs()
    assert run.info.status == "KILLED" and study.launches()[0].info.status == "KILLED"
    assert study.launch() == 0
    assert "1 resume" in capsys.readouterr().out
    (again,) = study.cell_runs()
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    steps = [m.step for m in study.client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4]  # steps 3-4 came from the resumed attempt, not a restart


def test_running_cell_is_left_alone_while_alive_and_resumed_once_dead(study, capsys):
    study.write(schemes=("rnd2rnd",))
    cell = load_grid(study.grid).cells[0]
    tracker = Tracker(study.uri, study.experiment)
    parent = tracker.start_parent("elsewhere", {})
    run_id = tracker.create_cell_run(cell, "x", parent, {})
    tracker.client.update_run(run_id, status="RUNNING")
    tracker.client.set_tag(run_id, "host", socket.gethostname())
    tracker.client.set_tag(run_id, "pid", str(os.getppid()))  # alive: the process that started pytest
    assert study.launch() == 0
    assert "1 running" in capsys.readouterr().out and study.calls == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tracker.client.set_tag(run_id, "pid", str(dead.pid))
    assert study.launch() == 0
    assert "1 resume" in capsys.readouterr().out and len(study.calls) == 1
    (run,) = study.cell_runs()
    assert run.info.run_id == run_id and run.info.status == "FINISHED"


def test_set_overrides_reach_the_cells(study):
    study.write(schemes=("bert2rnd",))
    assert study.launch("--set", "train.steps=5", "--set", "decode.num_beams=2", "--set", "seeds=[3]") == 0
    (cell,) = study.calls
    assert cell["train"]["steps"] == 5 and cell["decode"]["num_beams"] == 2 and cell["seed"] == 3
    assert study.cell_runs()[0].data.params["train.steps"] == "5"


def test_default_tracking_store_is_sqlite_beside_the_outputs(study, tracking_db, capsys):
    study.write(schemes=("rnd2bert",), mlflow={"experiment": study.experiment})
    (study.root / "out").mkdir()
    shutil.copy(tracking_db, study.root / "out" / "mlflow.db")  # a ready schema; creating one takes seconds
    assert study.launch() == 0
    assert f"mlflow ui --backend-store-uri sqlite:///{study.root / 'out' / 'mlflow.db'}" in capsys.readouterr().out
    from mlflow.tracking import MlflowClient

    local = MlflowClient(f"sqlite:///{study.root / 'out' / 'mlflow.db'}")
    exp = local.get_experiment_by_name(study.experiment)
    (run,) = local.search_runs([exp.experiment_id], "tags.role = 'cell'")
    assert run.info.status == "FINISHED"
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(study.root / "out" / "mlartifacts")
    assert study.client.get_experiment_by_name(study.experiment) is None  # nothing went to the shared store


# -- Slurm ----------------------------------------------------------------------------------------------------------
def test_slurm_submits_one_job_array_with_the_grid_parameters(study, tmp_path, monkeypatch, capsys):
    stand_in_sbatch(tmp_path, monkeypatch, f"cp \"$1\" {tmp_path}/submitted.sh", 4242)
    study.write(schemes=("bert2bert", "bertShare", "gpt"), executor={"slurm": {
        "partition": "gpuq", "gpus_per_node": 2, "cpus_per_task": 4, "mem_gb": 32, "timeout_min": 90,
        "array_parallelism": 2, "account": "proj", "qos": "high", "constraint": "a100", "nodes": 1,
        "tasks_per_node": 2}})
    assert launch.main([str(study.grid)]) == 0  # sbatch on PATH: slurm is the default
    out = capsys.readouterr().out
    assert "submitted 3 cells as Slurm job array 4242 (at most 2 at a time)" in out and "squeue -j 4242" in out
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpuq", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=32GB", "#SBATCH --time=90", "#SBATCH --account=proj",
                 "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --ntasks-per-node=2",
                 "#SBATCH --job-name=bertgen-grid", "#SBATCH --signal=USR2@"):
        assert line in script, line
    runs = study.cell_runs()
    assert sorted(r.data.tags["slurm_job_id"] for r in runs) == ["4242_0", "4242_1", "4242_2"]
    assert {r.info.status for r in runs} == {"SCHEDULED"} and study.calls == []
    assert study.launches()[0].info.status == "FINISHED"

    # what each array task unpickles: a checkpointable CellJob that requeues itself
    pickles = sorted((study.root / "out" / "submitit" / "grid").rglob("*_submitted.pkl"))
    assert len(pickles) == 3
    delayed = pickle.loads(pickles[0].read_bytes())
    job = delayed.function
    assert isinstance(job, CellJob) and isinstance(job, submitit.helpers.Checkpointable)
    requeued = job.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission) and requeued.function is job
    assert job.requeues == 1 and job.run_id in {r.info.run_id for r in runs}
    assert job.num_threads == 4  # cpus_per_task

    # a relaunch while the jobs are queued does not submit them again (squeue answers for them)
    squeue = tmp_path / "bin" / "squeue"  # beside the stand-in sbatch, on PATH
    squeue.write_text("#!/bin/sh\necho PENDING\n")
    squeue.chmod(squeue.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "submitted.sh").unlink()
    assert launch.main([str(study.grid)]) == 0
    assert "3 running" in capsys.readouterr().out and not (tmp_path / "submitted.sh").exists()


# -- tracking outages -----------------------------------------------------------------------------------------------
class FlakyClient:
    """A real MlflowClient behind a switch: while ``down``, every call raises as an unreachable server would."""

    def __init__(self, real, down: bool = True):
        self.real, self.down, self.calls = real, down, 0

    def __getattr__(self, name):
        target = getattr(self.real, name)

        def call(*args, **kwargs):
            self.calls += 1
            if self.down:
                raise ConnectionError("tracking server unreachable")
            return target(*args, **kwargs)
        return call


def test_logger_survives_an_outage_and_sync_uploads_the_rest(study, tmp_path, capsys):
    study.write(schemes=("bert2gpt",))
    cell = load_grid(study.grid).cells[0]
    tracker = Tracker(study.uri, study.experiment)
    run_id = tracker.create_cell_run(cell, "x", tracker.start_parent("p", {}), {})
    flaky = FlakyClient(tracker.client, down=True)
    out_dir = tmp_path / "cell"
    logger = CellLogger(study.uri, run_id, out_dir, client=flaky, flush_every=2, backoff_s=0.0, final_retries=1,
                        final_retry_wait_s=0.0)
    logger.start(host="h", pid=1, job_tags={})
    for step in range(1, 6):
        logger.log_metrics({"loss": float(step)}, step)  # never raises while the server is down
    flaky.down = False  # a blip: the next flush sends the backlog
    logger.log_metrics({"loss": 6.0}, 6)
    assert logger.queue == [] and flaky.calls > 1
    flaky.down = True
    for step in range(7, 9):
        logger.log_metrics({"loss": float(step)}, step)
    (out_dir / "metrics.json").write_text("{}")
    left = logger.close(final_status="FINISHED")
    assert left > 0 and "python -m experiments.tracking.sync" in capsys.readouterr().err
    pending = [json.loads(line) for line in (out_dir / PENDING_FILE).read_text().splitlines()]
    assert {p["run_id"] for p in pending} == {run_id} and {p["tracking_uri"] for p in pending} == {study.uri}
    assert pending[-1]["op"] == "status" and pending[-1]["status"] == "FINISHED"
    run = tracker.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert sorted(m.step for m in study.client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4, 5, 6]

    assert sync.main([str(tmp_path)]) == 0
    assert not (out_dir / PENDING_FILE).exists()
    assert sorted(m.step for m in study.client.get_metric_history(run_id, "loss")) == list(range(1, 9))
    assert tracker.get_run(run_id).info.status == "FINISHED"
    assert sync.main([str(tmp_path)]) == 0  # nothing left: a second sync sends nothing twice
    assert len(study.client.get_metric_history(run_id, "loss")) == 8


def test_the_logger_sends_what_was_logged_when_a_checkpoint_is_written(study, tmp_path):
    """A job killed after a checkpoint (SIGKILL) resumes after it and never logs those steps again: they must have
    left the process with the checkpoint, not wait for the next timed flush."""
    study.write(schemes=("bert2gpt",))
    tracker = Tracker(study.uri, study.experiment)
    run_id = tracker.create_cell_run(load_grid(study.grid).cells[0], "x", tracker.start_parent("p", {}), {})
    logger = CellLogger(study.uri, run_id, tmp_path / "cell", flush_every=10_000, flush_interval_s=3600.0)
    for step in (1, 2):
        logger.log_metrics({"loss": float(step)}, step)
    assert len(logger.queue) == 2 and study.client.get_metric_history(run_id, "loss") == []  # not due yet
    logger.checkpointed()
    assert logger.queue == [] and [m.step for m in study.client.get_metric_history(run_id, "loss")] == [1, 2]


def test_sync_stops_cleanly_and_resumes_where_it_stopped(study, tmp_path, monkeypatch):
    study.write(schemes=("bert2gpt",))
    cell = load_grid(study.grid).cells[0]
    tracker = Tracker(study.uri, study.experiment)
    run_id = tracker.create_cell_run(cell, "x", tracker.start_parent("p", {}), {})
    out_dir = tmp_path / "cell"
    logger = CellLogger(study.uri, run_id, out_dir, client=FlakyClient(tracker.client), final_retries=0)
    for step in range(1, 451):
        logger.log_metrics({"loss": float(step)}, step)
    logger.close(final_status="FINISHED")
    assert len((out_dir / PENDING_FILE).read_text().splitlines()) == 451
    real_send = sync.send_operations
    sent_chunks = []

    def send_twice_then_fail(client, run, ops):
        if len(sent_chunks) == 2:
            raise ConnectionError("down again")
        sent_chunks.append(len(ops))
        real_send(client, run, ops)

    monkeypatch.setattr(sync, "send_operations", send_twice_then_fail)
    assert sync.main([str(out_dir)]) == 1
    assert len((out_dir / PENDING_FILE).read_text().splitlines()) == 451 - sum(sent_chunks)
    monkeypatch.setattr(sync, "send_operations", real_send)
    assert sync.main([str(out_dir)]) == 0
    history = study.client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 451))
    assert tracker.get_run(run_id).info.status == "FINISHED"


# -- local processes ------------------------------------------------------------------------------------------------
FAKE_TRAIN_MODULE = '''
import json, logging, os
def train_cell(cell, out_dir, logger):
    logging.getLogger("experiments.fake").info("cell %s is training", cell["cell_id"])
    for step in range(1, cell["train"]["steps"] + 1):
        logger.log_metrics({"loss": 1.0 / step}, step)
    if cell["scheme"] == "gpt":
        os._exit(3)  # the process dies without a word, as on an OOM kill
    (out_dir / "metrics.json").write_text(json.dumps({"sari": 1.5}))
    return {"sari": 1.5, "pid": float(os.getpid())}
'''


@pytest.mark.slow
def test_local_executor_runs_cells_as_processes(study, tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_train_module.py").write_text(FAKE_TRAIN_MODULE)
    monkeypatch.setattr(cell_job, "TRAIN_FN", None)
    monkeypatch.setenv("BERTGEN_TRAIN_FN", "fake_train_module:train_cell")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{REPO}")
    study.write(schemes=("bert2bert", "gpt"), executor={"local": {"parallelism": 2}})
    assert launch.main([str(study.grid), "--executor", "local"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"bert2bert\s+1\s+-\s+FINISHED\s+sari=1\.50", out), out
    ok, dead = study.run_of("bert2bert"), study.run_of("gpt")
    assert ok.info.status == "FINISHED" and int(ok.data.tags["pid"]) != os.getpid()
    assert ok.data.tags["submitit_job_id"].isdigit()  # the local job's controller process
    assert dead.info.status == "FAILED" and dead.data.tags["failure_reason"].startswith("worker process died")
    # the cell's logs are found from its folder (and printed by the launcher); INFO lines reach them
    cell = next(c for c in load_grid(study.grid).cells if c.scheme == "bert2bert")
    log = cell_dir(cell) / "job.err"
    assert log.is_symlink() and str(log.resolve()) == ok.data.tags["log_stderr"]
    assert f"cell {cell.cell_id} is training" in log.read_text()
    assert f"log {log} -> " in out
    # what it ran on
    assert ok.data.tags["version_torch"] == torch.__version__ and ok.data.tags["version_cuda"]
    if not torch.cuda.is_available():
        assert ok.data.tags["gpu"] == "cpu"
    assert ok.data.tags["git_dirty"] in ("true", "false", "unknown") and ok.data.tags["version_python"]


def test_discofuse_without_the_papers_balanced_files_is_refused_unless_the_hub_set_is_chosen(study, capsys):
    """The paper trained and tested on the balanced 4.5M DiscoFuse, which is not on the hub: a cell that would read
    the hub's 16.3M set is refused in one line before anything is written, unless data.variant: full says so."""
    study.write(defaults={"train": {"steps": 3}, "data": {}})
    assert study.launch("--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.train: discofuse: the paper used the balanced 4.5M Wikipedia DiscoFuse" in err
    assert "data.variant: full" in err
    assert not (study.root / "out").exists() and study.cell_runs() == []
    assert study.launch("--dry-run", "--set", "data.variant=full") == 0
    cells = [to_dict(c) for c in load_grid(study.grid, ["data.variant=full"]).cells]
    assert {c["data"]["variant"] for c in cells} == {"full"}
    assert "variant" not in to_dict(load_grid(study.grid, ["data.variant=paper"]).cells[0])["data"]  # the default: no id change


def test_a_copied_output_folder_does_not_write_into_the_original(study, tmp_path, capsys):
    """MLflow keeps a sqlite store's artifact location as an absolute path: a launch on a copy of outputs/ would
    write artifacts into the original folder, so it is refused in one line, naming both folders."""
    study.write(mlflow={"tracking_uri": None, "experiment": "copied"}, output_root=str(tmp_path / "out"))
    assert study.launch() == 0
    shutil.copytree(tmp_path / "out", tmp_path / "copy")
    study.write(mlflow={"tracking_uri": None, "experiment": "copied"}, output_root=str(tmp_path / "copy"))
    before = sorted(p.name for p in (tmp_path / "out" / "mlartifacts").rglob("*"))
    capsys.readouterr()
    assert study.launch("--set", "train.steps=4") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "keeps its artifacts in" in err and str(tmp_path / "out") in err
    assert "python -m experiments.tracking.relocate" in err
    assert sorted(p.name for p in (tmp_path / "out" / "mlartifacts").rglob("*")) == before
    # relocated, the copy writes into its own folder and reads its own artifacts; the original is untouched
    from experiments.tracking import relocate

    assert relocate.main([str(tmp_path / "copy")]) == 0
    assert study.launch("--set", "train.steps=4") == 0
    assert sorted(p.name for p in (tmp_path / "out" / "mlartifacts").rglob("*")) == before
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("copied").experiment_id])
    assert runs and all(r.info.artifact_uri.startswith((tmp_path / "copy").as_uri()) for r in runs)
    assert all({a.path for a in client.list_artifacts(r.info.run_id)} for r in runs
               if r.data.tags.get("role") == "cell")


@pytest.mark.slow
def test_the_paper_grid_dry_run_shows_every_cell_and_the_plan_on_a_machine_with_no_data(tmp_path, monkeypatch,
                                                                                          capsys):
    """No balanced DiscoFuse files and an empty HF cache with HF_HUB_OFFLINE=1: --dry-run prints every cell and the
    compute plan, with one warning per missing file and hub checkpoint naming the command that fetches it; the real
    launch refuses in one line, naming that command too, and nothing is written."""
    monkeypatch.chdir(tmp_path)  # data/discofuse/*_balanced.tsv are relative: not here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paper = str(REPO / "grids" / "paper.yaml")
    cells = load_grid(paper, check_paths=False).cells
    assert launch.main([paper, "--dry-run", "--executor", "local"]) == 0
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if re.match(r"[0-9a-f]{12}\s", line)]
    assert {line.split()[0] for line in rows} == {c.cell_id for c in cells}
    assert f"compute plan total: {len(cells)} cells" in out and "GPU-hours" in out
    warnings = err.strip().splitlines()
    assert warnings and all(w.startswith("warning: ") for w in warnings)
    for split in ("train", "dev", "test"):
        assert any(f"data/discofuse/{split}_balanced.tsv does not exist yet" in w
                   and f"python -m experiments.launch.prefetch {paper}" in w for w in warnings), (split, warnings)
    for hub_id in ("bert-base-cased", "roberta-large", "gpt2"):
        assert any(f"hub id '{hub_id}' is not in the local HF cache" in w and "python -m experiments.launch.prefetch" in w
                   for w in warnings), (hub_id, warnings)
    assert not (tmp_path / "outputs").exists()
    assert launch.main([paper, "--executor", "local"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "_balanced.tsv' does not exist" in err and "experiments.launch.prefetch" in err
    assert not (tmp_path / "outputs").exists()
