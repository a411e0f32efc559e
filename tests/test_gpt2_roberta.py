"""GPT-2 and RoBERTa families: parity with transformers on identical weights (fp32, ≤ 1e-5), checkpoint layouts
(Conv1D transposes both ways, RoBERTa's position offset and MLM head), and the ``gpt`` prefix LM."""

from __future__ import annotations

import pytest
import torch
import transformers

from bertgen import (
    BertGenerationEncoder,
    CheckpointError,
    ConfigError,
    EncoderDecoderConfig,
    EncoderDecoderModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2PrefixLM,
)
from bertgen.configuration import BertGenerationConfig
from tolerances import assert_fp32_close

GPT2_TINY = dict(vocab_size=140, n_positions=80, n_embd=32, n_layer=2, n_head=4, n_inner=None,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=139, eos_token_id=139)
ROBERTA_TINY = dict(vocab_size=130, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    max_position_embeddings=66, type_vocab_size=1, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    layer_norm_eps=1e-5)


def _randomise_layer_norms(model: torch.nn.Module) -> None:
    """Freshly built LayerNorms are the identity; random ones make the parity checks see them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)


@pytest.fixture(scope="module")
def hf_gpt2_cross(tmp_path_factory):
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_TINY, add_cross_attention=True)).eval()
    _randomise_layer_norms(model)
    directory = tmp_path_factory.mktemp("gpt2_cross")
    model.save_pretrained(directory)
    return model, directory


@pytest.fixture(scope="module")
def hf_gpt2_plain(tmp_path_factory):
    torch.manual_seed(2)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_TINY)).eval()
    _randomise_layer_norms(model)
    directory = tmp_path_factory.mktemp("gpt2_plain")
    model.save_pretrained(directory)
    return model, directory


def _batch(vocab: int, batch: int = 3, length: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length - 2:] = 0
    return ids, mask


# -- GPT-2 with cross-attention ---------------------------------------------------------------------------------
def test_gpt2_cross_attention_decoder_matches_transformers(hf_gpt2_cross):
    hf, directory = hf_gpt2_cross
    ours = GPT2LMHeadModel.from_pretrained(directory).eval()
    assert ours.loading_report.newly_initialized == []
    assert ours.lm_head.weight is ours.transformer.wte.weight

    ids, mask = _batch(140)
    enc = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(3))
    enc_mask = torch.ones(3, 5, dtype=torch.long)
    enc_mask[1, 3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    kwargs = dict(input_ids=ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask,
                  labels=labels)
    with torch.no_grad():
        expected = hf(**kwargs, output_hidden_states=True)
        got = ours(**kwargs, output_hidden_states=True)
    assert_fp32_close(got.logits, expected.logits)
    assert_fp32_close(got.loss, expected.loss)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3
    for ours_h, hf_h in zip(got.hidden_states, expected.hidden_states):
        assert_fp32_close(ours_h, hf_h)


def test_gpt2_cached_incremental_decoding_matches_full_forward(hf_gpt2_cross):
    hf, directory = hf_gpt2_cross
    ours = GPT2LMHeadModel.from_pretrained(directory).eval()
    ids, _ = _batch(140, batch=2, length=6, seed=4)
    enc = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(5))
    enc_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        full = hf(input_ids=ids, encoder_hidden_states=enc, encoder_attention_mask=enc_mask).logits
        past, steps = None, []
        for t in range(ids.size(1)):
            out = ours(input_ids=ids[:, t:t + 1], encoder_hidden_states=enc if past is None else None,
                       encoder_attention_mask=enc_mask, past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits)
    assert_fp32_close(torch.cat(steps, dim=1), full)
    # The cache layout EncoderDecoderModel and generation rely on: (self_k, self_v, cross_k, cross_v) per layer.
    assert len(past) == 2 and all(len(layer) == 4 for layer in past)
    assert past[0][0].shape == (2, 4, 6, 8) and past[0][2].shape == (2, 4, 4, 8)


def test_gpt2_save_is_loaded_by_transformers(hf_gpt2_cross, tmp_path):
    hf, directory = hf_gpt2_cross
    ours = GPT2LMHeadModel.from_pretrained(directory)
    ours.save_pretrained(tmp_path)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    for (name, theirs), (_, original) in zip(reloaded.state_dict().items(), hf.state_dict().items()):
        torch.testing.assert_close(theirs, original, atol=0, rtol=0, msg=name)
    again = GPT2LMHeadModel.from_pretrained(tmp_path)
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


def test_gpt2_conv1d_weights_are_transposed_on_load(hf_gpt2_cross):
    hf, directory = hf_gpt2_cross
    ours = GPT2LMHeadModel.from_pretrained(directory)
    block, hf_block = ours.transformer.h[1], hf.transformer.h[1]
    assert hf_block.attn.c_attn.weight.shape == (32, 96) and block.attn.c_attn.weight.shape == (96, 32)
    torch.testing.assert_close(block.attn.c_attn.weight, hf_block.attn.c_attn.weight.t(), atol=0, rtol=0)
    torch.testing.assert_close(block.crossattention.q_attn.weight, hf_block.crossattention.q_attn.weight.t(),
                               atol=0, rtol=0)
    torch.testing.assert_close(block.mlp.c_fc.weight, hf_block.mlp.c_fc.weight.t(), atol=0, rtol=0)


def test_plain_gpt2_gains_random_cross_attention_and_keeps_first_positions(hf_gpt2_plain):
    hf, directory = hf_gpt2_plain
    ours = GPT2LMHeadModel.from_pretrained(directory, add_cross_attention=True, n_positions=48)
    report = ours.loading_report
    assert sorted(report.newly_initialized) == sorted(
        f"transformer.h.{i}.{part}.{p}" for i in range(2)
        for part in ("crossattention.c_attn", "crossattention.q_attn", "crossattention.c_proj", "ln_cross_attn")
        for p in ("weight", "bias")
    )
    assert "wpe.weight[48:80]" in report.unused
    torch.testing.assert_close(ours.transformer.wpe.weight, hf.transformer.wpe.weight[:48], atol=0, rtol=0)


def test_gpt2_plain_lm_matches_transformers_with_padding(hf_gpt2_plain):
    hf, directory = hf_gpt2_plain
    ours = GPT2LMHeadModel.from_pretrained(directory).eval()
    ids, mask = _batch(140, seed=6)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=ids)
        got = ours(input_ids=ids, attention_mask=mask, labels=ids)
    keep = mask.bool()
    assert_fp32_close(got.logits[keep], expected.logits[keep])
    assert_fp32_close(got.loss, expected.loss)


def test_gpt2_decoder_in_encoder_decoder_round_trips_through_transformers(tmp_path):
    torch.manual_seed(7)
    enc = BertGenerationConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    dec = GPT2Config(**GPT2_TINY, add_cross_attention=True)
    model = EncoderDecoderModel(EncoderDecoderConfig(encoder=enc, decoder=dec, decoder_start_token_id=139,
                                                     pad_token_id=139, eos_token_id=139)).eval()
    model.save_pretrained(tmp_path)
    hf = transformers.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    ours = EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert ours.loading_report.newly_initialized == []
    src = torch.randint(3, 99, (2, 5))
    tgt = torch.randint(0, 139, (2, 4))
    with torch.no_grad():
        expected = hf(input_ids=src, decoder_input_ids=tgt).logits
        assert_fp32_close(model(input_ids=src, decoder_input_ids=tgt).logits, expected)
        assert_fp32_close(ours(input_ids=src, decoder_input_ids=tgt).logits, expected)
        # The training fast path (LM head only where a label counts) gives the full path's loss.
        labels = tgt.masked_fill(torch.tensor([[False] * 4, [False, False, True, True]]), -100)
        full = model(input_ids=src, labels=labels).loss
        fast = model(input_ids=src, labels=labels, return_logits=False).loss
    assert_fp32_close(fast, full)


def test_bare_gpt2model_checkpoint_loads_and_shape_errors_name_the_tensor(tmp_path):
    torch.manual_seed(12)
    hf = transformers.GPT2Model(transformers.GPT2Config(**GPT2_TINY))
    hf.save_pretrained(tmp_path)
    ours = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert ours.loading_report.newly_initialized == []
    torch.testing.assert_close(ours.lm_head.weight, hf.wte.weight, atol=0, rtol=0)
    with pytest.raises(CheckpointError, match=r"tensor transformer.wte.weight has shape \(140, 32\) in the "
                                              r"checkpoint but \(150, 32\) in the model"):
        GPT2LMHeadModel.from_pretrained(tmp_path, vocab_size=150)


# -- RoBERTa ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_roberta(tmp_path_factory):
    torch.manual_seed(8)
    model = transformers.RobertaModel(transformers.RobertaConfig(**ROBERTA_TINY)).eval()
    _randomise_layer_norms(model)
    directory = tmp_path_factory.mktemp("roberta")
    model.save_pretrained(directory)
    return model, directory


def test_roberta_encoder_matches_transformers(hf_roberta):
    hf, directory = hf_roberta
    ours = BertGenerationEncoder.from_pretrained(directory).eval()
    assert ours.config.position_offset == 2  # padding_idx + 1
    assert ours.loading_report.newly_initialized == []
    assert "embeddings.token_type_embeddings.weight" in ours.loading_report.folded
    ids = torch.randint(3, 130, (3, 9), generator=torch.Generator().manual_seed(9))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 1, 0  # right padding with RoBERTa's pad id
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert_fp32_close(got[keep], expected[keep])


def test_roberta_mlm_checkpoint_head_is_reported_unused(tmp_path):
    torch.manual_seed(10)
    hf = transformers.RobertaForMaskedLM(transformers.RobertaConfig(**ROBERTA_TINY))
    hf.save_pretrained(tmp_path)
    ours = BertGenerationEncoder.from_pretrained(tmp_path)
    unused = set(ours.loading_report.unused)
    assert {"lm_head.dense.weight", "lm_head.layer_norm.weight", "lm_head.bias"} <= unused
    assert ours.loading_report.newly_initialized == []
    torch.testing.assert_close(ours.embeddings.word_embeddings.weight, hf.roberta.embeddings.word_embeddings.weight,
                               atol=0, rtol=0)


def test_encoder_decoder_from_roberta_and_gpt2_checkpoints_reports_cross_attention_as_new(hf_roberta,
                                                                                          hf_gpt2_plain):
    _, roberta_dir = hf_roberta
    _, gpt2_dir = hf_gpt2_plain
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(roberta_dir, gpt2_dir, decoder_start_token_id=139)
    assert model.loading_report["encoder"].newly_initialized == []
    new = model.loading_report["decoder"].newly_initialized
    assert new and all(".crossattention." in k or ".ln_cross_attn." in k for k in new)
    assert isinstance(model.decoder, GPT2LMHeadModel) and model.decoder.config.add_cross_attention


# -- the gpt scheme's prefix LM ------------------------------------------------------------------------------------
def _prefix_lm(directory) -> GPT2PrefixLM:
    return GPT2PrefixLM.from_pretrained(directory, pad_token_id=139, decoder_start_token_id=139).eval()


def test_prefix_lm_loss_counts_only_target_tokens(hf_gpt2_plain):
    """Against transformers on ``source ⟨sep⟩ target`` with -100 on the source: same target logits, same loss."""
    hf, directory = hf_gpt2_plain
    model = _prefix_lm(directory)
    src = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    src_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[20, 21, 22, 139], [30, 139, -100, -100]])
    with torch.no_grad():
        out = model(input_ids=src, attention_mask=src_mask, labels=labels)
        fast = model(input_ids=src, attention_mask=src_mask, labels=labels, return_logits=False)
    assert out.logits.shape == (2, 4, 140)
    assert_fp32_close(fast.loss, out.loss)

    # transformers, one unpadded row at a time: [source, sep, target]; labels -100 over source and separator.
    losses, counts = [], []
    for row in range(2):
        s = src[row][src_mask[row].bool()]
        t = labels[row][labels[row].ne(-100)]
        full = torch.cat([s, torch.tensor([139]), t])[None]
        hf_labels = torch.cat([torch.full((s.numel() + 1,), -100), t])[None]
        with torch.no_grad():
            ref = hf(input_ids=full, labels=hf_labels)
        assert_fp32_close(out.logits[row, : t.numel()], ref.logits[0, s.numel(): s.numel() + t.numel()])
        losses.append(ref.loss * t.numel())
        counts.append(t.numel())
    assert_fp32_close(out.loss, sum(losses) / sum(counts))

    # The source is context only: changing a source token changes the loss, but no source position is a target.
    other = src.clone()
    other[0, 0] = 44
    with torch.no_grad():
        changed = model(input_ids=other, attention_mask=src_mask, labels=labels).loss
    assert not torch.isclose(changed, out.loss)


def test_prefix_lm_greedy_generation_matches_a_plain_greedy_loop(hf_gpt2_plain):
    hf, directory = hf_gpt2_plain
    model = _prefix_lm(directory)
    src = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 139, 139]])
    src_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = model.generate(src, src_mask, num_beams=1, max_new_tokens=6)
    assert got[:, 0].tolist() == [139, 139]
    for row in range(2):
        seq = torch.cat([src[row][src_mask[row].bool()], torch.tensor([139])])[None]
        generated = []
        for _ in range(6):
            with torch.no_grad():
                token = int(hf(input_ids=seq).logits[0, -1].argmax())
            generated.append(token)
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
            if token == 139:
                break
        row_out = got[row, 1: 1 + len(generated)].tolist()
        assert row_out == generated


def test_prefix_lm_beam_search_with_and_without_cache_agree(hf_gpt2_plain):
    _, directory = hf_gpt2_plain
    model = _prefix_lm(directory)
    src = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 139, 139], [40, 41, 139, 139, 139]])
    src_mask = (torch.arange(5)[None] < torch.tensor([[5], [3], [2]])).long()
    cached, cached_scores = model.generate(src, src_mask, num_beams=3, max_new_tokens=5, return_scores=True)
    plain, plain_scores = model.generate(src, src_mask, num_beams=3, max_new_tokens=5, return_scores=True,
                                         use_cache=False)
    assert torch.equal(cached, plain)
    assert_fp32_close(cached_scores, plain_scores)


# -- bad input ----------------------------------------------------------------------------------------------------
def test_wrong_family_checkpoints_are_refused(hf_gpt2_plain, hf_roberta):
    _, gpt2_dir = hf_gpt2_plain
    _, roberta_dir = hf_roberta
    with pytest.raises(CheckpointError, match=r"'roberta'.*GPT2LMHeadModel.*'gpt2'"):
        GPT2LMHeadModel.from_pretrained(roberta_dir)
    with pytest.raises(CheckpointError, match=r"gpt2 checkpoint cannot be loaded as BertGenerationEncoder"):
        BertGenerationEncoder.from_pretrained(gpt2_dir)


def test_prefix_lm_rejects_labels_outside_the_vocabulary(hf_gpt2_plain):
    model = _prefix_lm(hf_gpt2_plain[1])
    with pytest.raises(ValueError, match=r"labels: token id 140 is outside the vocabulary \[0, 140\)"):
        model(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[7, 140]]))
    with pytest.raises(TypeError, match=r"unexpected arguments \['encoder_outputs'\]"):
        model(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[7, 8]]), encoder_outputs=None)


def test_gpt2_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"GPT2Config.n_embd: expected a multiple of n_head=5"):
        GPT2Config(n_embd=32, n_head=5)
    with pytest.raises(ConfigError, match=r"GPT2Config.activation_function"):
        GPT2Config(activation_function="swishy")
    with pytest.raises(ConfigError, match=r"GPT2Config.eos_token_id: expected None or an id below vocab_size=10"):
        GPT2Config(vocab_size=10, bos_token_id=None, eos_token_id=50256)
    assert GPT2Config.from_dict({"hidden_size": 64, "num_hidden_layers": 3, "n_head": 4}).n_embd == 64
