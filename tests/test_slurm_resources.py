"""The Slurm resource pre-flight (experiments.launch.slurm): sinfo parsing on captured outputs, the comparison
rules, and the launcher's one-line refusals against the real cluster (integration_helpers.require_slurm: fail in CI,
skip elsewhere without one), where nothing may be written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.launch import slurm as sr
from integration_helpers import REPO, data_spec, quick_assets, require_slurm, subprocess_env

# `sinfo -h -N -o SINFO_FORMAT` captured on the CI single-node cluster (scripts/slurm_cluster.sh) ...
LOCAL = "vm|debug*|2|18891|(null)|infinite|up|idle|(null)\n"
# ... and as a university GPU cluster answers it (node per partition; typed GRES with sockets, MPS, features)
GPU_CLUSTER = """\
cpu001|cpu*|64|257000|(null)|2-00:00:00|up|idle|intel,icelake
cpu002|cpu*|64|257000|(null)|2-00:00:00|up|mixed|intel,icelake
gpu001|gpu|48|515000|gpu:a100:4(S:0-1)|1-00:00:00|up|mixed|a100,ib
gpu002|gpu|48|515000|gpu:a100:4(S:0-1),mps:400|1-00:00:00|up|idle|a100,ib
gpu003|gpu|32|257000|gpu:v100:2|1-00:00:00|up|drain|v100
dev01|short|16|64000|gpu:1|30:00|up|idle|(null)
"""


def request(**overrides):
    base = {"partition": None, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 4, "timeout_min": 60,
            "array_parallelism": 4, "account": None, "qos": None, "constraint": None, "nodes": 1, "tasks_per_node": 1}
    return {**base, **overrides}


def refusal(slurm, text=GPU_CLUSTER) -> sr.ResourceError:
    with pytest.raises(sr.ResourceError) as info:
        sr.check_request(slurm, sr.parse_sinfo(text))
    assert "\n" not in str(info.value)
    return info.value


# -- parsing ----------------------------------------------------------------------------------------------------------
def test_parses_the_local_cluster_line():
    (node,) = sr.parse_sinfo(LOCAL)
    assert (node.name, node.partition, node.default, node.cpus, node.memory_mb, node.gpus, node.time_limit_min) == \
        ("vm", "debug", True, 2, 18891, 0, None)


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("", 0), ("gpu:4", 4), ("gpu:a100:4(S:0-1)", 4),
                                        ("gpu:tesla:2,mps:100", 2), ("gpu:a100:2,gpu:v100:2", 4),
                                        ("gpu:a100:8(S:0,1)", 8), ("mps:400", 0), ("gpu", 1)])
def test_gpus_in_gres(gres, gpus):
    assert sr.gpus_in_gres(gres) == gpus


@pytest.mark.parametrize("text, minutes", [("infinite", None), ("UNLIMITED", None), ("30", 30), ("30:00", 30),
                                           ("2:00:00", 120), ("1-00:00:00", 1440), ("2-12", 3600),
                                           ("2-12:30", 3630), ("1-00:00:30", 1440)])
def test_time_limits(text, minutes):
    assert sr.parse_time_limit(text) == minutes


def test_parses_a_gpu_cluster():
    nodes = sr.parse_sinfo(GPU_CLUSTER)
    assert {n.partition for n in nodes if n.default} == {"cpu"}
    assert [n.gpus for n in nodes if n.partition == "gpu"] == [4, 4, 2]
    assert nodes[2].features == ("a100", "ib") and nodes[5].time_limit_min == 30


# -- comparing --------------------------------------------------------------------------------------------------------
def test_a_cpu_request_goes_to_the_default_partition():
    assert sr.check_request(request(cpus_per_task=8, mem_gb=64), sr.parse_sinfo(GPU_CLUSTER)) == "cpu"
    assert sr.check_request(request(), sr.parse_sinfo(LOCAL)) == "debug"


def test_gpus_on_a_partition_without_them_name_the_key_and_a_value_that_fits():
    err = refusal(request(gpus_per_node=1), LOCAL)
    assert str(err) == ("executor.slurm.gpus_per_node: 1 GPU per node requested, partition debug has no GPUs "
                        "(gres: (null)); set --set executor.slurm.gpus_per_node=0")
    err = refusal(request(partition="gpu", gpus_per_node=8))
    assert err.key == "gpus_per_node" and "at most 4 GPUs per node" in str(err) and str(err).endswith("=4")


def test_cpus_memory_nodes_time_constraint_and_partition():
    assert refusal(request(partition="gpu", gpus_per_node=4, cpus_per_task=16, tasks_per_node=4)).key == \
        "cpus_per_task"
    err = refusal(request(partition="gpu", gpus_per_node=4, cpus_per_task=12, tasks_per_node=4, mem_gb=600))
    assert err.key == "mem_gb" and "515000 MB" in str(err) and str(err).endswith("mem_gb=502")
    # the v100 node has too few GPUs for 4: two nodes fit, not three
    err = refusal(request(partition="gpu", gpus_per_node=4, nodes=3))
    assert err.key == "nodes" and str(err).endswith("nodes=2")
    err = refusal(request(partition="gpu", gpus_per_node=1, timeout_min=2880))
    assert err.key == "timeout_min" and "at most 1440 minutes" in str(err)
    err = refusal(request(partition="gpu", gpus_per_node=1, constraint="h100"))
    assert err.key == "constraint" and "a100" in str(err)
    assert sr.check_request(request(partition="gpu", gpus_per_node=1, constraint="a100"),
                            sr.parse_sinfo(GPU_CLUSTER)) == "gpu"
    err = refusal(request(partition="gpuq"))
    assert err.key == "partition" and "'gpuq' does not exist" in str(err) and "cpu*, gpu, short" in str(err)
    err = refusal(request(), GPU_CLUSTER.replace("cpu*", "cpu"))
    assert err.key == "partition" and "this cluster has none" in str(err)


def test_sinfo_that_fails_is_a_query_error(tmp_path):
    fake = tmp_path / "sinfo"
    fake.write_text("#!/bin/sh\necho 'slurm_load_partitions: Unable to contact slurm controller' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(sr.SlurmQueryError, match="Unable to contact slurm controller"):
        sr.query_nodes(str(fake))


def test_submission_errors_become_one_line():
    err = RuntimeError("sbatch: error: Invalid feature specification\nsbatch: error: Batch job submission failed: "
                       "Invalid feature specification")
    assert sr.submission_error(err) == "Invalid feature specification"


# -- the launcher against the real cluster ------------------------------------------------------------------------------
def launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "experiments.launch", "grids/smoke.yaml", "--executor", "slurm",
            "--set", f"output_root={tmp_path / 'out'}", *args]
    return subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cluster():
    require_slurm()
    return sr.parse_sinfo(subprocess.run(["sinfo", "-h", "-N", "-o", sr.SINFO_FORMAT], capture_output=True,
                                         text=True, timeout=30).stdout)


@pytest.mark.parametrize("key, value", [("gpus_per_node", "64"), ("cpus_per_task", "4096"), ("mem_gb", "100000"),
                                        ("partition", "no_such_partition"), ("nodes", "500")])
def test_the_cluster_refuses_in_one_line_before_anything_is_written(cluster, tmp_path, key, value):
    proc = launch(tmp_path, "--set", f"executor.slurm.{key}={value}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: grids/smoke.yaml: executor.slurm.{key}: "), proc.stderr
    assert "set --set executor.slurm." in lines[0]
    assert not (tmp_path / "out").exists()  # no MLflow store, no run, no output directory


def test_the_smoke_grid_fits_the_cluster_as_it_is(cluster, tmp_path):
    proc = launch(tmp_path, "--dry-run")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stdout + proc.stderr
    assert "note: Slurm: partition" in proc.stdout and "0 GPUs" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_a_dry_run_only_warns(cluster, tmp_path):
    proc = launch(tmp_path, "--dry-run", "--set", "executor.slurm.gpus_per_node=64")
    assert proc.returncode == 0 and "(a launch would refuse this)" in proc.stderr
    assert "compute plan total:" in proc.stdout


def test_an_sbatch_refusal_is_one_line_and_leaves_no_run(cluster, tmp_path, tmp_path_factory):
    """A constraint expression the pre-flight does not judge (not a single feature name): the real sbatch refuses
    it after the launch created its MLflow runs; they must be gone and the error one line."""
    from mlflow.tracking import MlflowClient

    assets = quick_assets(tmp_path_factory)
    args = ["--only", "synthetic_fusion/rnd2rnd,synthetic_fusion/bert2bert", "--set", "smoke_assets=false",
            "--set", "executor.slurm.constraint=nofeature&other"]
    for family, path in assets["checkpoints"].items():
        args += ["--set", f"checkpoints.{family}={path}"]
    for split, path in assets["tasks"]["fusion"].items():
        args += ["--set", f"data.{split}={json.dumps(data_spec(path))}"]
    proc = launch(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if " INFO mlflow." not in line]  # MLflow creating its store
    assert len(lines) == 1 and lines[0].startswith("error: sbatch refused the job array: "), proc.stderr
    assert "Invalid feature specification" in lines[0]
    assert "nothing was submitted (3 MLflow runs of this launch removed)" in lines[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bertgen-smoke")
    assert exp is not None and client.search_runs([exp.experiment_id]) == []  # nothing active is left
