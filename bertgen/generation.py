"""Greedy decoding and beam search for the paper's models, on a cached decoder step.

The paper decodes with beam search (beam 4) and the GNMT length penalty of Wu et al. (2016): a finished
hypothesis scores ``log P(Y|X) / lp(Y)`` with ``lp(Y) = ((5 + |Y|) / 6) ** alpha``, ``alpha = 0.6`` (no coverage
penalty). ``length_penalty_style="hf"`` divides by ``|Y| ** alpha`` instead, as transformers does. In both styles
``|Y|`` counts the generated tokens, including the EOS token that closed the hypothesis and excluding the prompt
(the decoder start token). Only the penalty differs between the styles: both run transformers' beam search (its
``2 * num_beams`` candidates per source and step, its finished-hypothesis bookkeeping, its early-stopping
heuristic), so with "hf" the output equals transformers' ``generate`` token for token.

Three things keep decoding cheap:

* The encoder runs once. Its keys/values for cross-attention are computed on the first decoder step, kept in the
  cache at one row per *source* (the decoder folds the beams into the query axis, see ``attention.py``) and
  reused; only the self-attention cache is reordered between steps.
* All sources × beams go through the decoder in one call per step.
* A source whose search is over leaves the batch (and the cache) at once, so long outputs of some sources do not
  make the others pay for steps they no longer need.

The search loops do not know which model produced the log-probabilities: they drive a *step function* (see
``DecodingStep``). ``EncoderDecoderStep`` is the one for ``EncoderDecoderModel``; a decoder-only model supplies
its own and calls ``search`` directly.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F

from . import vocab_projection

LENGTH_PENALTY_STYLES = ("gnmt", "hf")
# The paper's decoding, the one place these values are written (the harness's task table and decode settings take
# them from here). Rothe et al. 2020, §4: "beam search with a beam size of 4 and a length penalty of α = 0.6".
NUM_BEAMS = 4
LENGTH_PENALTY = 0.6
LENGTH_PENALTY_STYLE = "gnmt"  # the paper's penalty is GNMT's (Wu et al. 2016, eq. 14)

# transformers' sentinel for "not a candidate": scores are pushed this far down instead of being masked, and
# the tie-breaking that follows from it is part of the behaviour we reproduce.
_NOT_A_CANDIDATE = -1.0e9


# -- length penalty -----------------------------------------------------------------------------------------------
def length_penalty_denominator(length: int, alpha: float, style: str) -> float:
    """What a hypothesis' summed log-probability is divided by; ``length`` is its number of generated tokens.

    "gnmt": ((5 + length) / 6) ** alpha (Wu et al. 2016, eq. 14; equals 1 for a one-token hypothesis).
    "hf":   length ** alpha, as transformers computes it.
    """
    if style == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if style == "hf":
        return length ** alpha
    raise ValueError(f"length_penalty_style: expected one of {LENGTH_PENALTY_STYLES}, got {style!r}")


# -- step functions -----------------------------------------------------------------------------------------------
class DecodingStep(Protocol):
    """One decoder forward for every running hypothesis; returns fp32 log-probabilities [rows, vocab].

    ``sequences`` [rows, length] are the hypotheses so far (prompt included); a cached step only reads the last
    column. Rows are grouped by source, the same number of rows per source. From the second call on:
    ``rows`` [rows] says, for each row of this call, which row of the previous call it continues (beam reordering,
    expansion from one row per source to ``num_beams``, dropped sources), and ``sources`` (None: unchanged) lists
    which of the previous call's sources are still decoded, for the per-source state such as encoder keys/values.
    """

    def __call__(self, sequences: torch.Tensor, rows: torch.Tensor | None,
                 sources: torch.Tensor | None) -> torch.Tensor: ...


def select_cache_rows(cache, rows: torch.Tensor | None, sources: torch.Tensor | None):
    """Reorder the self-attention cache by ``rows`` and keep the cross-attention keys/values of ``sources``.

    The layout is ``outputs.PastKeyValues``: per layer (self_k, self_v, cross_k, cross_v), batch first.
    """
    out = []
    for self_k, self_v, cross_k, cross_v in cache:
        if rows is not None:
            self_k, self_v = self_k.index_select(0, rows), self_v.index_select(0, rows)
        if sources is not None and cross_k is not None:
            cross_k, cross_v = cross_k.index_select(0, sources), cross_v.index_select(0, sources)
        out.append((self_k, self_v, cross_k, cross_v))
    return tuple(out)


class Seq2SeqModel(Protocol):
    """What ``generate`` and the harness need from a sequence-to-sequence model, whatever its layout: the
    encoder-decoder (``EncoderDecoderModel``) and the decoder-only prefix LM (``GPT2PrefixLM``) both provide it."""

    def decoding_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      use_cache: bool = True) -> DecodingStep:
        """A cached step function over the sources ``input_ids``."""

    def decoding_start_id(self) -> int:
        """The token every output row starts with (the decoder start token, or the prefix LM's separator)."""

    def output_room(self, input_width: int) -> int:
        """How many tokens may be generated after an input of ``input_width`` tokens (positions left)."""

    def max_new_tokens(self, input_width: int, max_target: int) -> int:
        """How many tokens to generate after an input of ``input_width`` for a model trained on targets of up to
        ``max_target`` tokens."""

    def fit_lengths(self, max_source: int, max_target: int) -> tuple[int, int]:
        """(source, target) limits cut to the positions the model has."""

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight [vocab, hidden], bias) of the LM head."""

    @property
    def output_hidden_size(self) -> int:
        """Width of the states the LM head reads (the decoder's hidden size)."""


class EncoderDecoderStep:
    """Runs ``model.encode`` once, then the decoder body one token per call with the KV cache, and the LM head
    (``decoder.output_projection``, in vocabulary blocks: ``vocab_projection.log_probs``) on the last position only.

    With ``use_cache=False`` every call re-runs the decoder over the whole prefix (slow; it exists so tests can
    show that caching changes nothing).
    """

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, use_cache: bool = True):
        self.decoder = model.decoder
        self.use_cache = use_cache
        self.encoder_states, _ = model.encode(input_ids=input_ids, attention_mask=attention_mask)
        self.encoder_mask = attention_mask
        self.cache = None

    def __call__(self, sequences: torch.Tensor, rows: torch.Tensor | None = None,
                 sources: torch.Tensor | None = None) -> torch.Tensor:
        if sources is not None:
            if self.encoder_mask is not None:
                self.encoder_mask = self.encoder_mask.index_select(0, sources)
            if self.encoder_states is not None:
                self.encoder_states = self.encoder_states.index_select(0, sources)
        if self.cache is not None:
            self.cache = select_cache_rows(self.cache, rows, sources)
            tokens = sequences[:, -1:]
        else:
            tokens = sequences
        body = self.decoder.base_model(
            input_ids=tokens, encoder_hidden_states=self.encoder_states, encoder_attention_mask=self.encoder_mask,
            past_key_values=self.cache, use_cache=self.use_cache,
        )
        if self.use_cache:
            self.cache = body.past_key_values
            # The cross-attention keys/values now live in the cache; the states themselves are no longer needed.
            self.encoder_states = None
        weight, bias = self.decoder.output_projection()
        return vocab_projection.log_probs(body.last_hidden_state[:, -1], weight, bias)


# -- logits processing --------------------------------------------------------------------------------------------
def ban_eos_before_min_length(log_probs: torch.Tensor, generated: int, min_new_tokens: int,
                              eos_ids: torch.Tensor) -> None:
    """No EOS until ``min_new_tokens`` tokens have been generated."""
    if generated < min_new_tokens and eos_ids.numel():
        log_probs[:, eos_ids] = -float("inf")


def ban_repeated_ngrams(log_probs: torch.Tensor, sequences: torch.Tensor, ngram_size: int) -> None:
    """Forbid every token that would complete an n-gram already present in the row (prompt included, as HF does).

    The last ``n - 1`` tokens are compared with the first ``n - 1`` tokens of every n-token window of the row;
    each matching window bans its last token.
    """
    length = sequences.size(1)
    if ngram_size <= 0 or length < ngram_size:
        return
    vocab = log_probs.size(1)
    windows = sequences.unfold(1, ngram_size, 1)  # [rows, windows, n]
    suffix = sequences[:, length - ngram_size + 1:]  # [rows, n - 1]
    repeats = (windows[:, :, :-1] == suffix[:, None, :]).all(dim=2)
    # Windows that do not repeat point at a spare column past the vocabulary.
    banned_ids = torch.where(repeats, windows[:, :, -1].clamp(max=vocab), vocab)
    banned = torch.zeros(log_probs.size(0), vocab + 1, dtype=torch.bool, device=log_probs.device)
    banned.scatter_(1, banned_ids, True)
    log_probs.masked_fill_(banned[:, :vocab], -float("inf"))


class TokenBans:
    """The ``min_new_tokens`` and ``no_repeat_ngram_size`` bans, applied in place to one step's log-probabilities."""

    def __init__(self, min_new_tokens: int, no_repeat_ngram_size: int, eos_ids: torch.Tensor):
        self.min_new_tokens, self.ngram_size, self.eos_ids = min_new_tokens, no_repeat_ngram_size, eos_ids

    def __call__(self, log_probs: torch.Tensor, sequences: torch.Tensor, generated: int) -> torch.Tensor:
        ban_eos_before_min_length(log_probs, generated, self.min_new_tokens, self.eos_ids)
        ban_repeated_ngrams(log_probs, sequences, self.ngram_size)
        return log_probs


# -- search loops -------------------------------------------------------------------------------------------------
def greedy_search(step: DecodingStep, prompt: torch.Tensor, *, max_new_tokens: int, eos_ids: torch.Tensor,
                  pad_token_id: int, processors: TokenBans) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax decoding; a row leaves the batch the step it emits EOS. Returns (sequences, summed log-probs).

    One row per source, so the step's ``rows`` and ``sources`` are the same indices.
    """
    batch, prompt_len = prompt.shape
    device = prompt.device
    out = torch.full((batch, prompt_len + max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out[:, :prompt_len] = prompt
    out_scores = torch.zeros(batch, device=device)
    active = torch.arange(batch, device=device)
    running, scores = prompt, torch.zeros(batch, device=device)
    sources = None
    steps = 0
    for t in range(max_new_tokens):
        log_probs = processors(step(running, sources, sources), running, t)
        tokens = log_probs.argmax(dim=-1)
        scores = scores + log_probs.gather(1, tokens[:, None]).squeeze(1)
        running = torch.cat([running, tokens[:, None]], dim=1)
        steps = t + 1
        finished = torch.isin(tokens, eos_ids) if t + 1 < max_new_tokens else torch.ones_like(tokens, dtype=torch.bool)
        if bool(finished.any()):
            done = active[finished]
            out[done, : running.size(1)] = running[finished]
            out_scores[done] = scores[finished]
            keep = (~finished).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            active, running, scores = active[keep], running[keep], scores[keep]
            sources = keep
        else:
            sources = None
    return out[:, : prompt_len + steps], out_scores


def beam_search(step: DecodingStep, prompt: torch.Tensor, *, num_beams: int, max_new_tokens: int,
                eos_ids: torch.Tensor, pad_token_id: int, processors: TokenBans, length_penalty: float,
                length_penalty_style: str, early_stopping: bool | str,
                num_return_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search with transformers' semantics; returns (sequences, length-penalised scores), best first.

    Each step keeps the ``C = max(2, 1 + #eos) * num_beams`` best continuations of each source. Of those, the
    ones among the first ``num_beams`` that end in EOS (or reach ``max_new_tokens``) compete for the source's
    ``num_beams`` finished slots on their penalised score; the best ``num_beams`` that did not end continue.
    A source is over once all its slots are filled and ``early_stopping is True``, or once its best running
    hypothesis, penalised as if it ended now (at ``max_new_tokens`` for ``"never"`` with a positive penalty),
    cannot beat its worst finished one. Its rows then leave the batch. The first step runs one row per source
    (all beams would be identical), which is what transformers' -1e9 start scores for beams 1.. amount to.
    """
    batch, prompt_len = prompt.shape
    device = prompt.device
    beams = num_beams
    candidates = max(2, 1 + eos_ids.numel()) * beams
    total_len = prompt_len + max_new_tokens

    out_seqs = torch.full((batch, beams, total_len), pad_token_id, dtype=torch.long, device=device)
    out_scores = torch.full((batch, beams), _NOT_A_CANDIDATE, device=device)
    out_lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)

    def penalty(length: int) -> float:
        return length_penalty_denominator(length, length_penalty, length_penalty_style)

    # Per active source: running hypotheses [A, W, len] (W = 1 on the first step) and finished slots.
    active = torch.arange(batch, device=device)
    running = prompt[:, None, :]
    running_scores = torch.zeros(batch, 1, device=device)
    fin_seqs = out_seqs.clone()
    fin_scores = out_scores.clone()
    fin_lengths = out_lengths.clone()
    fin_filled = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    may_improve = torch.ones(batch, dtype=torch.bool, device=device)
    in_top_beams = torch.arange(candidates, device=device) < beams
    rows = sources = None

    for t in range(max_new_tokens):
        n_src, width, length = running.shape
        flat = running.reshape(n_src * width, length)
        log_probs = processors(step(flat, rows, sources), flat, t)
        vocab = log_probs.size(1)
        if width * vocab < candidates:
            raise ValueError(f"num_beams={beams}: the vocabulary ({vocab}) must have at least {candidates} tokens")
        # The step's log-probabilities are ours to overwrite: add the running scores in place.
        totals = log_probs.view(n_src, width, vocab).add_(running_scores[:, :, None]).view(n_src, width * vocab)
        cand_scores, cand_index = totals.topk(candidates, dim=1)
        parent = cand_index // vocab
        tokens = cand_index % vocab
        cand_seqs = torch.cat(
            [running.gather(1, parent[:, :, None].expand(-1, -1, length)), tokens[:, :, None]], dim=2
        )
        generated = t + 1
        if generated == max_new_tokens:
            ends = torch.ones_like(tokens, dtype=torch.bool)
        else:
            ends = torch.isin(tokens, eos_ids)

        # Hypotheses that go on: the best `beams` candidates that did not end.
        still_open = cand_scores + ends.float() * _NOT_A_CANDIDATE
        running_scores, chosen = still_open.topk(beams, dim=1)

        # Hypotheses that end here compete with the finished ones for the `beams` slots.
        ending = ends & in_top_beams[None, :]
        penalised = cand_scores / penalty(generated) + (~ending).float() * _NOT_A_CANDIDATE
        padded = F.pad(cand_seqs, (0, total_len - cand_seqs.size(2)), value=pad_token_id)
        merged_scores = torch.cat([fin_scores, penalised], dim=1)
        fin_scores, slot = merged_scores.topk(beams, dim=1)
        fin_seqs = torch.cat([fin_seqs, padded], dim=1).gather(1, slot[:, :, None].expand(-1, -1, total_len))
        fin_lengths = torch.cat([fin_lengths, torch.full_like(tokens, generated)], dim=1).gather(1, slot)
        fin_filled = torch.cat([fin_filled, ending], dim=1).gather(1, slot)

        # Is the source over?
        if early_stopping == "never" and length_penalty > 0.0:
            best_possible_length = max_new_tokens
        else:
            best_possible_length = generated
        best_possible = running_scores[:, :1] / penalty(best_possible_length)
        worst_finished = torch.where(fin_filled, fin_scores.min(dim=1, keepdim=True).values, _NOT_A_CANDIDATE)
        may_improve = may_improve & (best_possible > worst_finished).any(dim=1)
        over = ~may_improve
        if early_stopping is True:
            over = over | fin_filled.all(dim=1)
        if generated == max_new_tokens:
            over = torch.ones_like(over)

        if bool(over.any()):
            done = active[over]
            out_seqs[done], out_scores[done], out_lengths[done] = fin_seqs[over], fin_scores[over], fin_lengths[over]
        keep = (~over).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        # Rows of the next call, as indices into this call's rows.
        rows = (torch.arange(n_src, device=device)[:, None] * width + parent.gather(1, chosen))[keep].reshape(-1)
        running = cand_seqs.gather(1, chosen[:, :, None].expand(-1, -1, length + 1))[keep]
        running_scores = running_scores[keep]
        sources = keep if keep.numel() < n_src else None
        active, may_improve = active[keep], may_improve[keep]
        fin_seqs, fin_scores = fin_seqs[keep], fin_scores[keep]
        fin_lengths, fin_filled = fin_lengths[keep], fin_filled[keep]

    returned = num_return_sequences
    width = prompt_len + int(out_lengths[:, :returned].max())
    return out_seqs[:, :returned, :width].reshape(batch * returned, width), out_scores[:, :returned].reshape(-1)


def search(step: DecodingStep, prompt: torch.Tensor, *, num_beams: int, max_new_tokens: int, min_new_tokens: int,
           no_repeat_ngram_size: int, eos_token_id: int | Sequence[int] | None, pad_token_id: int,
           length_penalty: float, length_penalty_style: str, early_stopping: bool | str,
           num_return_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-agnostic entry point: greedy when ``num_beams == 1``, beam search otherwise.

    ``prompt`` [batch, prompt_len] is what every hypothesis starts with (the decoder start token for an
    encoder-decoder, the source for a decoder-only model); ``step`` is called once per generated token.
    Returns (sequences [batch * num_return_sequences, prompt_len + generated], scores); a greedy score is the
    summed log-probability, a beam score is that sum divided by the length penalty.
    """
    eos_ids = _eos_tensor(eos_token_id, prompt.device)
    processors = TokenBans(min_new_tokens, no_repeat_ngram_size, eos_ids)
    if num_beams == 1:
        return greedy_search(step, prompt, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                             pad_token_id=pad_token_id, processors=processors)
    return beam_search(step, prompt, num_beams=num_beams, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                       pad_token_id=pad_token_id, processors=processors, length_penalty=length_penalty,
                       length_penalty_style=length_penalty_style, early_stopping=early_stopping,
                       num_return_sequences=num_return_sequences)


# -- the model-level entry point ----------------------------------------------------------------------------------
def _eos_tensor(eos_token_id, device) -> torch.Tensor:
    if eos_token_id is None:
        ids: list[int] = []
    elif isinstance(eos_token_id, int) and not isinstance(eos_token_id, bool):
        ids = [eos_token_id]
    else:
        ids = list(eos_token_id)
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"eos_token_id: expected a non-negative int or a list of them, got {eos_token_id!r}")
    return torch.tensor(ids, dtype=torch.long, device=device)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"generate: {name} must be an integer >= {minimum}, got {value!r}")


def _check_token_id(name: str, value: int, vocab_size: int) -> None:
    """An id the output rows hold must be a token of the decoder's vocabulary: an id past it would never be
    produced (an EOS that cannot end a hypothesis) or could not be decoded (a start or pad id)."""
    if value >= vocab_size:
        raise ValueError(f"generate: {name}={value} is outside the output vocabulary [0, {vocab_size})")


def _vocab_sizes(model) -> tuple[int, int]:
    """(input vocabulary, output vocabulary): the encoder's and decoder's for an encoder-decoder, one for a
    decoder-only model."""
    config = model.config
    encoder, decoder = getattr(config, "encoder", config), getattr(config, "decoder", config)
    return encoder.vocab_size, decoder.vocab_size


def _check_inputs(model, input_ids: Any, attention_mask: Any) -> None:
    """Refuse what would fail deep inside the model (a reshape of an empty sequence, an embedding lookup past the
    vocabulary) or decode garbage without an error (a source with no attended token)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or 0 in input_ids.shape:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"generate: input_ids must be a non-empty [batch, length] tensor, got {shape}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"generate: input_ids must be an integer tensor, got {input_ids.dtype}")
    vocab, _ = _vocab_sizes(model)
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"generate: input_ids holds token id {low if low < 0 else high}, outside the input "
                         f"vocabulary [0, {vocab})")
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(f"generate: attention_mask must be a tensor or None, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"generate: attention_mask shape {tuple(attention_mask.shape)} does not match "
                         f"input_ids shape {tuple(input_ids.shape)}")
    if attention_mask.is_complex() or not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("generate: attention_mask must hold only 0 (padding) and 1 (token)")
    if getattr(model.config, "is_encoder_decoder", False):
        empty = (attention_mask == 0).all(dim=1).nonzero()
        if empty.numel():
            raise ValueError(f"generate: attention_mask row {int(empty[0])} attends to no token; every source of "
                             "an encoder-decoder needs at least one")


# transformers options that ask for something bertgen does not do: refused by name, not ignored.
_UNSUPPORTED = {
    "do_sample": "sampling is not implemented (beam search, or greedy with num_beams=1)",
}


def _max_new_tokens(max_new_tokens: int | None, max_length: int | None, room: int, model) -> int:
    """``max_length`` is transformers' encoder-decoder meaning: the length of a returned row, start token
    included, so it allows ``max_length - 1`` generated tokens. Both at once would leave one of them unused."""
    if max_length is not None:
        if max_new_tokens is not None:
            raise ValueError(f"generate: pass max_new_tokens or max_length, not both (got {max_new_tokens} and "
                             f"{max_length})")
        _check_int("max_length", max_length, 2)
        max_new_tokens = max_length - 1
    elif max_new_tokens is None:
        max_new_tokens = room
    _check_int("max_new_tokens", max_new_tokens, 1)
    if max_new_tokens > room:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} exceeds the {room} output positions of "
                         f"{type(model).__name__} (max_position_embeddings; a decoder-only model's input takes "
                         "its share)")
    return max_new_tokens


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    num_beams: int = NUM_BEAMS,
    length_penalty: float = LENGTH_PENALTY,
    length_penalty_style: str = LENGTH_PENALTY_STYLE,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    min_new_tokens: int = 0,
    no_repeat_ngram_size: int = 0,
    early_stopping: bool | str = True,
    decoder_start_token_id: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    num_return_sequences: int = 1,
    return_scores: bool = False,
    use_cache: bool = True,
    **options: Any,
):
    """Decode ``input_ids`` [batch, src_len] with a :class:`Seq2SeqModel` (``EncoderDecoderModel``,
    ``GPT2PrefixLM``); defaults are the paper's (beam 4, GNMT length penalty with alpha 0.6).

    Returns a LongTensor [batch * num_return_sequences, <= 1 + max_new_tokens] in transformers' layout: each row
    starts with the decoder start token, the ``num_return_sequences`` hypotheses of a source are consecutive (best
    first), and rows shorter than the longest are filled with ``pad_token_id``. With ``return_scores`` the result
    is ``(sequences, scores)``, scores as in ``search``. ``max_new_tokens`` defaults to as many tokens as the
    model has positions for (``output_room``); ``max_length`` is the alternative transformers users know: the
    longest returned row, start token included (transformers' meaning for an encoder-decoder), i.e.
    ``max_new_tokens = max_length - 1``; pass one of the two. The start token is ``model.decoding_start_id()``,
    the other ids default to ``model.config``'s (pad falls back to EOS, as in transformers); every id must be a
    token of the output vocabulary. ``early_stopping`` is transformers': True, False or "never".
    ``do_sample=False`` is accepted (it is what this does); sampling and any option not listed here are refused
    with a ValueError, so a transformers argument is never silently ignored. Dropout is not switched off here:
    ``from_pretrained`` returns the model in eval mode, a model that was trained needs ``model.eval()``.
    """
    unknown = sorted(k for k in options if k not in _UNSUPPORTED)
    if unknown:
        raise ValueError(f"generate: unknown option {unknown[0][:40]!r}; expected one of "
                         f"{', '.join(_GENERATE_OPTIONS)}")
    for name, value in options.items():
        if value is not False:
            raise ValueError(f"generate: {name}={value!r} is not supported: {_UNSUPPORTED[name]}")
    if not hasattr(model, "decoding_step"):
        raise ValueError(f"generate: {type(model).__name__} is not a Seq2SeqModel (no decoding_step); pass an "
                         "EncoderDecoderModel or a GPT2PrefixLM (a bare decoder cannot encode the input)")
    _check_inputs(model, input_ids, attention_mask)
    _, vocab = _vocab_sizes(model)
    _check_int("num_beams", num_beams, 1)
    _check_int("min_new_tokens", min_new_tokens, 0)
    _check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    _check_int("num_return_sequences", num_return_sequences, 1)
    if num_return_sequences > num_beams:
        raise ValueError(f"generate: num_return_sequences ({num_return_sequences}) cannot exceed num_beams "
                         f"({num_beams}); greedy decoding (num_beams=1) returns one sequence per source")
    if length_penalty_style not in LENGTH_PENALTY_STYLES:
        raise ValueError(f"generate: length_penalty_style must be one of {LENGTH_PENALTY_STYLES}, "
                         f"got {length_penalty_style!r}")
    if (not isinstance(length_penalty, (int, float)) or isinstance(length_penalty, bool)
            or not math.isfinite(length_penalty)):
        raise ValueError(f"generate: length_penalty must be a finite number, got {length_penalty!r}")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"generate: early_stopping must be True, False or 'never', got {early_stopping!r}")

    config = model.config
    if decoder_start_token_id is None:
        decoder_start_token_id = model.decoding_start_id()
    _check_int("decoder_start_token_id", decoder_start_token_id, 0)
    _check_token_id("decoder_start_token_id", decoder_start_token_id, vocab)
    if eos_token_id is None:
        eos_token_id = getattr(config, "eos_token_id", None)
    eos_ids = _eos_tensor(eos_token_id, input_ids.device)
    for eos in eos_ids.tolist():
        _check_token_id("eos_token_id", eos, vocab)
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
    if pad_token_id is None:
        # Without pad and EOS every hypothesis runs to max_new_tokens, so no position is ever filled.
        pad_token_id = int(eos_ids[0]) if eos_ids.numel() else 0
    _check_int("pad_token_id", pad_token_id, 0)
    _check_token_id("pad_token_id", pad_token_id, vocab)
    if num_beams > 1 and max(2, 1 + eos_ids.numel()) * num_beams > vocab:
        raise ValueError(f"generate: num_beams={num_beams}: the output vocabulary ({vocab}) must have at least "
                         f"{max(2, 1 + eos_ids.numel()) * num_beams} tokens (beam search keeps "
                         f"{max(2, 1 + eos_ids.numel())} candidates per beam)")

    max_new_tokens = _max_new_tokens(max_new_tokens, max_length, model.output_room(input_ids.size(1)), model)
    if min_new_tokens > max_new_tokens:
        raise ValueError(f"generate: min_new_tokens={min_new_tokens} exceeds max_new_tokens={max_new_tokens}; no "
                         "hypothesis could end with EOS")

    step = model.decoding_step(input_ids, attention_mask, use_cache=use_cache)
    prompt = torch.full((input_ids.size(0), 1), decoder_start_token_id, dtype=torch.long, device=input_ids.device)
    sequences, scores = search(
        step, prompt, num_beams=num_beams, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
        no_repeat_ngram_size=no_repeat_ngram_size, eos_token_id=eos_ids.tolist(), pad_token_id=pad_token_id,
        length_penalty=float(length_penalty), length_penalty_style=length_penalty_style,
        early_stopping=early_stopping, num_return_sequences=num_return_sequences,
    )
    return (sequences, scores) if return_scores else sequences


# What generate accepts, for the message that refuses anything else.
_GENERATE_OPTIONS = sorted(
    name for name, param in inspect.signature(generate).parameters.items()
    if param.kind is inspect.Parameter.KEYWORD_ONLY
) + sorted(_UNSUPPORTED)


# -- benchmark helper ---------------------------------------------------------------------------------------------
def measure_generation(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       repeats: int = 1, **generate_kwargs: Any) -> dict[str, Any]:
    """Time ``generate`` and count the decoder work it did, for benchmarks.

    Returns seconds (mean over ``repeats`` after one warm-up call), sequences_per_second, decoder_calls and
    decoder_rows (summed batch size of the decoder forwards of one call: what dropping finished sources saves
    shows up here), and the sequences of the last call.
    """
    _check_int("repeats", repeats, 1)
    batch_sizes: list[int] = []

    def count_rows(_module, _args, kwargs):
        batch_sizes.append(kwargs["input_ids"].size(0))

    body = model.decoder.base_model
    generate(model, input_ids, attention_mask, **generate_kwargs)
    handle = body.register_forward_pre_hook(count_rows, with_kwargs=True)
    try:
        start = time.perf_counter()
        for _ in range(repeats):
            batch_sizes.clear()
            sequences = generate(model, input_ids, attention_mask, **generate_kwargs)
        seconds = (time.perf_counter() - start) / repeats
    finally:
        handle.remove()
    if isinstance(sequences, tuple):
        sequences = sequences[0]
    return {
        "seconds": seconds,
        "sequences_per_second": input_ids.size(0) / seconds,
        "decoder_calls": len(batch_sizes),
        "decoder_rows": sum(batch_sizes),
        "sequences": sequences,
    }
