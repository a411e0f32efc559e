"""Decoding and scoring a cell's test splits: beam search over every example (batched longest first, spread over
the ranks), the task's metrics, and the predictions file. Also the small helpers training shares with it."""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bertgen.generation import Seq2SeqModel

from .config import DecodeConfig
from .data import LengthBucketBatchSampler, Seq2SeqCollator
from .cell_inputs import lengths
from .disk_space import atomic_write_text
from .distributed import DistributedContext, all_gather_objects
from .machine import native_bf16
from .metrics import baseline_predictions, compute_metrics


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
    """The task's trivial baseline (``experiments.metrics.BASELINES``: copy the source, lead sentences) scored on
    the same examples as the model."""
    sources, references = raw["source"], raw["target"]
    return {k: float(v) for k, v in compute_metrics(metric_names, sources, baseline_predictions(baseline, sources),
                                                    [[r] for r in references]).items()}
