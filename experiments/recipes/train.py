"""Training and testing one cell of a study grid: ``train_cell(cell, out_dir, logger) -> test metrics``.

What a cell does, in order:

1. builds its scheme (``bertgen.schemes.build``) from the cell's checkpoints, size overrides and ``init_layers``,
   and the tokenizers of its input and output vocabularies;
2. loads and tokenises its splits (``experiments.data.batches``; cached), with lengths capped to what the model can read;
3. trains with Adam and the paper's schedule (``experiments.recipes.optim``): each update sees ``train.batch_size``
   examples, split over the ranks of a distributed job and over ``train.grad_accum`` micro-batches per rank; the
   loss is the mean over the target tokens of the whole update; bf16 autocast and gradient clipping on request;
4. every ``eval_every`` steps computes the teacher-forced dev loss on ``eval_examples`` validation examples (and,
   with ``train.select: best_dev``, keeps the best weights in ``checkpoints/best``); every ``checkpoint_every`` steps writes ``checkpoints/last``
   with everything a resumed run needs to continue bit for bit (see ``experiments.recipes.checkpointing``);
5. decodes the test split with the selected weights (``train.select``: the last step's, as the paper evaluates
   after its fixed steps, or the best dev loss's) by beam search (batched, longest first, spread over the ranks),
   writes ``predictions.jsonl`` (id, source, reference, prediction) and ``metrics.json``, and returns the metrics;
6. then decodes the task's extra test sets (``Task.extra_test_splits``, e.g. WMT's ``newstest2016``) the same way,
   with the test split's ``max_examples`` cap unless a set has its own, into ``predictions_<split>.jsonl``; their
   scores join the returned metrics as ``<split>_<metric>``, so the job logs ``test_<split>_<metric>``. A cell whose
   test split is local and that names no file for an extra set skips that set with a warning (see
   :func:`experiments.recipes.build.extra_test_splits`). Steps 5 and 6 are :class:`experiments.recipes.decode.TestDecoding`,
   the recipe ``python -m experiments.recipes.evaluate`` (and so a launch's re-decoding) runs too.

A cell whose ``checkpoints/last`` exists resumes from it: same data order (sampler epoch and batches consumed), same
optimizer moments, learning rate and random states, so its final weights equal an uninterrupted run's.
Only rank 0 logs and writes files. A NaN or infinite loss stops the cell with a FloatingPointError naming the step.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from ..config.cell import BEST, LAST, SELECT_BEST_DEV, CellConfig
from ..config.tasks import STANDARD_SPLITS, get_task
from ..data.batches import LengthBucketBatchSampler, Seq2SeqCollator
from . import checkpointing
from .build import (VOCABULARY_DIR, MicroBatchCollator, RankBatches, build_model, cache_dir, cell_vocabulary, lengths,
                    load_cell_data, predictions_file, seed_everything)
from .checkpointing import CHECKPOINT_DIR
from .decode import TestDecoding, autocast, progress_bar, to_device, use_bf16, write_summary
from .diagnostics import IGNORES_INPUT_GAP, InputUse, measure_input_use
from .distributed import (DistributedContext, all_gather_objects, all_reduce_sum, barrier, broadcast_object,
                          init_distributed, wrap_model)
from .optim import LRSchedule, build_optimizer

log = logging.getLogger("experiments.recipes.train")

DEV_PREDICTIONS_FILE = "dev_predictions.jsonl"
INPUT_USE_EXAMPLES = 64  # validation examples in the input-use measurement at each evaluation


def _duration(seconds: float) -> str:
    """``1h02m``, ``3m10s``, ``42s``: for the progress lines of a job's log."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


# -- the trainer -----------------------------------------------------------------------------------------------
class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class CellTrainer:
    def __init__(self, cell: CellConfig, out_dir: Path, logger: Any, ctx: DistributedContext):
        self.cell = cell
        self.out_dir = Path(out_dir)
        self.logger = logger
        self.ctx = ctx
        self.cell_id = cell.cell_id or "?"
        self.train_settings = cell.train
        self.decode_settings = cell.decode
        self.bf16 = use_bf16(cell.train.bf16, ctx.device)  # "auto" resolved on this machine (tagged: bf16)
        self.seed = cell.seed
        self.task = get_task(cell.task)

        self.vocabulary, self.vocabulary_trained = None, False
        if cell.vocab is not None:  # rank 0 trains it (or finds it cached); the others then read it
            if not ctx.is_main:
                barrier(ctx)
            self.vocabulary, self.vocabulary_trained = cell_vocabulary(cell, self.task, self.out_dir)
            if ctx.is_main:
                barrier(ctx)
        seed_everything(self.seed)
        model, self.spec, self.input_tokenizer, self.output_tokenizer = build_model(cell, vocabulary=self.vocabulary)
        self.model = model.to(ctx.device)
        self.frozen_until = cell.train.freeze_warm_started_steps
        self.frozen = warm_started_parameters(self.model, self.spec.report) if self.frozen_until else []
        if self.frozen_until and not self.frozen:
            raise ValueError(f"cell train.freeze_warm_started_steps: {self.frozen_until}, but scheme {cell.scheme} "
                             "warm-starts no parameter from a checkpoint; expected 0")
        # the task as scored (lower-cased for an uncased vocabulary), the length limits, the test sets decoded
        self.recipe = TestDecoding(self.model, self.output_tokenizer, self.task, cell.data)
        self.task, self.limits = self.recipe.task, self.recipe.limits
        self.extra_test_splits, self.skipped_test_splits = self.recipe.splits[1:], self.recipe.skipped
        for split in self.skipped_test_splits if ctx.is_main else ():
            log.warning("cell %s: data.%s: task %s's extra test set %s has no local source while data.test is a local "
                        "file; skipping it (no test_%s_* metrics)", self.cell_id, split, self.task.name, split, split)
        # Rank 0 downloads and tokenises first; the others then read its cache instead of racing to write it.
        if not ctx.is_main:
            barrier(ctx)
        self.data = load_cell_data(cell, self.task, self.input_tokenizer, self.output_tokenizer, self.limits,
                                   cache_dir(cell, self.out_dir), splits=(*STANDARD_SPLITS, *self.extra_test_splits))
        if ctx.is_main:
            barrier(ctx)
        self.hidden_size = self.model.output_hidden_size
        self.optimizer = build_optimizer(self.model.parameters(), optimizer=cell.train.optimizer)
        self.schedule = LRSchedule.from_config(self.optimizer, cell.train, self.hidden_size)
        self.ddp_model = wrap_model(self.model, ctx)
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_dev_loss = math.inf
        self.last_input_use: InputUse | None = None
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
    def micro_batch_size(self) -> int:
        """Examples per forward on one rank (what the dev loss batches by)."""
        return max(1, self.train_settings.batch_size // (self.train_settings.grad_accum * self.ctx.world_size))

    def eval_batch_size(self) -> int:
        """Sources per beam-search batch: decode.batch_size, else the training micro-batch."""
        return self.decode_settings.batch_size or self.micro_batch_size()

    def world_batch_too_small(self) -> bool:
        return self.train_settings.batch_size < self.ctx.world_size * self.train_settings.grad_accum

    def _train_sampler(self):
        tokenized = self.data["train"][1]
        size = self.train_settings.batch_size
        # Full batches only (when there are enough examples), so every rank gets a slice of every update.
        sampler = LengthBucketBatchSampler(lengths(tokenized), size, seed=self.seed, shuffle=True,
                                           drop_last=len(tokenized) >= size)
        if not sampler.batches(0):
            raise ValueError(f"train split: {len(tokenized)} examples make no batch of {size}")
        return sampler

    def _train_loader(self):
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
        """Every rank's RNG state goes into the checkpoint; rank 0 writes it, then has the logger send (or park on
        disk) the metrics logged so far, which a resume from this checkpoint would not log again."""
        rng = all_gather_objects(checkpointing.capture_rng_state(), self.ctx)
        if self.ctx.is_main:
            self._saving = True
            try:
                checkpointing.save_checkpoint(self.checkpoint_root / LAST, self.model, self.optimizer,
                                              self.trainer_state(self.step, self.epoch, self.batches_in_epoch), rng)
            finally:
                self._saving = False
            checkpointed = getattr(self.logger, "checkpointed", None)
            if checkpointed is not None:
                checkpointed()
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
        with autocast(self.ctx.device, self.bf16):
            out = self.ddp_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 labels=batch["labels"], return_logits=False)
        return out.loss.float()

    def train_step(self, micro_batches: list[dict[str, Any]]) -> tuple[float, float, int]:
        """One update on this rank's micro-batches; returns (global mean token loss, grad norm, global tokens)."""
        settings = self.train_settings
        batches = [to_device(b, self.ctx.device) for b in micro_batches]
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
        if self.step < self.frozen_until:  # no gradient: the optimizer skips them, their state does not start
            for parameter in self.frozen:
                parameter.grad = None
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

    def validation_batches(self, limit: int | None, size: int, spread_over_ranks: bool = False,
                           drop_last: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Padded batches (longest first, on the device) of the first ``limit`` validation examples (null: all);
        with ``spread_over_ranks`` this rank's share of them."""
        tokenized = self.data["validation"][1]
        if limit:
            tokenized = tokenized.select(range(min(limit, len(tokenized))))
        batches = LengthBucketBatchSampler(lengths(tokenized), size, shuffle=False, drop_last=drop_last).batches(0)
        if spread_over_ranks:
            batches = batches[self.ctx.rank::self.ctx.world_size]
        collate = Seq2SeqCollator(self.spec.inputs.pad_token_id)
        rows = tokenized.select_columns(["id", "input_ids", "labels"])
        for indices in batches:
            yield to_device(collate([rows[i] for i in indices]), self.ctx.device)

    @torch.no_grad()
    def dev_loss(self) -> float:
        """Teacher-forced mean token loss on the first ``eval_examples`` validation examples (spread over ranks)."""
        self.model.eval()
        loss_sum, tokens = 0.0, 0
        for batch in self.validation_batches(self.train_settings.eval_examples, self.micro_batch_size(),
                                             spread_over_ranks=True):
            with autocast(self.ctx.device, self.bf16):
                out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 labels=batch["labels"], return_logits=False)
            count = int(batch["labels"].ne(-100).sum())
            loss_sum += float(out.loss) * count
            tokens += count
        self.model.train()
        total = all_reduce_sum(tokens, self.ctx)
        return all_reduce_sum(loss_sum, self.ctx) / max(total, 1)

    def input_use(self) -> InputUse:
        """Does the model read its source? Dev loss with rotated sources and cross-attention entropy on up to
        ``INPUT_USE_EXAMPLES`` validation examples (experiments.recipes.diagnostics); batches of at least 2 (rotation)."""
        examples = min(INPUT_USE_EXAMPLES, len(self.data["validation"][1]))
        batches = self.validation_batches(INPUT_USE_EXAMPLES, max(2, min(self.micro_batch_size(), examples)),
                                          drop_last=examples >= 2)
        return measure_input_use(self.model, [b for b in batches if b["input_ids"].size(0) >= 2],
                                 autocast(self.ctx.device, self.bf16))

    def dev_task_metrics(self) -> dict[str, float]:
        """The task's metrics on the first ``dev_decode_examples`` validation examples, decoded as the test split is
        (every rank decodes its share; rank 0 scores): ``dev_<metric>``, the dev curve of what the paper reports.
        The predictions are kept in ``dev_predictions.jsonl`` (the latest evaluation's), to be read during training."""
        count = min(self.train_settings.dev_decode_examples, len(self.data["validation"][0]))
        if count == 0:
            return {}
        raw, tokenized = (part.select(range(count)) for part in self.data["validation"])
        decoder = self.recipe.decoder(self.model, self.output_tokenizer, self.spec.inputs.pad_token_id,
                                      self.decode_settings, self.eval_batch_size(), self.ctx, self.bf16,
                                      f"dev {self.cell_id}")
        metrics, _ = decoder.evaluate(self.task.metrics, raw, tokenized, self.out_dir / DEV_PREDICTIONS_FILE)
        self.model.train()
        return {f"dev_{name}": value for name, value in metrics.items()}

    def evaluate_and_keep_best(self) -> None:
        loss = self.dev_loss()
        task_metrics = self.dev_task_metrics()
        if self.ctx.is_main:
            self.last_input_use = self.input_use() if len(self.data["validation"][1]) >= 2 else None
            extra = self.last_input_use.metrics() if self.last_input_use is not None else {}
            extra.update(task_metrics)
            self.logger.log_metrics({"dev_loss": loss, **extra}, step=self.step)
            log.info("cell %s step %d dev_loss %.4f%s", self.cell_id, self.step, loss,
                     "".join(f" {k} {v:.3f}" for k, v in extra.items()))
        if loss < self.best_dev_loss:
            self.best_dev_loss, self.best_step = loss, self.step
            if self.ctx.is_main and self.train_settings.select == SELECT_BEST_DEV:
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
        progress = progress_bar(total, f"train {self.cell_id}", self.ctx.is_main)
        progress.update(self.step)
        window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
        iterator = None
        started = time.perf_counter() - self.train_seconds
        resumed_at, resumed_step = time.perf_counter(), self.step  # the ETA is this process' own pace
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
                log.info("cell %s step %d/%d loss %.4f lr %.3g tokens/s %.0f elapsed %s ETA %s", self.cell_id,
                         self.step, total, window_loss / window_tokens, self.optimizer.param_groups[0]["lr"],
                         window_tokens / max(elapsed, 1e-9), _duration(time.perf_counter() - resumed_at),
                         _duration((time.perf_counter() - resumed_at) / max(self.step - resumed_step, 1)
                                   * (total - self.step)))
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
    def load_selected(self) -> None:
        """``train.select``: the weights at the end of training (in memory already), or the best dev loss's."""
        if self.train_settings.select != SELECT_BEST_DEV:
            return
        found = checkpointing.find_checkpoint(self.checkpoint_root / BEST)
        if found is not None:
            checkpointing.load_model_weights(found, self.model)

    def test(self) -> dict[str, float]:
        """The test split's metrics, plus ``<split>_<metric>`` for each extra test set the cell decodes."""
        decoder = self.recipe.decoder(self.model, self.output_tokenizer, self.spec.inputs.pad_token_id,
                                      self.decode_settings, self.eval_batch_size(), self.ctx, self.bf16,
                                      f"decode {self.cell_id}")
        results = self.recipe.decode(decoder, ((split, *self.data[split]) for split in self.recipe.splits),
                                     self.out_dir)
        metrics = results.scores["test"]
        if self.ctx.is_main:
            summary = {
                **self.recipe.summary(results), "cell_id": self.cell_id, "task": self.task.name,
                "scheme": self.cell.scheme, "seed": self.seed, "steps": self.step, "best_step": self.best_step,
                "select": self.train_settings.select,
                "tested_step": self.best_step if self.train_settings.select == SELECT_BEST_DEV else self.step,
                "best_dev_loss": self.best_dev_loss if math.isfinite(self.best_dev_loss) else None,
                "train_seconds": self.train_seconds,
                "examples": {split: len(self.data[split][0]) for split in self.data},
            }
            if results.baseline is not None:
                self.logger.log_metrics({f"baseline_{self.task.baseline}_{k}": v for k, v in results.baseline.items()},
                                        step=self.step)
            if self.last_input_use is not None:
                use = self.last_input_use
                summary["input_use"] = {"source_gap": use.source_gap, "cross_attention_entropy":
                                        use.cross_attention_entropy, "step": self.step}
                if use.source_gap < IGNORES_INPUT_GAP:
                    log.warning("cell %s: the model ignores its input: dev loss with other examples' sources is "
                                "only %.3f nats above the loss with its own (see experiments.recipes.diagnostics); its "
                                "predictions do not depend on the source", self.cell_id, use.source_gap)
            summary_file = write_summary(self.out_dir, summary)
            for split in self.recipe.splits:
                self.logger.log_artifact(self.out_dir / predictions_file(split))
            self.logger.log_artifact(summary_file)
            metrics = {**metrics, **results.extra_scores()}
        return broadcast_object(metrics, self.ctx)

    # -- everything --------------------------------------------------------------------------------------------
    def tags(self) -> dict[str, Any]:
        report = self.spec.report
        return {
            "parameters": self.model.num_parameters(),
            "newly_initialized_tensors": len(report.newly_initialized) if report is not None else "",
            "device": str(self.ctx.device), "world_size": self.ctx.world_size, "bf16": self.bf16,
            "max_source_length": self.limits[0], "max_target_length": self.limits[1],
            "lowercased_data": self.task.lowercase,
            "train_examples": len(self.data["train"][0]),
            **({"vocabulary": self.vocabulary.name, "vocabulary_trained": self.vocabulary_trained}
               if self.vocabulary is not None else {}),
            **({"frozen_warm_started_tensors": len(self.frozen)} if self.frozen else {}),
            **({"skipped_test_splits": ",".join(self.skipped_test_splits)} if self.skipped_test_splits else {}),
        }

    def run(self) -> dict[str, float]:
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.vocabulary is not None:
                shutil.copytree(self.vocabulary, self.out_dir / VOCABULARY_DIR, dirs_exist_ok=True)
            self.logger.set_tags(self.tags())
            register = getattr(self.logger, "on_preempt", None)
            if register is not None:
                register(self.save_on_preemption)
        self.train()
        barrier(self.ctx)
        self.load_selected()
        return self.test()


def warm_started_parameters(model: torch.nn.Module, report) -> list[torch.nn.Parameter]:
    """The parameters a checkpoint filled (any of their names in the loading report's ``loaded``; a tied parameter
    counts once), which ``train.freeze_warm_started_steps`` holds still."""
    loaded = set(report.loaded) if report is not None else set()
    names: dict[int, tuple[torch.nn.Parameter, list[str]]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), (parameter, []))[1].append(name)
    return [parameter for parameter, aliases in names.values() if loaded.intersection(aliases)]


def train_cell(cell: dict[str, Any], out_dir: Path, logger: Any) -> dict[str, float]:
    """Train, evaluate and test one cell, given in its JSON form (the contract with ``experiments.grid.identity``); returns
    the test metrics."""
    config = CellConfig.from_dict(cell, "cell")
    ctx = init_distributed()
    return CellTrainer(config, Path(out_dir), logger, ctx).run()

