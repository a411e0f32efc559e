"""``python -m experiments.recipes.evaluate`` refuses bad input before it writes (issue 24, part 5), as the launch does: each
case below exits 2 with one line on stderr naming the problem, and the workspace is exactly as it was: no output
folder, no ``evaluations/`` folder in a cell, no tracking store, no MLflow run.

Before the evaluation's pre-flight, a truncated ``model.safetensors`` in a cell was a ``SafetensorError``
traceback; ``--select best`` without a best checkpoint, a plain BERT directory, a ``cell.json`` naming another
scheme than its weights and an ``--output-dir`` that is a file each created an MLflow run and folders and exited 1;
a tracking URI with an unknown scheme was refused after the output root was created; a relative
``sqlite:///outputs/mlflow.db`` died on its second use.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from experiments import cli
from experiments.recipes import evaluate as ev
from integration_helpers import data_spec, quick_assets, tiny_cell
from test_evaluate import SOURCES, TARGETS, released_layout, runs_of

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def originals(tmp_path_factory, shared_dir) -> dict[str, Path]:
    """A released-layout checkpoint (SentencePiece, as google/roberta2roberta_L-24_*), a trained bert2bert cell (8
    steps, checkpoints/last only), its warm-start assets and a test file; copied by each case that breaks one."""
    from experiments.tracking.runs import NullLogger
    from experiments.recipes.train import train_cell

    root = tmp_path_factory.mktemp("evaluate-inputs")
    released_layout("sentencepiece", shared_dir / "data" / "tokenizers", root / "released")
    assets = quick_assets(tmp_path_factory)
    cell = tiny_cell(assets, root / "trained", steps=8, eval_every=4, checkpoint_every=4)
    cell_dir = root / "trained" / "cells" / "discofuse" / "bert2bert" / cell["cell_id"]
    train_cell(cell, cell_dir, NullLogger())
    (cell_dir / "cell.json").write_text(json.dumps(cell))
    test_file = root / "test.jsonl"
    test_file.write_text("".join(json.dumps({"id": str(i), "source": s, "target": t}) + "\n"
                                 for i, (s, t) in enumerate(zip(SOURCES, TARGETS))))
    return {"released": root / "released", "cell": cell_dir, "bert": Path(assets["checkpoints"]["bert"]),
            "test_file": test_file, "tokenizers": shared_dir / "data" / "tokenizers"}


class Workspace:
    """One case's folder: private copies of what it breaks, the arguments it adds."""

    def __init__(self, root: Path, originals: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self.monkeypatch = monkeypatch
        self.originals = originals
        self.out = root / "out"
        self.store = root / "store"
        self.store.mkdir()
        self.uri = f"sqlite:///{self.store / 'mlflow.db'}"

    def released(self) -> Path:
        target = self.root / "released"
        if not target.exists():
            shutil.copytree(self.originals["released"], target)
        return target

    def cell(self) -> Path:
        target = self.root / "cells" / "discofuse" / "bert2bert" / self.originals["cell"].name
        if not target.exists():
            shutil.copytree(self.originals["cell"], target)
        return target

    def released_args(self, checkpoint: Path | None = None) -> list[str]:
        spec = json.dumps(data_spec(str(self.originals["test_file"])))
        return [str(checkpoint or self.released()), "--task", "discofuse", "--set", f"data.test={spec}"]

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(self.root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
                for p in self.root.rglob("*")}


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _cell_with(change: Callable[[Path], object], *options: str) -> Callable[[Workspace], list[str]]:
    def breaks(ws: Workspace) -> list[str]:
        change(ws.cell())
        return [str(ws.cell()), *options]
    return breaks


def _cell_json(edit: Callable[[dict], None]) -> Callable[[Workspace], list[str]]:
    return _cell_with(lambda cell: _edit_json(cell / "cell.json", edit))


LAST_WEIGHTS = Path("checkpoints") / "last" / "model.safetensors"


def _released_with(change: Callable[[Path, Workspace], None]) -> Callable[[Workspace], list[str]]:
    def breaks(ws: Workspace) -> list[str]:
        change(ws.released(), ws)
        return ws.released_args()
    return breaks


def _repeated_piece(directory: Path, ws: Workspace) -> None:
    model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    proto = model_pb2.ModelProto()
    proto.ParseFromString((directory / "spiece.model").read_bytes())
    proto.pieces[10].piece = proto.pieces[7].piece
    (directory / "spiece.model").write_bytes(proto.SerializeToString())


def _not_writable(ws: Workspace) -> list[str]:
    locked = ws.root / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root may write anywhere: the permission check is told what a user would be told
        real_access = os.access
        ws.monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    return [*ws.released_args(), "--output-dir", str(locked / "eval")]


def _a_file(ws: Workspace) -> Path:
    path = ws.root / "a-file"
    path.write_text("not a folder")
    return path


def _test_data(ws: Workspace, content: bytes) -> list[str]:
    path = ws.root / "bad-test.jsonl"
    path.write_bytes(content)
    return [*ws.released_args(), "--set", f"data.test={json.dumps(data_spec(str(path)))}"]


def _store_garbage(ws: Workspace) -> list[str]:
    (ws.store / "mlflow.db").write_bytes(b"this is not sqlite" * 64)
    return ws.released_args()


@dataclass
class Case:
    id: str
    breaks: Callable[[Workspace], list[str]]  # returns the command's arguments
    expect: tuple[str, ...]
    uri: str | None = None  # the tracking URI, when not the workspace's store


CASES = [
    # a trained cell's checkpoint
    Case("cell-truncated-model-safetensors", _cell_with(lambda cell: _truncate(cell / LAST_WEIGHTS)),
         ("checkpoints/last/model.safetensors: corrupt safetensors header",)),
    Case("cell-model-safetensors-garbage", _cell_with(lambda cell: (cell / LAST_WEIGHTS).write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")), ("model.safetensors: corrupt safetensors header",)),
    Case("cell-select-best-without-best", _cell_with(lambda cell: None, "--select", "best"),
         ("no complete checkpoints/best (has ['last'])", "pass --select last")),
    Case("cell-without-checkpoints", _cell_with(lambda cell: shutil.rmtree(cell / "checkpoints")),
         ("no complete checkpoints/last (has none)",)),
    Case("cell-json-names-a-shared-scheme", _cell_json(lambda c: c.update(scheme="bertShare")),
         ("stored apart, but the bertShare model shares one tensor", "expected the weights of a bertShare cell")),
    Case("cell-json-names-a-gpt2-decoder", _cell_json(lambda c: c.update(scheme="bert2gpt")),
         ("model.safetensors: tensor decoder.", "bert2gpt model", "expected the weights of a bert2gpt cell")),
    Case("cell-json-names-another-depth", _cell_json(lambda c: c.update(model={"num_hidden_layers": 1})),
         ("is not in the bert2bert model",)),
    Case("cell-json-garbage", _cell_with(lambda cell: (cell / "cell.json").write_text("{oops")),
         ("cell.json: not a readable cell config",)),
    # an HF-layout (released) checkpoint
    Case("released-is-a-plain-bert-directory", lambda ws: ws.released_args(ws.originals["bert"]),
         ("model_type 'bert': expected an encoder-decoder checkpoint",)),
    Case("released-truncated-model-safetensors", _released_with(lambda d, ws: _truncate(d / "model.safetensors")),
         ("released/model.safetensors: corrupt safetensors header",)),
    Case("released-without-weights", _released_with(lambda d, ws: (d / "model.safetensors").unlink()),
         ("no model.safetensors",)),
    Case("released-config-of-another-size", _released_with(lambda d, ws: _edit_json(
        d / "config.json", lambda c: [c[side].update(intermediate_size=48) for side in ("encoder", "decoder")])),
         ("has shape (64,) in the checkpoint but (48,) in the model",)),
    Case("released-config-not-json", _released_with(lambda d, ws: (d / "config.json").write_text("{oops")),
         ("config.json: not valid JSON",)),
    Case("released-config-200k-deep", _released_with(lambda d, ws: (d / "config.json").write_text(
        "[" * 200_000 + "]" * 200_000)), ("config.json: nested too deeply to read",)),
    Case("released-vocabulary-repeats-a-piece", _released_with(_repeated_piece),
         ("spiece.model: piece", "repeats id 7", "expected each piece once")),
    Case("released-tokenizer-of-another-model", _released_with(lambda d, ws: shutil.copy(
        ws.originals["tokenizers"] / "sentencepiece" / "test_ja_model.model", d / "spiece.model")),
         ("the tokenizer has 8002 tokens", "vocab_size=1002")),
    Case("released-without-tokenizer-files", _released_with(lambda d, ws: (d / "spiece.model").unlink()),
         ("no tokenizer files",)),
    # the test data
    Case("test-data-not-utf8", lambda ws: _test_data(ws, b'{"source": "caf\xe9", "target": "x"}\n'),
         ("data.test:", "not valid UTF-8", "expected UTF-8 text")),
    Case("test-data-without-its-columns", lambda ws: _test_data(ws, b'{"text": "a", "summary": "b"}\n'),
         ("data.test:", "source")),
    # where it would write
    Case("output-dir-is-a-file", lambda ws: [*ws.released_args(), "--output-dir", str(_a_file(ws))],
         ("--output-dir", "not a directory; expected a folder")),
    Case("output-dir-below-a-file", lambda ws: [*ws.released_args(), "--output-dir", str(_a_file(ws) / "eval")],
         ("--output-dir", "is not a directory; expected a folder that can be created")),
    Case("output-root-is-a-file", lambda ws: [*ws.released_args(), "--output-root", str(_a_file(ws))],
         ("--output-root", "not a directory")),
    Case("output-dir-not-writable", _not_writable, ("is not writable by this user",)),
    # the tracking store
    Case("tracking-uri-unknown-scheme", lambda ws: ws.released_args(), ("does not answer",), uri="nosuch://store"),
    Case("tracking-uri-sqlite-without-slashes", lambda ws: ws.released_args(),
         ("expected sqlite:///<absolute path>",), uri="sqlite:relative.db"),
    Case("tracking-server-unreachable", lambda ws: ws.released_args(), ("is unreachable",),
         uri="http://127.0.0.1:9"),
    Case("tracking-store-not-a-database", _store_garbage, ("not a usable sqlite database",)),
]


def test_the_catalogue_has_at_least_18_bad_inputs():
    assert len(CASES) >= 18 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_evaluation_is_refused_in_one_line_before_anything_is_written(case, originals, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("BERTGEN_TRACKING_TIMEOUT_S", "1")
    ws = Workspace(tmp_path, originals, monkeypatch)
    argv = case.breaks(ws)
    before = ws.snapshot()
    options = ["--device", "cpu", "--tracking-uri", case.uri or ws.uri]
    if "--output-root" not in argv:
        options += ["--output-root", str(ws.out)]
    code = ev.main(argv + options)
    out, err = capsys.readouterr()
    assert code == cli.EXIT_REFUSED, (out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-3000:]
    for fragment in case.expect:
        assert fragment in lines[0], (fragment, lines[0])
    assert ws.snapshot() == before  # no output folder, no evaluations/ in the cell, no store: not a byte
    assert not ws.out.exists() and not (ws.store / "mlflow.db").exists() or case.id == "tracking-store-not-a-database"


def test_a_relative_sqlite_uri_works_as_for_the_launch(originals, tmp_path, capsys, monkeypatch):
    """``sqlite:///outputs/mlflow.db`` is relative to the working directory; its second use found the database and
    died with "relative path can't be expressed as a file URI"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace(tmp_path, originals, monkeypatch)
    argv = [*ws.released_args(), "--set", "decode.max_new_tokens=4", "--max-examples", "2",
            "--tracking-uri", "sqlite:///outputs/mlflow.db", "--output-root", "outputs", "--device", "cpu"]
    assert ev.main(argv) == 0, capsys.readouterr().err
    code = ev.main(argv)
    out, err = capsys.readouterr()
    assert code == 0 and "SKIPPED" in out, err
    (run,) = runs_of(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
