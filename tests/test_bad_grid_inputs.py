"""A catalogue of bad inputs to ``python -m experiments.launch``: each is refused before anything happens.

For every case: exit status 2, one line on stderr naming the file and the field and saying what was expected, and
nothing half-written — the launch directory (which holds the output root and the sqlite tracking store) is exactly
as it was, so there is no MLflow run, no experiment, no output directory. The checks on what is *in* checkpoints and
data files are experiments.launch.preflight's; the rest is grid validation and the tracking check.

The cases run in-process through ``experiments.launch.launcher.main`` (whose return value is the command's exit status);
a sample of them also runs as real ``python -m experiments.launch`` processes. Examples longer than the model reads
are the one input that is not an error: they are counted and reported, and the launch goes on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from experiments.launch import launcher as launch
from integration_helpers import data_spec, free_port, quick_assets, subprocess_env


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    return quick_assets(tmp_path_factory)


class Workspace:
    """A launch directory with a valid grid (``grid.yaml``) that one case then breaks."""

    def __init__(self, root: Path, assets: dict):
        self.root, self.assets = root, assets
        self.grid = root / "grid.yaml"
        files = assets["tasks"]["fusion"]
        self.doc: dict[str, Any] = {
            "name": "bad",
            "output_root": str(root / "out"),
            "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "bad-inputs"},
            "executor": {"default": "debug"},
            "checkpoints": dict(assets["checkpoints"]),
            "defaults": {
                "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "eval_every": 0, "checkpoint_every": 0,
                          "eval_examples": 8, "num_workers": 0},
                "decode": {"num_beams": 1, "max_new_tokens": 8},
                "data": {split: data_spec(path) for split, path in files.items()},
            },
            "tasks": ["discofuse"], "schemes": ["bert2bert"], "seeds": [1],
        }
        self.text: str | None = None  # raw grid text instead of the document
        self.args: list[str] = []
        self.marker = root / "payload-ran"

    def checkpoint_copy(self, family: str) -> Path:
        """A private copy of a tiny checkpoint, to break."""
        target = self.root / "ckpt" / family
        shutil.copytree(self.assets["checkpoints"][family], target)
        return target

    def data_file(self, name: str, content: bytes) -> str:
        path = self.root / "data" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        return str(path)

    def write(self) -> None:
        self.grid.write_text(self.text if self.text is not None else yaml.safe_dump(self.doc), encoding="utf-8")

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(self.root)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in sorted(self.root.rglob("*"))}


@dataclass
class Case:
    id: str
    breaks: Callable[[Workspace], None]
    expect: tuple[str, ...]  # fragments of the one error line, besides "grid.yaml"
    field_path: str = ""  # the key path the error names ("" when the message names a line or the file)
    extra: tuple[str, ...] = field(default=())


def _set(*path_and_value):
    *path, value = path_and_value

    def breaks(ws: Workspace) -> None:
        node = ws.doc
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value(ws) if callable(value) else value
    return breaks


def _args(*args: str):
    def breaks(ws: Workspace) -> None:
        ws.args += [a.format(port=free_port(), root=ws.root) for a in args]
    return breaks


def _text(text: str | Callable[[Workspace], str]):
    """The grid file's whole text: given, or made from the workspace (its valid document, its paths)."""
    def breaks(ws: Workspace) -> None:
        ws.text = text(ws) if callable(text) else text
    return breaks


# -- checkpoints -------------------------------------------------------------------------------------------------------
def _truncated_weights(ws: Workspace) -> None:
    weights = ws.checkpoint_copy("bert") / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    ws.doc["checkpoints"]["bert"] = str(weights.parent)


def _corrupt_weights(ws: Workspace) -> None:
    weights = ws.checkpoint_copy("bert") / "model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + os.urandom(256))
    ws.doc["checkpoints"]["bert"] = str(weights.parent)


class _Payload:
    """Unpickling this makes a directory: proof that the code of a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _code_executing_pickle(ws: Workspace) -> None:
    directory = ws.checkpoint_copy("bert")
    from safetensors.torch import load_file

    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save({**state, "__payload__": _Payload(ws.marker)}, directory / "pytorch_model.bin")
    # the payload is live: an unsafe load runs it (then the evidence is removed for the real check)
    torch.load(directory / "pytorch_model.bin", weights_only=False)
    assert ws.marker.is_dir()
    ws.marker.rmdir()
    ws.doc["checkpoints"]["bert"] = str(directory)


def _vocab_mismatch(ws: Workspace) -> None:
    directory = ws.checkpoint_copy("bert")
    with open(directory / "vocab.txt", "a", encoding="utf-8") as fh:
        fh.write("".join(f"extra{i}\n" for i in range(5)))
    ws.doc["checkpoints"]["bert"] = str(directory)


def _no_config(ws: Workspace) -> None:
    directory = ws.checkpoint_copy("bert")
    (directory / "config.json").unlink()
    ws.doc["checkpoints"]["bert"] = str(directory)


def _no_weights(ws: Workspace) -> None:
    directory = ws.checkpoint_copy("bert")
    (directory / "model.safetensors").unlink()
    ws.doc["checkpoints"]["bert"] = str(directory)


# -- data --------------------------------------------------------------------------------------------------------------
def _train_data(content: bytes, name: str = "train.jsonl"):
    def breaks(ws: Workspace) -> None:
        ws.doc["defaults"]["data"]["train"] = data_spec(ws.data_file(name, content))
    return breaks


WRONG_COLUMNS = b"".join(json.dumps({"id": str(i), "complex": "a b c .", "simple": "a b ."}).encode() + b"\n"
                         for i in range(10))
NOT_UTF8 = (json.dumps({"id": "0", "source": "caf", "target": "x"}).encode() + b"\n"
            + b'{"id": "1", "source": "caf\xe9 latin-1", "target": "y"}\n')

CASES = [
    # YAML itself
    Case("malformed-yaml", _text("tasks: [discofuse\nschemes: [bert2bert]\n"), ("line", "expected valid YAML")),
    Case("yaml-not-a-mapping", _text("- discofuse\n- bert2bert\n"), ("expected a mapping of grid keys, got list",)),
    Case("yaml-python-object-tag", _text("tasks: !!python/object/apply:os.system ['true']\n"),
         ("expected valid YAML",)),
    # names and keys
    Case("unknown-top-level-key", _set("exeuctor", {"default": "debug"}),
         ("unknown key 'exeuctor' (did you mean 'executor'?)",), "exeuctor"),
    Case("unknown-train-key", _set("defaults", "train", "stpes", 3),
         ("unknown key 'stpes' (did you mean 'steps'?)",), "defaults.train.stpes"),
    Case("unknown-set-field", _args("--set", "train.stepz=3"), ("did you mean 'train.steps'",), "--set train.stepz"),
    Case("unknown-scheme", _set("schemes", ["bert2bret"]), ("unknown scheme 'bert2bret' (did you mean 'bert2bert'?)",),
         "schemes[0]"),
    Case("unknown-task", _set("tasks", ["discofuze"]), ("unknown task 'discofuze' (did you mean 'discofuse'?)",),
         "tasks[0]"),
    # types and ranges
    Case("steps-not-a-number", _set("defaults", "train", "steps", "ten"), ("expected an integer >= 1, got 'ten'",),
         "defaults.train.steps"),
    Case("lr-a-list", _set("defaults", "train", "lr", [0.1]), ("expected a number > 0.0, got [0.1]",),
         "defaults.train.lr"),
    Case("bf16-not-a-bool", _set("defaults", "train", "bf16", "maybe"), ("expected true, false or auto, got 'maybe'",),
         "defaults.train.bf16"),
    Case("seeds-not-a-list", _set("seeds", "one"), ("expected a non-empty list of integer seeds",), "seeds"),
    Case("steps-zero", _set("defaults", "train", "steps", 0), ("expected an integer >= 1, got 0",),
         "defaults.train.steps"),
    Case("steps-negative-from-the-command-line", _args("--set", "train.steps=-5"),
         ("expected an integer >= 1, got -5",), "--set train.steps"),
    Case("batch-size-zero", _set("defaults", "train", "batch_size", 0), ("expected an integer >= 1, got 0",),
         "defaults.train.batch_size"),
    Case("batch-size-negative", _set("defaults", "train", "batch_size", -8), ("expected an integer >= 1, got -8",),
         "defaults.train.batch_size"),
    Case("data-fraction-zero", _set("defaults", "data_fraction", 0.0), ("expected a number > 0.0 and <= 1.0",),
         "defaults.data_fraction"),
    # checkpoints
    Case("checkpoint-directory-missing", _set("checkpoints", "bert", lambda ws: str(ws.root / "no-such-bert")),
         ("expected a checkpoint directory", "no-such-bert", "does not exist"), "checkpoints.bert"),
    Case("checkpoint-of-the-wrong-family", _set("checkpoints", "bert", lambda ws: ws.assets["checkpoints"]["gpt2"]),
         ("gpt2/config.json has model_type 'gpt2'; expected a bert checkpoint (model_type 'bert' or "
          "'bert-generation') for scheme bert2bert",),
         "checkpoints.bert"),
    Case("checkpoint-without-config", _no_config, ("no config.json",), "checkpoints.bert"),
    Case("checkpoint-without-weights", _no_weights, ("no model.safetensors", "expected the checkpoint's weights"),
         "checkpoints.bert"),
    Case("safetensors-truncated", _truncated_weights,
         ("model.safetensors: truncated or corrupt", "expected a complete safetensors file"), "checkpoints.bert"),
    Case("safetensors-corrupt", _corrupt_weights,
         ("model.safetensors: truncated or corrupt", "expected a complete safetensors file"), "checkpoints.bert"),
    Case("pickle-checkpoint-that-runs-code", _code_executing_pickle,
         ("pytorch_model.bin: refused or unreadable", "expected tensors only"), "checkpoints.bert"),
    Case("tokenizer-vocab-size-not-the-checkpoints", _vocab_mismatch,
         ("vocab.txt: the bert vocabulary has {vocab_plus_5} token ids", "config.json has vocab_size={vocab}",
          "the tokenizer does not match the checkpoint"), "checkpoints.bert"),
    Case("init-layers-deeper-than-the-checkpoint", _set("defaults", "init_layers", {"first_k": 5}),
         ("layer",), "init_layers"),
    # data
    Case("dataset-file-missing", _set("defaults", "data", "train", lambda ws: data_spec(str(ws.root / "gone.jsonl"))),
         ("expected an existing file", "gone.jsonl", "does not exist"), "defaults.data.train.path"),
    Case("dataset-file-empty", _train_data(b""), ("train.jsonl: file is empty", "expected"), "data.train"),
    Case("dataset-without-the-columns", _train_data(WRONG_COLUMNS),
         ("train.jsonl", "has no field 'source'", "complex", "expected"), "data.train"),
    Case("dataset-not-utf8", _train_data(NOT_UTF8), ("train.jsonl: not valid UTF-8", "expected UTF-8 text"),
         "data.train"),
    # the outside world
    Case("tracking-server-unreachable", _args("--set", "mlflow.tracking_uri=http://127.0.0.1:{port}"),
         ("MLflow tracking server http://127.0.0.1:", "is unreachable", "nothing was submitted")),
    Case("slurm-partition-with-a-newline", _set("executor", "slurm", "partition", "debug\n#SBATCH --uid=0"),
         ("expected plain text for an #SBATCH line",), "executor.slurm.partition"),
    Case("slurm-account-with-command-substitution", _set("executor", "slurm", "account", "$(touch /tmp/pwned)"),
         ("expected plain text for an #SBATCH line",), "executor.slurm.account"),
    Case("slurm-qos-with-a-semicolon", _args("--set", "executor.slurm.qos=normal;rm -rf ~"),
         ("expected plain text for an #SBATCH line",), "executor.slurm.qos"),
    Case("output-root-with-a-newline", _set("output_root", lambda ws: f"{ws.root}/out\ntouch {ws.marker}\n#"),
         ("expected a directory path without control characters",), "output_root"),
    Case("grid-name-with-shell-text", _set("name", "x; touch pwned"), ("expected a name of letters, digits",),
         "name"),
    Case("grid-name-only-dots", _set("name", ".."), ("expected a name with a letter or digit, got '..'",), "name"),
]


def run_case(ws: Workspace, capsys) -> tuple[int, str, str]:
    code = launch.main([str(ws.grid.name), *ws.args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def workspace(tmp_path, assets, monkeypatch) -> Workspace:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Workspace(tmp_path, assets)


def test_the_catalogue_is_large_and_its_ids_unique():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def test_the_unbroken_grid_passes_every_check(workspace, capsys):
    """The control: the grid every case starts from is valid, so each refusal below is its case's doing."""
    workspace.write()
    code = launch.main(["grid.yaml", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert re.search(r"[0-9a-f]{12}\s+discofuse\s+bert2bert\s+1", out) and err == ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_with_nothing_written(case, workspace, capsys):
    case.breaks(workspace)
    workspace.write()
    before = workspace.snapshot()
    code, out, err = run_case(workspace, capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err
    if case.id != "tracking-server-unreachable":  # that one names the server, not the file
        assert "grid.yaml" in line, line
    if case.field_path:
        assert f": {case.field_path}:" in line or f" {case.field_path}:" in line, line
    vocab = len(Path(workspace.assets["checkpoints"]["bert"], "vocab.txt").read_text(encoding="utf-8").splitlines())
    for fragment in case.expect:
        fragment = fragment.format(vocab=vocab, vocab_plus_5=vocab + 5)
        assert fragment in line, (fragment, line)
    assert "expected" in line or "unreachable" in line, line
    # nothing half-written: no output root, no tracking store, not a byte changed in the launch directory
    assert workspace.snapshot() == before
    assert not (workspace.root / "out").exists() and not (workspace.root / "mlflow.db").exists()
    assert not workspace.marker.exists() and not Path("/tmp/pwned").exists()


def test_examples_longer_than_the_model_reads_are_counted_not_refused(workspace, capsys):
    """Three training sources far over the 128 tokens the tiny model reads: a note with the count, exit status 0,
    and the cell then trains on them truncated."""
    rows = Path(workspace.assets["tasks"]["fusion"]["train"]).read_text(encoding="utf-8").splitlines()
    long_source = " ".join(["the queen sold the broken roof ."] * 40)
    rows += [json.dumps({"id": f"long-{i}", "source": long_source, "target": "the queen sold it ."}) for i in range(3)]
    workspace.doc["defaults"]["data"]["train"] = data_spec(
        workspace.data_file("train.jsonl", ("\n".join(rows) + "\n").encode()))
    workspace.write()
    assert launch.main(["grid.yaml", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    (note,) = [line for line in out.splitlines() if line.startswith("note: ")]
    # the label names the tiny model's size (issue 20: a cell's label shows a size other than the paper's 12 layers)
    assert re.fullmatch(r"note: discofuse/bert2bert/seed1/L2-H64: data\.train: 3 of 43 sources longer than 128 tokens "
                        r"and 0 targets longer than 128 tokens will be truncated", note), note
    assert not (workspace.root / "out").exists()


# -- the same through the command line ------------------------------------------------------------------------------
SUBPROCESS_SAMPLE = ("malformed-yaml", "pickle-checkpoint-that-runs-code", "output-root-with-a-newline")


def test_a_sample_through_python_dash_m_exits_2_with_one_line(tmp_path, assets):
    """Real processes, started together: the exit status is the command's, stderr is all it printed."""
    procs = []
    for case in [c for c in CASES if c.id in SUBPROCESS_SAMPLE]:
        ws = Workspace(tmp_path / case.id, assets)
        ws.root.mkdir()
        case.breaks(ws)
        ws.write()
        before = ws.snapshot()
        proc = subprocess.Popen([sys.executable, "-m", "experiments.launch", "grid.yaml", *ws.args], cwd=ws.root,
                                env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((case, ws, before, proc))
    assert len(procs) == len(SUBPROCESS_SAMPLE)
    for case, ws, before, proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case.id, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: grid.yaml: "), (case.id, err)
        assert all(fragment in lines[0] for fragment in case.expect), (case.id, lines[0])
        assert ws.snapshot() == before and not ws.marker.exists(), case.id
