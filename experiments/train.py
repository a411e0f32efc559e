"""Training and testing one cell of a study grid: ``train_cell(cell, out_dir, logger) -> test metrics``.

What a cell does, in order:

1. builds its scheme (``bertgen.schemes.build``) from the cell's checkpoints, size overrides and ``init_layers``,
   and the tokenizers of its input and output vocabularies;
2. loads and tokenises its splits (``experiments.data``; cached), with lengths capped to what the model can read;
3. trains with Adam and the paper's schedule (``experiments.optim``): each update sees ``train.batch_size``
   examples, split over the ranks of a distributed job and over ``train.grad_accum`` micro-batches per rank; the
   loss is the mean over the target tokens of the whole update; bf16 autocast and gradient clipping on request;
4. every ``eval_every`` steps computes the teacher-forced dev loss on ``eval_examples`` validation examples and
   keeps the best weights (``checkpoints/best``); every ``checkpoint_every`` steps writes ``checkpoints/last``
   with everything a resumed run needs to continue bit for bit (see ``experiments.checkpointing``);
5. decodes the test split with the best weights by beam search (batched, longest first, spread over the ranks),
   writes ``predictions.jsonl`` (id, source, reference, prediction) and ``metrics.json``, and returns the metrics;
6. then decodes the task's extra test sets (``Task.extra_test_splits``, e.g. WMT's ``newstest2016``) the same way,
   with the test split's ``max_examples`` cap unless a set has its own, into ``predictions_<split>.jsonl``; their
   scores join the returned metrics as ``<split>_<metric>``, so the job logs ``test_<split>_<metric>``. A cell whose
   test split is local and that names no file for an extra set skips that set with a warning (see
   :func:`extra_test_splits`).

A cell whose ``checkpoints/last`` exists resumes from it: same data order (sampler epoch and batches consumed), same
optimizer moments, learning rate and random states, so its final weights equal an uninterrupted run's.
Only rank 0 logs and writes files. A NaN or infinite loss stops the cell with a FloatingPointError naming the step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpointing
from .distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    shard,
    split_micro_batches,
    wrap_model,
)
from .optim import build_optimizer, schedule_from_config
from .tasks import STANDARD_SPLITS

log = logging.getLogger("experiments.train")

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
LAST = "last"
BEST = "best"


# -- settings --------------------------------------------------------------------------------------------------
def _require(condition: bool, field: str, expected: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"cell {field}: expected {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    grad_accum: int = 1
    lr: float = 0.05
    warmup_steps: int = 40_000
    schedule: str = "noam"
    max_grad_norm: float | None = None
    bf16: bool = False
    eval_every: int | None = None
    checkpoint_every: int | None = None
    eval_examples: int | None = 1000
    num_workers: int = 0
    log_every: int | None = None

    @classmethod
    def from_cell(cls, train: dict[str, Any]) -> "TrainSettings":
        if not isinstance(train, dict):
            raise ValueError(f"cell train: expected a mapping, got {type(train).__name__}")
        values = {k: train[k] for k in cls.__dataclass_fields__ if k in train and train[k] is not None}
        for key in ("steps", "batch_size"):
            _require(_is_int(values.get(key)) and values[key] > 0, f"train.{key}", "a positive integer",
                     train.get(key))
        for key in ("grad_accum", "eval_every", "checkpoint_every", "eval_examples", "log_every"):
            if key in values:
                _require(_is_int(values[key]) and values[key] >= (1 if key == "grad_accum" else 0),
                         f"train.{key}", "a positive integer" if key == "grad_accum" else "an integer >= 0",
                         values[key])
        if "num_workers" in values:
            _require(_is_int(values["num_workers"]) and values["num_workers"] >= 0, "train.num_workers",
                     "an integer >= 0", values["num_workers"])
        if "max_grad_norm" in values:
            _require(isinstance(values["max_grad_norm"], (int, float)) and values["max_grad_norm"] > 0,
                     "train.max_grad_norm", "a positive number or null", values["max_grad_norm"])
        if "bf16" in values:
            _require(isinstance(values["bf16"], bool), "train.bf16", "true or false", values["bf16"])
        settings = cls(**values)
        _require(settings.batch_size >= settings.grad_accum, "train.batch_size",
                 f"at least train.grad_accum={settings.grad_accum} examples", settings.batch_size)
        return settings


@dataclass(frozen=True)
class DecodeSettings:
    num_beams: int = 4
    length_penalty: float = 0.6
    length_penalty_style: str = "gnmt"
    max_new_tokens: int | None = None
    batch_size: int | None = None

    @classmethod
    def from_cell(cls, decode: dict[str, Any] | None) -> "DecodeSettings":
        decode = decode or {}
        values = {k: decode[k] for k in cls.__dataclass_fields__ if decode.get(k) is not None}
        settings = cls(**values)
        _require(_is_int(settings.num_beams) and settings.num_beams >= 1, "decode.num_beams", "an integer >= 1",
                 settings.num_beams)
        _require(settings.max_new_tokens is None or (_is_int(settings.max_new_tokens) and settings.max_new_tokens >= 1),
                 "decode.max_new_tokens", "a positive integer or null", settings.max_new_tokens)
        return settings


def warm_start_from(init_layers: dict[str, Any] | None):
    """The cell's ``init_layers`` (the paper's §5 notation, layers 1-based) as a ``bertgen.schemes.WarmStart``."""
    from bertgen.schemes import WarmStart

    if init_layers is None:
        return WarmStart()
    if not isinstance(init_layers, dict) or len(init_layers) != 1:
        raise ValueError(f"cell init_layers: expected null or one of {{embeddings_only: true}}, {{first_k: k}}, "
                         f"{{layers: [...]}}, got {init_layers!r}")
    (kind, value), = init_layers.items()
    if kind == "embeddings_only" and value is True:
        return WarmStart(embeddings=True, layers="none")
    if kind == "first_k" and _is_int(value) and value > 0:
        return WarmStart(layers=value)
    if kind == "layers" and isinstance(value, list) and value and all(_is_int(v) and v >= 1 for v in value):
        return WarmStart(layers=tuple(v - 1 for v in value))
    raise ValueError(f"cell init_layers: {kind}: {value!r} is not valid (embeddings_only: true, first_k: a positive "
                     "integer, layers: a list of 1-based layer numbers)")


# -- model, tokenizers, data -----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_cell_model(cell: dict[str, Any]):
    """(model, scheme spec, input tokenizer, output tokenizer) for the cell's scheme and checkpoints."""
    from bertgen.schemes import build
    from bertgen.tokenization import load_tokenizer

    checkpoints = cell.get("checkpoints") or {}
    built = build(cell["scheme"], bert=checkpoints.get("bert"), roberta=checkpoints.get("roberta"),
                  gpt2=checkpoints.get("gpt2"), warm_start=warm_start_from(cell.get("init_layers")),
                  **(cell.get("model") or {}))
    spec = built.spec
    if spec.inputs.source is None or spec.outputs.source is None:
        raise ValueError(f"cell checkpoints: scheme {cell['scheme']} was built without checkpoint directories, so "
                         "there is no tokenizer to read")
    input_tokenizer = load_tokenizer(spec.inputs.source, kind=spec.inputs.vocabulary)
    if (spec.outputs.source, spec.outputs.vocabulary) == (spec.inputs.source, spec.inputs.vocabulary):
        output_tokenizer = input_tokenizer
    else:
        output_tokenizer = load_tokenizer(spec.outputs.source, kind=spec.outputs.vocabulary)
    for side, tokenizer, ids in (("input", input_tokenizer, spec.inputs), ("output", output_tokenizer, spec.outputs)):
        if tokenizer.eos_token_id != ids.eos_token_id or tokenizer.pad_token_id != ids.pad_token_id:
            raise ValueError(f"{ids.source}: the {side} tokenizer's eos/pad ids ({tokenizer.eos_token_id}, "
                             f"{tokenizer.pad_token_id}) differ from the model's ({ids.eos_token_id}, "
                             f"{ids.pad_token_id})")
    return built.model, spec, input_tokenizer, output_tokenizer


def length_limits(model: nn.Module, task) -> tuple[int, int]:
    """(max source tokens, max target tokens): the task's limits, cut to the positions the model has.

    A decoder reads ``[start] + labels[:-1]``, so targets may use every decoder position. The decoder-only prefix LM
    reads source and target in one sequence; when both limits do not fit they share it in proportion.
    """
    from bertgen.modeling_gpt2 import GPT2PrefixLM

    src, tgt = task.max_source_length, task.max_target_length
    if isinstance(model, GPT2PrefixLM):
        room = model.config.n_positions
        if src + tgt > room:
            src = max(2, room * src // (src + tgt))
            tgt = room - src
        return src, tgt
    enc, dec = model.config.encoder, model.config.decoder
    enc_room = enc.max_position_embeddings - getattr(enc, "position_offset", 0)
    dec_room = getattr(dec, "n_positions", None) or dec.max_position_embeddings - getattr(dec, "position_offset", 0)
    return min(src, enc_room), min(tgt, dec_room)


def _cache_dir(cell: dict[str, Any], out_dir: Path) -> Path:
    root = cell.get("output_root")
    return (Path(root) / "cache" / "tokenized") if root else (out_dir / "cache")


def tokenize_pair(raw, input_tokenizer, output_tokenizer, max_source: int, max_target: int, cache_dir: Path):
    """``experiments.data.tokenize_split`` with the source in the input vocabulary and the target in the output
    vocabulary (they differ for bert2gpt and roberta2gpt)."""
    from .data import tokenize_split

    tokenized, _ = tokenize_split(raw, input_tokenizer, max_source, max_target, cache_dir=cache_dir)
    if output_tokenizer is input_tokenizer:
        return tokenized
    import datasets

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


def extra_test_splits(cell: dict[str, Any], task) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(decoded, skipped): which of the task's extra test sets the cell decodes, and which it skips.

    A set with its own ``data.<split>`` source is always decoded. Without one it comes from the hub when the cell's
    test split does; a cell whose test split is a local file skips it instead: such runs are often offline (smoke
    runs, ../shared data), and the hub's set would not match the local test data anyway.
    """
    data = cell.get("data") or {}
    local_test = data.get("test") is not None
    decoded = tuple(s for s in task.extra_test_splits if data.get(s) is not None or not local_test)
    return decoded, tuple(s for s in task.extra_test_splits if s not in decoded)


def load_cell_data(cell: dict[str, Any], task, input_tokenizer, output_tokenizer, limits: tuple[int, int],
                   cache_dir: Path, splits=STANDARD_SPLITS) -> dict[str, tuple[Any, Any]]:
    """split → (raw dataset with id/source/target, tokenised dataset). ``data_fraction`` applies to train only,
    with a fixed subset seed, so every seed of a data-fraction cell sees the same subset (seeds vary training). An
    extra test set without a ``max_examples`` entry of its own takes the test split's cap (grids cap ``test`` only)."""
    from .data import load_split

    data = cell.get("data") or {}
    max_examples = cell.get("max_examples") or {}
    out = {}
    for split in splits:
        limit = max_examples.get(split)
        if limit is None and split not in STANDARD_SPLITS:
            limit = max_examples.get("test")
        raw = load_split(task, split, data.get(split), seed=0,
                         data_fraction=cell.get("data_fraction") if split == "train" else None,
                         max_examples=limit)
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
        from .data import Seq2SeqCollator

        self.collate = Seq2SeqCollator(pad_token_id)
        self.micro_batches = micro_batches

    def __call__(self, examples):
        return [self.collate(chunk) for chunk in split_micro_batches(list(examples), self.micro_batches)]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")}


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=5.0, dynamic_ncols=True, file=sys.stderr)


# -- the trainer -----------------------------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class CellTrainer:
    def __init__(self, cell: dict[str, Any], out_dir: Path, logger: Any, ctx: DistributedContext):
        from .tasks import get_task

        self.cell = cell
        self.out_dir = Path(out_dir)
        self.logger = logger
        self.ctx = ctx
        self.cell_id = cell.get("cell_id", "?")
        self.train_settings = TrainSettings.from_cell(cell.get("train"))
        self.decode_settings = DecodeSettings.from_cell(cell.get("decode"))
        _require(_is_int(cell.get("seed")), "seed", "an integer", cell.get("seed"))
        self.seed = cell["seed"]
        self.task = get_task(cell["task"])

        seed_everything(self.seed)
        model, self.spec, self.input_tokenizer, self.output_tokenizer = build_cell_model(cell)
        self.model = model.to(ctx.device)
        self.limits = length_limits(self.model, self.task)
        self.extra_test_splits, self.skipped_test_splits = extra_test_splits(cell, self.task)
        for split in self.skipped_test_splits if ctx.is_main else ():
            log.warning("cell %s: data.%s: task %s's extra test set %s has no local source while data.test is a local "
                        "file; skipping it (no test_%s_* metrics)", self.cell_id, split, self.task.name, split, split)
        # Rank 0 downloads and tokenises first; the others then read its cache instead of racing to write it.
        if not ctx.is_main:
            barrier(ctx)
        self.data = load_cell_data(cell, self.task, self.input_tokenizer, self.output_tokenizer, self.limits,
                                   _cache_dir(cell, self.out_dir), splits=(*STANDARD_SPLITS, *self.extra_test_splits))
        if ctx.is_main:
            barrier(ctx)
        self.hidden_size = self._hidden_size()
        self.optimizer = build_optimizer(self.model.parameters())
        self.schedule = schedule_from_config(self.optimizer, cell["train"], self.hidden_size)
        self.ddp_model = wrap_model(self.model, ctx)
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_dev_loss = math.inf
        self.best_step = -1
        self.train_seconds = 0.0
        self._saving = False
        self._in_update = False
        self._step_start_snapshot: tuple[dict[str, Any], int, int] | None = None

        if self.world_batch_too_small():
            raise ValueError(f"cell train.batch_size: {self.train_settings.batch_size} examples cannot be split over "
                             f"{ctx.world_size} ranks x {self.train_settings.grad_accum} micro-batches")
        self.sampler = self._train_sampler()
        self.loader = self._train_loader()

    # -- setup helpers -----------------------------------------------------------------------------------------
    def _hidden_size(self) -> int:
        config = self.model.config
        decoder = getattr(config, "decoder", None) or config
        return decoder.hidden_size

    def world_batch_too_small(self) -> bool:
        return self.train_settings.batch_size < self.ctx.world_size * self.train_settings.grad_accum

    def _lengths(self, tokenized) -> np.ndarray:
        from .data import column_array

        return np.stack([column_array(tokenized, "source_length"), column_array(tokenized, "target_length")], axis=1)

    def _train_sampler(self):
        from .data import LengthBucketBatchSampler

        tokenized = self.data["train"][1]
        size = self.train_settings.batch_size
        # Full batches only (when there are enough examples), so every rank gets a slice of every update.
        sampler = LengthBucketBatchSampler(self._lengths(tokenized), size, seed=self.seed, shuffle=True,
                                           drop_last=len(tokenized) >= size)
        if not sampler.batches(0):
            raise ValueError(f"train split: {len(tokenized)} examples make no batch of {size}")
        return sampler

    def _train_loader(self):
        from torch.utils.data import DataLoader

        rows = self.data["train"][1].select_columns(["id", "input_ids", "labels"])
        # The loader's own generator (not the global one) seeds its workers, so creating a loader on resume does not
        # shift the random stream that dropout draws from.
        return DataLoader(rows, batch_sampler=RankBatches(self.sampler, self.ctx.rank, self.ctx.world_size),
                          collate_fn=MicroBatchCollator(self.spec.inputs.pad_token_id, self.train_settings.grad_accum),
                          num_workers=self.train_settings.num_workers,
                          generator=torch.Generator().manual_seed(self.seed),
                          pin_memory=self.ctx.device.type == "cuda")

    # -- checkpoints -------------------------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR

    def trainer_state(self, step: int, epoch: int, batches: int) -> dict[str, Any]:
        return {
            "cell_id": self.cell_id, "step": step, "epoch": epoch, "batches_in_epoch": batches,
            "schedule": self.schedule.state_dict(), "best_dev_loss": self.best_dev_loss if math.isfinite(
                self.best_dev_loss) else None, "best_step": self.best_step, "train_seconds": self.train_seconds,
            "world_size": self.ctx.world_size,
        }

    def save_last(self) -> None:
        """Every rank's RNG state goes into the checkpoint; rank 0 writes it."""
        rng = all_gather_objects(checkpointing.capture_rng_state(), self.ctx)
        if self.ctx.is_main:
            self._saving = True
            try:
                checkpointing.save_checkpoint(self.checkpoint_root / LAST, self.model, self.optimizer,
                                              self.trainer_state(self.step, self.epoch, self.batches_in_epoch), rng)
            finally:
                self._saving = False
        barrier(self.ctx)

    def save_on_preemption(self) -> None:
        """Called by the job (rank 0, in a signal handler) before a requeue: write the state as of the start of the
        running step — weights and optimizer do not change until the update, and the RNG and data position were
        snapshotted then. Skipped during the update itself or while another save runs."""
        if self._in_update or self._saving or self._step_start_snapshot is None:
            return
        rng, epoch, batches = self._step_start_snapshot
        self._saving = True
        try:
            checkpointing.save_checkpoint(self.checkpoint_root / LAST, self.model, self.optimizer,
                                          self.trainer_state(self.step, epoch, batches), [rng])
        finally:
            self._saving = False

    def resume(self) -> dict[str, Any] | None:
        """Load ``checkpoints/last`` if there is one; returns this rank's RNG state to restore before training."""
        found = checkpointing.find_checkpoint(self.checkpoint_root / LAST)
        if found is None:
            return None
        state, rng = checkpointing.load_checkpoint(found, self.model, self.optimizer, rank=self.ctx.rank)
        if state.get("cell_id") not in (None, self.cell_id):
            raise ValueError(f"{found}: checkpoint of cell {state.get('cell_id')}, not of this cell {self.cell_id}")
        self.schedule.load_state_dict(state["schedule"])
        self.step, self.epoch, self.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]
        self.best_dev_loss = state["best_dev_loss"] if state.get("best_dev_loss") is not None else math.inf
        self.best_step = state.get("best_step", -1)
        self.train_seconds = state.get("train_seconds", 0.0)
        if state.get("world_size", 1) != self.ctx.world_size and self.ctx.is_main:
            log.warning("%s: written by %s ranks, resumed on %s; the data order is the same, random streams are not",
                        found, state.get("world_size"), self.ctx.world_size)
        log.info("resumed cell %s from %s at step %d", self.cell_id, found, self.step)
        if rng is None:  # e.g. a preemption save holds rank 0's state only
            torch.manual_seed(hash((self.seed, self.ctx.rank, self.step)) % 2**63)
        return rng

    # -- training ----------------------------------------------------------------------------------------------
    def _micro_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with _autocast(self.ctx.device, self.train_settings.bf16):
            out = self.ddp_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 labels=batch["labels"], return_logits=False)
        return out.loss.float()

    def train_step(self, micro_batches: list[dict[str, Any]]) -> tuple[float, float, int]:
        """One update on this rank's micro-batches; returns (global mean token loss, grad norm, global tokens)."""
        settings = self.train_settings
        batches = [_to_device(b, self.ctx.device) for b in micro_batches]
        local_tokens = [int(b["labels"].ne(-100).sum()) for b in batches]
        global_tokens = all_reduce_sum(sum(local_tokens), self.ctx)
        if global_tokens == 0:
            raise ValueError(f"step {self.step + 1}: a training batch has no target tokens")
        # DDP averages gradients over ranks; scaling by world/global_tokens turns that into the sum over all
        # target tokens of the update divided by their number, whatever their split over ranks and micro-batches.
        scale = self.ctx.world_size / global_tokens
        loss_sum = 0.0
        for i, (batch, tokens) in enumerate(zip(batches, local_tokens)):
            last = i == len(batches) - 1
            sync = nullcontext() if last or not self.ctx.enabled else self.ddp_model.no_sync()
            with sync:
                loss = self._micro_loss(batch) * tokens
                (loss * scale).backward()
            loss_sum += loss.item()
        mean_loss = all_reduce_sum(loss_sum, self.ctx) / global_tokens
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(
                f"cell {self.cell_id}: training loss is {mean_loss} at step {self.step + 1} (NaN/inf); lower "
                f"train.lr, set train.max_grad_norm or turn off train.bf16")
        params = [p for p in self.model.parameters() if p.grad is not None]
        if settings.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"cell {self.cell_id}: gradient norm is {grad_norm} at step {self.step + 1}; "
                                     "lower train.lr or turn off train.bf16")
        # From here until the next step's snapshot the in-memory state matches no step boundary that a preemption
        # save could record; the training loop clears the flag once the counters are updated.
        self._in_update = True
        self._step_start_snapshot = None
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm, int(global_tokens)

    @torch.no_grad()
    def dev_loss(self) -> float:
        """Teacher-forced mean token loss on the first ``eval_examples`` validation examples (spread over ranks)."""
        from .data import LengthBucketBatchSampler, Seq2SeqCollator

        tokenized = self.data["validation"][1]
        limit = self.train_settings.eval_examples
        if limit:
            tokenized = tokenized.select(range(min(limit, len(tokenized))))
        size = max(1, self.train_settings.batch_size // (self.train_settings.grad_accum * self.ctx.world_size))
        sampler = LengthBucketBatchSampler(self._lengths(tokenized), size, shuffle=False)
        batches = sampler.batches(0)[self.ctx.rank::self.ctx.world_size]
        collate = Seq2SeqCollator(self.spec.inputs.pad_token_id)
        rows = tokenized.select_columns(["id", "input_ids", "labels"])
        self.model.eval()
        loss_sum, tokens = 0.0, 0
        for indices in batches:
            batch = _to_device(collate([rows[i] for i in indices]), self.ctx.device)
            with _autocast(self.ctx.device, self.train_settings.bf16):
                out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 labels=batch["labels"], return_logits=False)
            count = int(batch["labels"].ne(-100).sum())
            loss_sum += float(out.loss) * count
            tokens += count
        self.model.train()
        total = all_reduce_sum(tokens, self.ctx)
        return all_reduce_sum(loss_sum, self.ctx) / max(total, 1)

    def evaluate_and_keep_best(self) -> None:
        loss = self.dev_loss()
        if self.ctx.is_main:
            self.logger.log_metrics({"dev_loss": loss}, step=self.step)
        if loss < self.best_dev_loss:
            self.best_dev_loss, self.best_step = loss, self.step
            if self.ctx.is_main:
                checkpointing.save_checkpoint(self.checkpoint_root / BEST, self.model, None,
                                              self.trainer_state(self.step, self.epoch, self.batches_in_epoch))
            barrier(self.ctx)

    def train(self) -> None:
        settings = self.train_settings
        total = settings.steps
        log_every = settings.log_every or max(1, min(50, (settings.eval_every or total) // 5))
        rng = self.resume()
        if rng is not None:
            checkpointing.restore_rng_state(rng)
        elif self.step == 0 and self.ctx.rank > 0:
            # Same initial weights on every rank (DDP also broadcasts rank 0's), different dropout masks.
            torch.manual_seed(self.seed * 1000 + self.ctx.rank)
        if self.step >= total:
            return
        self.model.train()
        progress = _progress(total, f"train {self.cell_id}", self.ctx.is_main)
        progress.update(self.step)
        window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
        iterator = None
        started = time.perf_counter() - self.train_seconds
        while self.step < total:
            if iterator is None:
                self.sampler.set_position(self.epoch, self.batches_in_epoch)
                iterator = iter(self.loader)
            self._step_start_snapshot = (checkpointing.capture_rng_state() if self.ctx.is_main else None,
                                         self.epoch, self.batches_in_epoch)
            self._in_update = False
            try:
                micro_batches = next(iterator)
            except StopIteration:
                self.epoch, self.batches_in_epoch, iterator = self.epoch + 1, 0, None
                continue
            loss, grad_norm, tokens = self.train_step(micro_batches)
            self.step += 1
            self.batches_in_epoch += 1
            progress.update(1)
            window_loss += loss * tokens
            window_tokens += tokens
            if self.ctx.is_main and (self.step % log_every == 0 or self.step == total):
                elapsed = time.perf_counter() - window_start
                self.logger.log_metrics({
                    "loss": window_loss / window_tokens, "lr": self.optimizer.param_groups[0]["lr"],
                    "grad_norm": grad_norm, "tokens_per_s": window_tokens / max(elapsed, 1e-9), "epoch": self.epoch,
                }, step=self.step)
                progress.set_postfix(loss=f"{window_loss / window_tokens:.3f}")
                window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
            self.train_seconds = time.perf_counter() - started
            if (settings.eval_every and self.step % settings.eval_every == 0) or self.step == total:
                self.evaluate_and_keep_best()
            if (settings.checkpoint_every and self.step % settings.checkpoint_every == 0) or self.step == total:
                self.save_last()
        self._step_start_snapshot = None
        self._in_update = False
        progress.close()

    # -- testing -----------------------------------------------------------------------------------------------
    def load_best(self) -> None:
        found = checkpointing.find_checkpoint(self.checkpoint_root / BEST)
        if found is not None:
            checkpointing.load_model_weights(found, self.model)

    def _max_new_tokens(self, input_width: int) -> int:
        from bertgen.modeling_gpt2 import GPT2PrefixLM

        wanted = self.decode_settings.max_new_tokens or self.limits[1]
        if isinstance(self.model, GPT2PrefixLM):
            return max(1, min(wanted, self.model.config.n_positions - input_width))
        return min(wanted, self.limits[1])

    @torch.no_grad()
    def decode_split(self, split: str = "test") -> list[str]:
        """Beam-search predictions for every example of ``split``, in dataset order. Batches run longest first;
        rank r decodes batches r, r + world, … and rank 0 gathers them all."""
        from .data import LengthBucketBatchSampler, Seq2SeqCollator

        decode = self.decode_settings
        raw, tokenized = self.data[split]
        size = decode.batch_size or max(1, self.train_settings.batch_size // (
            self.train_settings.grad_accum * self.ctx.world_size))
        sampler = LengthBucketBatchSampler(self._lengths(tokenized), size, shuffle=False)
        batches = sampler.batches(0)[self.ctx.rank::self.ctx.world_size]
        collate = Seq2SeqCollator(self.spec.inputs.pad_token_id)
        rows = tokenized.select_columns(["input_ids"])
        self.model.eval()
        mine: list[tuple[int, str]] = []
        progress = _progress(len(batches), f"decode {self.cell_id}", self.ctx.is_main)
        for indices in batches:
            batch = collate([{"input_ids": rows[i]["input_ids"]} for i in indices])
            input_ids = batch["input_ids"].to(self.ctx.device)
            with _autocast(self.ctx.device, self.train_settings.bf16):
                sequences = self.model.generate(
                    input_ids, batch["attention_mask"].to(self.ctx.device), num_beams=decode.num_beams,
                    length_penalty=decode.length_penalty, length_penalty_style=decode.length_penalty_style,
                    max_new_tokens=self._max_new_tokens(input_ids.size(1)))
            texts = self.output_tokenizer.batch_decode(sequences[:, 1:].cpu(), skip_special_tokens=True)
            mine.extend(zip(indices, texts))
            progress.update(1)
        progress.close()
        gathered = all_gather_objects(mine, self.ctx)
        predictions = [""] * len(raw)
        for part in gathered:
            for index, text in part:
                predictions[index] = text
        return predictions

    def evaluate_split(self, split: str) -> tuple[dict[str, float], float]:
        """Decode ``split`` (every rank), score it with the task's metrics and write its predictions file (rank 0);
        returns (metrics, decode seconds), the metrics empty on the other ranks."""
        from .metrics import compute_metrics

        started = time.perf_counter()
        predictions = self.decode_split(split)
        decode_seconds = time.perf_counter() - started
        if not self.ctx.is_main:
            return {}, decode_seconds
        raw = self.data[split][0]
        ids, sources, references = raw["id"], raw["source"], raw["target"]
        metrics = {k: float(v) for k, v in
                   compute_metrics(self.task.metrics, sources, predictions, [[r] for r in references]).items()}
        self._write_predictions(predictions_file(split), ids, sources, references, predictions)
        return metrics, decode_seconds

    def test(self) -> dict[str, float]:
        """The test split's metrics, plus ``<split>_<metric>`` for each extra test set the cell decodes."""
        metrics, decode_seconds = self.evaluate_split("test")
        extra = {split: self.evaluate_split(split) for split in self.extra_test_splits}
        if self.ctx.is_main:
            summary = {
                "test": metrics, "cell_id": self.cell_id, "task": self.task.name, "scheme": self.cell["scheme"],
                "seed": self.seed, "steps": self.step, "best_step": self.best_step,
                "best_dev_loss": self.best_dev_loss if math.isfinite(self.best_dev_loss) else None,
                "train_seconds": self.train_seconds, "test_decode_seconds": decode_seconds,
                "examples": {split: len(self.data[split][0]) for split in self.data},
                "max_lengths": {"source": self.limits[0], "target": self.limits[1]},
                "parameters": self.model.num_parameters(),
            }
            if self.task.extra_test_splits:  # only for tasks with extra sets: the others' summary is unchanged
                # "test_<split>" flattens to test_<split>/<metric>, which analysis reads like the logged metric
                summary.update({f"test_{split}": scores for split, (scores, _) in extra.items()})
                summary["extra_test_decode_seconds"] = {split: seconds for split, (_, seconds) in extra.items()}
                summary["skipped_test_splits"] = list(self.skipped_test_splits)
            _atomic_write_text(self.out_dir / METRICS_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
            for split in ("test", *extra):
                self.logger.log_artifact(self.out_dir / predictions_file(split))
            self.logger.log_artifact(self.out_dir / METRICS_FILE)
            for split, (scores, _) in extra.items():
                metrics.update({f"{split}_{name}": value for name, value in scores.items()})
        return broadcast_object(metrics, self.ctx)

    def _write_predictions(self, name, ids, sources, references, predictions) -> None:
        lines = [json.dumps({"id": i, "source": s, "reference": r, "prediction": p}, ensure_ascii=False)
                 for i, s, r, p in zip(ids, sources, references, predictions)]
        _atomic_write_text(self.out_dir / name, "\n".join(lines) + "\n")

    # -- everything --------------------------------------------------------------------------------------------
    def tags(self) -> dict[str, Any]:
        report = self.spec.report
        return {
            "parameters": self.model.num_parameters(),
            "newly_initialized_tensors": len(report.newly_initialized) if report is not None else "",
            "device": str(self.ctx.device), "world_size": self.ctx.world_size,
            "max_source_length": self.limits[0], "max_target_length": self.limits[1],
            "train_examples": len(self.data["train"][0]),
            **({"skipped_test_splits": ",".join(self.skipped_test_splits)} if self.skipped_test_splits else {}),
        }

    def run(self) -> dict[str, float]:
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.logger.set_tags(self.tags())
            register = getattr(self.logger, "on_preempt", None)
            if register is not None:
                register(self.save_on_preemption)
        self.train()
        barrier(self.ctx)
        self.load_best()
        return self.test()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def train_cell(cell: dict[str, Any], out_dir: Path, logger: Any) -> dict[str, float]:
    """Train, evaluate and test one cell (the contract with ``experiments.cell``); returns the test metrics."""
    ctx = init_distributed()
    return CellTrainer(cell, Path(out_dir), logger, ctx).run()

