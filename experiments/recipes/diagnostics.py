"""Does the decoder read its input? Two measurements a trainer logs next to the dev loss.

A sequence-to-sequence model can lower its loss a long way by learning the target language alone: on WikiSplit a
warm-started BERT decoder reaches a dev loss of ~5.5 nats while writing the same generic sentence for every source.
The dev loss cannot tell that model from one that reads its input; these two numbers can:

* ``source_gap``: the teacher-forced dev loss with every target paired with *another* example's source (the sources
  of a batch rotated by one) minus the loss with its own source. 0 means the prediction does not depend on the source
  at all; a model that copies or translates has a gap of several nats.
* ``cross_attention_entropy``: the entropy of the decoder's cross-attention over the source tokens, divided by the
  entropy of the uniform distribution over them (log of the source length), averaged over target tokens, heads and
  layers. 1.0 is attention spread evenly over the source (a random cross-attention starts at ~1.0 and a decoder stuck
  on the plateau stays there); a decoder that aligns target and source tokens goes well below it.

Both run on a handful of dev batches without gradients; the model is returned in the mode it was in. Only the
forward arguments transformers' models share are used, so the same measurement runs on transformers'
``EncoderDecoderModel`` (``attn_implementation="eager"`` for the attention weights) in benchmarks/input_use_study.py.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

# A source gap below this (in nats per target token) after training means the model ignores its input.
IGNORES_INPUT_GAP = 0.05


@dataclass(frozen=True)
class InputUse:
    """What :func:`measure_input_use` found on the dev batches."""

    loss: float
    shuffled_source_loss: float
    cross_attention_entropy: float | None  # None for a model without cross-attention (the decoder-only gpt scheme)

    @property
    def source_gap(self) -> float:
        return self.shuffled_source_loss - self.loss

    def metrics(self, prefix: str = "dev_") -> dict[str, float]:
        out = {f"{prefix}source_gap": self.source_gap, f"{prefix}shuffled_source_loss": self.shuffled_source_loss}
        if self.cross_attention_entropy is not None:
            out[f"{prefix}cross_attention_entropy"] = self.cross_attention_entropy
        return out


def rotate_sources(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with example i's source replaced by example i-1's (targets untouched)."""
    if batch["input_ids"].size(0) < 2:
        raise ValueError("rotating sources needs a batch of at least 2 examples")
    return {**batch, "input_ids": batch["input_ids"].roll(1, 0), "attention_mask": batch["attention_mask"].roll(1, 0)}


def normalized_entropy(weights: torch.Tensor, source_mask: torch.Tensor, target_mask: torch.Tensor) -> float:
    """Mean over target tokens and heads of H(attention row) / log(source length), for one layer.

    ``weights``: [batch, heads, target, source]; ``source_mask``: [batch, source] (1 on tokens); ``target_mask``:
    [batch, target] (1 on labelled positions). Sources of one token (log 1 = 0) are left out.
    """
    w = weights.float().clamp_min(1e-30)
    entropy = -(w * w.log()).sum(-1)  # [batch, heads, target]
    length = source_mask.sum(-1).float()  # [batch]
    keep = target_mask.bool() & (length > 1)[:, None]
    if not bool(keep.any()):
        return math.nan
    normalized = entropy / length.clamp_min(2).log()[:, None, None]
    return float(normalized.mean(1)[keep].mean())


@torch.no_grad()
def measure_input_use(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                      autocast=None) -> InputUse:
    """Teacher-forced loss with own and rotated sources, and cross-attention entropy, over ``batches`` (each with
    input_ids, attention_mask, labels on the model's device and at least 2 examples)."""
    was_training = model.training
    model.eval()
    sums = {"loss": 0.0, "shuffled": 0.0, "entropy": 0.0}
    tokens, entropy_batches, has_cross = 0, 0, True
    try:
        for batch in batches:
            count = int(batch["labels"].ne(-100).sum())
            with autocast or nullcontext():
                own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"], output_attentions=has_cross)
                other = rotate_sources(batch)
                rotated = model(input_ids=other["input_ids"], attention_mask=other["attention_mask"],
                                labels=batch["labels"])
            sums["loss"] += float(own.loss) * count
            sums["shuffled"] += float(rotated.loss) * count
            tokens += count
            cross = getattr(own, "cross_attentions", None) if has_cross else None
            if not cross:
                has_cross = False
                continue
            layers = [normalized_entropy(w, batch["attention_mask"], batch["labels"].ne(-100)) for w in cross]
            sums["entropy"] += sum(layers) / len(layers)
            entropy_batches += 1
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("measure_input_use: the batches hold no target tokens")
    return InputUse(loss=sums["loss"] / tokens, shuffled_source_loss=sums["shuffled"] / tokens,
                    cross_attention_entropy=sums["entropy"] / entropy_batches if entropy_batches else None)
