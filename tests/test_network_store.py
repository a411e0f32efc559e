"""An embedded sqlite store on a network filesystem: a Slurm launch refuses it in one line that says how to run a
tracking server instead, unless the grid opts in; local launches are not affected.

Which filesystem holds the store is read from ``/proc/self/mountinfo``; the tests hand the launch a fake one in which
the output root is an NFS (Lustre, GPFS, BeeGFS) mount, and a stand-in ``sbatch`` that records whether it was called.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from experiments.launch import job as cell_job
from experiments.launch import launcher as launch
from experiments.tracking import store as tracking_store
from integration_helpers import mlflow_template, stand_in_sbatch

HOST_MOUNTS = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
"""


def mount_line(point: Path, kind: str) -> str:
    """A mountinfo line (a space in the path written as the kernel writes it)."""
    return f"61 27 0:55 / {str(point).replace(' ', chr(92) + '040')} rw,relatime shared:9 - {kind} server:/x rw\n"


def fake_mountinfo(tmp_path: Path, shared: Path, kind: str) -> Path:
    """The host's mounts plus ``shared`` mounted as ``kind``."""
    file = tmp_path / "mountinfo"
    file.write_text(HOST_MOUNTS + mount_line(shared, kind))
    return file


def test_the_mount_holding_a_path_is_the_longest_that_contains_it(tmp_path):
    shared = tmp_path / "home dir"
    shared.mkdir()
    info = fake_mountinfo(tmp_path, shared, "nfs4")
    assert tracking_store.mount_of(shared / "outputs" / "mlflow.db", info) == (shared, "nfs4")
    (shared / "scratch").mkdir()
    info.write_text(info.read_text() + mount_line(shared / "scratch", "lustre"))  # nested: the longest wins
    assert tracking_store.mount_of(shared / "scratch" / "run", info) == (shared / "scratch", "lustre")
    assert tracking_store.network_filesystem(shared / "scratch", info) == ("Lustre", "lustre", shared / "scratch")
    (tmp_path / "home dirt").mkdir()
    assert tracking_store.mount_of(tmp_path / "home dirt", info) == (Path("/"), "ext4")  # a prefix is not a parent
    assert tracking_store.network_filesystem(tmp_path, info) is None
    info.write_text(info.read_text() + mount_line(shared, "tmpfs"))  # mounted over: the later line is what is seen
    assert tracking_store.mount_of(shared / "x", info) == (shared, "tmpfs")
    assert tracking_store.mount_of(Path("/x"), tmp_path / "no-such-file") is None  # not Linux: unknown, not refused


@pytest.fixture
def study(tmp_path, tmp_path_factory, request, monkeypatch):
    """A grid whose output root (and so its embedded store) is on ``tmp_path/shared``, a stand-in sbatch, a fake
    trainer for the debug executor."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shared = tmp_path / "shared"
    root = shared / "outputs"
    root.mkdir(parents=True)
    shutil.copy(mlflow_template(request, tmp_path_factory), root / "mlflow.db")  # a ready schema
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "nfs", "output_root": str(root), "tasks": ["discofuse"], "schemes": ["bert2bert"], "seeds": [1],
        "defaults": {"train": {"steps": 2}, "data": {"variant": "full"}}, "mlflow": {"experiment": "nfs"}}))
    stand_in_sbatch(tmp_path, monkeypatch, f"touch {tmp_path}/sbatch-called", 77)

    def train(cell, out_dir, logger):
        logger.log_metrics({"loss": 1.0}, 1)
        return {"sari": 50.0, "exact": 1.0}
    monkeypatch.setattr(cell_job, "TRAIN_FN", train)
    return tmp_path, shared, grid


@pytest.mark.parametrize("kind,name", [("nfs4", "NFS"), ("lustre", "Lustre"), ("gpfs", "GPFS"),
                                       ("beegfs", "BeeGFS"), ("cifs", "CIFS/SMB")])
def test_a_slurm_launch_refuses_an_embedded_store_on_a_network_filesystem(study, monkeypatch, capsys, kind, name):
    tmp_path, shared, grid = study
    monkeypatch.setattr(tracking_store, "MOUNTINFO", fake_mountinfo(tmp_path, shared, kind))
    before = sorted(p.relative_to(shared) for p in shared.rglob("*"))
    assert launch.main([str(grid), "--executor", "slurm"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    db = shared / "outputs" / "mlflow.db"
    assert line.startswith(f"error: {grid.name}: mlflow.tracking_uri: the embedded MLflow store {db} is on {name} "
                           f"({kind} mounted at {shared})")
    assert "mlflow server --backend-store-uri sqlite:////" in line and "--host 0.0.0.0" in line
    assert "--set mlflow.tracking_uri=http://<that node>:5000" in line
    assert "--set mlflow.allow_network_filesystem=true" in line and line.endswith("(nothing was submitted)")
    assert not (tmp_path / "sbatch-called").exists()
    assert sorted(p.relative_to(shared) for p in shared.rglob("*")) == before  # nothing written


def test_the_user_may_opt_in_and_a_server_uri_is_never_refused(study, monkeypatch, capsys):
    tmp_path, shared, grid = study
    monkeypatch.setattr(tracking_store, "MOUNTINFO", fake_mountinfo(tmp_path, shared, "nfs4"))
    assert launch.main([str(grid), "--executor", "slurm", "--set", "mlflow.allow_network_filesystem=true"]) == 0
    assert "submitted 1 cells as Slurm job array 77" in capsys.readouterr().out
    assert (tmp_path / "sbatch-called").exists()

    assert launch.main([str(grid), "--executor", "slurm", "--set", "mlflow.allow_network_filesystem=maybe"]) == 2
    assert "mlflow.allow_network_filesystem: expected true or false" in capsys.readouterr().err

    from experiments.grid.load import load_grid
    from experiments.launch.guard import check_store_filesystem

    loaded = load_grid(grid)
    assert not loaded.allow_network_filesystem
    check_store_filesystem(loaded, "http://tracking-node:5000", "slurm")  # a server: its disk is its own business


def test_local_launches_on_a_network_filesystem_are_unaffected(study, monkeypatch, capsys):
    tmp_path, shared, grid = study
    monkeypatch.setattr(tracking_store, "MOUNTINFO", fake_mountinfo(tmp_path, shared, "nfs4"))
    assert launch.main([str(grid), "--executor", "debug"]) == 0
    out = capsys.readouterr()
    assert "FINISHED" in out.out and "error" not in out.err


def test_a_slurm_launch_on_a_local_disk_is_unaffected(study, monkeypatch, capsys):
    tmp_path, shared, grid = study
    monkeypatch.setattr(tracking_store, "MOUNTINFO", fake_mountinfo(tmp_path, tmp_path / "elsewhere", "nfs4"))
    assert launch.main([str(grid), "--executor", "slurm"]) == 0
    assert (tmp_path / "sbatch-called").exists()
