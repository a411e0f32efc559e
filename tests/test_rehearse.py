"""The rehearsal (experiments.launch.rehearse) on tiny configs: shapes grouped by architecture and lengths, measured beside
the plan and recorded, a failing shape as one line with exit status 2, and the plan's use of recorded rates."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.launch import compute_plan as cp
from experiments.launch import launcher as launch, measured_rates, rehearse, rehearse_worker
from experiments.grid.load import load_grid

BERT = dict(model_type="bert", vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
            layer_norm_eps=1e-12, pad_token_id=0)


def tiny_grid(tmp_path, depths=(2,), schemes=("rnd2rnd", "bert2bert"), tasks=("wikisplit",)):
    """A grid over config-only BERT checkpoints (config.json, no weights: the rehearsal never reads weights)."""
    lines = []
    for depth in depths:
        folder = tmp_path / f"bert-{depth}l"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(dict(BERT, num_hidden_layers=depth)))
        lines.append(folder)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "name: tiny\noutput_root: " + str(tmp_path / "out") + "\n"
        f"mlflow: {{tracking_uri: null, experiment: tiny}}\ncheckpoints: {{bert: {lines[0]}}}\n"
        "defaults:\n  train: {steps: 10, batch_size: 4, bf16: false}\n"
        f"tasks: [{', '.join(tasks)}]\nschemes: [{', '.join(schemes)}]\nseeds: [1]\n"
        + "".join(f"include:\n  - {{task: {tasks[0]}, scheme: bertShare, checkpoints: {{bert: {f}}}}}\n"
                  for f in lines[1:]))
    return grid


def test_shapes_group_by_architecture_then_lengths(tmp_path):
    grid = load_grid(tiny_grid(tmp_path, schemes=("rnd2rnd", "bert2bert", "bertShare"),
                               tasks=("wikisplit", "discofuse")), check_paths=False)
    architectures, unknown = rehearse.group_shapes(grid.cells, "cpu")
    assert not unknown
    # rnd2rnd and bert2bert build one model (only which side is warm differs); bertShare another
    by_labels = {frozenset(label.split()[0] for at in a.lengths.values() for label in at.shape_labels): a
                 for a in architectures}
    assert set(by_labels) == {frozenset({"rnd2rnd", "bert2bert"}), frozenset({"bertShare"})}
    pair = by_labels[frozenset({"rnd2rnd", "bert2bert"})]
    # the two tasks' lengths, cut to the 64 positions, are the lengths of that architecture; each holds its cells
    assert all(s <= 64 and t <= 64 for s, t in pair.lengths)
    assert sum(len(at.cells) for at in pair.lengths.values()) == 4
    assert {a.dtype for a in architectures} == {"fp32"}  # bf16: false in the grid
    # a step's examples: 1 on a CPU; on a GPU the plan's micro-batch (batch_size 4 / grad_accum 2)
    assert {at.micro_batch for a in architectures for at in a.lengths.values()} == {1}
    gpu_grid = load_grid(tiny_grid(tmp_path / "gpu"), ["defaults.train.grad_accum=2"], check_paths=False)
    cells = gpu_grid.cells
    gpu = rehearse.group_shapes(cells, "cuda")[0]
    assert {at.micro_batch for a in gpu for at in a.lengths.values()} == {2}
    assert {at.micro_batch for a in rehearse.group_shapes(cells, "cuda", 3)[0] for at in a.lengths.values()} == {3}


def test_bf16_only_where_the_device_computes_it(tmp_path, monkeypatch):
    grid = load_grid(tiny_grid(tmp_path), ["defaults.train.bf16=true"], check_paths=False)
    monkeypatch.setattr(rehearse.machine, "native_bf16", lambda device: False)
    assert {a.dtype for a in rehearse.group_shapes(grid.cells, "cpu")[0]} == {"fp32"}
    monkeypatch.setattr(rehearse.machine, "native_bf16", lambda device: True)
    assert {a.dtype for a in rehearse.group_shapes(grid.cells, "cpu")[0]} == {"bf16"}


@pytest.mark.slow
def test_rehearsal_measures_compares_and_records(tmp_path, monkeypatch, capsys):
    rates = tmp_path / "rates.json"
    monkeypatch.setenv(measured_rates.MEASURED_RATES_VARIABLE, str(rates))
    grid = tiny_grid(tmp_path, depths=(2, 3), schemes=("rnd2rnd", "bert2bert"))
    assert rehearse.main([str(grid), "--steps", "1", "--micro-batch", "2"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if "+" in line and "M" in line and "|" not in line]
    assert any("bert2bert" in row and "rnd2rnd" in row for row in table), out  # one shape, both labels
    assert any("bertShare" in row for row in table), out  # the 3-layer architecture of its own
    records = json.loads(rates.read_text())
    assert {r["device"] for r in records} == {"cpu"} and {r["micro_batch"] for r in records} == {2}
    labels = {r["shape"].split()[0] for r in records}
    assert labels == {"rnd2rnd", "bert2bert", "bertShare"}
    for record in records:
        assert record["tokens_per_s"] > 0 and math.isfinite(record["tokens_per_s"])
        assert record["source"] <= 64 and record["target"] <= 64 and "CPU" in record["machine"]


@pytest.mark.slow
def test_a_shape_that_fails_is_one_line_and_exit_2(tmp_path, capsys):
    grid = tiny_grid(tmp_path)
    assert rehearse.main([str(grid), "--steps", "1", "--timeout-s", "0.01", "--no-record"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one shape (rnd2rnd and bert2bert share it), one line
    line = err[0]
    assert line.startswith("error: rehearse: wikisplit/") and "(+1 cells)" in line
    assert "S+T" in line and "micro-batch 1" in line and "no result within --timeout-s" in line


def test_failure_kinds_and_what_to_change():
    assert rehearse_worker.failure_kind(torch.OutOfMemoryError("CUDA out of memory")) == "out of memory"
    assert rehearse_worker.failure_kind(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried")) == \
        "out of memory"
    assert rehearse_worker.failure_kind(IndexError("index out of range in self")) == "a length past the model's positions"
    assert rehearse_worker.failure_kind(ValueError("bad")) == "ValueError"
    architecture = rehearse.Architecture("bert2bert", {}, {}, "adam", "bf16", 4)
    at = rehearse.Lengths(512, 128, 8, {"bert2bert 221.6M"}, ["cnn_dailymail/bert2bert/seed1"])
    line = rehearse.failure_line(rehearse.Measured(architecture, at, {"error": "out of memory", "message": "x"}))
    assert "cnn_dailymail/bert2bert/seed1 [bert2bert 221.6M, S+T 512+128, bf16, micro-batch 8]: out of memory" in line
    assert "--set train.grad_accum=" in line and "\n" not in line


def test_the_plan_uses_recorded_rates_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(measured_rates.MEASURED_RATES_VARIABLE, str(tmp_path / "rates.json"))
    grid = load_grid("grids/split.yaml")
    cell = grid.cells[0]
    shape = cp.cell_shape(cell)
    estimate = cp.cell_cost(cell, "h100-80gb", 1)
    assert estimate.source == "estimate"
    measured_rates.record_rates([{"shape": shape.label, "source": shape.max_source, "target": shape.max_target,
                      "dtype": cp.dtype_of(cell), "device": "h100-80gb", "tokens_per_s": 50_000.0,
                      "machine": "GPU test rig", "micro_batch": 8}])
    cost = cp.cell_cost(cell, "h100-80gb", 1)
    assert cost.source == "measured on GPU test rig"
    assert cost.gpu_hours == pytest.approx(cost.tokens / 50_000 / 3600)
    assert cp.cell_cost(cell, "a100-80gb", 1).source == "estimate"  # another GPU: still the estimate
    assert launch.main(["grids/split.yaml", "--dry-run", "--executor", "local", "--gpu", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("compute plan total:"))
    same = sum(1 for c in grid.cells if cp.cell_shape(c) == shape and cp.dtype_of(c) == cp.dtype_of(cell))
    assert f"{same} cells from rates measured on GPU test rig" in total
    assert any(line.startswith(cell.task) and "measured" in line for line in out.splitlines())


def test_a_bad_rates_file_is_a_warning_and_the_estimate(tmp_path, monkeypatch, capsys):
    rates = tmp_path / "rates.json"
    rates.write_text("{not json")
    monkeypatch.setenv(measured_rates.MEASURED_RATES_VARIABLE, str(rates))
    grid = load_grid("grids/split.yaml")
    assert cp.cell_cost(grid.cells[0], "h100-80gb", 1).source == "estimate"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(rates) in err[0] and "ignored" in err[0]
