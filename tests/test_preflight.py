"""The launch pre-flight checks the model a cell trains: one builder (experiments.recipes.build.build_model) makes it
for the pre-flight, training, evaluation and the compute plan, from the grid's typed cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bertgen.schemes
from experiments.recipes import build as cell_inputs
from experiments.grid.load import load_grid
from experiments.launch.preflight import Preflight
from integration_helpers import data_spec, quick_assets

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    return quick_assets(tmp_path_factory)


def _grid(assets: dict, root: Path, scheme: str, **defaults) -> Path:
    """A one-cell grid on the tiny smoke checkpoints and fusion task (JSON is YAML)."""
    doc = {"name": "preflight", "output_root": str(root / "out"),
           "mlflow": {"tracking_uri": None, "experiment": "preflight"},
           "checkpoints": dict(assets["checkpoints"]),
           "defaults": {"train": {"steps": 4, "batch_size": 4, "bf16": False},
                        "data": {split: data_spec(path) for split, path in assets["tasks"]["fusion"].items()},
                        **defaults},
           "tasks": ["discofuse"], "schemes": [scheme], "seeds": [1]}
    path = root / "grid.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("defaults", [{"cross_attention_init": "self_attention"},
                                      {"init_layers": {"first_k": 1}, "cross_attention_init": "self_attention"}],
                         ids=["cross_attention_init", "init_layers+cross_attention_init"])
def test_the_preflight_builds_the_model_the_cell_trains(assets, tmp_path, monkeypatch, defaults):
    """Every model built while the pre-flight checks a cell, and the one training builds from the same typed cell,
    have the same parameters (names and shapes) and the same warm start, cross-attention initialisation included
    (the pre-flight once planned without ``cross_attention_init``: it checked a model the cell did not train)."""
    grid = load_grid(_grid(assets, tmp_path, "bert2bert", **defaults))
    (typed,) = grid.cells
    assert typed.cross_attention_init == "self_attention"
    built: list[bertgen.schemes.Built] = []
    real_build = bertgen.schemes.build

    def recording_build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(bertgen.schemes, "build", recording_build)
    monkeypatch.setattr(cell_inputs, "build", recording_build)
    Preflight(grid).build(typed)
    assert built, "the pre-flight built no model"
    checked = built[:]
    trained_model, trained_spec, _, _ = cell_inputs.build_model(typed)
    shapes = {name: tuple(p.shape) for name, p in trained_model.named_parameters()}
    for model, spec in checked:
        assert spec.warm_start == trained_spec.warm_start
        assert spec.warm_start.cross_attention == "self_attention"
        assert {name: tuple(p.shape) for name, p in model.named_parameters()} == shapes
