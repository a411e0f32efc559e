"""Float parity of bertgen's core model with transformers 5.24 on identical weights (fp32, tolerance 1e-5).

transformers is the oracle here and only here: each test builds the transformers model from a tiny config, writes
it with ``save_pretrained`` and loads it with bertgen's ``from_pretrained`` (so the key maps are exercised too),
then compares outputs, losses and gradients. Where transformers 5.24 no longer has a feature (relative position
embeddings, ``tie_encoder_decoder``), the test says so and uses an independent oracle instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as hf
from transformers.cache_utils import EncoderDecoderCache

from bertgen import (
    BertGenerationConfig,
    BertGenerationDecoder,
    BertGenerationEncoder,
    EncoderDecoderConfig,
    EncoderDecoderModel,
)
from tolerances import assert_fp32_close

# transformers' EncoderDecoderModel warns on every loss it computes; the warning is about pre-4.12 checkpoints.
pytestmark = pytest.mark.filterwarnings("ignore:Version v4.12.0 introduces:FutureWarning")

BATCH, SRC_LEN, TGT_LEN = 3, 9, 7


def source_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source ids with a real padding mask (rows of length 9, 6 and 4)."""
    ids = torch.randint(3, vocab, (BATCH, SRC_LEN))
    mask = torch.ones_like(ids)
    for row, length in enumerate((SRC_LEN, 6, 4)):
        mask[row, length:] = 0
        ids[row, length:] = 0
    return ids, mask


def target_labels(vocab: int) -> torch.Tensor:
    """Labels with -100 on the padded tail of two rows."""
    labels = torch.randint(3, vocab, (BATCH, TGT_LEN))
    labels[1, 5:] = -100
    labels[2, 3:] = -100
    return labels


def hf_config(tiny: dict, eager: bool = False, **changes) -> hf.BertGenerationConfig:
    config = hf.BertGenerationConfig(**{**tiny, **changes})
    if eager:  # transformers returns attention weights only from its eager kernel
        config._attn_implementation = "eager"
    return config


def hf_encoder_decoder(tiny: dict, eager: bool = False) -> hf.EncoderDecoderModel:
    encoder = hf.BertGenerationEncoder(hf_config(tiny, eager))
    decoder = hf.BertGenerationDecoder(hf_config(tiny, eager, is_decoder=True, add_cross_attention=True))
    model = hf.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = 2
    model.config.pad_token_id = 0
    return model.eval()


def through_disk(hf_model, our_class, directory: Path):
    """transformers' save_pretrained → bertgen's from_pretrained: the weights our model is tested with."""
    hf_model.save_pretrained(directory)
    return our_class.from_pretrained(directory).eval()


def tie_hf_encoder_decoder_by_hand(model: hf.EncoderDecoderModel) -> int:
    """transformers 5.24 has no ``tie_encoder_decoder`` any more (the string does not occur in its source), so the
    shared (bertShare) oracle is an HF model whose decoder parameters are made the encoder's by hand: every decoder
    stack parameter whose name and shape the encoder also has; the LM head is then re-tied to the (now shared) word
    embeddings. Returns the number of tied tensors."""
    encoder_params = dict(model.encoder.named_parameters())
    tied = 0
    for name, param in list(model.decoder.bert.named_parameters()):
        other = encoder_params.get(name)
        if other is not None and other.shape == param.shape:
            *path, leaf = name.split(".")
            module = model.decoder.bert
            for part in path:
                module = getattr(module, part)
            setattr(module, leaf, other)
            tied += 1
    model.decoder.lm_head.decoder.weight = model.decoder.bert.embeddings.word_embeddings.weight
    return tied


def compare_gradients(ours: torch.nn.Module, theirs: torch.nn.Module) -> int:
    """Every parameter of ours has a same-named parameter in theirs with the same .grad. Returns how many."""
    their_params = dict(theirs.named_parameters(remove_duplicate=False))
    compared = 0
    for name, param in ours.named_parameters():
        assert name in their_params, f"{name} has no counterpart in transformers"
        assert param.grad is not None, f"{name}: no gradient"
        assert their_params[name].grad is not None, f"{name}: transformers has no gradient"
        assert_fp32_close(param.grad, their_params[name].grad, f"grad of {name}")
        compared += 1
    return compared


def loss_logits_and_gradients_match(ours, theirs, ids, mask, labels, what: str, **our_kwargs):
    """Both models on one batch, each loss backpropagated: the losses, the logits (where ours returns them) and every
    parameter's gradient agree. Returns (our output, their output, how many gradients were compared)."""
    expected = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    got = ours(input_ids=ids, attention_mask=mask, labels=labels, **our_kwargs)
    assert_fp32_close(got.loss, expected.loss, f"{what} loss")
    if got.logits is not None:
        assert_fp32_close(got.logits, expected.logits, f"{what} logits")
    expected.loss.backward()
    got.loss.backward()
    return got, expected, compare_gradients(ours, theirs)


# -- single stacks ---------------------------------------------------------------------------------------------
def test_encoder_hidden_states_with_padding_match_hf(tiny, tmp_path):
    theirs = hf.BertGenerationEncoder(hf_config(tiny)).eval()
    ours = through_disk(theirs, BertGenerationEncoder, tmp_path)
    ids, mask = source_batch(tiny["vocab_size"])
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_fp32_close(got, expected, "encoder last_hidden_state")
    # The padding mask matters: without it the short rows change.
    with torch.no_grad():
        unmasked = ours(input_ids=ids).last_hidden_state
    assert (unmasked[2, :4] - got[2, :4]).abs().max() > 1e-3


def test_decoder_logits_and_loss_with_cross_attention_match_hf(tiny, tmp_path):
    theirs = hf.BertGenerationDecoder(hf_config(tiny, is_decoder=True, add_cross_attention=True)).eval()
    ours = through_disk(theirs, BertGenerationDecoder, tmp_path)
    assert ours.lm_head.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    _, enc_mask = source_batch(tiny["vocab_size"])
    enc_states = torch.randn(BATCH, SRC_LEN, tiny["hidden_size"])
    dec_ids = torch.randint(3, tiny["vocab_size"], (BATCH, TGT_LEN))
    dec_mask = torch.ones_like(dec_ids)
    dec_mask[2, 4:] = 0  # right padding on the target side too
    labels = target_labels(tiny["vocab_size"])
    kwargs = dict(input_ids=dec_ids, attention_mask=dec_mask, encoder_hidden_states=enc_states,
                  encoder_attention_mask=enc_mask, labels=labels)
    with torch.no_grad():
        expected, got = theirs(**kwargs), ours(**kwargs)
    assert_fp32_close(got.logits, expected.logits, "decoder logits")
    assert_fp32_close(got.loss, expected.loss, "decoder next-token loss")


# -- encoder-decoder -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("return_logits", [True, False], ids=["with_logits", "loss_only_fast_path"])
def test_encoder_decoder_loss_logits_and_every_gradient_match_hf(tiny, tmp_path, return_logits):
    theirs = hf_encoder_decoder(tiny)
    ours = through_disk(theirs, EncoderDecoderModel, tmp_path)
    ids, mask = source_batch(tiny["vocab_size"])
    got, expected, compared = loss_logits_and_gradients_match(
        ours, theirs, ids, mask, target_labels(tiny["vocab_size"]), "encoder-decoder", return_logits=return_logits)
    assert (got.logits is not None) == return_logits
    assert_fp32_close(got.encoder_last_hidden_state, expected.encoder_last_hidden_state, "encoder states")
    assert compared == len(list(ours.parameters()))
    # Sanity: gradients reach both the encoder and the cross-attention.
    assert ours.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert ours.decoder.bert.encoder.layer[0].crossattention.self.key.weight.grad.abs().sum() > 0


def test_encoder_decoder_of_different_widths_matches_hf(tiny, tmp_path):
    """A wider encoder reaches the decoder through ``enc_to_dec_proj``, as in transformers."""
    encoder = hf.BertGenerationEncoder(hf_config(tiny, hidden_size=48, intermediate_size=50))
    decoder = hf.BertGenerationDecoder(hf_config(tiny, is_decoder=True, add_cross_attention=True))
    theirs = hf.EncoderDecoderModel(encoder=encoder, decoder=decoder).eval()
    theirs.config.decoder_start_token_id, theirs.config.pad_token_id = 2, 0
    ours = through_disk(theirs, EncoderDecoderModel, tmp_path)
    assert ours.enc_to_dec_proj.weight.shape == (tiny["hidden_size"], 48)
    assert ours.loading_report.newly_initialized == []
    ids, mask = source_batch(tiny["vocab_size"])
    loss_logits_and_gradients_match(ours, theirs, ids, mask, target_labels(tiny["vocab_size"]),
                                    "through enc_to_dec_proj")
    # A fresh projection gets BERT's initialisation, not PyTorch's default (uniform with a much larger range).
    fresh = EncoderDecoderModel(EncoderDecoderConfig(encoder=BertGenerationConfig(**{**tiny, "hidden_size": 48}),
                                                     decoder=BertGenerationConfig(**tiny, is_decoder=True,
                                                                                  add_cross_attention=True)))
    assert fresh.enc_to_dec_proj.weight.abs().max() <= 2 * 0.02 and fresh.enc_to_dec_proj.bias.abs().max() == 0


def test_shared_encoder_decoder_matches_hand_tied_hf(tiny):
    """bertShare: ours with tie_encoder_decoder=True against HF with the same parameters tied by hand."""
    # transformers 5.24 accepts tie_encoder_decoder=True in the config but ties nothing: verify, then tie by hand.
    hf_tied_request = hf.EncoderDecoderModel(hf.EncoderDecoderConfig.from_encoder_decoder_configs(
        hf_config(tiny), hf_config(tiny, is_decoder=True, add_cross_attention=True), tie_encoder_decoder=True))
    assert hf_tied_request.config.tie_encoder_decoder is True
    assert hf_tied_request.decoder.bert.encoder.layer[0].attention.self.query.weight is not \
        hf_tied_request.encoder.encoder.layer[0].attention.self.query.weight, \
        "transformers ties encoder and decoder again: compare against its own tie instead of the hand-tied model"
    config = EncoderDecoderConfig(
        encoder=BertGenerationConfig(**tiny),
        decoder=BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True),
        tie_encoder_decoder=True, decoder_start_token_id=2, pad_token_id=0,
    )
    ours = EncoderDecoderModel(config).eval()
    layer0 = ours.decoder.bert.encoder.layer[0]
    assert layer0.attention.self.query.weight is ours.encoder.encoder.layer[0].attention.self.query.weight
    assert layer0.crossattention.self.query.weight is not ours.encoder.encoder.layer[0].attention.self.query.weight
    assert ours.decoder.lm_head.decoder.weight is ours.encoder.embeddings.word_embeddings.weight

    theirs = hf_encoder_decoder(tiny)
    missing, unexpected = theirs.load_state_dict(
        {**ours.state_dict(), "decoder.lm_head.decoder.bias": ours.decoder.lm_head.bias.detach()}, strict=False)
    assert not missing and not unexpected
    tied = tie_hf_encoder_decoder_by_hand(theirs)
    assert tied == sum(1 for n, p in ours.decoder.bert.named_parameters(remove_duplicate=False)
                       if p is dict(ours.encoder.named_parameters()).get(n))
    # The shared model has one copy of the stack: HF's hand-tied model and ours count the same parameters.
    assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters())

    ids, mask = source_batch(tiny["vocab_size"])
    loss_logits_and_gradients_match(ours, theirs, ids, mask, target_labels(tiny["vocab_size"]), "shared")


# -- incremental decoding --------------------------------------------------------------------------------------
def test_cached_incremental_decoding_matches_full_forward_and_hf_cache(tiny, tmp_path):
    theirs = hf_encoder_decoder(tiny)
    ours = through_disk(theirs, EncoderDecoderModel, tmp_path)
    ids, mask = source_batch(tiny["vocab_size"])
    dec_ids = torch.randint(3, tiny["vocab_size"], (BATCH, TGT_LEN))
    with torch.no_grad():
        full = ours(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids).logits
        encoder_outputs = ours.encoder(input_ids=ids, attention_mask=mask)
        hf_encoder_outputs = theirs.encoder(input_ids=ids, attention_mask=mask)
        past, hf_cache = None, None
        for t in range(TGT_LEN):
            step = ours(attention_mask=mask, decoder_input_ids=dec_ids[:, t:t + 1], encoder_outputs=encoder_outputs,
                        past_key_values=past, use_cache=True)
            past = step.past_key_values
            hf_step = theirs(attention_mask=mask, decoder_input_ids=dec_ids[:, t:t + 1],
                             encoder_outputs=hf_encoder_outputs, cache=hf_cache, use_cache=True)
            hf_cache = hf_step.cache
            assert_fp32_close(step.logits[:, 0], full[:, t], f"cached step {t} vs full forward")
            assert_fp32_close(step.logits, hf_step.logits, f"cached step {t} vs transformers' cache")
    assert len(past) == tiny["num_hidden_layers"]
    self_k, self_v, cross_k, cross_v = past[0]
    head_dim = tiny["hidden_size"] // tiny["num_attention_heads"]
    assert self_k.shape == (BATCH, tiny["num_attention_heads"], TGT_LEN, head_dim)
    assert cross_k.shape == (BATCH, tiny["num_attention_heads"], SRC_LEN, head_dim)
    assert isinstance(hf_cache, EncoderDecoderCache) and hf_cache.get_seq_length() == TGT_LEN


def test_beam_queries_against_unexpanded_encoder_cache_match_hf_with_expanded_encoder(tiny, tmp_path):
    """Beam search keeps one copy of the cross-attention keys per source; HF repeats the encoder states per beam."""
    beams = 2
    theirs = hf_encoder_decoder(tiny)
    ours = through_disk(theirs, EncoderDecoderModel, tmp_path)
    ids, mask = source_batch(tiny["vocab_size"])
    dec_ids = torch.randint(3, tiny["vocab_size"], (BATCH * beams, 4))
    with torch.no_grad():
        encoder_outputs = ours.encoder(input_ids=ids, attention_mask=mask)
        hf_states = theirs.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.repeat_interleave(beams, 0)
        hf_mask = mask.repeat_interleave(beams, 0)
        # First step: the cross keys are computed from the B encoder rows, the self keys for the B*beams queries.
        first = ours.decoder(input_ids=dec_ids[:, :1], encoder_hidden_states=encoder_outputs.last_hidden_state,
                             encoder_attention_mask=mask, use_cache=True)
        assert first.past_key_values[0][2].size(0) == BATCH
        assert first.past_key_values[0][0].size(0) == BATCH * beams
        past = first.past_key_values
        hf_full = theirs.decoder(input_ids=dec_ids, encoder_hidden_states=hf_states,
                                 encoder_attention_mask=hf_mask).logits
        assert_fp32_close(first.logits[:, 0], hf_full[:, 0], "beam step 0")
        for t in range(1, dec_ids.size(1)):
            step = ours.decoder(input_ids=dec_ids[:, t:t + 1], encoder_attention_mask=mask, past_key_values=past,
                                use_cache=True)
            past = step.past_key_values
            assert_fp32_close(step.logits[:, 0], hf_full[:, t], f"beam step {t}")


# -- attention paths and returned internals --------------------------------------------------------------------
def test_sdpa_path_equals_eager_path(tiny):
    """output_attentions=True forces bertgen's eager kernel; the result must not depend on the kernel."""
    encoder = BertGenerationEncoder(BertGenerationConfig(**tiny)).eval()
    decoder = BertGenerationDecoder(BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True)).eval()
    ids, mask = source_batch(tiny["vocab_size"])
    dec_ids = torch.randint(3, tiny["vocab_size"], (BATCH, TGT_LEN))
    dec_mask = torch.ones_like(dec_ids)
    dec_mask[1, 5:] = 0
    with torch.no_grad():
        sdpa, eager = (encoder(input_ids=ids, attention_mask=mask, output_attentions=flag) for flag in (False, True))
        assert sdpa.attentions is None and len(eager.attentions) == tiny["num_hidden_layers"]
        assert_fp32_close(sdpa.last_hidden_state, eager.last_hidden_state, "encoder sdpa vs eager")
        states = sdpa.last_hidden_state
        # Causal without padding (the kernel's is_causal flag), then causal with decoder padding (explicit mask).
        for dec_attention_mask in (None, dec_mask):
            kw = dict(input_ids=dec_ids, attention_mask=dec_attention_mask, encoder_hidden_states=states,
                      encoder_attention_mask=mask)
            assert_fp32_close(decoder(**kw).logits, decoder(**kw, output_attentions=True).logits,
                         f"decoder sdpa vs eager (decoder mask: {dec_attention_mask is not None})")
        # With a cache: one query row against past keys.
        prefix = decoder(input_ids=dec_ids[:, :4], encoder_hidden_states=states, encoder_attention_mask=mask,
                         use_cache=True)
        kw = dict(input_ids=dec_ids[:, 4:5], encoder_attention_mask=mask, past_key_values=prefix.past_key_values)
        assert_fp32_close(decoder(**kw).logits, decoder(**kw, output_attentions=True).logits, "cached sdpa vs eager")


def test_hidden_states_and_attentions_match_hf_eager(tiny, tmp_path):
    theirs = hf_encoder_decoder(tiny, eager=True)
    ours = through_disk(theirs, EncoderDecoderModel, tmp_path)
    ids, mask = source_batch(tiny["vocab_size"])
    dec_ids = torch.randint(3, tiny["vocab_size"], (BATCH, TGT_LEN))
    kw = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_ids, output_attentions=True,
              output_hidden_states=True)
    with torch.no_grad():
        expected, got = theirs(**kw), ours(**kw)
    layers, heads = tiny["num_hidden_layers"], tiny["num_attention_heads"]
    shapes = {
        "encoder_hidden_states": (layers + 1, (BATCH, SRC_LEN, tiny["hidden_size"])),
        "decoder_hidden_states": (layers + 1, (BATCH, TGT_LEN, tiny["hidden_size"])),
        "encoder_attentions": (layers, (BATCH, heads, SRC_LEN, SRC_LEN)),
        "decoder_attentions": (layers, (BATCH, heads, TGT_LEN, TGT_LEN)),
        "cross_attentions": (layers, (BATCH, heads, TGT_LEN, SRC_LEN)),
    }
    for field, (count, shape) in shapes.items():
        ours_t, theirs_t = getattr(got, field), getattr(expected, field)
        assert len(ours_t) == len(theirs_t) == count, f"{field}: {len(ours_t)} vs {len(theirs_t)} entries"
        for i, (a, b) in enumerate(zip(ours_t, theirs_t)):
            assert tuple(a.shape) == shape, f"{field}[{i}]: shape {tuple(a.shape)}"
            assert_fp32_close(a, b, f"{field}[{i}]")
    # Masked source positions get no attention; decoder self-attention is causal.
    assert got.encoder_attentions[0][2, :, :, 4:].abs().max() == 0
    assert torch.triu(got.decoder_attentions[0], diagonal=1).abs().max() == 0


# -- relative position embeddings ------------------------------------------------------------------------------
# transformers 5.x removed ``position_embedding_type`` "relative_key" / "relative_key_query" from BERT and
# BertGeneration (no occurrence of "relative_key" in models/bert or models/bert_generation), and silently builds an
# absolute-position model from such a config. It therefore cannot be the oracle; the reference below writes out the
# BERT 4.x equations from the raw parameters instead, sharing no code with bertgen:
#   scores = (q·kᵀ + q·Dᵀ [+ k·Dᵀ for relative_key_query]) / sqrt(d),  D[l, r] = distance_embedding(l − r + P − 1),
#   masked with the additive finfo.min mask, softmax, · v.
# BertGeneration adds absolute position embeddings in its embedding layer whatever the attention type.
def _layer_norm(x, p, name, eps):
    return F.layer_norm(x, x.shape[-1:], p[name + ".weight"], p[name + ".bias"], eps)


def _linear(x, p, name):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def reference_attention(p, prefix, x, kv, additive_mask, heads, relative_type, max_pos, query_offset):
    b, lq, hidden = x.shape
    d = hidden // heads

    def split(t):
        return t.view(b, -1, heads, d).permute(0, 2, 1, 3)

    q, k, v = (split(_linear(src, p, f"{prefix}.self.{n}")) for src, n in ((x, "query"), (kv, "key"), (kv, "value")))
    scores = q @ k.transpose(-1, -2)
    if relative_type is not None:
        pos_l = torch.arange(query_offset, query_offset + lq)[:, None]
        pos_r = torch.arange(k.size(2))[None, :]
        table = p[f"{prefix}.self.distance_embedding.weight"][pos_l - pos_r + max_pos - 1]  # [lq, lk, d]
        scores = scores + torch.einsum("bhld,lrd->bhlr", q, table)
        if relative_type == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", k, table)
    scores = scores / math.sqrt(d)
    if additive_mask is not None:
        scores = scores + additive_mask
    probs = scores.softmax(-1)
    context = (probs @ v).permute(0, 2, 1, 3).reshape(b, lq, hidden)
    return _layer_norm(_linear(context, p, f"{prefix}.output.dense") + x, p, f"{prefix}.output.LayerNorm", 1e-12), probs


def reference_stack(model: BertGenerationEncoder, ids, mask, encoder_states=None, encoder_mask=None,
                    embedding_offset=None):
    """The whole BertGeneration stack from its parameters: embeddings, (causal) self-attention, cross, FFN.

    ``embedding_offset`` replaces the absolute position rows (BERT with relative positions adds only the
    token-type vector)."""
    config = model.config
    p = dict(model.named_parameters())
    eps, heads, max_pos = config.layer_norm_eps, config.num_attention_heads, config.max_position_embeddings
    b, length = ids.shape
    offset = p["embeddings.position_embeddings.weight"][:length] if embedding_offset is None else embedding_offset
    x = p["embeddings.word_embeddings.weight"][ids] + offset
    x = _layer_norm(x, p, "embeddings.LayerNorm", eps)
    keep = mask[:, None, None, :].bool()
    if config.is_decoder:
        keep = keep & torch.ones(length, length, dtype=torch.bool).tril()
    self_mask = (~keep).float() * torch.finfo(torch.float32).min
    cross_mask = None
    if encoder_mask is not None:
        cross_mask = (1.0 - encoder_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    all_probs = []
    for i in range(config.num_hidden_layers):
        layer = f"encoder.layer.{i}"
        x, probs = reference_attention(p, f"{layer}.attention", x, x, self_mask, heads,
                                       config.position_embedding_type, max_pos, 0)
        all_probs.append(probs)
        if encoder_states is not None:
            x, _ = reference_attention(p, f"{layer}.crossattention", x, encoder_states, cross_mask, heads, None,
                                       max_pos, 0)
        h = F.gelu(_linear(x, p, f"{layer}.intermediate.dense"))
        x = _layer_norm(_linear(h, p, f"{layer}.output.dense") + x, p, f"{layer}.output.LayerNorm", eps)
    return x, all_probs


@pytest.mark.parametrize("relative_type", ["relative_key", "relative_key_query"])
def test_relative_positions_match_independent_reference(tiny, relative_type):
    encoder = BertGenerationEncoder(BertGenerationConfig(**tiny, position_embedding_type=relative_type)).eval()
    decoder = BertGenerationDecoder(BertGenerationConfig(**tiny, position_embedding_type=relative_type,
                                                         is_decoder=True, add_cross_attention=True)).eval()
    assert encoder.encoder.layer[0].attention.self.distance_embedding.weight.shape == \
        (2 * tiny["max_position_embeddings"] - 1, tiny["hidden_size"] // tiny["num_attention_heads"])
    # BERT's init (std 0.02) makes the relative scores negligible next to q·kᵀ; larger ones make them count.
    for model in (encoder, decoder):
        for name, param in model.named_parameters():
            if "distance_embedding" in name:
                torch.nn.init.normal_(param, std=1.0)
    ids, mask = source_batch(tiny["vocab_size"])
    dec_ids = torch.randint(3, tiny["vocab_size"], (BATCH, TGT_LEN))
    with torch.no_grad():
        got = encoder(input_ids=ids, attention_mask=mask, output_attentions=True)
        expected, expected_probs = reference_stack(encoder, ids, mask)
        assert_fp32_close(got.last_hidden_state, expected, f"{relative_type} encoder")
        for i, (a, b) in enumerate(zip(got.attentions, expected_probs)):
            assert_fp32_close(a, b, f"{relative_type} encoder attention probabilities, layer {i}")

        states = got.last_hidden_state
        full = decoder.bert(input_ids=dec_ids, encoder_hidden_states=states, encoder_attention_mask=mask)
        expected, _ = reference_stack(decoder.bert, dec_ids, torch.ones_like(dec_ids), states, mask)
        assert_fp32_close(full.last_hidden_state, expected, f"{relative_type} decoder")

        # Incremental decoding: the query of step t sits at distance t − j from key j, not 0 − j.
        past = None
        for t in range(TGT_LEN):
            step = decoder.bert(input_ids=dec_ids[:, t:t + 1], encoder_hidden_states=states,
                                encoder_attention_mask=mask, past_key_values=past, use_cache=True)
            past = step.past_key_values
            assert_fp32_close(step.last_hidden_state[:, 0], expected[:, t], f"{relative_type} cached step {t}")

    # Without the relative scores the result differs, so the comparison above checks them.
    absolute = BertGenerationEncoder(BertGenerationConfig(**tiny))
    absolute.load_state_dict({k: v for k, v in encoder.state_dict().items() if "distance_embedding" not in k})
    with torch.no_grad():
        plain = absolute.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (plain - got.last_hidden_state).abs().max() > 1e-3


def test_bert_checkpoint_with_relative_positions_adds_no_absolute_positions(tiny, tmp_path):
    """BERT 4.x's embedding layer skips the position table when the attention is relative; loading such a BERT
    checkpoint must reproduce word + token_type[0] only (checked against the reference equations)."""
    source = BertGenerationEncoder(BertGenerationConfig(**tiny, position_embedding_type="relative_key_query"))
    for name, param in source.named_parameters():
        if "distance_embedding" in name:
            torch.nn.init.normal_(param, std=1.0)
    token_types = torch.randn(2, tiny["hidden_size"])
    state = {"bert." + k: v for k, v in source.state_dict().items()}
    state["bert.embeddings.token_type_embeddings.weight"] = token_types
    state["bert.embeddings.position_embeddings.weight"] = torch.randn(tiny["max_position_embeddings"],
                                                                     tiny["hidden_size"])  # BERT never reads it
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**tiny, "model_type": "bert", "type_vocab_size": 2,
                                                      "position_embedding_type": "relative_key_query"}))
    ours = BertGenerationEncoder.from_pretrained(tmp_path).eval()
    ids, mask = source_batch(tiny["vocab_size"])
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        expected, _ = reference_stack(source.eval(), ids, mask, embedding_offset=token_types[0])
    assert_fp32_close(got, expected, "BERT relative_key_query checkpoint")


def test_transformers_has_no_relative_positions_any_more():
    """Why the relative tests use their own oracle: the day transformers brings them back, compare against it."""
    source = Path(hf.models.bert_generation.modeling_bert_generation.__file__).read_text()
    source += Path(hf.models.bert.modeling_bert.__file__).read_text()
    assert "relative_key" not in source


# -- a real pretrained checkpoint ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_inputs():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (2, 12), generator=generator)
    ids[:, 0] = 101
    ids[0, -1] = 102
    ids[1, 8] = 102
    ids[1, 9:] = 0
    return ids, ids.ne(0).long()


def test_minilm_encoder_matches_bert_model_with_token_types_folded(minilm_dir, minilm_inputs):
    ids, mask = minilm_inputs
    ours = BertGenerationEncoder.from_pretrained(minilm_dir).eval()
    report = ours.loading_report
    assert sorted(report.unused) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert report.newly_initialized == []
    assert report.folded == ["embeddings.token_type_embeddings.weight"]
    theirs = hf.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_fp32_close(got, expected, "MiniLM last_hidden_state")


def test_minilm_bert2bert_reports_new_cross_attention_and_trains(minilm_dir, minilm_inputs):
    ids, mask = minilm_inputs
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, decoder_start_token_id=101,
                                                               pad_token_id=0)
    enc_report, dec_report = model.loading_report["encoder"], model.loading_report["decoder"]
    assert enc_report.newly_initialized == []
    expected_new = {f"bert.encoder.layer.{i}.crossattention.{part}"
                    for i in range(6)
                    for part in ("self.query.weight", "self.query.bias", "self.key.weight", "self.key.bias",
                                 "self.value.weight", "self.value.bias", "output.dense.weight", "output.dense.bias",
                                 "output.LayerNorm.weight", "output.LayerNorm.bias")}
    expected_new.add("lm_head.bias")
    assert set(dec_report.newly_initialized) == expected_new
    assert len(dec_report.newly_initialized) == len(expected_new)
    assert model.decoder.lm_head.decoder.weight is model.decoder.bert.embeddings.word_embeddings.weight
    # One vocabulary on both sides: one word-embedding matrix, as bertgen.schemes builds bert2bert.
    assert model.encoder.embeddings.word_embeddings.weight is model.decoder.bert.embeddings.word_embeddings.weight

    labels = ids.masked_fill(mask == 0, -100)[:, :8]
    model.train()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() > 1.0
    assert out.logits.shape == (2, 8, 30522)
    out.loss.backward()
    for name in ("encoder.embeddings.word_embeddings.weight",
                 "decoder.bert.encoder.layer.5.crossattention.self.key.weight",
                 "decoder.lm_head.bias"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
