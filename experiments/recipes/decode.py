"""Decoding and scoring a cell's test splits: beam search over every example (batched longest first, spread over
the ranks), the task's metrics, and the predictions file. Also the small helpers training shares with it.

:class:`TestDecoding` is the ONE decode-and-score recipe: training's test stage (``experiments.recipes.train``), an
evaluation (``python -m experiments.recipes.evaluate``) and so a launch's re-decoding of a finished cell (an evaluation job)
all go through it: which task is scored (lower-cased for an uncased vocabulary), the length limits, which test sets
are decoded, their predictions files, the trivial baseline and the ``metrics.json`` fields they share.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from tqdm.auto import tqdm

from bertgen.generation import Seq2SeqModel

from ..config.cell import DataSources, DecodeConfig
from ..config.tasks import Task
from ..data.batches import LengthBucketBatchSampler, Seq2SeqCollator
from ..data.metrics import baseline_predictions, compute_metrics
from ..grid.identity import METRICS_FILE
from ..system.disk import atomic_write_text
from ..system.machine import native_bf16
from .build import extra_test_splits, length_limits, lengths, predictions_file, uncased
from .distributed import DistributedContext, all_gather_objects


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")}


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    """``train.bf16`` (true, false or "auto") on ``device``."""
    return native_bf16(device) if setting == "auto" else bool(setting)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=5.0, dynamic_ncols=True, file=sys.stderr)


class SplitDecoder:
    """Beam search with a cell's decode settings; ``max_target`` is the target length the model was trained on."""

    def __init__(self, model: Seq2SeqModel, output_tokenizer: Any, pad_token_id: int, decode: DecodeConfig,
                 batch_size: int, max_target: int, ctx: DistributedContext, bf16: bool, desc: str):
        self.model = model
        self.output_tokenizer = output_tokenizer
        self.pad_token_id = pad_token_id
        self.decode = decode
        self.batch_size = batch_size
        self.max_target = max_target
        self.ctx = ctx
        self.bf16 = bf16
        self.desc = desc

    @torch.no_grad()
    def predictions(self, raw: Any, tokenized: Any) -> list[str]:
        """Beam-search predictions for every example, in dataset order. Batches run longest first; rank r decodes
        batches r, r + world, … and rank 0 gathers them all."""
        decode, ctx = self.decode, self.ctx
        sampler = LengthBucketBatchSampler(lengths(tokenized), self.batch_size, shuffle=False)
        batches = sampler.batches(0)[ctx.rank::ctx.world_size]
        collate = Seq2SeqCollator(self.pad_token_id)
        rows = tokenized.select_columns(["input_ids"])
        self.model.eval()
        mine: list[tuple[int, str]] = []
        progress = progress_bar(len(batches), self.desc, ctx.is_main)
        for indices in batches:
            batch = collate([{"input_ids": rows[i]["input_ids"]} for i in indices])
            input_ids = batch["input_ids"].to(ctx.device)
            with autocast(ctx.device, self.bf16):
                sequences = self.model.generate(
                    input_ids, batch["attention_mask"].to(ctx.device), num_beams=decode.num_beams,
                    length_penalty=decode.length_penalty, length_penalty_style=decode.length_penalty_style,
                    max_new_tokens=min(decode.max_new_tokens,
                                       self.model.max_new_tokens(input_ids.size(1), self.max_target)))
            texts = self.output_tokenizer.batch_decode(sequences[:, 1:].cpu(), skip_special_tokens=True)
            mine.extend(zip(indices, texts))
            progress.update(1)
        progress.close()
        predictions = [""] * len(raw)
        for part in all_gather_objects(mine, ctx):
            for index, text in part:
                predictions[index] = text
        return predictions

    def evaluate(self, metric_names: tuple[str, ...], raw: Any, tokenized: Any,
                 predictions_path: Path) -> tuple[dict[str, float], float]:
        """Decode (every rank), score with ``metric_names`` and write the predictions file (rank 0); returns
        (metrics, decode seconds), the metrics empty on the other ranks. The file keeps each source, so the task's
        trivial baseline can be scored on exactly these examples (:func:`baseline_metrics`, analysis)."""
        started = time.perf_counter()
        predictions = self.predictions(raw, tokenized)
        decode_seconds = time.perf_counter() - started
        if not self.ctx.is_main:
            return {}, decode_seconds
        ids, sources, references = raw["id"], raw["source"], raw["target"]
        metrics = {k: float(v) for k, v in
                   compute_metrics(metric_names, sources, predictions, [[r] for r in references]).items()}
        lines = [json.dumps({"id": i, "source": s, "reference": r, "prediction": p}, ensure_ascii=False)
                 for i, s, r, p in zip(ids, sources, references, predictions)]
        atomic_write_text(predictions_path, "\n".join(lines) + "\n")
        return metrics, decode_seconds


def baseline_metrics(baseline: str, metric_names: tuple[str, ...], raw: Any) -> dict[str, float]:
    """The task's trivial baseline (``experiments.data.metrics.BASELINES``: copy the source, lead sentences) scored on
    the same examples as the model."""
    sources, references = raw["source"], raw["target"]
    return {k: float(v) for k, v in compute_metrics(metric_names, sources, baseline_predictions(baseline, sources),
                                                    [[r] for r in references]).items()}


@dataclass
class TestResults:
    """What decoding the test sets gave, per split in decoding order (scores on rank 0 only)."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    baseline: dict[str, float] | None = None  # the task's trivial baseline on the test split

    def extra_scores(self) -> dict[str, float]:
        """``<split>_<metric>`` of the extra test sets: what a cell's job logs as ``test_<split>_<metric>``."""
        return {f"{split}_{name}": value for split, scores in self.scores.items() if split != "test"
                for name, value in scores.items()}


class TestDecoding:
    """How a model's test sets are decoded and scored, decided once from the model, its output tokenizer, the task
    and the data sources (a cell's or an evaluation's ``data``):

    - ``task``: the task as scored: an uncased vocabulary (all-MiniLM-L6-v2's) cannot write a capital letter, so its
      references, sources and trivial baseline are lower-cased and the metrics do not score case (tag:
      ``lowercased_data``);
    - ``limits``: (source, target) tokens, the task's cut to the positions the model has;
    - ``splits``: ``test`` and the task's extra test sets it decodes; ``skipped``: those it skips
      (:func:`experiments.recipes.build.extra_test_splits`).

    :meth:`decode` then decodes and scores the splits it is given (loaded by the caller, in :attr:`splits` order) and
    writes their predictions files; :meth:`summary` is the part of ``metrics.json`` every caller writes."""

    def __init__(self, model: Seq2SeqModel, output_tokenizer: Any, task: Task, data: DataSources):
        self.task = task.with_overrides(lowercase=True) if uncased(output_tokenizer) and not task.lowercase else task
        self.limits = length_limits(model, self.task)
        extra, self.skipped = extra_test_splits(data, self.task)
        self.splits = ("test", *extra)
        self.parameters = model.num_parameters()

    def decoder(self, model: Seq2SeqModel, output_tokenizer: Any, pad_token_id: int, decode: DecodeConfig,
                batch_size: int, ctx: DistributedContext, bf16: bool, desc: str) -> SplitDecoder:
        return SplitDecoder(model, output_tokenizer, pad_token_id, decode, batch_size, self.limits[1], ctx, bf16, desc)

    def decode(self, decoder: SplitDecoder, splits: Iterable[tuple[str, Any, Any]], out_dir: Path) -> TestResults:
        """Decode and score each ``(split, raw, tokenized)`` (every rank), writing ``out_dir/predictions*.jsonl``
        (rank 0); the trivial baseline is scored on the test split's examples."""
        results = TestResults()
        for split, raw, tokenized in splits:
            results.scores[split], results.seconds[split] = decoder.evaluate(self.task.metrics, raw, tokenized,
                                                                             out_dir / predictions_file(split))
            results.examples[split] = len(raw)
            if split == "test" and self.task.baseline is not None and decoder.ctx.is_main:
                results.baseline = baseline_metrics(self.task.baseline, self.task.metrics, raw)
        return results

    def summary(self, results: TestResults) -> dict[str, Any]:
        """The fields of ``metrics.json`` that training's test and an evaluation share: ``test`` (and
        ``test_<split>`` of each extra set, flattened by MLflow and analysis like the logged metric), decode
        seconds, examples, length limits, parameters, ``baseline_<name>``; ``skipped_test_splits`` for a task with
        extra test sets (the others' summary has no such field)."""
        out: dict[str, Any] = {"max_lengths": {"source": self.limits[0], "target": self.limits[1]},
                               "parameters": self.parameters, "examples": dict(results.examples)}
        for split in results.scores:
            key = "test" if split == "test" else f"test_{split}"
            out[key], out[f"{key}_decode_seconds"] = results.scores[split], results.seconds[split]
        if results.baseline is not None:
            out[f"baseline_{self.task.baseline}"] = results.baseline
        if self.task.extra_test_splits:
            out["skipped_test_splits"] = list(self.skipped)
        return out


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """``out_dir/metrics.json``: the summary, sorted keys, written whole or not at all."""
    path = out_dir / METRICS_FILE
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path
