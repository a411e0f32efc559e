"""Greedy decoding and beam search over a step function (``DecodingStep``), with the paper's GNMT length penalty
and transformers' token bans; ``bertgen.generation`` runs them on a model (``generate``) and re-exports these names.
The search loops do not know which model produced the log-probabilities.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

LENGTH_PENALTY_STYLES = ("gnmt", "hf")

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
