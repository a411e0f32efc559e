"""A full disk at every place a cell writes: the last good file stays, the cell ends with one line naming the path,
the space the write needed and what was free, and a relaunch once there is room resumes and ends like a run that
never failed.

The full disk is injected at the lowest write of each site — the checkpoint's three writers (safetensors, torch.save,
the trainer state), the predictions and metrics files, the pending-metrics file, the copy of an MLflow artifact —
raising what that writer really raises on ENOSPC (measured on a full tmpfs: safetensors' ``SafetensorError ... os
error 28``, torch.save's ``RuntimeError ... unexpected pos`` without an errno, Python's ``OSError [Errno 28]``), and
once for real: a cell whose directory is a tmpfs with room for one checkpoint and a half (root only: CI).
"""

from __future__ import annotations

import errno
import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from experiments.config import validate
from experiments.config.cell import CellConfig, paper_cell, to_dict
from experiments.config.tasks import TASKS
from experiments.grid import identity as cell_module
from experiments.launch import job as cell_job
from experiments.recipes import checkpointing
from experiments.system import disk as disk_space
from experiments.tracking import runs as tracking
from experiments.system.disk import DiskFullError
from integration_helpers import mlflow_template, quick_assets, tiny_cell

pytestmark = pytest.mark.usefixtures("one_thread")

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
TORCH_ENOSPC = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 662"  # what torch.save raised


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 480, text
    return text


class HalfThenFull:
    """A binary file whose writes put half their bytes on disk, then fail as a full disk does."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        self.fh.write(bytes(data)[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def full_disk_open(module, monkeypatch, names: tuple[str, ...]) -> None:
    """``open`` in ``module`` gives a HalfThenFull for a file named one of ``names`` (or its temporary copy)."""
    def fake_open(file, mode="r", *args, **kwargs):
        fh = open(file, mode, *args, **kwargs)
        name = Path(file).name.split(".tmp-")[0].lstrip(".")
        return HalfThenFull(fh) if name in names and "b" in mode else fh
    monkeypatch.setattr(module, "open", fake_open, raising=False)


# -- checkpoints -------------------------------------------------------------------------------------------------------
def small_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    return model, optimizer


def inject_checkpoint_fault(site: str, monkeypatch) -> None:
    """Make one writer of a checkpoint fail the way it fails on a full disk, after writing part of its file."""
    from safetensors import SafetensorError

    if site == "model.safetensors":
        real = checkpointing.save_model

        def save_model(model, filename, metadata=None):
            real(model, filename, metadata=metadata)
            Path(filename).write_bytes(Path(filename).read_bytes()[:100])
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(checkpointing, "save_model", save_model)
    elif site == "optimizer.pt":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if Path(f).name == checkpointing.OPTIMIZER_FILE:
                Path(f).write_bytes(b"PK\x03\x04 half")
                raise RuntimeError(TORCH_ENOSPC)
            return real_save(obj, f, *args, **kwargs)
        monkeypatch.setattr(torch, "save", save)
        monkeypatch.setattr(disk_space, "free_bytes", lambda path: 1000)  # torch says nothing of the cause
    elif site == "trainer_state.json":
        real_write = Path.write_text

        def write_text(self, data, *args, **kwargs):
            if self.name == checkpointing.STATE_FILE:
                real_write(self, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(self, data, *args, **kwargs)
        monkeypatch.setattr(Path, "write_text", write_text)
    else:
        raise ValueError(site)


@pytest.mark.parametrize("site", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_a_checkpoint_that_does_not_fit_keeps_the_last_one_and_says_so_in_one_line(tmp_path, monkeypatch, site):
    directory = tmp_path / "checkpoints" / "last"
    model, optimizer = small_model()
    checkpointing.save_checkpoint(directory, model, optimizer, {"step": 4})
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    optimizer.step()

    with monkeypatch.context() as patch:
        inject_checkpoint_fault(site, patch)
        with pytest.raises(DiskFullError) as caught:
            checkpointing.save_checkpoint(directory, model, optimizer, {"step": 8})
    message = one_line(caught.value)
    assert message.startswith(f"{directory}: the disk is full: writing a checkpoint needs ")
    needed = disk_space.size_text(checkpointing.checkpoint_bytes(model, optimizer))
    assert f"needs {needed}, " in message and " free there (" in message
    assert "the previous checkpoint (step 4) is kept" in message and "--retry-failed" in message
    assert caught.value.errno == errno.ENOSPC
    # the last good checkpoint is untouched and nothing half-written is left beside it
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert sorted(p.name for p in directory.parent.iterdir()) == ["last"]
    state, _ = checkpointing.load_checkpoint(checkpointing.find_checkpoint(directory), *small_model())
    assert state["step"] == 4
    # with room again the same save goes through
    checkpointing.save_checkpoint(directory, model, optimizer, {"step": 8})
    assert checkpointing.read_trainer_state(directory)["step"] == 8


def test_an_error_that_is_not_a_full_disk_is_not_called_one(tmp_path, monkeypatch):
    directory = tmp_path / "last"
    model, optimizer = small_model()
    checkpointing.save_checkpoint(directory, model, optimizer, {"step": 1})
    inject_checkpoint_fault("optimizer.pt", monkeypatch)
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 50 * 2**30)  # plenty of room: something else broke
    with pytest.raises(RuntimeError) as caught:
        checkpointing.save_checkpoint(directory, model, optimizer, {"step": 2})
    assert type(caught.value) is RuntimeError and str(caught.value) == TORCH_ENOSPC
    assert checkpointing.read_trainer_state(directory)["step"] == 1


# -- text files: predictions, metrics, the pending file ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["predictions.jsonl", "metrics.json", "cell_done.json"])
def test_a_text_file_that_does_not_fit_keeps_its_previous_version(tmp_path, monkeypatch, name):
    path = tmp_path / name
    path.write_text("the previous version\n")
    full_disk_open(disk_space, monkeypatch, (name,))
    with pytest.raises(DiskFullError) as caught:
        disk_space.atomic_write_text(path, "x" * 10_000)
    message = one_line(caught.value)
    assert message.startswith(f"{path}: the disk is full: writing {name} needs 9.8 KB, ") and "free there" in message
    assert path.read_text() == "the previous version\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


def test_the_pending_file_gets_all_of_an_append_or_none(tmp_path, monkeypatch):
    tracking.append_pending(tmp_path, "sqlite:///x.db", "run1", [{"op": "tags", "tags": {"a": "b"}}])
    before = (tmp_path / tracking.PENDING_FILE).read_bytes()
    full_disk_open(tracking, monkeypatch, (tracking.PENDING_FILE,))
    ops = [{"op": "metrics", "rows": [["loss", 1.0, 1, step]]} for step in range(50)]
    with pytest.raises(DiskFullError) as caught:
        tracking.append_pending(tmp_path, "sqlite:///x.db", "run1", ops)
    assert one_line(caught.value).startswith(f"{tmp_path / tracking.PENDING_FILE}: the disk is full: writing 50 "
                                             "tracking operations needs ")
    assert (tmp_path / tracking.PENDING_FILE).read_bytes() == before  # no half line for experiments.tracking.sync to reject


class StoreOnTheFullDisk:
    """An MLflow client whose store lives on the full disk: every write fails as sqlite's does."""

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")
        return call


def test_when_neither_the_store_nor_the_pending_file_takes_it_the_reason_is_in_the_job_log(tmp_path, monkeypatch,
                                                                                          capsys):
    logger = tracking.CellLogger("sqlite:///nowhere.db", "run1", tmp_path, client=StoreOnTheFullDisk(),
                                 final_retries=0)
    full_disk_open(tracking, monkeypatch, (tracking.PENDING_FILE,))
    logger.finish_failure("DiskFullError: /x/checkpoints/last: the disk is full", [])  # never raises
    err = capsys.readouterr().err
    assert "the disk did not take 2 operations (OperationalError: database or disk is full)" in err
    assert "could not be kept on disk either" in err and "DiskFullError: /x/checkpoints/last" in err
    assert not (tmp_path / tracking.PENDING_FILE).exists() or not (tmp_path / tracking.PENDING_FILE).read_bytes()


# -- MLflow artifacts --------------------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path, tmp_path_factory, request) -> str:
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(mlflow_template(request, tmp_path_factory), db)
    return f"sqlite:///{db}"


def cell_run(uri: str, cell: CellConfig) -> str:
    tracker = tracking.Tracker(uri, "disk-full")
    return tracker.create_cell_run(cell, "tiny", tracker.start_parent("launch", {}), {})


def test_an_artifact_the_store_has_no_room_for_is_parked_and_synced_later(tmp_path, store, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from experiments.tracking import sync

    paper = CellConfig.from_dict({**paper_cell(TASKS["discofuse"], "bert2bert", 1, "g", str(tmp_path)), "cell_id": "c1"})
    run_id = cell_run(store, paper)
    out_dir = tmp_path / "cell"
    out_dir.mkdir()
    (out_dir / "predictions.jsonl").write_text('{"id": "0", "prediction": "a b"}\n')
    logger = tracking.CellLogger(store, run_id, out_dir, final_retries=0)
    real_copy = shutil.copyfileobj

    def copy_onto_a_full_disk(src, dst, *args, **kwargs):
        dst.write(src.read(5))
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copyfileobj", copy_onto_a_full_disk)  # what MLflow's local artifact store copies with
        logger.finish_success({"sari": 40.0}, [out_dir / "predictions.jsonl"])
    err = capsys.readouterr().err
    artifacts = MlflowClient(store).get_run(run_id).info.artifact_uri.removeprefix("file://")
    assert f"the disk did not take everything (DiskFullError: {artifacts}: the disk is full: writing the MLflow " \
           "artifact predictions.jsonl needs 33 bytes, " in err
    assert shutil.copyfileobj is real_copy
    parked = [json.loads(line)["op"] for line in (out_dir / tracking.PENDING_FILE).read_text().splitlines()]
    assert parked[0] == "artifact" and parked[-1] == "status"  # the artifact and everything after it
    assert MlflowClient(store).get_run(run_id).info.status != "FINISHED"

    assert sync.main([str(out_dir)]) == 0  # room again
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_sari"] == 40.0
    assert [f.path for f in MlflowClient(store).list_artifacts(run_id)] == ["predictions.jsonl"]


# -- a whole cell ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    return quick_assets(tmp_path_factory)


def disk_full_cell(assets: dict, root: Path) -> dict:
    return tiny_cell(assets, root, steps=12, checkpoint_every=4, eval_every=4)


@pytest.fixture(scope="module")
def uninterrupted(assets, tmp_path_factory) -> tuple[dict, Path]:
    from experiments.recipes.train import train_cell

    root = tmp_path_factory.mktemp("uninterrupted")
    cell = disk_full_cell(assets, root)
    return train_cell(cell, root / "cell", tracking.NullLogger()), root / "cell"


def fail_on_the_second_checkpoint(monkeypatch) -> None:
    real = checkpointing.save_model
    saves = {"last": 0}

    def save_model(model, filename, metadata=None):
        if Path(filename).parent.name.startswith(".tmp-last-"):
            saves["last"] += 1
            if saves["last"] == 2:
                Path(filename).write_bytes(b"half")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, filename, metadata=metadata)
    monkeypatch.setattr(checkpointing, "save_model", save_model)


def same_result(out_dir: Path, metrics: dict, uninterrupted: tuple[dict, Path]) -> None:
    expected, straight = uninterrupted
    assert metrics == expected
    assert (out_dir / "predictions.jsonl").read_text() == (straight / "predictions.jsonl").read_text()
    assert json.loads((out_dir / "metrics.json").read_text())["test"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("site", ["checkpoint", "predictions.jsonl", "metrics.json"])
def test_a_cell_ends_on_a_full_disk_in_one_line_and_resumes_once_there_is_room(assets, uninterrupted, tmp_path,
                                                                                store, monkeypatch, site):
    """The run's ``failure_reason`` is the one line (the store is elsewhere); the relaunch resumes from the last good
    checkpoint (step 4 when the step-8 checkpoint did not fit, step 12 when the test outputs did not) and ends with
    the uninterrupted run's metrics and predictions."""
    from mlflow.tracking import MlflowClient

    from experiments.launch.job import CellJob

    uri = store  # on another disk than the cell's
    cell = CellConfig.from_dict(disk_full_cell(assets, tmp_path / "root"))
    run_id = cell_run(uri, cell)
    monkeypatch.setattr(cell_job, "TRAIN_FN", None)
    monkeypatch.chdir(tmp_path)  # the job moves into its launch directory
    with monkeypatch.context() as patch:
        if site == "checkpoint":
            fail_on_the_second_checkpoint(patch)
        else:
            full_disk_open(disk_space, patch, (site,))
        result = CellJob(cell, uri, run_id, tmp_path, raise_on_failure=False)()
    out_dir = cell_module.cell_dir(cell)
    path = out_dir / ("checkpoints/last" if site == "checkpoint" else site)
    assert result["status"] == "FAILED"
    run = MlflowClient(uri).get_run(run_id)
    reason = run.data.tags["failure_reason"]
    assert run.info.status == "FAILED" and reason == result["reason"] and "\n" not in reason
    assert reason.startswith(f"DiskFullError: {path}: the disk is full: writing ") and " free there (" in reason
    if site == "checkpoint":
        assert "the previous checkpoint (step 4) is kept" in reason
    assert checkpointing.read_trainer_state(out_dir / "checkpoints" / "last")["step"] == (4 if site == "checkpoint"
                                                                                           else 12)
    assert not (out_dir / "cell_done.json").exists()

    steps = []

    class Recording(tracking.NullLogger):
        def log_metrics(self, metrics, step):
            if "loss" in metrics:
                steps.append(step)

    from experiments.recipes.train import train_cell

    metrics = train_cell(to_dict(cell), out_dir, Recording())  # room again: what --retry-failed runs
    assert steps == (list(range(5, 13)) if site == "checkpoint" else [])
    same_result(out_dir, metrics, uninterrupted)


@pytest.mark.slow
def test_when_the_store_shares_the_full_disk_the_reason_is_in_the_pending_file(assets, tmp_path, monkeypatch):
    from experiments.recipes.train import train_cell

    cell = disk_full_cell(assets, tmp_path / "root")
    out_dir = tmp_path / "cell"
    logger = tracking.CellLogger("sqlite:///on-the-full-disk.db", "run1", out_dir, client=StoreOnTheFullDisk(),
                                 final_retries=0)
    fail_on_the_second_checkpoint(monkeypatch)
    with pytest.raises(DiskFullError) as caught:
        train_cell(cell, out_dir, logger)
    logger.finish_failure(validate.one_line(caught.value), [])
    parked = [json.loads(line) for line in (out_dir / tracking.PENDING_FILE).read_text().splitlines()]
    reasons = [op["tags"]["failure_reason"] for op in parked if op["op"] == "tags" and "failure_reason" in op["tags"]]
    assert reasons == [f"DiskFullError: {caught.value}"]
    assert reasons[0].startswith(f"DiskFullError: {out_dir / 'checkpoints' / 'last'}: the disk is full")
    assert parked[-1]["op"] == "status" and parked[-1]["status"] == "FAILED"


# -- the real thing: a tmpfs with room for one checkpoint and a half ---------------------------------------------------
def _mount_tmpfs(directory: Path, size: int, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size}"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:200]}); CI runs as root and can")


@pytest.mark.slow
def test_a_cell_on_a_really_full_tmpfs_keeps_its_checkpoint_and_resumes_after_it_grows(assets, uninterrupted,
                                                                                        tmp_path):
    import os

    from experiments.recipes.train import train_cell

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    _, straight = uninterrupted
    checkpoint = sum(p.stat().st_size for p in (straight / "checkpoints" / "last").iterdir())
    out_dir = tmp_path / "cell"
    out_dir.mkdir()
    _mount_tmpfs(out_dir, checkpoint * 3 // 2 + 256 * 2**10)
    try:
        cell = disk_full_cell(assets, tmp_path / "root")
        with pytest.raises(DiskFullError) as caught:
            train_cell(cell, out_dir, tracking.NullLogger())
        message = one_line(caught.value)
        assert message.startswith(f"{out_dir / 'checkpoints' / 'last'}: the disk is full: writing a checkpoint needs ")
        assert "the previous checkpoint (step 4) is kept" in message
        assert checkpointing.read_trainer_state(out_dir / "checkpoints" / "last")["step"] == 4
        assert sorted(p.name for p in (out_dir / "checkpoints").iterdir()) == ["last"]

        _mount_tmpfs(out_dir, checkpoint * 4, remount=True)  # space freed
        metrics = train_cell(cell, out_dir, tracking.NullLogger())
        same_result(out_dir, metrics, uninterrupted)
    finally:
        unmounted = subprocess.run(["umount", str(out_dir)], capture_output=True, text=True, timeout=30)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "--lazy", str(out_dir)], capture_output=True, timeout=30)
    # "target is busy" would mean this process still holds a file there: the failed save's half-written file,
    # deleted but kept open by the traceback of torch's writer (disk_space releases it), takes space until it goes
    assert unmounted.returncode == 0, unmounted.stderr
    print(f"\n[disk full] real ENOSPC: {message}")
