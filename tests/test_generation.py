"""bertgen.generation against transformers' generate, on identical weights.

The model is a tiny random BertGeneration encoder-decoder built from transformers' own classes and copied into
ours through save_pretrained / from_pretrained. Its LM head is re-initialised with a large spread (and EOS made
likely) so that the next-token distribution depends on the input, hypotheses end at varied lengths and no
decision is left to a floating-point tie.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from bertgen import EncoderDecoderModel  # noqa: E402
from bertgen.generation import (  # noqa: E402
    ban_repeated_ngrams,
    generate,
    length_penalty_denominator,
    measure_generation,
)
from tolerances import assert_fp32_close  # noqa: E402

PAD, EOS, START = 3, 2, 4  # PAD is not 0: transformers' beam search fills with EOS when the pad id is 0
MAX_NEW = 12
CONFIG = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              initializer_range=0.2, max_position_embeddings=64, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, pad_token_id=PAD, bos_token_id=START, eos_token_id=EOS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers model, our model), same weights; one CPU thread (faster for tiny models on a shared box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    enc = transformers.BertGenerationEncoder(transformers.BertGenerationConfig(**CONFIG))
    dec = transformers.BertGenerationDecoder(transformers.BertGenerationConfig(
        **CONFIG, is_decoder=True, add_cross_attention=True, tie_word_embeddings=False))
    hf = transformers.EncoderDecoderModel(encoder=enc, decoder=dec)
    with torch.no_grad():
        head = hf.decoder.lm_head
        head.decoder.weight.normal_(0.0, 0.5)
        head.bias[EOS] += 4.5
        # Untied, transformers' BertGeneration head adds lm_head.decoder.bias; checkpoints keep lm_head.bias.
        head.decoder.bias.copy_(head.bias)
    for cfg in (hf.config, hf.generation_config):
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = START, PAD, EOS
    hf.eval()
    directory = tmp_path_factory.mktemp("generation_model")
    hf.save_pretrained(directory)
    ours = EncoderDecoderModel.from_pretrained(directory).eval()
    x, m = make_batch(0)
    y = torch.randint(5, 99, (x.size(0), 7))
    with torch.no_grad():
        diff = (hf(input_ids=x, attention_mask=m, decoder_input_ids=y).logits
                - ours(input_ids=x, attention_mask=m, decoder_input_ids=y).logits).abs().max()
    assert diff <= 1e-5, f"the copied model's logits differ by {diff}"
    yield hf, ours
    torch.set_num_threads(threads)


def make_batch(seed: int, batch: int = 6, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sources with right padding of random length (every source keeps at least 3 tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, CONFIG["vocab_size"], (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for i in range(batch):
        keep = int(torch.randint(3, length + 1, (1,), generator=g))
        mask[i, keep:] = 0
        ids[i, keep:] = PAD
    return ids, mask


def generated_length(row: torch.Tensor) -> int:
    """Tokens generated in a returned row (start token excluded): up to and including EOS, else all of them."""
    hits = (row[1:] == EOS).nonzero()
    return int(hits[0]) + 1 if hits.numel() else row.numel() - 1


def teacher_forced_log_prob(model, ids, mask, row: torch.Tensor) -> float:
    """Sum of the log-probabilities of a returned hypothesis, recomputed by one uncached forward pass."""
    n = generated_length(row)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=row[None, :n]).logits[0]
    return float(logits.float().log_softmax(-1).gather(1, row[1:n + 1, None]).sum())


# -- parity with transformers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    {},
    {"min_new_tokens": 4},
    {"no_repeat_ngram_size": 2},
    {"min_new_tokens": 3, "no_repeat_ngram_size": 3},
], ids=["plain", "min_new_tokens", "no_repeat_ngram", "both"])
def test_greedy_matches_transformers(models, options):
    hf, ours = models
    padded_rows = 0
    for seed in range(3):
        ids, mask = make_batch(seed)
        with torch.no_grad():
            expected = hf.generate(ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=MAX_NEW,
                                   **options)
        got = generate(ours, ids, mask, num_beams=1, max_new_tokens=MAX_NEW, **options)
        assert torch.equal(got, expected), f"seed {seed}:\n{got}\n{expected}"
        padded_rows += int((got[:, -1] == PAD).sum())
    # The batches must exercise rows that stop early while others go on.
    assert padded_rows > 0


BEAM_CASES = [
    dict(num_beams=4, length_penalty=0.6, early_stopping=True, num_return_sequences=1),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=2),
    dict(num_beams=4, length_penalty=2.0, early_stopping=True, num_return_sequences=4),
    dict(num_beams=4, length_penalty=2.0, early_stopping=False, num_return_sequences=1,
         no_repeat_ngram_size=3, min_new_tokens=2),
    dict(num_beams=4, length_penalty=0.6, early_stopping="never", num_return_sequences=3),
    dict(num_beams=3, length_penalty=-0.5, early_stopping="never", num_return_sequences=1),
]


@pytest.mark.parametrize("options", BEAM_CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_beam_search_matches_transformers(models, options):
    hf, ours = models
    for seed in (1, 2):
        ids, mask = make_batch(seed)
        with torch.no_grad():
            expected = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=MAX_NEW,
                                   return_dict_in_generate=True, output_scores=True, **options)
        got, scores = generate(ours, ids, mask, max_new_tokens=MAX_NEW, length_penalty_style="hf",
                               return_scores=True, **options)
        assert torch.equal(got, expected.sequences), f"seed {seed}:\n{got}\n{expected.sequences}"
        assert_fp32_close(scores, expected.sequences_scores)


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("max_length", [2, 5, 9])
def test_max_length_means_what_it_means_in_transformers(models, num_beams, max_length):
    """For an encoder-decoder, transformers' max_length is the longest returned row, decoder start included."""
    hf, ours = models
    ids, mask = make_batch(4)
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=mask, do_sample=False, num_beams=num_beams, max_length=max_length,
                               length_penalty=1.0, early_stopping=True)
    got = ours.generate(ids, mask, num_beams=num_beams, max_length=max_length, length_penalty=1.0,
                        length_penalty_style="hf", early_stopping=True, do_sample=False)
    assert torch.equal(got, expected), f"\n{got}\n{expected}"
    assert got.size(1) <= max_length


# -- length penalty ----------------------------------------------------------------------------------------------
def test_length_penalty_denominators():
    assert length_penalty_denominator(1, 0.6, "gnmt") == 1.0
    assert length_penalty_denominator(7, 0.6, "gnmt") == pytest.approx(2.0 ** 0.6)
    assert length_penalty_denominator(8, 0.5, "hf") == pytest.approx(8 ** 0.5)
    assert length_penalty_denominator(9, 0.0, "gnmt") == length_penalty_denominator(9, 0.0, "hf") == 1.0
    with pytest.raises(ValueError, match="length_penalty_style"):
        length_penalty_denominator(3, 0.6, "wu")


def test_gnmt_scores_are_the_papers_formula(models):
    """Returned scores are sum(log p) / ((5 + |Y|) / 6) ** alpha ("gnmt") or / |Y| ** alpha ("hf"), best first;
    with alpha = 0 the two styles coincide, with alpha = 0.6 they pick hypotheses of different lengths."""
    _, ours = models
    ids, mask = make_batch(6)
    beams = 4
    results = {}
    for style in ("gnmt", "hf"):
        seqs, scores = generate(ours, ids, mask, num_beams=beams, num_return_sequences=beams, length_penalty=0.6,
                                length_penalty_style=style, max_new_tokens=MAX_NEW, return_scores=True)
        for r, row in enumerate(seqs):
            src = r // beams
            n = generated_length(row)
            by_hand = teacher_forced_log_prob(ours, ids[src:src + 1], mask[src:src + 1], row)
            by_hand /= ((5 + n) / 6) ** 0.6 if style == "gnmt" else n ** 0.6
            assert float(scores[r]) == pytest.approx(by_hand, abs=1e-4), (style, r, row)
        assert torch.all(scores.view(-1, beams).diff(dim=1) <= 0)
        results[style] = seqs
    # GNMT's denominator grows more slowly with length than |Y| ** alpha, so it favours shorter hypotheses.
    best = zip(results["gnmt"][::beams], results["hf"][::beams])
    lengths = [(generated_length(gnmt), generated_length(hf)) for gnmt, hf in best]
    assert all(gnmt <= hf for gnmt, hf in lengths)
    assert any(gnmt < hf for gnmt, hf in lengths)

    neutral = [generate(ours, ids, mask, num_beams=beams, length_penalty=0.0, length_penalty_style=style,
                        max_new_tokens=MAX_NEW, return_scores=True) for style in ("gnmt", "hf")]
    assert torch.equal(neutral[0][0], neutral[1][0])
    assert torch.equal(neutral[0][1], neutral[1][1])


# -- caching and batching ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_beams", [1, 4])
def test_cached_decoding_equals_uncached(models, num_beams):
    _, ours = models
    ids, mask = make_batch(4)
    kwargs = dict(num_beams=num_beams, max_new_tokens=MAX_NEW, no_repeat_ngram_size=3, return_scores=True,
                  num_return_sequences=2 if num_beams > 1 else 1)
    cached, cached_scores = generate(ours, ids, mask, use_cache=True, **kwargs)
    uncached, uncached_scores = generate(ours, ids, mask, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert_fp32_close(cached_scores, uncached_scores)


class DecoderCalls:
    """Records, for every decoder forward, its row count and the batch of the encoder keys/values it reads."""

    def __init__(self, model):
        self.rows, self.sources = [], []
        self.handle = model.decoder.base_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, _module, _args, kwargs):
        self.rows.append(kwargs["input_ids"].size(0))
        past = kwargs["past_key_values"]
        cross = past[0][2] if past is not None else kwargs["encoder_hidden_states"]
        self.sources.append(cross.size(0))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_finished_sources_leave_the_batch(models):
    """Beam search on a batch costs, step by step, exactly what the still-running sources cost on their own; the
    encoder keys/values stay one row per running source."""
    _, ours = models
    ids, mask = make_batch(5)
    beams = 4
    kwargs = dict(num_beams=beams, max_new_tokens=MAX_NEW, length_penalty=0.6)
    alone_steps = []
    alone_rows = []
    for i in range(ids.size(0)):
        with DecoderCalls(ours) as calls:
            alone_rows.append(generate(ours, ids[i:i + 1], mask[i:i + 1], **kwargs)[0])
        alone_steps.append(len(calls.rows))
    assert min(alone_steps) < max(alone_steps), "the batch must mix sources that finish at different steps"

    with DecoderCalls(ours) as calls:
        batched = generate(ours, ids, mask, **kwargs)
    running = [sum(n > t for n in alone_steps) for t in range(max(alone_steps))]
    assert calls.sources == running
    assert calls.rows == [ids.size(0)] + [beams * r for r in running[1:]]
    for row, alone in zip(batched, alone_rows):
        assert torch.equal(row[:alone.numel()], alone)
        assert torch.all(row[alone.numel():] == PAD)


def test_greedy_drops_finished_rows(models):
    _, ours = models
    ids, mask = make_batch(0)
    with DecoderCalls(ours) as calls:
        out = generate(ours, ids, mask, num_beams=1, max_new_tokens=MAX_NEW)
    lengths = [generated_length(row) for row in out]
    assert min(lengths) < max(lengths)
    assert calls.rows == [sum(n > t for n in lengths) for t in range(max(lengths))]
    assert calls.sources == calls.rows


def test_model_generate_and_benchmark_helper(models):
    _, ours = models
    ids, mask = make_batch(6)
    kwargs = dict(num_beams=4, max_new_tokens=MAX_NEW, length_penalty=0.6)
    out = ours.generate(ids, mask, **kwargs)
    assert torch.equal(out, generate(ours, ids, mask, **kwargs))
    assert torch.all(out[:, 0] == START)
    stats = measure_generation(ours, ids, mask, **kwargs)
    assert torch.equal(stats["sequences"], out)
    assert stats["decoder_calls"] <= out.size(1) - 1
    assert ids.size(0) <= stats["decoder_rows"] <= ids.size(0) + 4 * ids.size(0) * (stats["decoder_calls"] - 1)
    assert stats["seconds"] > 0


# -- logits processing and arguments -----------------------------------------------------------------------------
def test_ban_repeated_ngrams():
    seqs = torch.tensor([[5, 6, 7, 5, 6], [5, 6, 5, 8, 9]])
    log_probs = torch.zeros(2, 10)
    ban_repeated_ngrams(log_probs, seqs, 3)  # row 0 ends with (5, 6), seen before followed by 7
    assert torch.isinf(log_probs).nonzero().tolist() == [[0, 7]]
    log_probs = torch.zeros(2, 10)
    ban_repeated_ngrams(log_probs, seqs, 2)  # row 0: after 6 came 7; row 1: 9 never seen before
    assert torch.isinf(log_probs).nonzero().tolist() == [[0, 7]]
    log_probs = torch.zeros(1, 10)
    ban_repeated_ngrams(log_probs, torch.tensor([[5, 6, 5]]), 2)
    assert torch.isinf(log_probs).nonzero().tolist() == [[0, 6]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=True), "num_beams"),
    (dict(length_penalty_style="wu"), "length_penalty_style"),
    (dict(length_penalty="0.6"), "length_penalty"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=65), "max_position_embeddings"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(early_stopping=1), "early_stopping"),
    (dict(eos_token_id=-1), "eos_token_id"),
    (dict(num_beams=50), "vocabulary"),
])
def test_bad_arguments_raise(models, kwargs, message):
    _, ours = models
    ids, mask = make_batch(0, batch=2)
    with pytest.raises(ValueError, match=message):
        generate(ours, ids, mask, **{"max_new_tokens": 4, **kwargs})


def test_bad_inputs_and_missing_start_token(models, monkeypatch):
    _, ours = models
    ids, mask = make_batch(0, batch=2)
    with pytest.raises(ValueError, match="input_ids"):
        generate(ours, ids[0], max_new_tokens=4)
    with pytest.raises(ValueError, match="attention_mask"):
        generate(ours, ids, mask[:, :-1], max_new_tokens=4)
    with pytest.raises(ValueError, match="encode"):
        generate(ours.decoder, ids, mask, max_new_tokens=4, decoder_start_token_id=START)
    monkeypatch.setattr(ours.config, "decoder_start_token_id", None)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        generate(ours, ids, mask, max_new_tokens=4)
    assert generate(ours, ids, mask, max_new_tokens=4, decoder_start_token_id=START)[0, 0] == START
