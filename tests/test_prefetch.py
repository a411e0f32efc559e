"""Offline compute nodes (experiments.launch.prefetch): prefetching a grid's hub checkpoints and data from a fake hub into
a temporary cache, and the launch pre-flight's refusal of a hub id that is not cached under HF_HUB_OFFLINE=1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from experiments.launch import prefetch as pf
from experiments.config.cell import to_dict
from experiments.grid.load import load_grid
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
    smoke = load_grid(REPO / "grids" / "smoke.yaml").cells
    assert pf.hub_checkpoints(smoke) == {}
    assert pf.hub_data(smoke) == {}


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
    assert "python -m experiments.launch.prefetch" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written: no MLflow store, no cell directory


def test_offline_launch_accepts_a_prefetched_hub_id(tmp_path):
    home = tmp_path / "hf-home"
    fake_snapshot(home / "hub", "bert-base-cased")
    proc = launch(home, tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "compute plan total: 1 cells" in proc.stdout
    assert not (tmp_path / "out").exists()


# -- data on no hub: the balanced DiscoFuse from its authors' archive, over a loopback HTTP server --------------------
DISCOFUSE_COLUMNS = ("coherent_first_sentence", "coherent_second_sentence", "incoherent_first_sentence",
                     "incoherent_second_sentence", "discourse_type", "connective_string", "has_coref_type_pronoun",
                     "has_coref_type_nominal")


def _tsv(split: str, rows: int) -> bytes:
    lines = ["\t".join(DISCOFUSE_COLUMNS)]
    for i in range(rows):
        lines.append("\t".join([f"{split} {i} went home , but slept .", "", f"{split} {i} went home .",
                                "But slept .", "SINGLE_S_COORD", ", but", "0.0", "0.0"]))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def archive_bytes() -> bytes:
    """A zip in the layout of discofuse_v1_wikipedia.zip: the three balanced files and a member nobody wants."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for split, rows in (("train", 7), ("dev", 3), ("test", 4)):
            bundle.writestr(f"discofuse_v1/wikipedia/{split}_balanced.tsv", _tsv(split, rows))
        bundle.writestr("discofuse_v1/wikipedia/train.tsv", _tsv("full", 20))
    return buffer.getvalue()


@pytest.fixture
def loopback(archive_bytes):
    """An HTTP server on 127.0.0.1 (a thread, stopped after the test) serving the fixture archive as published
    (/good.zip), another file of the same size (/other.zip), the archive announced at another size (/bigger.zip),
    and the archive cut off halfway (/short.zip: Content-Length says all of it, the connection closes early).
    Returns (base URL, the paths requested)."""
    import http.server
    import threading

    requests: list[str] = []
    half = len(archive_bytes) // 2

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            requests.append(self.path)
            body = {"/good.zip": archive_bytes, "/other.zip": bytes(reversed(archive_bytes)),
                    "/bigger.zip": archive_bytes + b"\0" * 10, "/short.zip": archive_bytes}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:half] if self.path == "/short.zip" else body)
            if self.path == "/short.zip":
                self.wfile.flush()
                self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def fixture_archive(archive_bytes: bytes, url: str):
    """The recorded DiscoFuse archive with the fixture's URL, size and digest."""
    import dataclasses
    import hashlib

    from experiments.config.data_spec import DISCOFUSE_BALANCED

    return dataclasses.replace(DISCOFUSE_BALANCED, urls=(url,), size=len(archive_bytes),
                               sha256=hashlib.sha256(archive_bytes).hexdigest())


def test_the_published_archive_is_recorded_as_data():
    from experiments.config.data_spec import DISCOFUSE_BALANCED, DISCOFUSE_DIR, archive_for

    assert DISCOFUSE_BALANCED.urls[0] == "https://storage.googleapis.com/gresearch/discofuse/discofuse_v1_wikipedia.zip"
    assert DISCOFUSE_BALANCED.size == 1_717_422_334 and len(DISCOFUSE_BALANCED.sha256) == 64
    assert sorted(DISCOFUSE_BALANCED.members.values()) == ["dev_balanced.tsv", "test_balanced.tsv",
                                                           "train_balanced.tsv"]
    assert archive_for(DISCOFUSE_DIR / "dev_balanced.tsv") is DISCOFUSE_BALANCED and archive_for("dev.tsv") is None
    for grid in ("fusion", "ablations", "gpt2_tuning"):
        loaded = load_grid(REPO / "grids" / f"{grid}.yaml", check_paths=False)
        cells = [to_dict(c) for c in loaded.cells]
        assert {c["data"]["test"] for c in cells} == {str(DISCOFUSE_DIR / "test_balanced.tsv")}, grid
        assert set(pf.archive_data(loaded.cells)) <= {DISCOFUSE_DIR}


def test_the_archive_is_downloaded_verified_and_extracted(loopback, archive_bytes, tmp_path):
    from experiments.data.sources import load_split
    from experiments.data.archive import fetch_archive

    base, requests = loopback
    archive = fixture_archive(archive_bytes, f"{base}/good.zip")
    destination = tmp_path / "data" / "discofuse"
    said: list[str] = []
    written = fetch_archive(archive, destination, out=said.append)
    assert sorted(p.name for p in destination.iterdir()) == ["dev_balanced.tsv", "test_balanced.tsv",
                                                             "train_balanced.tsv"]  # nothing else, nothing hidden
    assert (destination / "dev_balanced.tsv").read_bytes() == _tsv("dev", 3) and len(written) == 3
    assert "verified" in said[0] and requests == ["/good.zip"]
    test = load_split("discofuse", "test", str(destination / "test_balanced.tsv"), seed=0)
    assert len(test) == 4  # what the task's loader reads: the grids' data.test
    assert fetch_archive(archive, destination, out=said.append) == written and requests == ["/good.zip"]
    assert "already extracted" in said[-1]


@pytest.mark.parametrize("path, message", [
    ("/other.zip", "sha256 "),  # the same size, other bytes
    ("/bigger.zip", "the server announces"),
    ("/short.zip", "expected"),  # cut off: fewer bytes than announced (or the connection's own error)
])
def test_a_download_that_is_not_the_published_archive_is_refused_in_one_line_with_nothing_kept(
        path, message, loopback, archive_bytes, tmp_path):
    from experiments.data.archive import ArchiveError, fetch_archive

    base, _ = loopback
    archive = fixture_archive(archive_bytes, f"{base}{path}")
    destination = tmp_path / "data" / "discofuse"
    with pytest.raises(ArchiveError) as caught:
        fetch_archive(archive, destination, out=lambda _: None, timeout_s=10)
    text = str(caught.value)
    assert "\n" not in text and message in text and "nothing kept" in text and base in text
    assert list(destination.iterdir()) == []  # no partial download, no staging folder, no half-written file


def test_prefetch_fetches_the_archive_a_grid_names(loopback, archive_bytes, tmp_path, monkeypatch, fake_hub, capsys):
    """``python -m experiments.launch.prefetch GRID``: the balanced files the grid's cells name are missing, so the archive
    is fetched into their folder; a second run finds them. A mismatch is one line, exit status 1."""
    import yaml

    from experiments.config import data_spec

    base, requests = loopback
    monkeypatch.setattr(data_spec, "ARCHIVES", (fixture_archive(archive_bytes, f"{base}/good.zip"),))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bert").mkdir()
    grid = tmp_path / "grid.yaml"
    files = {split: f"data/discofuse/{name}_balanced.tsv"
             for split, name in (("train", "train"), ("validation", "dev"), ("test", "test"))}
    grid.write_text(yaml.safe_dump({"name": "g", "output_root": "out", "checkpoints": {"bert": str(tmp_path / "bert")},
                                    "defaults": {"data": files}, "tasks": ["discofuse"], "schemes": ["bert2bert"],
                                    "seeds": [1]}))
    assert pf.main([str(grid), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "nothing else to fetch" in out and requests == ["/good.zip"]
    assert all((tmp_path / f).is_file() for f in files.values()) and not fake_hub
    monkeypatch.setattr(data_spec, "ARCHIVES", (fixture_archive(archive_bytes, f"{base}/other.zip"),))
    (tmp_path / files["test"]).unlink()
    assert pf.main([str(grid), "--cache-dir", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err and not (tmp_path / files["test"]).exists()
