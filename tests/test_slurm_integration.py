"""The launcher against a real Slurm cluster through submitit, logging to a real MLflow server.

The cluster is the single-node one of ``scripts/slurm_cluster.sh`` (CI starts it and sets BERTGEN_SLURM_CLUSTER=1;
without an answering ``sinfo`` these tests fail in CI and skip elsewhere). Nothing is faked on the Slurm side: sbatch
job arrays, srun, submitit's USR2 handler, ``scontrol requeue`` and sacct are the real ones.

What runs: ``grids/smoke.yaml`` cut down with ``--only`` and ``--set train.steps=100`` on the reduced tiny assets
(the smoke grid's own assets take minutes to pretrain; these are built once per test session), one CPU per cell,
training with experiments.recipes.train.train_cell:

1. three synthetic_fusion cells — bert2bert, roberta2gpt (RoBERTa → GPT-2) and gpt (decoder-only) — as one job array;
   every one must finish;
2. the same command widened to five cells: the three finished ones are not touched, bertShare (whose logger raises
   at step 10: integration_helpers.train_cell_failing_for, so the code under test is not changed) and rnd2rnd go
   out as a second array of two that run side by side; bertShare fails with its traceback, rnd2rnd finishes;
3. the five-cell command once more: nothing is submitted, no run is added;
4. bert2bert again in another output root, preempted mid-training the way Slurm does it, and compared with 1.;
5. bert2bert once more, killed with SIGKILL (``scancel --signal=KILL``) after a checkpoint and requeued by hand
   (``scontrol requeue``): it resumes from that checkpoint and is compared with 1. too.

The module takes about four to five minutes on two cores.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from integration_helpers import (FAIL_AT_STEP, FAIL_SCHEME_ENV, PACE_ENV, REPO, MlflowServer, data_spec,
                                 metric_steps, mlflow_template, quick_assets, require_slurm, subprocess_env,
                                 wait_until)

pytestmark = pytest.mark.slow

STEPS = 100
FIRST = ("bert2bert", "roberta2gpt", "gpt")
FAILING, HEALTHY = "bertShare", "rnd2rnd"
SCHEMES = FIRST + (FAILING, HEALTHY)


def only(schemes) -> str:
    return ",".join(f"synthetic_fusion/{scheme}" for scheme in schemes)
CELL_TIMEOUT_S = 900  # every cell of the array done; generous for a loaded 2-core CI machine


def cell_sets(assets: dict) -> list[str]:
    """The --set arguments shared by every launch here: the same cells (ids) whatever the output root."""
    files = assets["tasks"]["fusion"]
    sets = [f"checkpoints.{family}={path}" for family, path in assets["checkpoints"].items()]
    sets += [f"data.{split}={json.dumps(data_spec(path))}" for split, path in files.items()]
    sets += ["smoke_assets=false", f"train.steps={STEPS}", "train.eval_every=50", "train.checkpoint_every=10",
             "executor.slurm.cpus_per_task=1", "executor.slurm.gpus_per_node=0", "executor.slurm.mem_gb=2",
             "executor.slurm.timeout_min=30", "executor.slurm.partition=debug"]
    return sets


class Launch:
    """One study on the cluster: its output root, MLflow experiment and the command that launches it."""

    def __init__(self, root: Path, server: MlflowServer, assets: dict, experiment: str, cells: str,
                 env: dict[str, str]):
        from mlflow.tracking import MlflowClient

        self.root, self.server, self.experiment, self.env = root, server, experiment, env
        self.client = MlflowClient(server.uri)
        self.argv = [sys.executable, "-m", "experiments.launch", "grids/smoke.yaml", "--executor", "slurm",
                     "--only", cells]
        for item in cell_sets(assets) + [f"output_root={root}", f"mlflow.tracking_uri={server.uri}",
                                         f"mlflow.experiment={experiment}"]:
            self.argv += ["--set", item]

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=600)

    def runs(self, role: str = "cell") -> list:
        exp = self.client.get_experiment_by_name(self.experiment)
        return list(self.client.search_runs([exp.experiment_id], f"tags.role = '{role}'")) if exp else []

    def run_of(self, scheme: str):
        (run,) = [r for r in self.runs() if r.data.tags["scheme"] == scheme]
        return run

    def cell_dir(self, run) -> Path:
        tags = run.data.tags
        return self.root / "cells" / tags["task"] / tags["scheme"] / tags["cell_id"]

    def wait_done(self, count: int) -> list:
        def done():
            runs = self.runs()
            return runs if len(runs) == count and all(r.info.status in ("FINISHED", "FAILED") for r in runs) else None

        runs = wait_until(done, CELL_TIMEOUT_S, f"{count} cells of {self.experiment} to end", interval_s=2.0,
                          on_timeout=self.diagnostics)
        jobs = {r.data.tags["slurm_job_id"] for r in runs}
        wait_until(lambda: not any(squeue(j) for j in jobs), 120, f"Slurm jobs {sorted(jobs)} to leave the queue",
                   interval_s=1.0, on_timeout=self.diagnostics)
        return runs

    def diagnostics(self) -> str:
        lines = [f"runs: {[(r.data.tags.get('scheme'), r.info.status) for r in self.runs()]}",
                 subprocess.run(["squeue", "-o", "%i %T %r %M"], capture_output=True, text=True).stdout]
        for log in sorted((self.root / "submitit").rglob("*_log.*"))[-4:]:
            lines.append(f"--- {log}\n" + log.read_text(errors="replace")[-1500:])
        return "\n".join(lines)


def squeue(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def squeue_reason(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def sacct_records(job_id: str) -> list[tuple[str, str]]:
    """(JobID, State) of every record of the job's allocations, requeued ones included (-D)."""
    out = subprocess.run(["sacct", "-n", "-P", "-D", "-X", "-j", job_id, "-o", "JobID,State"], capture_output=True,
                         text=True, timeout=30).stdout
    return [tuple(line.split("|")[:2]) for line in out.splitlines() if line.strip()]


def settled_sacct_states(job_id: str, records: int = 2) -> list[str]:
    """The states of the job's ``records`` allocations once the accounting has the last one ended: slurmdbd can
    still say RUNNING for a moment after the job left the queue (seen once in a few runs here)."""
    def settled():
        states = [state for _, state in sacct_records(job_id)]
        return states if len(states) >= records and states[-1] not in ("RUNNING", "COMPLETING") else None

    try:
        return wait_until(settled, 60, f"sacct to record the end of {job_id}", interval_s=1.0)
    except AssertionError:
        return [state for _, state in sacct_records(job_id)]  # the assertion that follows says what it holds


def artifact_names(client, run) -> set[str]:
    return {f.path for f in client.list_artifacts(run.info.run_id)}


# -- fixtures ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    require_slurm()


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory, request):
    srv = MlflowServer(tmp_path_factory.mktemp("slurm-mlflow"), mlflow_template(request, tmp_path_factory))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def assets(cluster, tmp_path_factory) -> dict:
    return quick_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def smoke(server, assets, tmp_path_factory):
    """The cut-down smoke grid (FIRST), launched as a Slurm job array, waited for until every cell ended."""
    env = subprocess_env(BERTGEN_TRAIN_FN="integration_helpers:train_cell_failing_for",
                         **{FAIL_SCHEME_ENV: FAILING})
    study = Launch(tmp_path_factory.mktemp("slurm-smoke"), server, assets, "slurm-smoke", only(FIRST), env)
    started = time.monotonic()
    study.proc = study.run()
    assert study.proc.returncode == 0, study.proc.stdout + study.proc.stderr
    study.final_runs = study.wait_done(len(FIRST))
    study.seconds = time.monotonic() - started
    return study


@pytest.fixture(scope="module")
def widened(smoke):
    """The same command with two more cells, one of which raises: (launcher output, runs before, runs after)."""
    before = {r.info.run_id: r for r in smoke.runs()}
    smoke.argv[smoke.argv.index("--only") + 1] = only(SCHEMES)
    proc = smoke.run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = smoke.wait_done(len(SCHEMES))
    return proc.stdout, before, after


# -- 1. the grid runs as a job array and every cell finishes -----------------------------------------------------------
def test_smoke_cells_run_as_one_slurm_job_array_and_finish_in_mlflow(smoke):
    out = smoke.proc.stdout
    match = re.search(r"submitted 3 cells as Slurm job array (\d+)", out)
    assert match, out
    array = match.group(1)
    runs = smoke.final_runs
    assert sorted(r.data.tags["slurm_job_id"] for r in runs) == [f"{array}_{i}" for i in range(3)]
    assert sorted(r.data.tags["scheme"] for r in runs) == sorted(FIRST)
    # the jobs really went through Slurm: sacct knows the array's tasks, each ran to completion
    records = dict(sacct_records(array))
    assert {task: records.get(task) for task in (f"{array}_{i}" for i in range(3))} == \
        {f"{array}_{i}": "COMPLETED" for i in range(3)}, records
    for run in runs:
        assert run.info.status == "FINISHED", (run.data.tags["scheme"], run.data.tags.get("failure_reason"))
        metrics = run.data.metrics
        assert {"test_sari", "test_exact"} <= set(metrics) and 0.0 <= metrics["test_sari"] <= 100.0
        assert run.data.params["train.steps"] == str(STEPS)
        assert run.data.tags["host"] and run.data.tags["slurm_job_id"].startswith(array + "_")
        assert [s for s, _ in metric_steps(smoke.client, run.info.run_id, "loss")] == list(range(10, STEPS + 1, 10))
        assert [s for s, _ in metric_steps(smoke.client, run.info.run_id, "dev_loss")] == [50, 100]
        assert artifact_names(smoke.client, run) == {"cell.json", "predictions.jsonl", "metrics.json"}
        summary = json.loads((smoke.cell_dir(run) / "metrics.json").read_text())
        assert summary["steps"] == STEPS and summary["test"] == {
            k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
    (parent,) = [r for r in smoke.runs("launch") if r.info.run_id == runs[0].data.tags["mlflow.parentRunId"]]
    assert parent.info.status == "FINISHED" and parent.data.tags["executor"] == "slurm"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    print(f"\n[slurm] 3-cell array of {STEPS} steps ended in {smoke.seconds:.0f} s")


# -- 3. a failing cell among new ones, and what relaunches do ----------------------------------------------------------
def test_a_cell_that_raises_is_failed_with_its_traceback_and_the_others_are_unaffected(smoke, widened, tmp_path):
    out, before, after = widened
    assert "grid smoke: 5 cells: 3 finished, 2 new" in out, out
    match = re.search(r"submitted 2 cells as Slurm job array (\d+)", out)
    assert match, out
    array = match.group(1)
    runs = {r.data.tags["scheme"]: r for r in after}
    assert len(after) == 5 and set(runs) == set(SCHEMES)

    bad = runs[FAILING]
    assert bad.info.status == "FAILED" and bad.data.tags["slurm_job_id"].startswith(array + "_")
    reason = bad.data.tags["failure_reason"]
    assert reason.startswith("RuntimeError: injected failure at training step") and "\n" not in reason
    assert artifact_names(smoke.client, bad) == {"cell.json", "traceback.txt"}
    trace = Path(smoke.client.download_artifacts(bad.info.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert trace.startswith("Traceback (most recent call last)") and "experiments/recipes/train.py" in trace
    assert f"injected failure at training step {FAIL_AT_STEP}" in trace
    # it failed where it was made to, after really training: its steps up to the failure reached MLflow
    assert [s for s, _ in metric_steps(smoke.client, bad.info.run_id, "loss")] == [FAIL_AT_STEP]
    assert "test_sari" not in bad.data.metrics

    # its neighbour in the same array finished; Slurm saw one task fail and one complete
    good = runs[HEALTHY]
    assert good.info.status == "FINISHED" and "test_sari" in good.data.metrics
    assert good.data.tags["slurm_job_id"].startswith(array + "_")
    records = dict(sacct_records(array))
    assert {records[r.data.tags["slurm_job_id"]] for r in (bad, good)} == {"FAILED", "COMPLETED"}
    assert records[bad.data.tags["slurm_job_id"]] == "FAILED"
    # the three finished cells were not run again: same runs, same job ids, same metrics
    for run_id, old in before.items():
        new = smoke.client.get_run(run_id)
        assert new.info.status == "FINISHED" and new.data.metrics == old.data.metrics
        assert new.data.tags["slurm_job_id"] == old.data.tags["slurm_job_id"]


def wait_for_checkpoint_step(study, run, step: int) -> Path:
    """Until the cell's ``checkpoints/last`` records ``step`` or later (bounded); returns its trainer_state.json."""
    state_file = study.cell_dir(run) / "checkpoints" / "last" / "trainer_state.json"

    def reached() -> bool:
        try:
            return json.loads(state_file.read_text())["step"] >= step
        except (OSError, ValueError, KeyError):
            return False

    wait_until(reached, CELL_TIMEOUT_S, f"{state_file} at step >= {step}", interval_s=0.1,
               on_timeout=study.diagnostics)
    return state_file

def test_relaunch_reruns_nothing_that_ended_and_creates_no_duplicate_run(smoke, widened):
    runs_before = {r.info.run_id: r.info.status for r in smoke.runs()}
    scripts_before = sorted((smoke.root / "submitit").rglob("*_submission.sh"))
    assert len(scripts_before) == 2  # the two job arrays
    proc = smoke.run()
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1: the grid holds a failed cell
    out = proc.stdout
    assert "grid smoke: 5 cells: 1 failed, 4 finished" in out, out
    assert "submitted" not in out and out.count("FINISHED (done before)") == 4
    assert "FAILED (skipped; --retry-failed)" in out
    assert {r.info.run_id: r.info.status for r in smoke.runs()} == runs_before  # same runs, same states
    # one record per launch that ran something; a launch with nothing to run leaves none
    assert len(runs_before) == 5 and len(smoke.runs("launch")) == 2
    # and nothing reached Slurm: submitit writes a job script before every sbatch, and there is no new one
    assert sorted((smoke.root / "submitit").rglob("*_submission.sh")) == scripts_before


# -- 2. preemption: USR2, checkpoint, requeue, resume — and the same result --------------------------------------------
def test_preempted_cell_is_requeued_resumes_and_ends_exactly_like_the_uninterrupted_one(smoke, server, assets,
                                                                                       tmp_path_factory):
    """The same bert2bert cell (same id) as in the smoke array, in another output root and experiment: once it has
    trained past step 10 it receives what Slurm and submitit send on preemption (SIGTERM, then USR2 — the
    ``--signal=USR2@90`` of the job script), checkpoints, requeues itself with ``scontrol requeue``, resumes, and
    must end bit-identical to the smoke array's uninterrupted run."""
    reference = smoke.run_of("bert2bert")
    study = Launch(tmp_path_factory.mktemp("slurm-preempt"), server, assets, "slurm-preempt", only(["bert2bert"]),
                   subprocess_env())
    proc = study.run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = wait_until(lambda: study.runs() or None, 60, "the cell run")
    assert run.data.tags["cell_id"] == reference.data.tags["cell_id"]
    job_id = run.data.tags["slurm_job_id"]
    state_file = wait_for_checkpoint_step(study, run, 10)  # past the first checkpoint
    assert squeue(job_id) == "RUNNING"
    for sig in ("TERM", "USR2"):  # submitit's SlurmJob._interrupt: SIGTERM first on preemption, then USR2
        subprocess.run(["scancel", f"--signal={sig}", job_id], check=True, timeout=30)

    def requeued() -> str | None:
        state = squeue_reason(job_id)
        if state.startswith("PENDING"):
            return state
        if state.startswith("RUNNING") and "REQUEUED" in [s for _, s in sacct_records(job_id)]:
            return "restarted"  # a cluster that starts requeued jobs at once
        return None  # still RUNNING before the requeue, or COMPLETING the killed allocation

    state = wait_until(requeued, 120, f"{job_id} to be requeued", interval_s=0.2, on_timeout=study.diagnostics)
    if state.startswith("PENDING"):  # nobody writes now: what the requeued job will resume from is mid-training
        resume_step = json.loads(state_file.read_text())["step"]
        assert 10 <= resume_step < STEPS, resume_step

    start_requeued_now(study, job_id)
    (final,) = study.wait_done(1)

    # it was requeued by Slurm (two allocations of the same job) and resumed, not restarted
    states = settled_sacct_states(job_id)
    assert len(states) == 2 and states[0] == "REQUEUED" and states[-1] == "COMPLETED", states
    log = "\n".join(p.read_text(errors="replace") for p in (study.root / "submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in log and "Bypassing signal SIGTERM" in log and "Requeued job" in log
    assert final.info.status == "FINISHED" and final.info.run_id == run.info.run_id
    loss_steps = [s for s, _ in metric_steps(study.client, final.info.run_id, "loss")]
    assert loss_steps.count(10) == 1 and loss_steps[-1] == STEPS  # step 10 was not trained twice
    assert sorted(set(loss_steps)) == list(range(10, STEPS + 1, 10))

    assert_ends_like_the_uninterrupted_run(study, final, smoke, reference)


def start_requeued_now(study: Launch, job_id: str) -> None:
    """Slurm (22.05) holds a requeued job for two minutes (BeginTime) before it may start again; playing the part of
    a scheduler with a free node, the test makes it eligible now. Same allocation path, two minutes less."""
    def started_again() -> bool:
        state = squeue_reason(job_id)
        if state.startswith("PENDING"):  # squeue names one reason (Priority, Resources ...) even while BeginTime holds
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=30)
        return not state.startswith("PENDING")

    wait_until(started_again, CELL_TIMEOUT_S, f"{job_id} to start again", interval_s=1.0,
               on_timeout=study.diagnostics)


def assert_ends_like_the_uninterrupted_run(study: Launch, final, smoke: Launch, reference) -> None:
    """Equal, not close: test metrics, dev losses, predictions, the weights kept."""
    test = lambda r: {k: v for k, v in r.data.metrics.items() if k.startswith("test_")}  # noqa: E731
    assert test(final) == test(reference) and test(final)
    assert metric_steps(study.client, final.info.run_id, "dev_loss") == \
        metric_steps(smoke.client, reference.info.run_id, "dev_loss")
    ours, theirs = study.cell_dir(final), smoke.cell_dir(reference)
    assert (ours / "predictions.jsonl").read_text() == (theirs / "predictions.jsonl").read_text()
    summary = lambda d: json.loads((d / "metrics.json").read_text())["test"]  # noqa: E731
    assert summary(ours) == summary(theirs)
    kept = sorted(p.name for p in (theirs / "checkpoints").iterdir() if not p.name.startswith("."))
    assert kept == sorted(p.name for p in (ours / "checkpoints").iterdir() if not p.name.startswith(".")) and kept
    for name in kept:
        a = load_file(ours / "checkpoints" / name / "model.safetensors")
        b = load_file(theirs / "checkpoints" / name / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# -- 4. killed without warning (node failure, OOM killer), requeued by hand: resumed from the last checkpoint ----------
def test_a_cell_killed_with_sigkill_and_requeued_resumes_from_its_checkpoint_and_ends_like_the_uninterrupted_one(
        smoke, server, assets, tmp_path_factory):
    """The same bert2bert cell again, in its own output root and experiment: once it has written a checkpoint its
    job gets SIGKILL (``scancel --signal=KILL``: no handler runs, nothing is saved or requeued by submitit), then
    ``scontrol requeue`` puts it back in the queue. The requeued job must resume from the checkpoint the killed one
    wrote last, in the same MLflow run, and end bit-identical to the smoke array's uninterrupted run."""
    reference = smoke.run_of("bert2bert")
    # paced (2 s at each of its 10 logged steps: integration_helpers.train_cell_paced), so that the kill lands in the
    # middle of training however quiet the machine; the cell and its numbers are the reference's
    study = Launch(tmp_path_factory.mktemp("slurm-kill"), server, assets, "slurm-kill", only(["bert2bert"]),
                   subprocess_env(BERTGEN_TRAIN_FN="integration_helpers:train_cell_paced", **{PACE_ENV: "2"}))
    proc = study.run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = wait_until(lambda: study.runs() or None, 60, "the cell run")
    job_id = run.data.tags["slurm_job_id"]
    state_file = wait_for_checkpoint_step(study, run, 30)  # a few checkpoints in: losses of steps 10, 20, 30 logged
    assert squeue(job_id) == "RUNNING"
    subprocess.run(["scancel", "--signal=KILL", job_id], check=True, timeout=30)
    wait_until(lambda: not squeue(job_id).startswith(("RUNNING", "COMPLETING")), 120, f"{job_id} to die",
               interval_s=0.2, on_timeout=study.diagnostics)
    resume_step = json.loads(state_file.read_text())["step"]  # the dead job writes nothing any more
    assert 30 <= resume_step < STEPS, resume_step
    assert study.client.get_run(run.info.run_id).info.status == "RUNNING"  # nobody could say it ended

    requeue = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
    assert requeue.returncode == 0, requeue.stderr
    start_requeued_now(study, job_id)
    (final,) = study.wait_done(1)

    # one job, two allocations: the killed one and the requeued one that completed
    states = settled_sacct_states(job_id)
    assert len(states) == 2 and states[-1] == "COMPLETED", states
    log = "\n".join(p.read_text(errors="replace") for p in (study.root / "submitit").rglob("*_log.*"))
    assert re.search(rf"resumed cell {run.data.tags['cell_id']} from \S+ at step {resume_step}\n", log), log[-3000:]
    assert "Caught signal" not in log  # SIGKILL: no handler ran, the resume is from the periodic checkpoint
    assert final.info.status == "FINISHED" and final.info.run_id == run.info.run_id
    # every training loss the run holds is the uninterrupted run's at that step and none is missing: the losses of
    # the steps the killed job's checkpoint covers are not logged again, so the logger had to send them by the time
    # it wrote that checkpoint (they were still queued for a later flush before); a step logged by both jobs (after
    # the checkpoint, before the kill) has the same value
    losses = set(metric_steps(study.client, final.info.run_id, "loss"))
    assert losses == set(metric_steps(smoke.client, reference.info.run_id, "loss"))
    assert_ends_like_the_uninterrupted_run(study, final, smoke, reference)
