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

from . import kv_cache, vocab_projection
# Re-exported: the search loops live in bertgen.search, imported from here.
from .search import (  # noqa: F401
    _NOT_A_CANDIDATE,
    LENGTH_PENALTY_STYLES,
    DecodingStep,
    TokenBans,
    _eos_tensor,
    ban_eos_before_min_length,
    ban_repeated_ngrams,
    beam_search,
    greedy_search,
    length_penalty_denominator,
    search,
)

# Decoding, the one place these values are written (the harness's task table and decode settings take them from
# here). Rothe et al. 2020 state beam 4 and length penalty α = 0.6 for WMT (§4.3); for the other tasks the paper
# states none, and these are our choice (docs/paper-settings.md).
NUM_BEAMS = 4
LENGTH_PENALTY = 0.6
# The paper names α, not a formula: GNMT's ((5+|Y|)/6)^α (Wu et al. 2016, eq. 14; Tensor2Tensor's, which the paper's
# models were trained with) is our reading of it.
LENGTH_PENALTY_STYLE = "gnmt"


# -- step functions -----------------------------------------------------------------------------------------------
def select_cache_rows(cache, rows: torch.Tensor | None, sources: torch.Tensor | None):
    """Reorder the self-attention cache by ``rows`` and keep the cross-attention keys/values of ``sources``.

    The layout is ``outputs.PastKeyValues``: per layer (self_k, self_v, cross_k, cross_v), batch first, with the
    self-attention keys/values in ``kv_cache.KVBuffer``s (reordered in place).
    """
    if rows is not None:
        kv_cache.reorder_rows(cache, rows)
    out = []
    for self_k, self_v, cross_k, cross_v in cache:
        if sources is not None and cross_k is not None:
            cross_k, cross_v = cross_k.index_select(0, sources), cross_v.index_select(0, sources)
        out.append((self_k, self_v, cross_k, cross_v))
    return tuple(out)


class Seq2SeqModel(Protocol):
    """What ``generate`` and the harness need from a sequence-to-sequence model, whatever its layout: the
    encoder-decoder (``EncoderDecoderModel``) and the decoder-only prefix LM (``GPT2PrefixLM``) both provide it."""

    def decoding_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      use_cache: bool = True, max_new_tokens: int | None = None) -> DecodingStep:
        """A cached step function over the sources ``input_ids`` (``max_new_tokens``: the most calls after the
        first, to size the cache; unknown, it grows)."""

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

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, use_cache: bool = True,
                 max_new_tokens: int | None = None):
        self.decoder = model.decoder
        self.use_cache = use_cache
        self.max_new_tokens = max_new_tokens
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
        if self.use_cache and self.cache is None:
            # Later calls append to these buffers in place. The cross-attention keys/values now live in the cache;
            # the states themselves are no longer needed.
            self.cache = kv_cache.appendable(body.past_key_values, self.max_new_tokens)
            self.encoder_states = None
        weight, bias = self.decoder.output_projection()
        return vocab_projection.log_probs(body.last_hidden_state[:, -1], weight, bias)


# -- the model-level entry point ----------------------------------------------------------------------------------
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

    step = model.decoding_step(input_ids, attention_mask, use_cache=use_cache, max_new_tokens=max_new_tokens)
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
