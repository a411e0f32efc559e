"""One cell of a study grid: its stable id, its directory, its label and the files it writes.

A cell's settings are :class:`experiments.config.cell.CellConfig` (one training run: one task, one scheme, one seed and
every setting needed to reproduce it), typed from the grid to the job. Only where it leaves the process is it JSON
(:func:`experiments.config.cell.to_dict`): ``cell.json`` and what :class:`experiments.launch.job.CellJob` hands the
training entry point, which :func:`experiments.recipes.train.train_cell` reads back typed.

The id hashes everything that can change what the cell trains; fields that only say where or how fast it runs
(``COSMETIC_KEYS``, marked ``cosmetic`` in experiments.config.cell) and how its test sets are decoded
(``DECODING_SECTIONS``: another beam re-decodes the trained cell, experiments.recipes.evaluate) are left out, so moving the output root or raising
``num_workers`` does not orphan finished runs, and the same cell reached from two grids (fusion.yaml and paper.yaml)
is one cell. Settings added later are left out of the JSON form while at their default (``omit_default``), so adding
one does not move any existing id.

"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bertgen.checkpoint import is_local_reference

from ..config.cell import COSMETIC_KEYS, DECODING_SECTIONS, CellConfig, TrainConfig, to_dict
from ..config.model_size import PAPER_SIZES

# The paper's base checkpoints: a cell label names a checkpoint only when it is another one.
_PAPER_CHECKPOINTS = to_dict(CellConfig.__dataclass_fields__["checkpoints"].default)

_PAPER_BASE_SIZE = next(name for name, size in PAPER_SIZES.items() if size == "base")  # L12-H768

# Files a cell writes in its directory (and its config, experiments.config.cell.CELL_CONFIG_FILE).
PREDICTIONS_FILE = "predictions.jsonl"
EXTRA_PREDICTIONS_GLOB = "predictions_*.jsonl"  # a task's extra test sets (experiments.recipes.build.predictions_file)
METRICS_FILE = "metrics.json"
TRACEBACK_FILE = "traceback.txt"
DONE_FILE = "cell_done.json"  # written once train_cell returned: a rerun only re-reports, it does not retrain

# Prefix of the final test metrics in MLflow: ``test_sari``, ``test_rouge1``, ``test_bleu`` ... Training curves keep
# the names train_cell gives them (``loss``, ``lr``, ``tokens_per_s``, ``dev_<metric>``). A task's extra test sets come
# back from train_cell as ``<split>_<metric>``, so they are logged as ``test_newstest2016_bleu_uncased``.
TEST_PREFIX = "test_"


def _strip(config: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(leaf, None)


def identity_view(cell: CellConfig) -> dict:
    """The part of a cell its id is computed from, its training identity: its JSON form without the cosmetic keys
    and the decoding settings.

    The model size (``size``, experiments.config.model_size) counts where a checkpoint is a local directory, whose name
    does not say what it holds: the same path re-pretrained at another depth is another cell. A hub id names its
    checkpoint and so its size already; leaving the size out there keeps the ids of hub cells as they were, and
    independent of whether the hub cache could tell the size at the time."""
    view = to_dict(cell)
    for dotted in (*COSMETIC_KEYS, *DECODING_SECTIONS):
        _strip(view, dotted)
    if not any(ref and is_local_reference(ref) for ref in view["checkpoints"].values()):
        view.pop("size", None)
    return view


def compute_cell_id(cell: CellConfig) -> str:
    """12 hex digits of sha256 over the canonical JSON of :func:`identity_view` (sorted keys, no whitespace)."""
    canonical = json.dumps(identity_view(cell), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def cell_label(cell: CellConfig | dict) -> str:
    """A short readable name: ``task/scheme/seedN`` plus whatever distinguishes sweep cells (data fraction, init).

    Read from the JSON form, so that the grid loader can name a cell whose document failed to type (its one-line
    refusals); a typed cell is written out first."""
    if isinstance(cell, CellConfig):
        cell = to_dict(cell)
    parts = [cell["task"], cell["scheme"], f"seed{cell['seed']}"]
    if cell.get("data_fraction", 1.0) != 1.0:
        parts.append(f"df{cell['data_fraction']:g}")
    init = cell.get("init_layers")
    if init:
        (kind, value), = init.items()
        if kind == "embeddings_only":
            parts.append("init=emb")
        elif kind == "without_embeddings":
            parts.append("init=noemb")
        elif kind == "first_k":
            parts.append(f"init=first{value}")
        else:
            parts.append("init=L" + ",".join(str(v) for v in value))
    if cell.get("cross_attention_init", CellConfig.cross_attention_init) != CellConfig.cross_attention_init:
        parts.append(f"xattn={cell['cross_attention_init']}")
    for family, ref in sorted((cell.get("checkpoints") or {}).items()):
        # a hub id other than the paper's base checkpoint (large, multilingual); local directories are not shown
        if ref and ref != _PAPER_CHECKPOINTS.get(family) and not is_local_reference(ref):
            parts.append(f"{family}={ref.rsplit('/', 1)[-1]}")
    if cell.get("model"):
        parts.append(",".join(f"{k}={v}" for k, v in sorted(cell["model"].items())))
    if (cell.get("train") or {}).get("optimizer", TrainConfig.optimizer) != TrainConfig.optimizer:  # §5 (Adafactor)
        parts.append(f"opt={cell['train']['optimizer']}")
    if cell.get("size") and cell["size"] != _PAPER_BASE_SIZE:  # 24 layers, a tiny or MiniLM model: say so
        parts.append(cell["size"])
    if cell.get("vocab"):  # a vocabulary the harness trains (Table 4's Transformer, Table 6's SentencePieces)
        parts.append(f"vocab={cell['vocab']['train']}{cell['vocab']['size']}")
    if (cell.get("train") or {}).get("freeze_warm_started_steps"):
        parts.append(f"freeze={cell['train']['freeze_warm_started_steps']}")
    if cell.get("variant"):
        parts.append(f"variant={cell['variant']}")
    return "/".join(parts)


def cell_dir(cell: CellConfig) -> Path:
    """Where a cell writes: ``<output_root>/cells/<task>/<scheme>/<cell_id>`` (the id alone is the key)."""
    return Path(cell.output_root) / "cells" / cell.task / cell.scheme / cell.cell_id
