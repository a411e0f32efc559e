"""Task data: loading a split (hub or local files: ``experiments.data.sources``, whose docstring gives the local
source specs; re-exported here) as a ``datasets.Dataset`` of (id, source, target), tokenising it once with a cache,
and batching it by length.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

# Re-exported: loading a split lives in data_sources, imported from here.
from .sources import hash_parts

# datasets is imported where it is used: importing it takes ~1.5 s (measured here), and experiments.config.cell imports
# this module for its data-spec keys, so grid checks and analysis would pay for it without reading any data.

logger = logging.getLogger(__name__)

LABEL_PAD_ID = -100
"""Label value the loss ignores (bertgen's ``pad_to_ignore`` / torch's cross-entropy default)."""

_TOKENIZED_FORMAT_VERSION = 1  # bump when tokenize_split's output changes, so old caches are not reused


# ----------------------------------------------------------------------------------------------------------------------
# tokenisation


@dataclass(frozen=True)
class TruncationReport:
    num_examples: int
    source_truncated: int
    target_truncated: int
    max_source_length: int
    max_target_length: int

    def __str__(self) -> str:
        def share(count: int) -> str:
            return f"{count} ({100.0 * count / max(self.num_examples, 1):.2f}%)"

        return (f"{self.num_examples} examples: {share(self.source_truncated)} sources truncated to "
                f"{self.max_source_length} tokens, {share(self.target_truncated)} targets truncated to "
                f"{self.max_target_length} tokens")


def column_array(dataset, column: str) -> np.ndarray:
    """A scalar column as a numpy array via Arrow (row-wise numpy formatting is ~100x slower)."""
    return np.asarray(dataset.with_format("arrow")[column].to_numpy())


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a tokenizer for cache keys: its ``fingerprint`` attribute if it has one, else a hash of its
    pickled state (vocabulary, normalisation and special tokens all change it)."""
    explicit = getattr(tokenizer, "fingerprint", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    try:
        return hash_parts(tokenizer)
    except Exception as error:  # pragma: no cover - depends on the tokenizer object
        raise ValueError(f"cannot hash tokenizer {type(tokenizer).__name__} for the tokenisation cache ({error}); "
                         "give it a string attribute 'fingerprint'") from None


def _input_ids(tokenizer: Any, texts: list[str], max_length: int | None) -> list[list[int]]:
    encoded = tokenizer(texts, max_length=max_length, padding=False, truncation=max_length is not None,
                        return_tensors=None)
    return [list(ids) for ids in encoded["input_ids"]]


def _encode_batch(batch, tokenizer, max_source_length, max_target_length):
    """Tokenise untruncated first (to know the true lengths), then let the tokenizer re-truncate only the long ones,
    so its special tokens ([SEP], </s>) survive truncation."""

    def encode(texts: list[str], max_length: int) -> tuple[list[list[int]], list[bool]]:
        ids = _input_ids(tokenizer, texts, None)
        too_long = [i for i, x in enumerate(ids) if len(x) > max_length]
        if too_long:
            for i, truncated in zip(too_long, _input_ids(tokenizer, [texts[i] for i in too_long], max_length)):
                ids[i] = truncated
        flags = [False] * len(ids)
        for i in too_long:
            flags[i] = True
        return ids, flags

    input_ids, source_truncated = encode(batch["source"], max_source_length)
    target_ids, target_truncated = encode(batch["target"], max_target_length)
    start, eos = getattr(tokenizer, "decoder_start_token_id", None), getattr(tokenizer, "eos_token_id", None)
    labels = []
    for ids in target_ids:
        # The model prepends decoder_start itself (shift right); a leading [CLS]/<s> from the tokenizer would be a
        # second one.  Labels must end in EOS so the decoder learns to stop (GPT-2's tokenizer adds none).
        if start is not None and ids and ids[0] == start:
            ids = ids[1:]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = (ids if len(ids) < max_target_length else ids[: max_target_length - 1]) + [eos]
        labels.append(ids)
    return {
        "id": batch["id"],
        "input_ids": input_ids,
        "labels": labels,
        "source_length": [len(x) for x in input_ids],
        "target_length": [len(x) for x in labels],
        "source_truncated": source_truncated,
        "target_truncated": target_truncated,
    }


def tokenize_split(
    dataset,
    tokenizer: Any,
    max_source_length: int,
    max_target_length: int,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
    batch_size: int = 1000,
):
    """Tokenise a ``load_split`` dataset once: columns id, input_ids, labels, source/target length and truncation
    flags.  Returns (tokenized dataset, TruncationReport).

    The result is cached under ``cache_dir`` keyed by the data's fingerprint, the tokenizer and the two maximum
    lengths, so a rerun (or another run of a sweep on the same machine) reuses it.  Without ``cache_dir``, hub data
    is cached in the datasets cache and local data is tokenised in memory.
    """
    for column in ("id", "source", "target"):
        if column not in dataset.column_names:
            raise ValueError(f"dataset has no column {column!r}; expected the output of load_split "
                             f"(columns {dataset.column_names})")
    if max_source_length < 2 or max_target_length < 2:
        raise ValueError(f"max lengths must be >= 2, got source {max_source_length}, target {max_target_length}")
    key = hash_parts("tokenize", _TOKENIZED_FORMAT_VERSION, dataset._fingerprint, tokenizer_fingerprint(tokenizer),
                       max_source_length, max_target_length)
    cache_file_name = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file_name = str(Path(cache_dir) / f"tokenized-{key}.arrow")
    tokenized = dataset.map(
        _encode_batch,
        batched=True,
        batch_size=batch_size,
        fn_kwargs={"tokenizer": tokenizer, "max_source_length": max_source_length,
                   "max_target_length": max_target_length},
        remove_columns=dataset.column_names,
        new_fingerprint=key,
        cache_file_name=cache_file_name,
        load_from_cache_file=True,
        num_proc=num_proc,
        desc="tokenizing",
    )
    report = TruncationReport(
        num_examples=len(tokenized),
        source_truncated=int(column_array(tokenized, "source_truncated").sum()),
        target_truncated=int(column_array(tokenized, "target_truncated").sum()),
        max_source_length=max_source_length,
        max_target_length=max_target_length,
    )
    logger.info("tokenized: %s", report)
    return tokenized, report


# ----------------------------------------------------------------------------------------------------------------------
# batching


class LengthBucketBatchSampler:
    """Batches of similar-length examples in a seeded random order, so little compute goes to padding.

    Training (``shuffle=True``): each epoch permutes the examples with ``(seed, epoch)``, cuts the permutation into
    chunks of ``batch_size * chunk_batches`` examples, sorts each chunk by (source length, target length), cuts it into
    batches and shuffles the order of all batches.  Randomness stays (chunks are random samples) while padding
    shrinks.  Evaluation (``shuffle=False``): one global sort, longest first, so an out-of-memory shows up at once.

    Resuming: the trainer counts the batches it has consumed (a DataLoader prefetches, so the sampler cannot know)
    and calls ``set_position(epoch, batches_done)``; the next iteration starts there, later ones at batch 0.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        chunk_batches: int = 100,
        drop_last: bool = False,
    ):
        lengths = np.asarray(lengths)
        if lengths.ndim == 1:
            lengths = lengths[:, None]
        if lengths.ndim != 2 or len(lengths) == 0:
            raise ValueError(f"lengths must be a non-empty [N] or [N, k] array, got shape {lengths.shape}")
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError(f"batch_size and chunk_batches must be >= 1, got {batch_size}, {chunk_batches}")
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.chunk_batches = chunk_batches
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def _sort(self, indices: np.ndarray, descending: bool = False) -> np.ndarray:
        keys = self.lengths[indices]
        order = np.lexsort(tuple(keys[:, k] for k in reversed(range(keys.shape[1]))))
        return indices[order[::-1] if descending else order]

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (deterministic given seed and epoch)."""
        n = len(self.lengths)
        if not self.shuffle:
            order = self._sort(np.arange(n), descending=True)
            chunks = [order]
            rng = None
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            chunk = self.batch_size * self.chunk_batches
            chunks = [self._sort(order[i : i + chunk]) for i in range(0, n, chunk)]
        batches = [
            c[i : i + self.batch_size].tolist() for c in chunks for i in range(0, len(c), self.batch_size)
        ]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start_batch = epoch, 0

    def set_position(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.start_batch = epoch, batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self.set_position(int(state["epoch"]), int(state["start_batch"]))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        start, self.start_batch = self.start_batch, 0
        yield from batches[start:]

    def __len__(self) -> int:
        n = len(self.lengths)
        if not self.shuffle:
            full, rest = divmod(n, self.batch_size)
        else:
            chunk = self.batch_size * self.chunk_batches
            full_chunks, last_chunk = divmod(n, chunk)
            full = full_chunks * self.chunk_batches + last_chunk // self.batch_size
            rest = last_chunk % self.batch_size
        total = full + (1 if rest and not self.drop_last else 0)
        return max(total - self.start_batch, 0)


class Seq2SeqCollator:
    """Pads a list of tokenized examples to the batch's longest source and target.

    Returns ``input_ids`` (pad id), ``attention_mask`` (1 on tokens), ``labels`` (-100 on padding, so the loss skips
    it) and ``ids`` (example ids, to put predictions back in order) when the examples carry them.
    ``pad_to_multiple_of`` rounds the padded lengths up (8 suits tensor cores).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None: the tokenizer must define a pad token")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _width(self, sequences: Sequence[Sequence[int]]) -> int:
        width = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        return width

    def _pad(self, sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
        out = torch.full((len(sequences), self._width(sequences)), value, dtype=torch.long)
        for row, seq in enumerate(sequences):
            out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        return out

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        inputs = [e["input_ids"] for e in examples]
        input_ids = self._pad(inputs, self.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(inputs):
            attention_mask[row, : len(seq)] = 1
        batch: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in examples[0]:
            batch["labels"] = self._pad([e["labels"] for e in examples], LABEL_PAD_ID)
        if "id" in examples[0]:
            batch["ids"] = [e["id"] for e in examples]
        return batch


def build_dataloader(
    tokenized,
    batch_size: int,
    pad_token_id: int,
    seed: int = 0,
    shuffle: bool = True,
    epoch: int = 0,
    batches_done: int = 0,
    num_workers: int = 0,
    chunk_batches: int = 100,
    pad_to_multiple_of: int | None = None,
):
    """A DataLoader over a :func:`tokenize_split` dataset with length bucketing; its ``batch_sampler`` holds the
    position (``set_position`` / ``state_dict``)."""
    lengths = np.stack([column_array(tokenized, c) for c in ("source_length", "target_length")], axis=1)
    sampler = LengthBucketBatchSampler(lengths, batch_size, seed=seed, shuffle=shuffle, chunk_batches=chunk_batches)
    sampler.set_position(epoch, batches_done)
    rows = tokenized.select_columns(["id", "input_ids", "labels"])
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_sampler=sampler, collate_fn=Seq2SeqCollator(pad_token_id, pad_to_multiple_of),
                      num_workers=num_workers, generator=generator)
