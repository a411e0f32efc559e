"""Grid files → cells: validation messages, resolution precedence, stable ids, the shipped grids.

Nothing here trains or touches MLflow; the launcher's side is tests/test_launch.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from bertgen.schemes import SCHEMES
from experiments.grid.identity import cell_label, compute_cell_id, identity_view
from experiments.config.cell import COSMETIC_KEYS, CellConfig, to_dict
from experiments.grid.load import load_grid, smoke_asset_paths
from experiments.grid.document import GridError

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "grids"
BASE = {"tasks": ["discofuse"], "schemes": ["bert2bert", "gpt"], "seeds": [1]}


def json_cells(grid) -> list[dict]:
    """The grid's cells in their JSON form (what cell.json holds), for assertions on it."""
    return [to_dict(c) for c in grid.cells]


def cell_id_of(cell: dict) -> str:
    """The id of a cell written in its JSON form (as cell.json holds it)."""
    return compute_cell_id(CellConfig.from_dict(cell))


def write_grid(tmp_path: Path, doc: dict | str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    text = doc if isinstance(doc, str) else yaml.safe_dump({"output_root": str(tmp_path / "out"), **doc})
    path.write_text(text)
    return path


def grid_error(tmp_path: Path, doc: dict | str, sets: tuple[str, ...] = ()) -> str:
    path = write_grid(tmp_path, doc)
    with pytest.raises(GridError) as info:
        load_grid(path, sets)
    message = str(info.value)
    assert "\n" not in message, "a grid error is one line"
    assert message.startswith(str(path.name)) or str(path) in message.split(":")[0], message
    return message


# -- validation messages ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("doc, expected", [
    ({**BASE, "schemes": ["bert2bret"]}, "schemes[0]: unknown scheme 'bert2bret' (did you mean 'bert2bert'?)"),
    ({**BASE, "tasks": ["discofuze"]}, "tasks[0]: unknown task 'discofuze' (did you mean 'discofuse'?)"),
    ({**BASE, "shemes": ["gpt"]}, "shemes: unknown key 'shemes' (did you mean 'schemes'?)"),
    ({**BASE, "defaults": {"train": {"stpes": 3}}}, "defaults.train.stpes: unknown key 'stpes' (did you mean 'steps'?)"),
    ({**BASE, "defaults": {"train": {"steps": 0}}}, "defaults.train.steps: expected an integer >= 1, got 0"),
    ({**BASE, "defaults": {"train": {"steps": 2.5}}}, "defaults.train.steps: expected an integer >= 1, got 2.5"),
    ({**BASE, "defaults": {"train": {"lr": "fast"}}}, "defaults.train.lr: expected a number > 0.0, got 'fast'"),
    ({**BASE, "defaults": {"train": {"bf16": "yes"}}}, "defaults.train.bf16: expected true, false or auto, got 'yes'"),
    ({**BASE, "defaults": {"train": {"schedule": "noan"}}}, "(did you mean 'noam'?)"),
    ({**BASE, "defaults": {"decode": {"length_penalty_style": "gmnt"}}}, "(did you mean 'gnmt'?)"),
    ({**BASE, "defaults": {"data_fraction": 0}}, "defaults.data_fraction: expected a number > 0.0 and <= 1.0, got 0"),
    ({**BASE, "defaults": {"model": {"num_hiden_layers": 2}}}, "(did you mean 'num_hidden_layers'?)"),
    ({**BASE, "defaults": {"model": {"hidden_dropout_prob": 1.5}}}, "expected a probability in [0, 1), got 1.5"),
    ({**BASE, "seeds": "one"}, "seeds: expected a non-empty list of integer seeds, got 'one'"),
    ({**BASE, "seeds": [1, 1]}, "seeds: expected distinct seeds"),
    ({**BASE, "sweep": {"data_fraction": [1.0, 2.0]}}, "sweep.data_fraction[1]: expected a number > 0.0 and <= 1.0"),
    ({**BASE, "sweep": {"train.lrr": [0.1]}}, "unknown cell field 'train.lrr' (did you mean 'train.lr'?)"),
    ({**BASE, "sweep": {"init_layers": [{"first_k": 0}]}}, "sweep.init_layers[0].first_k: expected an integer >= 1"),
    ({**BASE, "defaults": {"vocab": {"train": "wordpeice", "size": 100}}}, "(did you mean 'wordpiece'?)"),
    ({**BASE, "defaults": {"vocab": {"train": "wordpiece", "size": 4}}}, "defaults.vocab.size: expected an integer >= 16"),
    ({**BASE, "defaults": {"vocab": {"train": "wordpiece"}}}, "defaults.vocab: expected null or a mapping with train"),
    ({**BASE, "defaults": {"variant": "Transformer base"}}, "defaults.variant: expected a variant name of a-z, 0-9 and _"),
    ({**BASE, "defaults": {"train": {"freeze_warm_started_steps": 300000}}},
     "train.freeze_warm_started_steps: expected fewer than train.steps=300000 steps, got 300000"),
    ({**BASE, "sweep": {"init_layers": [{"layers": [3, 2]}]}}, "expected strictly increasing layer numbers"),
    ({**BASE, "sweep": {"init_layers": [{"frist_k": 2}]}}, "(did you mean 'first_k'?)"),
    ({**BASE, "sweep": {"init_layers": [{"without_embeddings": False}]}},
     "sweep.init_layers[0].without_embeddings: expected true, got False"),
    ({**BASE, "overrides": [{"match": {"scheme": "bertshare"}, "set": {}}]},
     "overrides[0].match.scheme: unknown scheme 'bertshare' (did you mean 'bertShare'?)"),
    ({**BASE, "overrides": [{"match": {"scheme": "gpt"}, "set": {"train": {"steps": -1}}}]},
     "overrides[0].set.train.steps: expected an integer >= 1"),
    ({**BASE, "exclude": [{"tsk": "discofuse"}]}, "exclude[0].tsk: unknown cell field 'tsk' (did you mean 'task'?)"),
    ({**BASE, "include": [{"task": "xsum", "scheme": "robertashare"}]}, "include[0].scheme"),
    ({**BASE, "checkpoints": {"bert": "./no/such/dir"}}, "checkpoints.bert: expected a checkpoint directory"),
    ({**BASE, "defaults": {"data": {"train": "/no/such/file.tsv"}}}, "defaults.data.train: expected an existing file"),
    ({**BASE, "executor": {"default": "slurn"}}, "executor.default: unknown executor 'slurn' (did you mean 'slurm'?)"),
    ({**BASE, "executor": {"slurm": {"gpus_per_node": "two"}}}, "executor.slurm.gpus_per_node: expected an integer"),
    ({"tasks": ["wmt14_en_de"], "schemes": ["bert2bert"]}, "expected train.steps for task wmt14_en_de"),
    ({"schemes": ["gpt"]}, "tasks: expected both tasks and schemes"),
    ({"description": "nothing"}, "expected cells"),
])
def test_invalid_grid_is_one_line_naming_file_key_and_expectation(tmp_path, doc, expected):
    message = grid_error(tmp_path, doc)
    assert expected in message


@pytest.mark.parametrize("key", ["partition", "account", "qos", "constraint"])
@pytest.mark.parametrize("value", ["gpu\n#SBATCH --wrap=evil", "gpu;rm -rf ~", "$(whoami)", "`id`", "gpu $HOME",
                                   "a'b", "a\\b", "${X}", "a b"])
def test_slurm_values_that_could_inject_shell_text_are_rejected(tmp_path, key, value):
    message = grid_error(tmp_path, {**BASE, "executor": {"slurm": {key: value}}})
    assert f"executor.slurm.{key}: expected plain text for an #SBATCH line" in message


def test_slurm_values_without_shell_text_are_accepted(tmp_path):
    grid = load_grid(write_grid(tmp_path, {**BASE, "executor": {"slurm": {
        "partition": "gpu-a100", "constraint": "a100&ib|h100", "account": "proj_123", "qos": "high"}}}))
    assert grid.executor["slurm"]["constraint"] == "a100&ib|h100"
    assert grid.executor["slurm"]["array_parallelism"] == 64  # the default fills what the grid leaves out


def test_yaml_syntax_error_names_the_line(tmp_path):
    assert "line 2: expected valid YAML" in grid_error(tmp_path, "tasks: [discofuse\nschemes: all\n")


def test_yaml_tags_are_refused_by_safe_load(tmp_path):
    message = grid_error(tmp_path, "tasks: !!python/object/apply:os.system ['true']\nschemes: all\n")
    assert "expected valid YAML" in message


def test_set_errors_name_the_flag(tmp_path):
    path = write_grid(tmp_path, BASE)
    with pytest.raises(GridError, match=r"--set train\.stepz: unknown cell field 'train\.stepz' \(did you mean"):
        load_grid(path, ["train.stepz=4"])
    with pytest.raises(GridError, match=r"\(--set executor\.slurm\.qos\): executor\.slurm\.qos: expected plain"):
        load_grid(path, ["executor.slurm.qos=a;b"])
    with pytest.raises(GridError, match="expected key=value"):
        load_grid(path, ["train.steps"])


# -- resolution -----------------------------------------------------------------------------------------------------
def test_matrix_sweep_include_exclude_and_precedence(tmp_path):
    doc = {
        "tasks": ["discofuse", "wikisplit"], "schemes": ["bert2bert", "bertShare", "gpt"], "seeds": [1, 2],
        "sweep": {"data_fraction": [1.0, 0.1], "train.lr": [0.05]},
        "defaults": {"train": {"steps": 100, "warmup_steps": 10}, "decode": {"num_beams": 2}},
        "exclude": [{"task": "wikisplit", "scheme": ["gpt", "bert2*"]}, {"seed": 2, "data_fraction": 0.1}],
        "overrides": [{"match": {"scheme": "bertShare"}, "set": {"train": {"lr": 0.01}}},
                      {"match": {"data_fraction": 0.1}, "set": {"train": {"steps": 50}}}],
        "include": [{"task": "xsum", "scheme": "bertShare", "seeds": [7], "checkpoints": {"bert": "bert-large-cased"},
                     "init_layers": {"first_k": 10}}],
    }
    grid = load_grid(write_grid(tmp_path, doc))
    cells = {(c["task"], c["scheme"], c["seed"], c["data_fraction"]): c for c in json_cells(grid)}
    # discofuse: 3 schemes x (seed 1: 2 fractions + seed 2: 1 fraction); wikisplit: bertShare only; plus xsum
    assert len(grid.cells) == 3 * 3 + 3 + 1
    assert ("wikisplit", "gpt", 1, 1.0) not in cells and ("wikisplit", "bert2bert", 1, 1.0) not in cells
    assert ("discofuse", "gpt", 2, 0.1) not in cells
    plain = cells[("discofuse", "gpt", 1, 1.0)]
    assert plain["train"]["steps"] == 100 and plain["train"]["lr"] == 0.05 and plain["decode"]["num_beams"] == 2
    assert plain["train"]["batch_size"] == 256  # the task's paper default survives a partial train block
    assert plain["decode"]["length_penalty"] == 0.6 and plain["decode"]["max_new_tokens"] == 128
    assert cells[("discofuse", "bertShare", 1, 1.0)]["train"]["lr"] == 0.01  # override beats the sweep value
    assert cells[("discofuse", "bert2bert", 1, 0.1)]["train"]["steps"] == 50
    big = cells[("xsum", "bertShare", 7, 1.0)]
    assert big["checkpoints"] == {"bert": "bert-large-cased", "roberta": None, "gpt2": None}
    assert big["init_layers"] == {"first_k": 10} and big["train"]["batch_size"] == 128
    # families a scheme does not read are null, so they cannot change its id
    assert plain["checkpoints"] == {"bert": None, "roberta": None, "gpt2": "gpt2"}
    assert all(c["output_root"] == str(tmp_path / "out") and c["grid"] == "g" for c in json_cells(grid))
    json.dumps(json_cells(grid))  # plain JSON, as train_cell receives it


def test_the_grid_hands_out_typed_cells_whose_json_form_reads_back_the_same(tmp_path):
    """Grid.cells are CellConfig with their ids, no JSON beside them; their JSON form (cell.json's) types back to the
    same cell, so the job trains what the launcher planned."""
    grid = load_grid(write_grid(tmp_path, {**BASE, "sweep": {"data_fraction": [1.0, 0.1]}}))
    assert len(grid.cells) == 4 and all(isinstance(c, CellConfig) for c in grid.cells)
    assert [c.cell_id for c in grid.cells] == [compute_cell_id(c) for c in grid.cells]
    assert [CellConfig.from_dict(c) for c in json_cells(grid)] == grid.cells
    assert not hasattr(grid, "configs")


def test_set_applies_cell_fields_last_and_edits_the_grid_otherwise(tmp_path):
    doc = {**BASE, "overrides": [{"match": {"scheme": "gpt"}, "set": {"train": {"steps": 7}}}]}
    grid = load_grid(write_grid(tmp_path, doc), ["train.steps=11", "decode.num_beams=3", "seeds=[4, 5]",
                                                 "mlflow.tracking_uri=http://mlflow.example:5000",
                                                 "executor.slurm.partition=big", "checkpoints.gpt2=gpt2-medium"])
    assert {c["seed"] for c in json_cells(grid)} == {4, 5}
    assert all(c["train"]["steps"] == 11 and c["decode"]["num_beams"] == 3 for c in json_cells(grid))
    assert {c["checkpoints"]["gpt2"] for c in json_cells(grid) if c["scheme"] == "gpt"} == {"gpt2-medium"}
    assert grid.tracking_uri == "http://mlflow.example:5000" and grid.executor["slurm"]["partition"] == "big"


def test_include_grids_keep_their_own_settings_and_dedupe_shared_cells(tmp_path):
    write_grid(tmp_path, {"tasks": ["discofuse"], "schemes": ["gpt", "bertShare"],
                          "defaults": {"train": {"steps": 9}}}, "a.yaml")
    write_grid(tmp_path, {"tasks": ["discofuse"], "schemes": ["gpt"], "defaults": {"train": {"steps": 9}},
                          "checkpoints": {"gpt2": "gpt2-medium"}}, "b.yaml")
    root = write_grid(tmp_path, {"include_grids": ["a.yaml", "b.yaml", "a.yaml"],
                                 "overrides": [{"match": {"scheme": "bertShare"}, "set": {"decode": {"num_beams": 8}}}]},
                      "root.yaml")
    grid = load_grid(root)
    assert grid.name == "root"
    assert sorted((c["scheme"], c["checkpoints"]["gpt2"] or "-") for c in json_cells(grid)) == [
        ("bertShare", "-"), ("gpt", "gpt2"), ("gpt", "gpt2-medium")]
    assert all(c["train"]["steps"] == 9 for c in json_cells(grid))
    assert [c["decode"]["num_beams"] for c in json_cells(grid) if c["scheme"] == "bertShare"] == [8]
    cyclic = write_grid(tmp_path, {"include_grids": ["cyclic.yaml"]}, "cyclic.yaml")
    with pytest.raises(GridError, match=r"include_grids\[0\]: expected no cycle"):
        load_grid(cyclic)


# -- ids ------------------------------------------------------------------------------------------------------------
def test_cell_id_is_pinned_for_a_fixed_config():
    """Changing the hash (or the canonical form) would orphan every finished run: this value must not move."""
    cell = {"cell_id": None, "grid": "x", "task": "discofuse", "scheme": "bertShare", "seed": 1,
            "checkpoints": {"bert": "bert-base-cased", "roberta": None, "gpt2": None},
            "data": {"train": None, "validation": None, "test": None}, "data_fraction": 1.0,
            "max_examples": {"train": None, "validation": None, "test": None}, "model": {}, "init_layers": None,
            "train": {"steps": 300000, "batch_size": 256, "grad_accum": 1, "lr": 0.05, "warmup_steps": 40000,
                      "schedule": "noam", "max_grad_norm": None, "bf16": True, "eval_every": 5000,
                      "checkpoint_every": 5000, "eval_examples": 1000, "num_workers": 2},
            "decode": {"num_beams": 4, "length_penalty": 0.6, "length_penalty_style": "gnmt", "max_new_tokens": 128},
            "output_root": "/somewhere"}
    # The training identity: decode is not part of it (another beam re-decodes the cell); train.select is. The value
    # moved once, when decoding left the identity (issue 10): "4e1bc7294bcf" before.
    by_hand = {k: v for k, v in cell.items() if k not in ("cell_id", "grid", "output_root", "decode")}
    by_hand["train"] = {**{k: v for k, v in cell["train"].items() if k not in ("num_workers", "checkpoint_every")},
                        "select": "last"}
    canonical = json.dumps(by_hand, sort_keys=True, separators=(",", ":"))
    assert cell_id_of(cell) == hashlib.sha256(canonical.encode()).hexdigest()[:12] == "b28ed45cd167"
    redecoded = {**cell, "decode": {**cell["decode"], "num_beams": 1, "length_penalty": 1.0}}
    assert cell_id_of(redecoded) == cell_id_of(cell)
    assert cell_id_of({**cell, "train": {**cell["train"], "select": "best_dev"}}) != cell_id_of(cell)
    moved = {**cell, "grid": "paper", "output_root": "/elsewhere", "cell_id": "abc",
             "train": {**cell["train"], "num_workers": 16, "checkpoint_every": 100}}
    assert cell_id_of(moved) == cell_id_of(cell)
    view = identity_view(CellConfig.from_dict(cell))
    assert "output_root" not in view and "num_workers" not in view["train"]
    assert set(COSMETIC_KEYS) == {"cell_id", "grid", "output_root", "train.num_workers", "train.checkpoint_every",
                                  "train.log_every", "train.dev_decode_examples", "variant"}
    for change in ({"seed": 2}, {"data_fraction": 0.1}, {"init_layers": {"first_k": 2}},
                   {"train": {**cell["train"], "lr": 0.01}}, {"checkpoints": {**cell["checkpoints"], "bert": "b"}}):
        assert cell_id_of({**cell, **change}) != cell_id_of(cell), change


def test_ids_are_stable_across_loads_paths_and_spelling(tmp_path, monkeypatch):
    doc = {**BASE, "sweep": {"data_fraction": [1, 0.1]}}  # 1 and 1.0 are the same cell
    first = load_grid(write_grid(tmp_path, doc))
    again = load_grid(write_grid(tmp_path, {**doc, "sweep": {"data_fraction": [1.0, 0.10]},
                                            "defaults": {"train": {"num_workers": 9}}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = load_grid(write_grid(elsewhere, doc))
    ids = [c["cell_id"] for c in json_cells(first)]
    assert len(set(ids)) == 4
    assert ids == [c["cell_id"] for c in json_cells(again)] == [c["cell_id"] for c in json_cells(moved)]
    changed = load_grid(write_grid(tmp_path, {**doc, "defaults": {"train": {"lr": 0.02}}}))
    assert not set(ids) & {c["cell_id"] for c in json_cells(changed)}


# -- shipped grids -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, count", [("fusion", 36), ("split", 12), ("translation", 20), ("summarization", 36),
                                         ("ablations", 16), ("paper", 149), ("smoke", 11)])
def test_shipped_grids_validate(name, count, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # loading writes nothing, wherever it runs
    # the DiscoFuse grids name data/discofuse/*_balanced.tsv, which python -m experiments.launch.prefetch puts there
    grid = load_grid(GRIDS / f"{name}.yaml", check_paths=name not in ("fusion", "ablations", "paper"))
    assert len(grid.cells) == count
    assert list(tmp_path.iterdir()) == []
    assert all(c["train"]["steps"] >= 1 for c in json_cells(grid))
    if name == "translation":
        assert {c["checkpoints"]["bert"] for c in json_cells(grid)} == {"bert-base-multilingual-cased", None}
        assert not {"robertaShare", "roberta2gpt"} & {c["scheme"] for c in json_cells(grid)}
    if name == "fusion":
        assert sorted({c["data_fraction"] for c in json_cells(grid)}) == [0.01, 0.1, 1.0]
    if name == "ablations":  # Table 6's "- embeddings from checkpoint" row, for both of its schemes
        noemb = [c for c in json_cells(grid) if c["init_layers"] == {"without_embeddings": True}]
        assert sorted(cell_label(c) for c in noemb) == ["discofuse/bertShare/seed1/init=noemb",
                                                        "discofuse/gpt/seed1/init=noemb"]
        # Table 6's SentencePiece rows: one 16k vocabulary setting, the second row frozen 100k then 300k steps
        spm = [c for c in json_cells(grid) if c.get("vocab")]
        assert sorted((c["scheme"], c["train"]["steps"], c["train"].get("freeze_warm_started_steps")) for c in spm) == [
            ("bertShare", 300_000, None), ("bertShare", 400_000, 100_000), ("gpt", 300_000, None),
            ("gpt", 400_000, 100_000)]
        assert {json.dumps(c["vocab"], sort_keys=True) for c in spm} == {'{"size": 16000, "train": "sentencepiece"}'}
        assert sorted(cell_label(c) for c in spm if c["scheme"] == "gpt") == [
            "discofuse/gpt/seed1/vocab=sentencepiece16000", "discofuse/gpt/seed1/vocab=sentencepiece16000/freeze=100000"]
        emb10 = [c["scheme"] for c in json_cells(grid) if c["init_layers"] == {"embeddings_only": True}
                 and c["data_fraction"] == 0.1]
        assert sorted(emb10) == ["bertShare", "gpt"]
    if name == "translation":  # Table 4's Transformer baselines: rnd2rnd with Transformer-base widths
        transformer = {(c["task"], c["variant"]): c for c in json_cells(grid) if c.get("variant")}
        assert set(transformer) == {(t, v) for t in ("wmt14_en_de", "wmt14_de_en")
                                    for v in ("transformer_wmt_vocab", "transformer_public_vocab")}
        six = transformer["wmt14_en_de", "transformer_wmt_vocab"]
        assert six["scheme"] == "rnd2rnd" and six["vocab"] == {"train": "wordpiece", "size": 32000}
        assert six["model"] == {"num_hidden_layers": 6, "hidden_size": 512, "num_attention_heads": 8,
                                "intermediate_size": 2048}
        assert "vocab" not in transformer["wmt14_en_de", "transformer_public_vocab"]
        assert cell_label(six).endswith("num_hidden_layers=6/L6-H512/vocab=wordpiece32000/variant=transformer_wmt_vocab")


def test_paper_grid_covers_every_cell_of_the_other_grids():
    # check_paths=False: the DiscoFuse grids name data/discofuse/*_balanced.tsv, which prefetch puts there
    paper = {c["cell_id"] for c in json_cells(load_grid(GRIDS / "paper.yaml", check_paths=False))}
    for name in ("fusion", "split", "translation", "summarization", "ablations", "gpt2_tuning"):
        assert {c["cell_id"] for c in json_cells(load_grid(GRIDS / f"{name}.yaml", check_paths=False))} <= paper, name


def test_gpt2_tuning_grid_sweeps_lr_warmup_and_optimizer(tmp_path, monkeypatch):
    """Section 5's GPT-2 tuning: 3 schemes x (Adam: 3 lr x 2 warmups + Adafactor: 3 lr x 2 warmups) on DiscoFuse;
    the default Adam cell is Table 2's (same id as in fusion.yaml), and Adafactor is in its cells' ids and labels."""
    from experiments.grid.identity import cell_label

    monkeypatch.chdir(tmp_path)
    grid = load_grid(GRIDS / "gpt2_tuning.yaml", check_paths=False)
    assert len(grid.cells) == 36 and len({c["cell_id"] for c in json_cells(grid)}) == 36
    assert {c["task"] for c in json_cells(grid)} == {"discofuse"} and {c["data_fraction"] for c in json_cells(grid)} == {1.0}
    settings = {(c["scheme"], c["train"].get("optimizer", "adam"), c["train"]["lr"], c["train"]["warmup_steps"])
                for c in json_cells(grid)}
    expected = {(scheme, optimizer, lr, warmup) for scheme in ("gpt", "rnd2gpt", "bert2gpt")
                for optimizer, lrs in (("adam", (0.01, 0.05, 0.25)), ("adafactor", (1.0, 5.0, 25.0)))
                for lr in lrs for warmup in (10_000, 40_000)}
    assert settings == expected
    for c in json_cells(grid):
        assert c["train"]["schedule"] == "noam" and ("optimizer" in c["train"]) == (cell_label(c).endswith("/opt=adafactor"))
        assert c["train"].get("optimizer") != "adam"  # the default is left out of the JSON form (and the id)
    fusion = {c["cell_id"] for c in json_cells(load_grid(GRIDS / "fusion.yaml", check_paths=False))}
    shared = [c for c in json_cells(grid) if c["cell_id"] in fusion]
    assert sorted(c["scheme"] for c in shared) == ["bert2gpt", "gpt", "rnd2gpt"]
    assert all("optimizer" not in c["train"] and (c["train"]["lr"], c["train"]["warmup_steps"]) == (0.05, 40_000)
               for c in shared)


def test_smoke_grid_uses_the_tiny_assets_without_building_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = load_grid(GRIDS / "smoke.yaml")
    paths = smoke_asset_paths(grid.smoke_root)
    assert grid.smoke_root == tmp_path / "outputs" / "smoke_assets" and not grid.smoke_root.exists()
    assert {c["scheme"] for c in json_cells(grid) if c["task"] == "synthetic_fusion"} == set(SCHEMES)
    for cell in json_cells(grid):
        for family, ref in cell["checkpoints"].items():
            assert ref in (None, paths["checkpoints"][family])
        kind = {"synthetic_fusion": "fusion", "synthetic_split": "split"}[cell["task"]]
        assert cell["data"]["test"] == {"path": paths["tasks"][kind]["test"],
                                        "columns": {"input": "source", "target": "target", "id": "id"}}
        assert cell["train"]["steps"] <= 1000 and cell["max_examples"]["test"] <= 200


def test_mini_wikisplit_grid_reads_shared_data_and_minilm(shared_dir, minilm_dir, monkeypatch):
    monkeypatch.chdir(REPO)  # its data paths are relative to the repository root (../shared)
    grid = load_grid(GRIDS / "mini_wikisplit.yaml")
    assert sorted(c["scheme"] for c in json_cells(grid)) == ["bert2bert", "bert2bert", "bert2rnd", "bertShare", "rnd2bert",
                                                       "rnd2rnd"]
    # Only warm decoders have a self-attention to copy: rnd2rnd and bert2rnd stay the paper's cells (no field),
    # like the bert2bert cell that keeps the paper's random cross-attention on purpose.
    assert sorted(c["scheme"] for c in json_cells(grid) if "cross_attention_init" not in c) == ["bert2bert", "bert2rnd",
                                                                                           "rnd2rnd"]
    assert {c.get("cross_attention_init") for c in json_cells(grid)} == {None, "self_attention"}
    for cell in json_cells(grid):
        assert Path(cell["checkpoints"]["bert"]).resolve() == minilm_dir.resolve()
        assert Path(cell["data"]["test"]).resolve() == (shared_dir / "data/wikisplit/validation.tsv").resolve()
    other = load_grid(GRIDS / "mini_wikisplit.yaml", [f"checkpoints.bert={minilm_dir}",
                                                      f"data.test={shared_dir / 'data/wikisplit/tune.tsv'}"])
    assert all(c["data"]["test"].endswith("tune.tsv") for c in json_cells(other))
    with pytest.raises(GridError, match=r"--set data\.train: expected an existing file"):
        load_grid(GRIDS / "mini_wikisplit.yaml", ["data.train=/no/such.tsv"])
