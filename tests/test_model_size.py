"""A cell's model size (experiments.config.model_size, issue 20): derived from its checkpoints' configs, part of its id where a
checkpoint is a local directory, logged as a param and a tag, in its label, and the analysis' row key — a 24-layer
run in its 24-layer row, a run of another size or budget in a marked row of its own that no paper number is set
beside. End to end with tiny checkpoints of two depths: launch → train_cell → MLflow → tables and figures."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from experiments.launch import job as cell_job
from experiments.launch import launcher as launch
from experiments.config.cell import to_dict
from experiments.grid.identity import cell_label, compute_cell_id
from experiments.grid.load import load_grid
from experiments.config.model_size import PAPER_SIZES, model_size

from integration_helpers import data_spec, quick_assets

TINY_TRAIN = {"steps": 2, "batch_size": 4, "grad_accum": 1, "lr": 3e-3, "warmup_steps": 1, "schedule": "linear",
              "max_grad_norm": 1.0, "bf16": False, "eval_every": 2, "checkpoint_every": 2, "eval_examples": 4,
              "num_workers": 0, "log_every": 1, "dev_decode_examples": 0}


def test_size_from_the_papers_checkpoints_random_sides_overrides_and_layer_selections():
    assert PAPER_SIZES == {"L12-H768": "base", "L24-H1024": "large"}
    paper_large = {"bert": "bert-large-cased", "roberta": "roberta-large", "gpt2": "gpt2"}  # KNOWN_CONFIGS: no download
    assert model_size("bert2bert", paper_large) == "L24-H1024"
    assert model_size("rnd2rnd", paper_large) == "L24-H1024"  # the random stacks take BERT-Large's size
    assert model_size("rnd2gpt", paper_large) == "L12-H768"  # ... and GPT-2's here
    assert model_size("bert2gpt", paper_large) == "L24-H1024+L12-H768"  # encoder + decoder when they differ
    assert model_size("gpt", {"gpt2": "gpt2-medium"}) == "L24-H1024"
    assert model_size("bertShare", {"bert": "bert-base-cased"}, {"num_hidden_layers": 6}) == "L6-H768"
    assert model_size("bertShare", {"bert": "bert-large-cased"}, init_layers={"first_k": 10}) == "L10-H1024"
    assert model_size("bertShare", {"bert": "bert-large-cased"}, init_layers={"embeddings_only": True}) == "L24-H1024"
    assert model_size("bert2bert", {"bert": "nobody/not-cached-anywhere"}) is None


# -- the tiny checkpoints of two depths -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    return quick_assets(tmp_path_factory)


def deeper_copy(source: Path, target: Path, layers: int) -> Path:
    """``source``'s tiny BERT at another depth: the same vocabulary and width, ``layers`` layers of new weights
    (written by transformers, as a hub checkpoint is)."""
    from transformers import BertConfig, BertForMaskedLM

    shutil.copytree(source, target)
    raw = json.loads((source / "config.json").read_text())
    config = BertConfig(**{**raw, "num_hidden_layers": layers})
    for name in ("model.safetensors", "pytorch_model.bin"):
        (target / name).unlink(missing_ok=True)
    BertForMaskedLM(config).save_pretrained(target, safe_serialization=True)
    return target


def write_grid(root: Path, assets: dict, uri: str, checkpoints: list[str], name: str = "depths") -> Path:
    fusion = assets["tasks"]["fusion"]
    doc = {"name": "depths", "output_root": str(root / "out"), "mlflow": {"tracking_uri": uri, "experiment": "depths"},
           "defaults": {"train": TINY_TRAIN, "decode": {"num_beams": 1, "max_new_tokens": 4},
                        "max_examples": {"train": 16, "validation": 4, "test": 4},
                        "data": {split: data_spec(path) for split, path in fusion.items()}},
           "include": [{"task": "discofuse", "scheme": "bertShare", "checkpoints": {"bert": c}} for c in checkpoints]}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.slow
def test_two_depths_are_two_cells_two_runs_and_two_marked_rows(assets, tmp_path, monkeypatch):
    from analysis import plots
    from analysis.runs import RunStore
    from analysis.tables import build_table

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cell_job, "TRAIN_FN", None)  # the real experiments.recipes.train.train_cell
    shallow = Path(assets["checkpoints"]["bert"])
    deep = deeper_copy(shallow, tmp_path / "bert-deep", layers=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    grid_path = write_grid(tmp_path, assets, uri, [str(shallow), str(deep)])
    cells = load_grid(grid_path).cells
    assert [c.size for c in cells] == ["L2-H64", "L3-H64"]
    assert [cell_label(c).rsplit("/", 1)[-1] for c in cells] == ["L2-H64", "L3-H64"]

    # One path, re-pretrained at another depth, is another cell: the id hashes the size of a local checkpoint.
    moving = tmp_path / "bert-moving"
    shutil.copytree(shallow, moving)
    before = load_grid(write_grid(tmp_path, assets, uri, [str(moving)], "moving")).cells[0]
    shutil.rmtree(moving)
    deeper_copy(shallow, moving, layers=3)
    after = load_grid(write_grid(tmp_path, assets, uri, [str(moving)], "moving")).cells[0]
    assert (before.size, after.size) == ("L2-H64", "L3-H64") and before.cell_id != after.cell_id
    with pytest.raises(ValueError, match=r"cell size: the grid recorded L2-H64 .* now build L3-H64"):
        from experiments.recipes.build import build_model

        build_model(before)

    assert launch.main([str(grid_path), "--executor", "debug"]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("depths")
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'cell'")
    assert sorted((r.data.tags["size"], r.data.params["size"]) for r in runs) == [("L2-H64", "L2-H64"),
                                                                                ("L3-H64", "L3-H64")]
    store = RunStore(uri)
    assert sorted(store.runs["size"]) == ["L2-H64", "L3-H64"]
    table = build_table(2, store, n_boot=50)
    sari = table.cells[table.cells.column == "sari_100"].set_index("row")
    for size in ("L2-H64", "L3-H64"):  # each run in its own row, with no paper number and no Δ beside it
        row = sari.loc[f"bertShare ({size})"]
        assert row["n"] == 1 and math.isfinite(row["mean"]) and math.isnan(row["paper"]) and math.isnan(row["diff"])
    paper_row = sari.loc["bertShare"]  # the paper's 12-layer row keeps its number and gets no tiny run
    assert paper_row["paper"] == pytest.approx(89.2) and paper_row["n"] == 0 and math.isnan(paper_row["mean"])
    figure = plots.task_bars({2: table}, "discofuse")
    ticks = {t.get_text() for ax in figure.axes for t in ax.get_xticklabels()}
    assert {"bertShare", "bertShare (L2-H64)", "bertShare (L3-H64)"} <= ticks


# -- 12 and 24 layers, the paper's budget and another --------------------------------------------------------------
def test_24_layer_runs_fill_24_layer_rows_and_other_budgets_are_rows_of_their_own(tmp_path, monkeypatch):
    """Hub ids of both paper sizes (sized from the known configs, nothing downloaded) through a launch with a
    stand-in trainer: the 24-layer run is in the paper's 24-layer row with its Δ; a 12-layer run of 3 updates is
    marked as its own budget beside no paper number; the figure shows it and the cross-attention variant."""
    from analysis import plots
    from analysis.runs import RunStore
    from analysis.tables import build_table

    monkeypatch.chdir(tmp_path)

    def train(cell, out_dir, logger):
        score = {"L12-H768": 80.0, "L24-H1024": 90.0}[cell["size"]] + (1.0 if cell["train"]["steps"] == 3 else 0.0)
        score += 2.0 if cell.get("cross_attention_init") == "self_attention" else 0.0
        (Path(out_dir) / "metrics.json").write_text(json.dumps({"sari": score}))
        return {"sari": score, "exact": score / 2}

    monkeypatch.setattr(cell_job, "TRAIN_FN", train)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    paper_budget = {"steps": 300_000, "batch_size": 256}
    doc = {"name": "sizes", "output_root": str(tmp_path / "out"),
           "mlflow": {"tracking_uri": uri, "experiment": "sizes"},
           "defaults": {"data": {"variant": "full"}},
           "include": [
               {"task": "discofuse", "scheme": "bertShare", "checkpoints": {"bert": "bert-large-cased"},
                "train": paper_budget},
               {"task": "discofuse", "scheme": "bertShare", "checkpoints": {"bert": "bert-base-cased"},
                "train": {"steps": 3}},
               {"task": "discofuse", "scheme": "bert2bert", "cross_attention_init": "self_attention"}]}
    (tmp_path / "sizes.yaml").write_text(yaml.safe_dump(doc))
    cells = load_grid(tmp_path / "sizes.yaml").cells
    assert [c.size for c in cells] == ["L24-H1024", "L12-H768", "L12-H768"]
    assert cell_label(cells[0]).endswith("/bert=bert-large-cased/L24-H1024") and "L12" not in cell_label(cells[1])
    # hub cells keep the ids they had before cells had a size (the id hashes the size of local checkpoints only)
    assert compute_cell_id(cells[0]) == compute_cell_id(replace(cells[0], size=None))
    assert launch.main([str(tmp_path / "sizes.yaml"), "--executor", "debug"]) == 0

    store = RunStore(uri)
    assert sorted(store.runs["size"]) == ["base", "base, 3 steps", "large"]
    table = build_table(2, store, n_boot=50)
    sari = table.cells[table.cells.column == "sari_100"].set_index("row")
    large = sari.loc["bertShare (24L large)"]
    assert large["mean"] == pytest.approx(90.0) and large["paper"] == pytest.approx(89.9)
    assert large["diff"] == pytest.approx(0.1)
    short = sari.loc["bertShare (12L base, 3 steps: not the paper's budget)"]
    assert short["mean"] == pytest.approx(81.0) and math.isnan(short["paper"]) and math.isnan(short["diff"])
    assert math.isnan(sari.loc["bertShare", "mean"]) and sari.loc["bertShare", "paper"] == pytest.approx(89.2)
    variant = sari.loc["bert2bert: cross-attention init: self attention"]
    assert variant["mean"] == pytest.approx(82.0) and math.isnan(variant["paper"])
    figure = plots.task_bars({2: table}, "discofuse")
    ticks = {t.get_text() for ax in figure.axes for t in ax.get_xticklabels()}
    assert {"bertShare (24L large)", "bertShare (12L base, 3 steps: not the paper's budget)",
            "bert2bert: cross-attention init: self attention", "bert2bert"} <= ticks


def test_every_paper_cell_has_its_size_and_24_layer_wikisplit_stops_at_100k(tmp_path, monkeypatch):
    """paper.yaml: every cell is sized from the known configs (no download); the 24-layer WikiSplit cells stop where
    the paper stopped them (§4.2: about 100k steps, experiments.config.tasks' large_train_steps), the 12-layer ones at 300k."""
    from experiments.config.tasks import TASKS

    monkeypatch.chdir(tmp_path)
    cells = [to_dict(c) for c in load_grid(Path(__file__).resolve().parents[1] / "grids" / "paper.yaml",
                                           check_paths=False).cells]
    assert all(c["size"] for c in cells)
    wikisplit = {(c["scheme"], c["size"]): c["train"]["steps"] for c in cells if c["task"] == "wikisplit"}
    large = {key: steps for key, steps in wikisplit.items() if key[1] == "L24-H1024"}
    assert set(large) == {("bertShare", "L24-H1024"), ("robertaShare", "L24-H1024")}
    assert set(large.values()) == {TASKS["wikisplit"].large_train_steps} == {100_000}
    assert {steps for key, steps in wikisplit.items() if key[1] == "L12-H768"} == {TASKS["wikisplit"].train_steps}
    ablation = {c["size"] for c in cells if c["task"] == "discofuse" and c.get("init_layers")
                and set(c["init_layers"]) & {"first_k", "layers"}}
    assert ablation == {"L10-H1024"}  # §5's 10 of BERT-Large's layers: the size the paper reports them at


def test_runs_without_a_logged_size_are_sized_from_their_checkpoint_params(tmp_path):
    """Runs from before cells had a size (the CPU study's MiniLM, 300 updates): the analysis derives the size from the
    checkpoint params and appends a budget that is not the paper's, so none of them meets a paper number."""
    from analysis.schema import UNKNOWN_SIZE, run_fields

    minilm = tmp_path / "minilm"
    minilm.mkdir()
    (minilm / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384}))
    tags = {"task": "wikisplit", "scheme": "bert2bert", "role": "cell"}

    def size(**params):
        return run_fields("r", tags, params).size

    assert size(**{"checkpoints.bert": str(minilm), "train.steps": "300", "train.batch_size": "16"}) == "L6-H384"
    assert size(**{"checkpoints.bert": "bert-base-cased", "train.steps": "300", "train.batch_size": "16"}) == \
        "base, 300 steps, batch 16"
    assert size(**{"checkpoints.bert": "bert-base-cased", "train.steps": "300000", "train.batch_size": "256"}) == "base"
    assert size(**{"checkpoints.bert": "bert-large-cased", "train.steps": "100000"}) == "large"  # §4.2's 24L budget
    assert size(**{"checkpoints.bert": "bert-large-cased", "train.steps": "300000"}) == "large, 300000 steps"
    assert size(**{"checkpoints.bert": "nobody/not-cached-anywhere"}) == UNKNOWN_SIZE
    assert size() == "base"  # nothing logged says otherwise
    assert size(size="L24-H1024") == size(size="large") == "large"
