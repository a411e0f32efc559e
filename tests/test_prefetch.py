"""Offline compute nodes (experiments.prefetch): prefetching a grid's hub checkpoints and data from a fake hub into
a temporary cache, and the launch pre-flight's refusal of a hub id that is not cached under HF_HUB_OFFLINE=1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments import prefetch as pf
from experiments.grid import load_grid
from integration_helpers import REPO, subprocess_env

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": b'{"model_type": "bert"}', "vocab.txt": b"[PAD]\n[UNK]\n", "model.safetensors": b"x" * 5000}


def fake_snapshot(hub_cache: Path, repo_id: str, repo_type: str = "models") -> Path:
    """A repository in the HF cache layout (refs/main -> snapshots/<commit>/<file> -> ../../blobs/<file>)."""
    repo = Path(hub_cache) / f"{repo_type}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, content in FILES.items():
        blob = repo / "blobs" / f"{repo_id.replace('/', '_')}-{name}"
        blob.write_bytes(content)
        link = snapshot / name
        if not link.exists():
            link.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snapshot


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub's and datasets' download functions replaced by a local fake hub that records its calls."""
    import datasets
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, allow_patterns=None, cache_dir=None, local_files_only=False, **kwargs):
        calls.append(("snapshot", repo_id))
        return str(fake_snapshot(Path(cache_dir), repo_id))

    def hf_hub_download(repo_id, filename, repo_type=None, cache_dir=None, **kwargs):
        calls.append(("file", repo_id, filename))
        path = Path(cache_dir) / f"datasets--{repo_id.replace('/', '--')}" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"z" * 3000)
        return str(path)

    def load_dataset(path, split=None, cache_dir=None, **kwargs):
        calls.append(("dataset", path, kwargs.get("name"), split))
        target = Path(cache_dir) / path.replace("/", "___") / f"{kwargs.get('name')}-{split}.arrow"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(b"d" * 2000)
        return None

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_what_a_grid_names_on_the_hub():
    grid = load_grid(REPO / "grids" / "split.yaml")
    checkpoints = pf.hub_checkpoints(grid.cells)
    assert set(checkpoints) == {"bert-base-cased", "roberta-base", "gpt2", "bert-large-cased", "roberta-large"}
    assert checkpoints["gpt2"] == ["checkpoints.gpt2"]
    data = pf.hub_data(grid.cells)
    assert {r.kwargs["split"] for r in data.values()} == {"train", "validation", "test"}
    # local checkpoints and files are not fetched; the smoke grid's tasks are the project's own
    assert pf.hub_checkpoints(load_grid(REPO / "grids" / "smoke.yaml").cells) == {}
    assert pf.hub_data(load_grid(REPO / "grids" / "smoke.yaml").cells) == {}


def test_prefetch_fetches_every_checkpoint_and_split_once_and_says_how_much(fake_hub, tmp_path, capsys):
    assert pf.main([str(REPO / "grids" / "split.yaml"), "--cache-dir", str(tmp_path / "cache"),
                    "--only", "bert2bert,gpt"]) == 0
    out = capsys.readouterr().out
    assert sorted(c for c in fake_hub if c[0] == "snapshot") == [("snapshot", "bert-base-cased"),
                                                                 ("snapshot", "gpt2")]
    assert len([c for c in fake_hub if c[0] == "dataset"]) == 3  # train, validation, test: once each
    blob_mb = sum(map(len, FILES.values())) / 2**20
    assert f"checkpoint bert-base-cased (checkpoints.bert): {blob_mb:,.1f} MB" in out
    assert "fetched" in out and "already cached" not in out
    assert f"HF_HUB_CACHE={tmp_path / 'cache' / 'hub'}" in out and "HF_HUB_OFFLINE=1" in out
    total = 2 * sum(map(len, FILES.values())) + 3 * 2000
    assert f"fetched {total / 2**20:,.1f} MB in all (2 checkpoints, 3 data splits)" in out
    assert (tmp_path / "cache" / "hub" / "models--gpt2" / "snapshots" / COMMIT / "config.json").is_file()

    fake_hub.clear()
    assert pf.main([str(REPO / "grids" / "split.yaml"), "--cache-dir", str(tmp_path / "cache"),
                    "--only", "bert2bert,gpt"]) == 0
    again = capsys.readouterr().out
    assert again.count("already cached") == 5 and "fetched 0.0 MB in all" in again


def test_prefetch_refuses_to_run_offline(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pf.main([str(REPO / "grids" / "split.yaml")]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err


def launch(env_home: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_HOME=str(env_home))
    env.pop("HF_HUB_CACHE", None)
    argv = [sys.executable, "-m", "experiments.launch", "grids/split.yaml", "--executor", "local",
            "--only", "wikisplit/bert2bert", "--set", f"output_root={tmp_path / 'out'}", *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_offline_launch_refuses_a_hub_id_that_is_not_cached_in_one_line(tmp_path):
    home = tmp_path / "empty-hf-home"
    proc = launch(home, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: grids/split.yaml: checkpoints.bert: hub id 'bert-base-cased' is not in the "
                               f"local HF cache ({home / 'hub'}) and HF_HUB_OFFLINE=1")
    assert "python -m experiments.prefetch" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written: no MLflow store, no cell directory


def test_offline_launch_accepts_a_prefetched_hub_id(tmp_path):
    home = tmp_path / "hf-home"
    fake_snapshot(home / "hub", "bert-base-cased")
    proc = launch(home, tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compute plan total: 1 cells" in proc.stdout
    assert not (tmp_path / "out").exists()
