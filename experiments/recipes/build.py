"""What a cell is built from: its model and tokenizers (:func:`build_model`, the one builder), its tokenised splits
(``experiments.data.batches``) and the batches each rank trains on. Used by :mod:`experiments.recipes.train`,
:mod:`experiments.recipes.evaluate`, the launch pre-flight and the compute plan."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import random
import torch

from bertgen.generation import Seq2SeqModel
from bertgen.schemes import WarmStart, build

from ..config.cell import CellConfig, DataSources, init_layers as check_init_layers
from ..config.model_size import built_size
from ..config.tasks import STANDARD_SPLITS
from ..data.batches import Seq2SeqCollator, column_array, tokenize_split
from ..data.sources import load_split
from ..data.vocabulary import ensure_vocabulary, split_texts
from ..grid.identity import PREDICTIONS_FILE
from .distributed import shard, split_micro_batches

VOCABULARY_DIR = "vocabulary"  # in a cell's folder: a copy of its trained vocabulary (cell setting vocab)


# -- settings --------------------------------------------------------------------------------------------------
def warm_start_from(init_layers: dict[str, Any] | None,
                    cross_attention: str = WarmStart.cross_attention) -> WarmStart:
    """The cell's ``init_layers`` (the paper's §5 notation, layers 1-based) and ``cross_attention_init`` as a
    ``bertgen.schemes.WarmStart``."""
    init_layers = check_init_layers(init_layers, "init_layers")
    if init_layers is None:
        return WarmStart(cross_attention=cross_attention)
    (kind, value), = init_layers.items()
    if kind == "embeddings_only":
        return WarmStart(embeddings=True, layers="none", cross_attention=cross_attention)
    if kind == "without_embeddings":  # Table 6's "- embeddings from checkpoint": every layer warm, word embeddings
        # random (positions and the embedding LayerNorm from the checkpoint: §5)
        return WarmStart(embeddings=False, layers="all", cross_attention=cross_attention)
    if kind == "first_k":
        return WarmStart(layers=value, cross_attention=cross_attention)
    return WarmStart(layers=tuple(layer - 1 for layer in value), cross_attention=cross_attention)


# -- model, tokenizers, data -----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cell: CellConfig, device: str | None = None, *, vocabulary: Path | None = None,
                sources: dict[str, Any] | None = None):
    """(model, scheme spec, input tokenizer, output tokenizer) of the cell: its scheme, checkpoints, size overrides,
    ``init_layers`` and ``cross_attention_init``, the one place a model is made from a cell (training, evaluation,
    the launch pre-flight and the compute plan), so what is checked is what trains.

    The tokenizers are the ones ``bertgen.schemes.plan`` read and checked against the model (one object when both
    sides share a vocabulary). ``device="meta"``: no weights read, for checks of shapes. ``vocabulary``: the directory
    of the cell's trained vocabulary (:func:`cell_vocabulary`), which a cell with ``vocab`` set must pass. A cell whose
    checkpoints no longer have the size its grid recorded is refused.

    ``sources``: family → what to read in place of the cell's checkpoint reference: a ``bertgen.schemes.Checkpoint``
    already read and checked (the pre-flight, before any vocabulary is trained) or a config.json dict (the compute
    plan: no weights, no tokenizers, so the tokenizers returned are None). The trained-vocabulary and size checks
    are for the job's own build, without ``sources``."""
    if sources is None and (cell.vocab is None) != (vocabulary is None):
        raise ValueError(f"cell vocab: {cell.vocab!r}, but a vocabulary directory was {'not ' * (vocabulary is None)}"
                         "given; a cell with vocab set is built with the vocabulary trained for it (cell_vocabulary)")
    own = {"vocabulary": vocabulary} if vocabulary is not None else {}
    built = build(cell.scheme, **{**asdict(cell.checkpoints), **(sources or {})},
                  warm_start=warm_start_from(cell.init_layers, cell.cross_attention_init), device=device, **own,
                  **cell.model)
    spec = built.spec
    if sources is not None:
        return built.model, spec, spec.inputs.tokenizer, spec.outputs.tokenizer
    if cell.size is not None and built_size(built.model) != cell.size:
        raise ValueError(f"cell size: the grid recorded {cell.size} (its id and its table row), the checkpoints now "
                         f"build {built_size(built.model)}; a checkpoint directory changed since the grid was "
                         "loaded: launch the grid again")
    if spec.inputs.tokenizer is None or spec.outputs.tokenizer is None:
        raise ValueError(f"cell checkpoints: scheme {cell.scheme} was built without tokenizer files beside its "
                         "checkpoints, so there is no tokenizer to read")
    return built.model, spec, spec.inputs.tokenizer, spec.outputs.tokenizer


def uncased(tokenizer: Any) -> bool:
    """Whether a tokenizer's outputs have no case (an uncased BERT vocabulary), so references are lower-cased before
    scoring. Probed by behaviour: it lower-cases what it reads (capitalised and lower-case text encode alike) and,
    where it can list its vocabulary, no entry but a special token has a capital letter. A vocabulary that writes
    case is cased even when its tokenizer lower-cases the input (the WMT bert2bert cards' BertTokenizer defaults)."""
    probe = ["The Cat", "the cat"]
    upper, lower = tokenizer(probe, max_length=None, padding=False, truncation=False, return_tensors=None)["input_ids"]
    return list(upper) == list(lower) and not writes_case(tokenizer)


def writes_case(tokenizer: Any) -> bool:
    """Whether some entry of the tokenizer's vocabulary, other than its special tokens and ``[...]`` / ``<...>``
    placeholders, has a capital letter; False when the tokenizer cannot list its vocabulary."""
    if not hasattr(tokenizer, "id_to_token") or not hasattr(tokenizer, "vocab_size"):
        return False
    special = set(getattr(tokenizer, "all_special_ids", ()))
    for index in range(tokenizer.vocab_size):
        token = tokenizer.id_to_token(index)
        if (index in special or not token or (token[0], token[-1]) in (("[", "]"), ("<", ">"))
                or token == token.lower()):
            continue
        return True
    return False


def length_limits(model: Seq2SeqModel, task) -> tuple[int, int]:
    """(max source tokens, max target tokens): the task's limits, cut to the positions the model has."""
    return model.fit_lengths(task.max_source_length, task.max_target_length)


def cache_dir(cell: CellConfig, out_dir: Path, kind: str = "tokenized") -> Path:
    """Where the cell's ``kind`` of cache goes (tokenised splits, trained vocabularies): ``<output_root>/cache/<kind>``,
    shared by every cell of the output root, else the cell's own folder."""
    root = cell.output_root
    if root:
        return Path(root) / "cache" / kind
    return out_dir / "cache" if kind == "tokenized" else out_dir / "cache" / kind


def cell_vocabulary(cell: CellConfig, task, out_dir: Path) -> tuple[Path, bool]:
    """(directory, trained now) of the vocabulary ``cell.vocab`` asks for, trained on the source and target texts of
    the cell's training split as the cell loads it (data_fraction and max_examples applied), or reused from the cache
    (``<output_root>/cache/vocab``; experiments.data.vocabulary) when one was trained on the same data with the same
    settings."""
    raw = load_split(task, "train", cell.data.train, seed=0, data_fraction=cell.data_fraction,
                     max_examples=cell.max_examples.train)
    identity = f"{task.name}:{raw._fingerprint}"
    return ensure_vocabulary(split_texts(raw), identity, dict(cell.vocab), cache_dir(cell, out_dir, "vocab"))


def trained_vocabulary_copy(cell: CellConfig, directory: Path) -> Path | None:
    """The copy of its trained vocabulary a trained cell keeps in its folder (what rebuilding its model reads), or
    None for a cell with the checkpoints' vocabularies."""
    return Path(directory) / VOCABULARY_DIR if cell.vocab is not None else None


def tokenize_pair(raw, input_tokenizer, output_tokenizer, max_source: int, max_target: int, cache_dir: Path):
    """``experiments.data.batches.tokenize_split`` with the source in the input vocabulary and the target in the output
    vocabulary (they differ for bert2gpt and roberta2gpt)."""
    tokenized, _ = tokenize_split(raw, input_tokenizer, max_source, max_target, cache_dir=cache_dir)
    if output_tokenizer is input_tokenizer:
        return tokenized
    targets, _ = tokenize_split(raw, output_tokenizer, max_source, max_target, cache_dir=cache_dir)
    target_columns = ["labels", "target_length", "target_truncated"]
    return datasets.concatenate_datasets(
        [tokenized.remove_columns(target_columns), targets.select_columns(target_columns)], axis=1)


def predictions_file(split: str) -> str:
    """``predictions.jsonl`` for the test split, ``predictions_<split>.jsonl`` for an extra test set (the names
    analysis.schema.predictions_artifact_candidates looks for)."""
    if split == "test":
        return PREDICTIONS_FILE
    stem, suffix = PREDICTIONS_FILE.rsplit(".", 1)
    return f"{stem}_{split}.{suffix}"


def extra_test_splits(data: DataSources, task) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(decoded, skipped): which of the task's extra test sets a cell (or an evaluation) with these data sources
    decodes, and which it skips.

    A set with its own ``data.<split>`` source is always decoded. Without one it comes from the hub when the cell's
    test split does; a cell whose test split is a local file skips it instead: such runs are often offline (smoke
    runs, ../shared data), and the hub's set would not match the local test data anyway.
    """
    sources = data.splits
    local_test = sources["test"] is not None
    decoded = tuple(s for s in task.extra_test_splits if sources.get(s) is not None or not local_test)
    return decoded, tuple(s for s in task.extra_test_splits if s not in decoded)


def example_cap(caps: Any, split: str) -> int | None:
    """A split's ``max_examples``: its own, else, for an extra test set, the test split's (grids cap ``test`` only);
    the same for a cell and an evaluation."""
    limit = getattr(caps, split, None)
    return caps.test if limit is None and split not in STANDARD_SPLITS else limit


def load_cell_data(cell: CellConfig, task, input_tokenizer, output_tokenizer, limits: tuple[int, int],
                   cache_dir: Path, splits=STANDARD_SPLITS) -> dict[str, tuple[Any, Any]]:
    """split → (raw dataset with id/source/target, tokenised dataset). ``data_fraction`` applies to train only,
    with a fixed subset seed, so every seed of a data-fraction cell sees the same subset (seeds vary training);
    caps by :func:`example_cap`."""
    out = {}
    for split in splits:
        raw = load_split(task, split, getattr(cell.data, split, None), seed=0,
                         data_fraction=cell.data_fraction if split == "train" else None,
                         max_examples=example_cap(cell.max_examples, split))
        out[split] = (raw, tokenize_pair(raw, input_tokenizer, output_tokenizer, *limits, cache_dir))
    return out


# -- batches ---------------------------------------------------------------------------------------------------
class RankBatches:
    """A DataLoader batch sampler: each global batch of the length-bucketing sampler, reduced to this rank's slice."""

    def __init__(self, sampler, rank: int, world_size: int):
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        for batch in self.sampler:
            yield shard(batch, self.rank, self.world_size)

    def __len__(self) -> int:
        return len(self.sampler)


class MicroBatchCollator:
    """One rank's slice of a global batch → ``grad_accum`` padded micro-batches."""

    def __init__(self, pad_token_id: int, micro_batches: int):
        self.collate = Seq2SeqCollator(pad_token_id)
        self.micro_batches = micro_batches

    def __call__(self, examples):
        return [self.collate(chunk) for chunk in split_micro_batches(list(examples), self.micro_batches)]


def lengths(tokenized) -> np.ndarray:
    """[examples, 2] source and target lengths, what the length-bucketing sampler sorts by."""
    return np.stack([column_array(tokenized, "source_length"), column_array(tokenized, "target_length")], axis=1)
