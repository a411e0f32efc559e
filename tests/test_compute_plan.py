"""The compute plan (experiments.launch.compute_plan): exact parameter counts, the FLOPs formula by hand, the memory fit,
measured entries replacing estimates, and the dry run's per-cell table and total line."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from bertgen.schemes import PAPER_CHECKPOINT_CONFIGS, parameter_counts
from experiments.launch import compute_plan as cp
from experiments.launch import launcher as launch
from experiments.config.cell import CellConfig
from experiments.grid.load import load_grid


def cell_of(scheme: str, task: str = "wikisplit", size: str = "base", cell: dict | None = None, **train):
    """A typed cell of the paper's hub checkpoints; ``cell``: more of its JSON form (vocab, model ...)."""
    from bertgen.schemes import SCHEMES

    refs = {"base": {"bert": "bert-base-cased", "roberta": "roberta-base", "gpt2": "gpt2"},
            "large": {"bert": "bert-large-cased", "roberta": "roberta-large", "gpt2": "gpt2-medium"}}[size]
    settings = {"steps": 1000, "batch_size": 256, "grad_accum": 1, "bf16": True, **train}
    return CellConfig.from_dict({
        "cell_id": f"{scheme}-{task}", "task": task, "scheme": scheme, "seed": 1, "train": settings, "model": {},
        "decode": {"num_beams": 4, "length_penalty": 0.6, "max_new_tokens": 128},
        "checkpoints": {f: (refs[f] if f in SCHEMES[scheme].checkpoints else None) for f in refs}, **(cell or {})})


def test_shapes_have_table_1s_parameter_counts():
    counts = parameter_counts("base")
    for scheme in ("bert2bert", "bertShare", "robertaShare", "gpt", "bert2gpt", "roberta2gpt"):
        assert cp.cell_shape(cell_of(scheme)).params == counts[scheme]


def test_a_trained_vocabulary_is_planned_at_its_own_size():
    """Table 6's 16k SentencePieces and Table 4's 32k WordPiece Transformer: the output projection is planned over the
    trained vocabulary, not the checkpoint's (GPT-2's 50,257 ids, mBERT's 119,547)."""
    gpt = cp.cell_shape(cell_of("gpt", "discofuse", cell={"vocab": {"train": "sentencepiece", "size": 16000}}))
    assert gpt.vocab == 16000 and gpt.params == cp.cell_shape(cell_of("gpt", "discofuse")).params - (50257 - 16000) * 768
    cell = cell_of("rnd2rnd", "wmt14_en_de", cell={
        "vocab": {"train": "wordpiece", "size": 32000},
        "model": {"num_hidden_layers": 6, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 2048}})
    transformer = cp.cell_shape(cell)
    assert (transformer.vocab, transformer.dec_layers, transformer.dec_hidden) == (32000, 6, 512)


def test_the_plan_builds_the_model_the_cell_trains():
    """The compute plan builds a cell's model with the job's builder (experiments.recipes.build.build_model): §5's
    layer selection (init_layers) gives every stack that many layers, and the plan counts that model."""
    from experiments.recipes.build import build_model

    cell = cell_of("bert2bert", cell={"init_layers": {"first_k": 6}, "cross_attention_init": "self_attention"})
    shape = cp.cell_shape(cell)
    assert (shape.enc_layers, shape.dec_layers) == (6, 6)
    configs = {f: PAPER_CHECKPOINT_CONFIGS["base"][f] for f in ("bert",)}
    assert shape.params == build_model(cell, "meta", sources=configs)[0].num_parameters()
    assert shape.params < cp.cell_shape(cell_of("bert2bert")).params


def test_flops_by_hand_for_bert2bert():
    shape = cp.cell_shape(cell_of("bert2bert"))
    d, layers, vocab = 768, 12, 28996
    # BERT layer without embeddings: QKVO 4(d^2+d) + FFN 2*d*4d + 4d + d + two LayerNorms 4d
    layer = 4 * (d * d + d) + 2 * d * 4 * d + 4 * d + d + 4 * d
    assert shape.enc == layers * layer  # the encoder without embeddings: its layers
    assert shape.xkv == layers * 2 * (d * d + d)
    s, t = 128, 128
    expected = (6 * (shape.enc * s + shape.dec * t + shape.xkv * s) + 6 * d * vocab * t
                + 12 * (layers * s * s * d + layers * (t * t + t * s) * d))
    assert cp.train_flops_per_example(shape, s, t) == pytest.approx(expected)
    # the dense term is ~6 x non-embedding parameters per token
    per_token = cp.train_flops_per_example(shape, s, t) / (s + t)
    assert 6 * 100e6 < per_token < 6 * 160e6


def test_time_is_flops_over_the_assumed_utilisation_of_the_peak():
    cell = cell_of("bert2bert", steps=1000, batch_size=256)
    cost = cp.cell_cost(cell, "a100-80gb", ranks=1)
    shape = cost.shape
    flops = 1000 * 256 * cp.train_flops_per_example(shape, shape.max_source, shape.max_target)
    assert cost.gpu_hours == pytest.approx(flops / (312e12 * cp.ASSUMED_MFU) / 3600)
    assert cost.tokens == 1000 * 256 * (shape.max_source + shape.max_target) and cost.source == "estimate"
    fp32 = cp.cell_cost(cell_of("bert2bert", bf16=False), "a100-80gb", ranks=1)
    assert fp32.gpu_hours == pytest.approx(cost.gpu_hours * 312 / 19.5)
    h100 = cp.cell_cost(cell, "h100-80gb", ranks=1)
    assert h100.gpu_hours < cost.gpu_hours


def test_a_batch_too_big_for_one_gpu_names_the_accumulation_or_gpus():
    small = cp.cell_cost(cell_of("bert2bert", batch_size=32), "a100-40gb", ranks=1)
    assert small.fit == "fits 1 GPU"
    big = cp.cell_cost(cell_of("bert2bert", task="cnn_dailymail", size="large", batch_size=512), "a100-40gb", 1)
    match = re.fullmatch(r"needs train.grad_accum>=(\d+) \(micro-batch (\d+)\) or (\d+) GPUs", big.fit)
    assert match, big.fit
    k, micro = int(match.group(1)), int(match.group(2))
    assert 512 % k == 0 and micro == 512 // k and k == int(match.group(3)) and k > 1
    shape = big.shape
    usable = 40 * cp.GIB * cp.MEMORY_HEADROOM
    assert cp.peak_bytes(shape, micro, shape.max_source, shape.max_target, "bf16") <= usable
    smaller = max(j for j in range(1, k) if 512 % j == 0)  # the next smaller accumulation does not fit
    assert cp.peak_bytes(shape, 512 // smaller, shape.max_source, shape.max_target, "bf16") > usable
    # more ranks split the batch: enough of them make it fit
    assert cp.cell_cost(cell_of("bert2bert", task="cnn_dailymail", size="large", batch_size=512), "a100-40gb",
                        ranks=k).fit.startswith("fits 1 GPU")


def test_a_measured_entry_replaces_the_estimate(monkeypatch):
    cell = cell_of("bert2bert")
    shape = cp.cell_shape(cell)
    key = (shape.label, shape.max_source, shape.max_target, "bf16", "a100-80gb")
    monkeypatch.setitem(cp.MEASURED, key, {"tokens_per_s": 100_000.0, "machine": "test rig"})
    cost = cp.cell_cost(cell, "a100-80gb", 1)
    assert cost.source == "measured on test rig"
    assert cost.gpu_hours == pytest.approx(cost.tokens / 100_000 / 3600)


def test_unknown_checkpoints_are_no_plan_not_a_crash(tmp_path):
    cell = cell_of("bert2bert")
    cell = replace(cell, checkpoints=replace(cell.checkpoints, bert=str(tmp_path / "nowhere")))
    cost = cp.cell_cost(cell, "a100-80gb", 1)
    assert cost.shape is None and "unknown" in cost.why


def test_the_table_covers_sizes_lengths_and_dtypes(capsys):
    assert cp.main(["--table", "--gpu", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATES from FLOPs" in out and "H100" in out
    assert "bert2bert 221.6M" in out and "bertShare 433.4M" in out and "fp32" in out


def test_dry_run_of_the_split_grid_prints_the_plan_and_a_total(capsys):
    grid = load_grid("grids/split.yaml")
    assert launch.main(["grids/split.yaml", "--dry-run", "--executor", "local", "--gpu", "h100-80gb"]) == 0
    out = capsys.readouterr().out.splitlines()
    total = next(line for line in out if line.startswith("compute plan total:"))
    assert f"{len(grid.cells)} cells" in total and "GPU-hours on NVIDIA H100 80GB" in total
    assert "ESTIMATE from FLOPs" in total
    hours = float(re.search(r"([\d,.]+) GPU-hours", total).group(1).replace(",", ""))
    expected = sum(cp.cell_cost(c, "h100-80gb", 1).gpu_hours for c in grid.cells)
    assert hours == pytest.approx(expected, abs=0.5)
    plan_rows = [line for line in out if line.startswith("wikisplit/")]
    assert len(plan_rows) == len(grid.cells) and all("fits 1 GPU" in row for row in plan_rows)
    assert out[-1].startswith(f"{len(grid.cells)} of {len(grid.cells)} cells")
    assert PAPER_CHECKPOINT_CONFIGS  # the configs the plan builds from
