"""Hostile inputs and half-broken services (issue 13, classes 2-7): never corrupt silently, never hang, never leave a
run behind.

The catalogue below extends tests/test_bad_grid_inputs.py (same workspace, same promise): each case exits 2 with one
line of at most 300 characters on stderr that names the file (or the server) and the key and says what was expected,
and the launch directory is exactly as it was: no output folder, no tracking store, no MLflow experiment or run.
Classes: 2 resource-exhausting input (sizes, aliases, nesting, echoed values), 3 values validated for type, range and
finiteness, 4 what is knowable at launch refused at launch, 5 a tracking store or server that is half broken (real
servers on 127.0.0.1: one answering 500, one whose API never answers, a socket that accepts and never answers, one
that is not MLflow), 6 garbage in a cell folder before anything is written. Class 7 (experiments.tracking.sync) and a seeded
fuzz of the shipped grids follow the catalogue.
"""

from __future__ import annotations

import http.server
import json
import random
import re
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from experiments.launch import launcher as launch
from experiments.tracking import sync
from experiments.grid.load import load_grid
from experiments.grid.identity import cell_dir
from experiments.tracking.runs import PENDING_FILE
from integration_helpers import quick_assets
from test_bad_grid_inputs import Workspace, _set, _text

REPO = Path(__file__).resolve().parents[1]
CASE_BOUND_S = 30.0  # no case may take longer (the tracking probes: 2 tries x 1 s here)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    return quick_assets(tmp_path_factory)


# -- servers on loopback --------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "500"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        self.send_response(404)
        self.end_headers()

    def do_POST(self):  # noqa: N802
        mode = self.server.mode
        if mode == "hang":
            self.server.release.wait(60)
            return
        status, body = {"500": (500, b"Internal Server Error"), "html": (200, b"<html>a wiki</html>"),
                        "404": (404, b"not found"), "json": (200, b'{"status": "ok"}')}[mode]
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)


class FakeServer:
    """A plain http.server on 127.0.0.1: /health answers 200, the MLflow API answers as ``mode`` says."""

    def __init__(self, mode: str):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.mode = mode
        self.httpd.release = threading.Event()
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class SilentSocket:
    """Accepts connections (the kernel's backlog) and never answers a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def servers():
    made = {mode: FakeServer(mode) for mode in ("500", "hang", "html", "404", "json")}
    made["silent"] = SilentSocket()
    yield made
    for server in made.values():
        server.close()


# -- the catalogue ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    cls: int  # the class
    breaks: Callable[[Workspace], None]
    expect: tuple[str, ...]
    field_path: str = ""
    names_file: bool = True  # the tracking cases name the server instead


def _args(*args):
    def breaks(ws: Workspace) -> None:
        ws.args += [a(ws) if callable(a) else a for a in args]
    return breaks


def _append(extra: str):
    """The valid grid's YAML with more text after it (duplicate keys, aliases ...)."""
    return _text(lambda ws: yaml.safe_dump(ws.doc) + extra)


def _raw_grid(content: bytes):
    def breaks(ws: Workspace) -> None:
        ws.raw = content
    return breaks


def _laughs(ws: Workspace) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\ndescription: *a8\n"


def _deep_json(ws: Workspace, name: str) -> None:
    directory = ws.checkpoint_copy("bert")
    depth = 200_000
    (directory / name).write_text("[" * depth + "]" * depth)
    ws.doc["checkpoints"]["bert"] = str(directory)


def _repeated_vocab_token(ws: Workspace) -> None:
    """The bert checkpoint's vocab.txt with its last token replaced by a copy of its 11th (issue 24: the tokenizers
    reader kept the later id and trained silently)."""
    directory = ws.checkpoint_copy("bert")
    lines = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    lines[-1] = lines[10]
    (directory / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ws.doc["checkpoints"]["bert"] = str(directory)
    ws.repeated = (lines[10], len(lines), 11)


def _tracking(mode: str):
    def breaks(ws: Workspace) -> None:
        ws.args += ["--set", f"mlflow.tracking_uri={ws.servers[mode].uri}"]
    return breaks


def _sqlite_file(content: bytes | None, table: str | None = None):
    def breaks(ws: Workspace) -> None:
        db = ws.root / "store" / "other.db"
        db.parent.mkdir()
        if table:
            connection = sqlite3.connect(db)
            connection.execute(f"CREATE TABLE {table} (x)")
            connection.commit()
            connection.close()
        else:
            db.write_bytes(content)
        ws.doc["mlflow"]["tracking_uri"] = f"sqlite:///{db}"
    return breaks


def _pending(content: bytes):
    """A cell folder of the grid's one cell holding this pending_metrics.jsonl."""
    def breaks(ws: Workspace) -> None:
        ws.write()
        cell = load_grid(ws.grid).cells[0]
        folder = cell_dir(cell)
        folder.mkdir(parents=True)
        (folder / PENDING_FILE).write_bytes(content)
    return breaks


def _big_int(digits: int) -> str:
    return "9" * digits


LONG = "x" * 100_000
CASES = [
    # 2. resource-exhausting input: bounded reads, bounded expansion, bounded echo
    Case("billion-laughs", 2, _text(_laughs), ("expected at most 200000 values once aliases are expanded",)),
    Case("nesting-200k-deep-list", 2, _append("description: " + "[" * 200_000 + "]" * 200_000 + "\n"),
         ("expected at most 50 levels of nesting",)),
    Case("nesting-deep-mappings", 2, _append("description: " + "{a: " * 80 + "1" + "}" * 80 + "\n"),
         ("expected at most 50 levels of nesting",)),
    Case("recursive-alias", 2, _append("description: &r [1, *r]\n"), ("expected no recursive alias",)),
    Case("grid-file-over-a-megabyte", 2, _append("# " + "x" * (1 << 20) + "\n"),
         ("larger than 1048576 bytes", "expected a YAML grid")),
    Case("integer-of-5000-digits", 2, _text(lambda ws: yaml.safe_dump(ws.doc).replace("seeds:\n- 1", "seeds:\n- "
                                                                                    + _big_int(5000))),
         ("expected valid YAML values",)),
    Case("name-100k-characters", 2, _set("name", LONG), ("at most 100 characters",), "name"),
    Case("unknown-key-100k-characters", 2, _set(LONG, 1), ("unknown key 'xxxx", "...",)),
    Case("unknown-scheme-100k-characters", 2, _set("schemes", [LONG]), ("unknown scheme 'xxxx", "...")),
    Case("seeds-a-huge-list-echoed-short", 2, _set("seeds", ["s"] * 50_000), ("expected an integer >= 0",),
         "seeds[0]"),
    Case("config-json-200k-deep", 2, lambda ws: _deep_json(ws, "config.json"),
         ("config.json: nested too deeply", "expected a checkpoint's config.json"), "checkpoints.bert"),
    Case("tokenizer-json-200k-deep", 2, lambda ws: _deep_json(ws, "tokenizer_config.json"),
         ("tokenizer_config.json: nested too deeply",), "checkpoints.bert"),
    Case("set-value-nested-deep", 2, _args("--set", "description=" + "[" * 100 + "]" * 100),
         ("expected at most 50 levels of nesting",), "description", names_file=False),
    # 3. every value validated for type, range and finiteness before use
    Case("nul-byte-in-output-root", 3, _set("output_root", lambda ws: f"{ws.root}/out\0x"),
         ("expected a directory path without NUL bytes",), "output_root"),
    Case("binary-grid-file", 3, _raw_grid(b"\xff\xfe\x00n\x00a\x00m\x00e\x00"), ("not valid UTF-8", "expected")),
    Case("latin1-grid-file", 3, _raw_grid(b"name: caf\xe9\n"), ("line 1: not valid UTF-8",)),
    Case("output-root-is-a-file", 3, _set("output_root", lambda ws: str(ws.grid)), ("expected a directory",
                                                                                    "is a file"), "output_root"),
    Case("output-root-dev-null", 3, _set("output_root", "/dev/null"), ("expected a directory",
                                                                        "'/dev/null' is not a directory"),
         "output_root"),
    Case("output-root-below-a-file", 3, _set("output_root", lambda ws: str(ws.grid / "out")),
         ("expected a directory", "is a file"), "output_root"),
    Case("lr-infinite", 3, _set("defaults", "train", "lr", float("inf")), ("expected a finite number > 0.0",),
         "defaults.train.lr"),
    Case("lr-nan", 3, _set("defaults", "train", "lr", float("nan")), ("expected a finite number > 0.0",),
         "defaults.train.lr"),
    Case("length-penalty-infinite", 3, _args("--set", "decode.length_penalty=.inf"), ("expected a finite number",),
         "--set decode.length_penalty"),
    Case("max-grad-norm-too-large-for-a-float", 3, _set("defaults", "train", "max_grad_norm", 10**400),
         ("expected a finite number",), "defaults.train.max_grad_norm"),
    Case("mem-gb-infinite", 3, _set("executor", "slurm", "mem_gb", float("inf")), ("expected a finite number",),
         "executor.slurm.mem_gb"),
    Case("column-spec-a-list", 3, _set("defaults", "data", "train", "columns", "input", ["source"]),
         ("expected a column name",), "defaults.data.train.columns.input"),
    Case("column-spec-empty-name", 3, _set("defaults", "data", "train", "columns", "target", ""),
         ("expected a column name",), "defaults.data.train.columns.target"),
    Case("column-name-oversized", 3, _set("defaults", "data", "train", "columns", "id", LONG),
         ("expected a column name of at most 200 characters",), "defaults.data.train.columns.id"),
    Case("data-path-with-a-nul-byte", 3, _set("defaults", "data", "train", "path", "/tmp/x\0.jsonl"),
         ("expected a file path without NUL bytes",), "defaults.data.train.path"),
    Case("checkpoint-with-a-newline", 3, _set("checkpoints", "bert", "bert-base\ncased"),
         ("without control characters",), "checkpoints.bert"),
    Case("tracking-uri-with-a-newline", 3, _set("mlflow", "tracking_uri", "http://x\n#SBATCH"),
         ("expected a tracking URI without control characters",), "mlflow.tracking_uri"),
    Case("description-oversized", 3, _set("description", "d" * 30_000), ("at most 20000 characters",),
         "description"),
    # 4. knowable at launch: refused at launch
    Case("num-beams-beyond-the-vocabulary", 4, _set("defaults", "decode", "num_beams", 500),
         ("expected at most", "beams for the", "output vocabulary", "got 500"), "decode.num_beams"),
    Case("steps-10-to-the-30", 4, _set("defaults", "train", "steps", 10**30), ("expected an integer >= 1 and <= ",),
         "defaults.train.steps"),
    Case("batch-size-2-to-the-63", 4, _set("defaults", "train", "batch_size", 2**63),
         ("expected an integer >= 1 and <= 1048576",), "defaults.train.batch_size"),
    Case("seed-beyond-32-bits", 4, _set("seeds", [2**40]), ("expected an integer >= 0 and <= 4294967295",),
         "seeds[0]"),
    Case("num-beams-a-million", 4, _args("--set", "decode.num_beams=1000000"), ("<= 1024",),
         "--set decode.num_beams"),
    Case("max-new-tokens-a-billion", 4, _set("defaults", "decode", "max_new_tokens", 10**9), ("<= 1048576",),
         "defaults.decode.max_new_tokens"),
    Case("slurm-timeout-a-billion-minutes", 4, _set("executor", "slurm", "timeout_min", 10**9), ("<= 527040",),
         "executor.slurm.timeout_min"),
    Case("init-layers-first-k-huge", 4, _set("defaults", "init_layers", {"first_k": 10**12}), ("<= 1024",),
         "defaults.init_layers.first_k"),
    Case("model-hidden-size-2-to-the-40", 4, _set("defaults", "model", {"hidden_size": 2**40}), ("<= 1048576",),
         "defaults.model.hidden_size"),
    Case("num-workers-a-million", 4, _set("defaults", "train", "num_workers", 10**6), ("<= 256",),
         "defaults.train.num_workers"),
    Case("duplicate-top-level-key", 4, _append("tasks: [discofuse]\n"),
         ("expected each key once in a mapping, 'tasks' is given twice",)),
    Case("duplicate-nested-key", 4, _text(lambda ws: yaml.safe_dump(ws.doc).replace(
        "    steps: 3\n", "    steps: 3\n    steps: 300\n")), ("'steps' is given twice",)),
    Case("two-include-entries-same-cell", 4, _set("include", [{"task": "discofuse", "scheme": "bert2bert",
                                                                "seeds": [2]}] * 2),
         ("expected distinct cells", "already made by include[0]"), "include[1]"),
    Case("include-entry-repeats-a-matrix-cell", 4, _set("include", [{"task": "discofuse", "scheme": "bert2bert"}]),
         ("expected distinct cells", "already made by tasks"), "include[0]"),
    Case("vocab-txt-repeated-token", 4, _repeated_vocab_token, ("vocab.txt: token", "repeats line 11",
                                                                "expected each token once"), "checkpoints.bert"),
    Case("sweep-product-beyond-bounds", 4, _set("sweep", {"train.warmup_steps": list(range(400)),
                                                          "train.eval_every": list(range(400))}),
         ("expected at most 100000 cells",), "sweep"),
    # 5. the tracking store or server half broken: refused in one line, nothing written, bounded in time
    Case("tracking-api-answers-500", 5, _tracking("500"), ("answers /health but not its API (HTTP 500",),
         names_file=False),
    Case("tracking-api-never-answers", 5, _tracking("hang"), ("answers /health but not its API (no answer",),
         names_file=False),
    Case("tracking-socket-accepts-and-never-answers", 5, _tracking("silent"), ("is unreachable",),
         names_file=False),
    Case("tracking-server-is-not-mlflow-html", 5, _tracking("html"), ("expected MLflow's JSON",), names_file=False),
    Case("tracking-server-is-not-mlflow-json", 5, _tracking("json"), ("expected MLflow's JSON",), names_file=False),
    Case("tracking-server-without-the-api", 5, _tracking("404"), ("answered HTTP 404",
                                                                  "expected an MLflow tracking server"),
         names_file=False),
    Case("sqlite-store-not-a-database", 5, _sqlite_file(b"this is not sqlite" * 64),
         ("not a usable sqlite database",), names_file=False),
    Case("sqlite-store-another-programs-database", 5, _sqlite_file(None, table="invoices"),
         ("without MLflow's tables (invoices)",), names_file=False),
    # 6. garbage in a cell folder: refused before the experiment or any run exists
    Case("pending-metrics-garbage", 6, _pending(b"\x00\x01garbage\n{\"also\": \"bad\"}\n"),
         ("pending_metrics.jsonl:1", "experiments.tracking.sync", "expected only records the cell wrote"),
         "pending metrics"),
    Case("pending-metrics-mapping-as-run-id", 6, _pending(
        json.dumps({"run_id": {"a": 1}, "op": "tags", "tags": {}}).encode() + b"\n"),
         ("expected run_id to be an MLflow run id",), "pending metrics"),
]


@pytest.fixture
def workspace(tmp_path, assets, monkeypatch, servers) -> Workspace:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("BERTGEN_TRACKING_TIMEOUT_S", "1")
    ws = Workspace(tmp_path, assets)
    ws.servers = servers
    ws.raw = None
    return ws


def test_the_catalogue_covers_every_class_with_40_new_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert {c.cls for c in CASES} == {2, 3, 4, 5, 6}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_in_one_short_line_with_nothing_written(case, workspace, capsys):
    case.breaks(workspace)
    if workspace.raw is not None:
        workspace.grid.write_bytes(workspace.raw)
    else:
        workspace.write()
    before = workspace.snapshot()
    started = time.monotonic()
    code = launch.main([workspace.grid.name, *workspace.args])
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert elapsed < CASE_BOUND_S, elapsed
    assert code == 2, (out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[:3000]
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in err and len(line) <= 300, (len(line), line[:400])
    if case.names_file:
        assert "grid.yaml" in line, line
    if case.field_path:
        assert f": {case.field_path}:" in line, line
    for fragment in case.expect:
        assert fragment in line, (fragment, line)
    assert "expected" in line or "unreachable" in line, line
    assert workspace.snapshot() == before  # not a byte changed (class 6: the cell folder existed before)
    assert case.cls == 6 or not (workspace.root / "out").exists()
    assert not (workspace.root / "mlflow.db").exists() and not (workspace.root / "out" / "mlflow.db").exists()


def test_the_probe_passes_a_usable_store_and_a_tracking_uri_refusal_is_quick(workspace, capsys):
    """Controls: the unbroken grid launches --dry-run; an empty sqlite file is an empty database, not garbage."""
    from experiments.tracking.store import check_tracking

    workspace.write()
    assert launch.main(["grid.yaml", "--dry-run"]) == 0
    empty = workspace.root / "empty.db"
    empty.write_bytes(b"")
    check_tracking(f"sqlite:///{empty}")


# -- 6. an interrupt leaves no run RUNNING ------------------------------------------------------------------------------
def test_an_interrupt_during_the_cells_ends_every_run_it_started(workspace, capsys, monkeypatch):
    """Ctrl-C while a cell runs in this process (debug executor), and again while the launcher cleans up: every run
    the launch started ends KILLED, its own run too, and the launch says so (exit status 130)."""
    from mlflow.tracking import MlflowClient

    calls = []

    def interrupted(executor, jobs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "run_debug", interrupted)
    workspace.doc["seeds"] = [1, 2]
    workspace.write()
    code = launch.main(["grid.yaml"])
    out, err = capsys.readouterr()
    assert code == 130 and calls, (out, err)
    client = MlflowClient(f"sqlite:///{workspace.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bad-inputs")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"KILLED"}, [(r.info.status, r.info.run_name)
                                                                           for r in runs]


# -- 7. experiments.tracking.sync --------------------------------------------------------------------------------------------------
RUN = "0123456789abcdef0123456789abcdef"


def _record(**fields) -> bytes:
    return json.dumps({"tracking_uri": "http://127.0.0.1:9", "run_id": RUN, **fields}).encode() + b"\n"


def test_sync_dry_run_on_garbage_reports_each_bad_line_and_writes_nothing(tmp_path, capsys):
    cell = tmp_path / "cell"
    cell.mkdir()
    pending = cell / PENDING_FILE
    content = (b"\xff\xfe binary\n" + b"[1, 2]\n" + _record(op="tags", tags={"a": "b"})
               + json.dumps({"run_id": {"nested": 1}, "op": "tags", "tags": {}}).encode() + b"\n"
               + _record(op="metrics", rows=[["loss", "high", 1, 1]])
               + _record(op="artifact", path=str(cell / "x"), artifact_path="../../etc")
               + b"{" * 100_000 + b"\n" + _record(op="status", status="FINISHED"))
    pending.write_bytes(content)
    code = sync.main([str(cell), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 6, err
    assert all(len(line) <= 300 and "expected" in line for line in lines), lines
    for number, fragment in [(1, "UTF-8"), (2, "JSON object"), (4, "run_id"), (5, "metric row"), (6, "artifact_path"),
                             (7, "one JSON object per line")]:
        assert any(line.startswith(f"{pending}:{number}: ") and fragment in line for line in lines), (number, lines)
    assert f"{pending}: 2 operations pending, 6 bad" in out
    assert pending.read_bytes() == content and not pending.with_name(PENDING_FILE + ".rejected").exists()


def test_sync_sets_bad_records_aside_and_sends_the_good_ones(tmp_path, capsys, monkeypatch):
    cell = tmp_path / "cell"
    cell.mkdir()
    pending = cell / PENDING_FILE
    bad = [json.dumps({"run_id": ["x"], "op": "tags", "tags": {}}).encode() + b"\n",
           _record(op="metrics", rows=[["loss", {"v": 1}, 1, 1]]), b"not json\n"]
    good = [_record(op="tags", tags={"a": "b"}), _record(op="metrics", rows=[["loss", 0.5, 1, 1]])]
    pending.write_bytes(good[0] + bad[0] + bad[1] + good[1] + bad[2])
    sent_ops = []
    monkeypatch.setattr(sync, "mlflow_client", lambda uri: object())
    monkeypatch.setattr(sync, "send_operations", lambda client, run_id, ops: sent_ops.extend(ops))
    code = sync.main([str(cell)])
    out, err = capsys.readouterr()
    assert code == 2  # something was set aside: a person should look
    assert len(err.strip().splitlines()) == 3 and all("set aside in" in line for line in err.strip().splitlines())
    assert [op["op"] for op in sent_ops] == ["tags", "metrics"]
    assert not pending.exists()  # everything good was sent
    assert pending.with_name(PENDING_FILE + ".rejected").read_bytes() == b"".join(bad)
    # nothing is left to block the next sync
    assert sync.main([str(cell)]) == 0


# -- fuzz: mutated shipped grids never crash or hang ---------------------------------------------------------------------
FUZZ_SEED = 13
FUZZ_CASES = 60
FUZZ_BOUND_S = 20.0
HOSTILE_VALUES = ["1e400", ".inf", "-.nan", "-1", "0", str(2**63), "[" * 60 + "]" * 60, "'\\0'", '"a\\0b"', "~",
                  "&x [*x]", "!!python/object/apply:os.system ['true']", "{a: 1, a: 2}", "*nothere", "'" + "z" * 5000
                  + "'", "[]", "{}", "null", "true", "\"\\x01\""]


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True) or ["\n"]
    kind = rng.randrange(7)
    i = rng.randrange(len(lines))
    if kind == 0:  # a value replaced by a hostile one
        line = lines[i]
        if ":" in line:
            key = line.split(":", 1)[0]
            lines[i] = f"{key}: {rng.choice(HOSTILE_VALUES)}\n"
    elif kind == 1:  # a line doubled (duplicate keys)
        lines.insert(i, lines[i])
    elif kind == 2:  # a line dropped
        del lines[i]
    elif kind == 3:  # random bytes spliced in (as text)
        noise = "".join(chr(rng.choice([0, 9, 10, 13, 34, 39, 58, 91, 93, 123, 125, 42, 38, 0xFFFD]
                                       + list(range(32, 127)))) for _ in range(rng.randrange(1, 20)))
        pos = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:pos] + noise + lines[i][pos:]
    elif kind == 4:  # cut short
        return "".join(lines)[: rng.randrange(len(text) + 1)]
    elif kind == 5:  # a number changed
        lines[i] = re.sub(r"\b\d+\b", lambda m: rng.choice(["0", "-7", str(10**30), "1.5", "nan"]), lines[i], 1)
    else:  # indentation broken
        lines[i] = " " * rng.randrange(1, 6) + lines[i]
    return "".join(lines)


class _Hang(Exception):
    pass


def test_fuzzed_shipped_grids_end_in_exit_0_or_one_line_exit_2_in_bounded_time(tmp_path, monkeypatch, capsys):
    """FUZZ_CASES seeded mutations of grids/*.yaml, each launched with --dry-run in-process under an alarm: exit
    status 0 or 2 (one line), never an exception, never longer than FUZZ_BOUND_S."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shipped = sorted((REPO / "grids").glob("*.yaml"))
    for grid in shipped:
        (tmp_path / grid.name).write_text(grid.read_text(encoding="utf-8"), encoding="utf-8")
    rng = random.Random(FUZZ_SEED)

    def alarm(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    slowest = 0.0
    codes = {0: 0, 2: 0}
    try:
        for n in range(FUZZ_CASES):
            source = rng.choice(shipped)
            text = source.read_text(encoding="utf-8")
            for _ in range(rng.randrange(1, 4)):
                text = _mutate(text, rng)
            target = tmp_path / f"fuzz_{n}.yaml"
            target.write_text(text, encoding="utf-8", errors="surrogatepass")
            started = time.monotonic()
            signal.alarm(int(FUZZ_BOUND_S) + 1)
            try:
                code = launch.main([target.name, "--dry-run", "--set", "data.variant=full"])
            except _Hang:
                pytest.fail(f"case {n} ({source.name}) did not end within {FUZZ_BOUND_S} s")
            finally:
                signal.alarm(0)
            elapsed = time.monotonic() - started
            slowest = max(slowest, elapsed)
            out, err = capsys.readouterr()
            assert code in (0, 2), (n, source.name, err[-2000:])
            assert "Traceback" not in err and "error: unexpected " not in err, (n, source.name, text[:3000], err[-3000:])
            if code == 2:
                assert len(err.strip().splitlines()) == 1 and len(err) <= 1100, (n, err[:2000])
            codes[code] += 1
            assert not (tmp_path / "outputs").exists()
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert slowest < FUZZ_BOUND_S
    assert codes[2] > 0  # the mutations do break grids


# -- fuzz: a tiny checkpoint's safetensors header and config.json ------------------------------------------------------
CHECKPOINT_FUZZ_CASES = 40
_DTYPES = ("F32", "F16", "BF16", "F64", "I32", "I64", "I8", "U8", "BOOL")


def _mutate_checkpoint(weights: bytes, config: dict, rng: random.Random) -> tuple[bytes, dict, str]:
    """One seeded corruption of (model.safetensors, config.json) and what it was."""
    size = int.from_bytes(weights[:8], "little")
    header = json.loads(weights[8:8 + size])
    # the tensors bert2bert loads (the MLM head and pooler are set aside unread: changing them changes nothing)
    names = sorted(k for k in header if k != "__metadata__" and not k.startswith(("cls.", "bert.pooler.", "pooler.")))
    kind = rng.choice(["dtype", "shape", "offsets", "header_byte", "truncate", "header_length", "config_value",
                       "config_drop", "config_type"])
    if kind in ("dtype", "shape", "offsets"):
        entry = header[rng.choice(names)]
        if kind == "dtype":
            entry["dtype"] = rng.choice([d for d in _DTYPES if d != entry["dtype"]])
        elif kind == "shape":
            entry["shape"] = list(reversed(entry["shape"])) if len(set(entry["shape"])) > 1 else entry["shape"] + [1]
        else:
            entry["data_offsets"] = [entry["data_offsets"][0], entry["data_offsets"][1] + rng.choice([-4, 4, 10**9])]
        body = json.dumps(header).encode()
        body += b" " * (-len(body) % 8)
        return len(body).to_bytes(8, "little") + body + weights[8 + size:], config, kind
    if kind == "header_byte":
        at = rng.randrange(8, 8 + size)
        return weights[:at] + bytes([rng.randrange(256)]) + weights[at + 1:], config, kind
    if kind == "truncate":
        return weights[:rng.randrange(0, len(weights))], config, kind
    if kind == "header_length":
        return rng.choice([0, size + 1, 2**63]).to_bytes(8, "little") + weights[8:], config, kind
    config = dict(config)
    key = rng.choice(sorted(config))
    if kind == "config_drop":
        config.pop(key)
    elif kind == "config_type":
        config[key] = rng.choice(["x" * 5000, [1, 2], {"a": None}, None, -1, 1e308])
    else:
        config[key] = rng.choice([0, -7, 10**12, 0.5, True])
    return weights, config, f"{kind}:{key}"


def test_fuzzed_checkpoint_header_and_config_never_pass_as_corrupt_weights(workspace, capsys):
    """CHECKPOINT_FUZZ_CASES seeded corruptions of the BERT checkpoint a grid names (header dtype/shape/offsets,
    random header bytes, truncation, header length, config.json values, keys and types), each launched with
    --dry-run under an alarm: exit 0 only where the checkpoint still loads as the same model (a config key the
    family ignores), otherwise one line, exit 2; never a traceback, a hang, or anything written."""
    bert = workspace.checkpoint_copy("bert")
    workspace.doc["checkpoints"]["bert"] = str(bert)
    workspace.write()
    weights_file, config_file = bert / "model.safetensors", bert / "config.json"
    weights, config = weights_file.read_bytes(), json.loads(config_file.read_text())
    rng = random.Random(FUZZ_SEED + 1)

    def alarm(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    refused = {}
    try:
        for n in range(CHECKPOINT_FUZZ_CASES):
            broken, broken_config, kind = _mutate_checkpoint(weights, config, rng)
            weights_file.write_bytes(broken)
            config_file.write_text(json.dumps(broken_config))
            signal.alarm(int(FUZZ_BOUND_S) + 1)
            try:
                code = launch.main([workspace.grid.name, "--dry-run"])
            except _Hang:
                pytest.fail(f"case {n} ({kind}) did not end within {FUZZ_BOUND_S} s")
            finally:
                signal.alarm(0)
            out, err = capsys.readouterr()
            assert code in (0, 2), (n, kind, err[-2000:])
            assert "Traceback" not in err and "error: unexpected " not in err, (n, kind, err[-3000:])
            if code == 2:
                assert len(err.strip().splitlines()) == 1 and len(err) <= 1100, (n, kind, err[:2000])
                assert "checkpoints" in err or "config.json" in err or "safetensors" in err, (n, kind, err)
            elif not kind.startswith(("config_value", "config_drop", "config_type")):
                pytest.fail(f"case {n}: a corrupt weights file ({kind}) passed the pre-flight")
            refused[kind.split(":")[0]] = refused.get(kind.split(":")[0], 0) + (code == 2)
            assert not (workspace.root / "out").exists()
    finally:
        signal.signal(signal.SIGALRM, previous)
        weights_file.write_bytes(weights)
        config_file.write_text(json.dumps(config))
    assert refused.get("dtype", 0) > 0 and refused.get("truncate", 0) > 0, refused
