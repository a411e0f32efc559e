"""The paper's ten warm-start schemes: Table 1's parameter counts, building every scheme from checkpoints saved by
transformers' own BertModel / RobertaModel / GPT2LMHeadModel (the real key layouts), training a step, decoding,
exactly which weights are random, the §5 warm-start knob, and the errors for mismatched inputs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import transformers

from bertgen import CheckpointError, EncoderDecoderModel, GPT2PrefixLM
from bertgen.schemes import (
    SCHEMES,
    TABLE1_TOTAL_PARAMS_M,
    WarmStart,
    build,
    paper_layers,
    parameter_counts,
)

BERT_TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
ROBERTA_TINY = dict(vocab_size=130, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    max_position_embeddings=66, type_vocab_size=1, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    layer_norm_eps=1e-5)
GPT2_TINY = dict(vocab_size=140, n_positions=80, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0, bos_token_id=139, eos_token_id=139)


def _bert_vocab(size: int) -> list[str]:
    """BERT's layout: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103."""
    tokens = [f"[unused{i}]" for i in range(size)]
    tokens[0], tokens[100], tokens[101], tokens[102], tokens[103] = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    return tokens


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random checkpoints saved by transformers, with the tokenizer files beside each (byte-level BPE: a
    vocabulary and no merges)."""
    root = tmp_path_factory.mktemp("schemes")
    torch.manual_seed(11)
    bert = transformers.BertModel(transformers.BertConfig(**BERT_TINY)).eval()
    bert.save_pretrained(root / "bert")
    (root / "bert" / "vocab.txt").write_text("\n".join(_bert_vocab(120)) + "\n", encoding="utf-8")

    roberta = transformers.RobertaModel(transformers.RobertaConfig(**ROBERTA_TINY)).eval()
    roberta.save_pretrained(root / "roberta")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{f"Ġw{i}": i for i in range(4, 129)}, "<mask>": 129}
    (root / "roberta" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (root / "roberta" / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2_TINY)).eval()
    gpt2.save_pretrained(root / "gpt2")
    vocab = {**{f"w{i}": i for i in range(139)}, "<|endoftext|>": 139}
    (root / "gpt2" / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (root / "gpt2" / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return {"bert": (bert, root / "bert"), "roberta": (roberta, root / "roberta"), "gpt2": (gpt2, root / "gpt2")}


def _dirs(checkpoints) -> dict:
    return {role: directory for role, (_, directory) in checkpoints.items()}


# -- Table 1 --------------------------------------------------------------------------------------------------------
def test_parameter_counts_reproduce_table1():
    counts = parameter_counts("base")
    assert set(counts) == set(SCHEMES) == set(TABLE1_TOTAL_PARAMS_M)
    for name, total in counts.items():
        assert abs(total / 1e6 - TABLE1_TOTAL_PARAMS_M[name]) <= 1.0, (name, total)
    # The arithmetic behind the rows (BERT-base cased: V=28996, H=768, I=3072, 12 layers, 512 positions; GPT-2:
    # 50257 tokens at 512 positions): one shared embedding matrix, a decoder with cross-attention and output bias.
    V, H, I, L = 28996, 768, 3072, 12
    attention = 4 * (H * H + H) + 2 * H
    layer = attention + (H * I + I) + (I * H + H) + 2 * H
    bert = V * H + 512 * H + 2 * H + L * layer
    assert counts["bert2bert"] == bert + (bert - V * H) + L * attention + V
    assert counts["bertShare"] == bert + L * attention + V
    assert counts["gpt"] == 50257 * H + 512 * H + L * layer + 2 * H


def test_ten_bert_large_layers_give_the_section5_totals():
    """§5: bert2bert and bertShare initialised from the first 10 layers of BERT-large have 324M and 198M."""
    from bertgen.schemes import PAPER_CHECKPOINT_CONFIGS

    large = PAPER_CHECKPOINT_CONFIGS["large"]
    for name, paper_m in (("bert2bert", 324), ("bertShare", 198)):
        model, _ = build(name, **large, device="meta", warm_start=WarmStart(layers=10))
        assert len(model.encoder.encoder.layer) == 10
        assert abs(model.num_parameters() / 1e6 - paper_m) <= 1.0, (name, model.num_parameters())


def test_table1_constants_match_the_paper_csv(shared_dir):
    with open(shared_dir / "paper" / "table1_parameters.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["metric"] == "total_params_M"]
    from_csv = {r["model"].split(" ")[0]: int(r["value"]) for r in rows}
    assert from_csv == TABLE1_TOTAL_PARAMS_M


# -- every scheme: build, random weights, train, decode ----------------------------------------------------------
SHARED_EMBEDDINGS = {
    "encoder.embeddings.word_embeddings.weight", "decoder.bert.embeddings.word_embeddings.weight",
    "decoder.lm_head.decoder.weight", "decoder.transformer.wte.weight", "decoder.lm_head.weight",
}


def _cross(keys):
    return {k for k in keys if ".crossattention." in k or ".ln_cross_attn." in k}


# What the paper says is random in each scheme (plus the BERT decoder's output bias, which no BERT checkpoint has).
EXPECTED_RANDOM = {
    "rnd2rnd": lambda keys: set(keys),
    "bert2rnd": lambda keys: {k for k in keys if k.startswith("decoder.")} - SHARED_EMBEDDINGS,
    "rnd2bert": lambda keys: ({k for k in keys if k.startswith("encoder.")} - SHARED_EMBEDDINGS) | _cross(keys)
    | {"decoder.lm_head.bias"},
    "bert2bert": lambda keys: _cross(keys) | {"decoder.lm_head.bias"},
    "bertShare": lambda keys: _cross(keys) | {"decoder.lm_head.bias"},
    "robertaShare": lambda keys: _cross(keys) | {"decoder.lm_head.bias"},
    "gpt": lambda keys: set(),
    "rnd2gpt": lambda keys: ({k for k in keys if k.startswith("encoder.")} - SHARED_EMBEDDINGS) | _cross(keys),
    "bert2gpt": lambda keys: _cross(keys),
    "roberta2gpt": lambda keys: _cross(keys),
}


def _training_batch(spec, seed=0):
    """Sources in the input vocabulary, targets ending in EOS in the output vocabulary, labels -100 on padding
    (from the lengths: GPT-2's pad id is its EOS id)."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 99, (2, 6), generator=gen)
    src_mask = torch.ones_like(src)
    src[1, 4:], src_mask[1, 4:] = spec.inputs.pad_token_id, 0
    tgt = torch.randint(4, 99, (2, 5), generator=gen)
    lengths = torch.tensor([5, 3])
    tgt[torch.arange(2), lengths - 1] = spec.outputs.eos_token_id
    labels = tgt.masked_fill(torch.arange(5)[None] >= lengths[:, None], -100)
    return src, src_mask, labels


@pytest.mark.parametrize("name", list(SCHEMES))
def test_scheme_builds_from_transformers_checkpoints_trains_and_decodes(name, checkpoints):
    model, spec = build(name, **_dirs(checkpoints))
    assert isinstance(model, GPT2PrefixLM if name == "gpt" else EncoderDecoderModel)
    keys = set(model.state_dict())
    assert set(spec.report.newly_initialized) == EXPECTED_RANDOM[name](keys)

    src, src_mask, labels = _training_batch(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(input_ids=src, attention_mask=src_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]

    model.eval()
    out = model.generate(src, src_mask, num_beams=2, max_new_tokens=4)
    assert out.shape[0] == 2 and 2 <= out.shape[1] <= 5
    assert out[:, 0].tolist() == [spec.outputs.bos_token_id] * 2
    assert int(out.max()) < spec.outputs.vocab_size


def test_warm_weights_are_the_checkpoint_tensors(checkpoints):
    bert, roberta, gpt2 = (checkpoints[r][0] for r in ("bert", "roberta", "gpt2"))

    model, _ = build("bert2bert", **_dirs(checkpoints))
    for side in (model.encoder, model.decoder.bert):
        torch.testing.assert_close(side.encoder.layer[2].attention.self.query.weight,
                                   bert.encoder.layer[2].attention.self.query.weight, atol=0, rtol=0)
    # One word-embedding matrix for encoder, decoder and output projection (Table 1's 221M).
    shared = model.encoder.embeddings.word_embeddings.weight
    assert model.decoder.bert.embeddings.word_embeddings.weight is shared
    assert model.decoder.lm_head.decoder.weight is shared

    model, _ = build("rnd2bert", **_dirs(checkpoints))
    torch.testing.assert_close(model.encoder.embeddings.word_embeddings.weight,
                               bert.embeddings.word_embeddings.weight, atol=0, rtol=0)  # the warm side's matrix
    assert not torch.equal(model.encoder.encoder.layer[0].output.dense.weight,
                           bert.encoder.layer[0].output.dense.weight)  # the encoder itself stays random

    model, _ = build("rnd2gpt", **_dirs(checkpoints))
    assert model.encoder.embeddings.word_embeddings.weight is model.decoder.transformer.wte.weight
    torch.testing.assert_close(model.decoder.transformer.wte.weight, gpt2.transformer.wte.weight, atol=0, rtol=0)

    model, _ = build("roberta2gpt", **_dirs(checkpoints))
    assert model.encoder.embeddings.word_embeddings.weight is not model.decoder.transformer.wte.weight
    torch.testing.assert_close(model.encoder.embeddings.word_embeddings.weight,
                               roberta.embeddings.word_embeddings.weight, atol=0, rtol=0)
    torch.testing.assert_close(model.decoder.transformer.h[1].mlp.c_fc.weight,
                               gpt2.transformer.h[1].mlp.c_fc.weight.t(), atol=0, rtol=0)

    model, _ = build("robertaShare", **_dirs(checkpoints))
    assert model.encoder.config.position_offset == 2
    assert model.decoder.bert.encoder.layer[1].attention.self.key.weight is \
        model.encoder.encoder.layer[1].attention.self.key.weight


def test_gpt2_keeps_its_first_positions(checkpoints):
    model, spec = build("gpt", **_dirs(checkpoints), gpt2_positions=48)
    assert model.config.n_positions == 48
    assert "gpt2:wpe.weight[48:80]" in spec.report.unused
    torch.testing.assert_close(model.transformer.wpe.weight, checkpoints["gpt2"][0].transformer.wpe.weight[:48],
                               atol=0, rtol=0)


def test_each_scheme_names_its_tokenizers(checkpoints):
    dirs = _dirs(checkpoints)
    _, spec = build("bert2gpt", **dirs)
    assert (spec.inputs.kind, spec.inputs.source) == ("bert-wordpiece", str(dirs["bert"]))
    assert spec.inputs.vocab_file == str(dirs["bert"] / "vocab.txt")
    assert (spec.inputs.bos_token_id, spec.inputs.eos_token_id, spec.inputs.pad_token_id) == (101, 102, 0)
    assert (spec.outputs.kind, spec.outputs.source) == ("gpt2-bpe", str(dirs["gpt2"]))
    assert (spec.outputs.bos_token_id, spec.outputs.eos_token_id, spec.outputs.pad_token_id) == (139, 139, 139)

    model, spec = build("roberta2gpt", **dirs)
    assert spec.inputs.kind == "roberta-bpe"
    assert (spec.inputs.bos_token_id, spec.inputs.eos_token_id, spec.inputs.pad_token_id) == (0, 2, 1)
    assert model.config.decoder_start_token_id == 139 and model.config.pad_token_id == 139

    model, spec = build("bertShare", **dirs)
    assert spec.inputs == spec.outputs and spec.outputs.kind == "bert-wordpiece"
    assert (model.config.decoder_start_token_id, model.config.eos_token_id) == (101, 102)
    _, spec = build("rnd2gpt", **dirs)
    assert spec.inputs.kind == spec.outputs.kind == "gpt2-bpe"


# -- §5: what is warm-started ------------------------------------------------------------------------------------
def _layer_params(model_layer, hf_layer):
    return list(zip(model_layer.parameters(), hf_layer.parameters()))


def test_listed_layers_seed_the_model_layers_in_order(checkpoints):
    bert = checkpoints["bert"][0]
    model, spec = build("bertShare", **_dirs(checkpoints), warm_start=WarmStart(layers=(2, 0)))
    layers = model.encoder.encoder.layer
    assert len(layers) == 2 and len(model.decoder.bert.encoder.layer) == 2
    pairs = _layer_params(layers[0], bert.encoder.layer[2]) + _layer_params(layers[1], bert.encoder.layer[0])
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    assert any(k.startswith("bert:encoder.layer.1.") for k in spec.report.unused)
    keys = set(model.state_dict())
    assert set(spec.report.newly_initialized) == _cross(keys) | {"decoder.lm_head.bias"}


def test_first_k_layers_and_paper_notation(checkpoints):
    bert, gpt2 = checkpoints["bert"][0], checkpoints["gpt2"][0]
    model, _ = build("bert2gpt", **_dirs(checkpoints), warm_start=WarmStart(layers=1))
    assert len(model.encoder.encoder.layer) == 1 and len(model.decoder.transformer.h) == 1
    torch.testing.assert_close(model.encoder.encoder.layer[0].output.dense.weight,
                               bert.encoder.layer[0].output.dense.weight, atol=0, rtol=0)
    torch.testing.assert_close(model.decoder.transformer.h[0].attn.c_attn.weight,
                               gpt2.transformer.h[0].attn.c_attn.weight.t(), atol=0, rtol=0)
    assert paper_layers("9,10,13-18,23,24") == (8, 9, 12, 13, 14, 15, 16, 17, 22, 23)
    with pytest.raises(ValueError, match=r"'0' in '0,1' is not a 1-based layer"):
        paper_layers("0,1")


def test_embeddings_only_warm_start(checkpoints):
    bert = checkpoints["bert"][0]
    model, spec = build("bert2bert", **_dirs(checkpoints), warm_start=WarmStart(layers="none"))
    assert len(model.encoder.encoder.layer) == 3
    new = set(spec.report.newly_initialized)
    keys = set(model.state_dict())
    stacks = {k for k in keys if ".encoder.layer." in k or k.startswith("encoder.encoder.layer.")}
    assert new == stacks | {"decoder.lm_head.bias"}
    torch.testing.assert_close(model.decoder.bert.embeddings.word_embeddings.weight,
                               bert.embeddings.word_embeddings.weight, atol=0, rtol=0)

    # embeddings=False re-initialises the word embeddings only (§5; issue 20: wpe was random too before)
    model, spec = build("gpt", **_dirs(checkpoints), warm_start=WarmStart(embeddings=False))
    assert set(spec.report.newly_initialized) == {"transformer.wte.weight", "lm_head.weight"}


def test_without_embeddings_warm_start_keeps_every_layer_and_randomises_the_word_embeddings(checkpoints):
    """Table 6's "- embeddings from checkpoint" (init_layers {without_embeddings: true}): every layer is the
    checkpoint's, the word-embedding matrix is random (§5: only it; positions and the embedding LayerNorm are the
    checkpoint's), and so is the output projection tied to the word embeddings.

    Changed by issue 20: the position embeddings and the embedding LayerNorm were random too before."""
    from experiments.recipes.build import warm_start_from

    warm = warm_start_from({"without_embeddings": True})
    assert (warm.embeddings, warm.layers) == (False, "all")
    bert, gpt2 = checkpoints["bert"][0], checkpoints["gpt2"][0]

    model, spec = build("bertShare", **_dirs(checkpoints), warm_start=warm)
    ours, theirs = model.encoder.state_dict(), bert.state_dict()
    layer_keys = [k for k in theirs if k.startswith("encoder.layer.")]
    assert layer_keys and all(k in ours for k in layer_keys)
    for key in layer_keys:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)
    assert not torch.equal(model.encoder.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    # positions (BERT's token-type row 0 folded in: bertgen.families) and the LayerNorm are the checkpoint's
    positions = bert.embeddings.position_embeddings.weight + bert.embeddings.token_type_embeddings.weight[0]
    torch.testing.assert_close(model.encoder.embeddings.position_embeddings.weight, positions, atol=0, rtol=0)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(model.encoder.embeddings.LayerNorm, name),
                                   getattr(bert.embeddings.LayerNorm, name), atol=0, rtol=0)
    word = model.encoder.embeddings.word_embeddings.weight
    assert model.decoder.bert.embeddings.word_embeddings.weight is word  # shared, so random on both sides
    assert model.decoder.lm_head.decoder.weight is word  # the tied output projection is random too
    keys = set(model.state_dict())
    embeddings = {k for k in keys if k.startswith(("encoder.embeddings.word_embeddings.",
                                                   "decoder.bert.embeddings.word_embeddings."))}
    assert embeddings == {"encoder.embeddings.word_embeddings.weight", "decoder.bert.embeddings.word_embeddings.weight"}
    # exactly the word embeddings (and what is tied to them) and the cross-attention start random
    assert set(spec.report.newly_initialized) == (_cross(keys) | embeddings
                                                  | {"decoder.lm_head.bias", "decoder.lm_head.decoder.weight"})

    model, spec = build("gpt", **_dirs(checkpoints), warm_start=warm)
    ours, theirs = model.state_dict(), gpt2.state_dict()
    warm_keys = [k for k in theirs if k.startswith(("transformer.h.", "transformer.ln_f."))]
    assert len(warm_keys) == len([k for k in ours if k.startswith(("transformer.h.", "transformer.ln_f."))])
    for key in warm_keys:  # GPT-2's Conv1D weights are stored transposed
        expected = theirs[key].t() if key.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else theirs[key]
        torch.testing.assert_close(ours[key], expected, atol=0, rtol=0, msg=key)
    assert not torch.equal(model.transformer.wte.weight, gpt2.transformer.wte.weight)
    torch.testing.assert_close(model.transformer.wpe.weight, gpt2.transformer.wpe.weight[:model.config.n_positions],
                               atol=0, rtol=0)  # the positions are the checkpoint's (its first n_positions)
    assert set(spec.report.newly_initialized) == {"transformer.wte.weight", "lm_head.weight"}
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not torch.equal(model.lm_head.weight, gpt2.lm_head.weight)


def test_warm_start_errors(checkpoints):
    with pytest.raises(ValueError, match=r"layer 5 does not exist in .*bert \(3 layers, numbered 0-2\)"):
        build("bert2bert", **_dirs(checkpoints), warm_start=WarmStart(layers=(5,)))
    with pytest.raises(ValueError, match=r"num_hidden_layers=2 contradicts warm_start.layers=1"):
        build("bert2bert", **_dirs(checkpoints), warm_start=WarmStart(layers=1), num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"WarmStart.layers: expected"):
        WarmStart(layers=0)


# -- bad input ---------------------------------------------------------------------------------------------------
def test_checkpoint_of_the_wrong_family_is_refused(checkpoints):
    dirs = _dirs(checkpoints)
    with pytest.raises(CheckpointError, match=r"gpt2.*config.json: model_type 'gpt2', but bert2bert needs a bert "
                                              r"checkpoint for bert="):
        build("bert2bert", bert=dirs["gpt2"])
    with pytest.raises(CheckpointError, match=r"model_type 'bert', but roberta2gpt needs a gpt2 checkpoint for gpt2="):
        build("roberta2gpt", roberta=dirs["roberta"], gpt2=dirs["bert"])
    with pytest.raises(ValueError, match=r"bert2gpt needs gpt2="):
        build("bert2gpt", bert=dirs["bert"])
    with pytest.raises(ValueError, match=r"scheme 'bert2roberta': expected one of"):
        build("bert2roberta", bert=dirs["bert"])


def test_vocabulary_that_does_not_match_the_checkpoint_is_refused(checkpoints, tmp_path):
    bert_dir = checkpoints["bert"][1]
    copy = tmp_path / "bert"
    shutil.copytree(bert_dir, copy)
    (copy / "vocab.txt").write_text("\n".join(_bert_vocab(130)) + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"vocab.txt: the bert vocabulary has 130 token ids, but "
                                              r".*config.json has vocab_size=120"):
        build("bert2bert", bert=copy)
    other_vocab = tmp_path / "uncased-vocab.txt"
    other_vocab.write_text("\n".join(_bert_vocab(125)), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"uncased-vocab.txt: the bert vocabulary has 125 .*vocab_size=120"):
        build("bert2gpt", bert=bert_dir, gpt2=checkpoints["gpt2"][1], tokenizers={"bert": other_vocab})


@pytest.mark.parametrize("name", ["bert2bert", "bertShare", "bert2gpt", "rnd2gpt"])
def test_cross_attention_from_self_attention(name, checkpoints):
    """WarmStart(cross_attention="self_attention"): each warm decoder layer's cross-attention equals its own
    self-attention at the start (GPT-2's fused QKV split into Q and KV) and leaves the newly-initialised list."""
    built = build(name, **_dirs(checkpoints), warm_start=WarmStart(cross_attention="self_attention"))
    base = built.model.decoder.base_model
    for layer in (base.h if hasattr(base, "h") else base.encoder.layer):
        if hasattr(layer, "ln_cross_attn"):
            width = layer.attn.width
            assert torch.equal(layer.crossattention.q_attn.weight, layer.attn.c_attn.weight[:width])
            assert torch.equal(layer.crossattention.c_attn.bias, layer.attn.c_attn.bias[width:])
            assert torch.equal(layer.crossattention.c_proj.weight, layer.attn.c_proj.weight)
            assert torch.equal(layer.ln_cross_attn.weight, layer.ln_1.weight)
        else:
            self_attn, cross = layer.attention.state_dict(), layer.crossattention.state_dict()
            assert all(torch.equal(cross[k], self_attn[k]) for k in cross)
    assert not any("crossattention" in n or "ln_cross_attn" in n for n in built.spec.report.newly_initialized)
    random_cross = build(name, **_dirs(checkpoints)).spec.report.newly_initialized
    assert any("crossattention" in n for n in random_cross)


def test_cross_attention_from_self_attention_leaves_random_decoders_and_unlisted_layers(checkpoints):
    built = build("bert2rnd", **_dirs(checkpoints), warm_start=WarmStart(cross_attention="self_attention"))
    layer = built.model.decoder.base_model.encoder.layer[0]
    assert not torch.equal(layer.crossattention.self.query.weight, layer.attention.self.query.weight)
    built = build("bert2bert", **_dirs(checkpoints), warm_start=WarmStart(layers=1, cross_attention="self_attention"))
    layer = built.model.decoder.base_model.encoder.layer[0]
    assert torch.equal(layer.crossattention.self.query.weight, layer.attention.self.query.weight)
    with pytest.raises(ValueError, match="cross_attention"):
        WarmStart(cross_attention="from_encoder")


# -- a vocabulary of the model's own (Table 4's Transformer baseline, Table 6's SentencePieces) ------------------------
def _own_vocabulary(root, train: str, size: int):
    from experiments.data.vocabulary import ensure_vocabulary

    words = ["house", "Haus", "cat", "Katze", "the", "der", "runs", "läuft", "fast", "schnell", "street", "Straße"]
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 5)) + "." for i in range(200)]
    directory, _ = ensure_vocabulary(lambda: texts, "test-texts", {"train": train, "size": size}, root)
    return directory


def test_own_vocabulary_sizes_every_stack_and_leaves_only_vocabulary_tensors_random(checkpoints, tmp_path):
    """bertShare with a task-specific SentencePiece vocabulary: both sides read it, the word embeddings (shared with
    the decoder and its output projection) are new and random at its size, every layer and the position embeddings
    are still the checkpoint's; gpt likewise (wte new, wpe and the blocks warm). A scheme with two vocabularies
    cannot take one."""
    vocabulary = _own_vocabulary(tmp_path, "sentencepiece", 60)
    bert, gpt2 = checkpoints["bert"][0], checkpoints["gpt2"][0]
    model, spec = build("bertShare", **_dirs(checkpoints), vocabulary=vocabulary)
    assert spec.inputs is spec.outputs and spec.inputs.tokenizer.kind == "sentencepiece"
    assert spec.inputs.vocab_size == 60 and model.config.encoder.vocab_size == model.config.decoder.vocab_size == 60
    word = model.encoder.embeddings.word_embeddings.weight
    assert word.shape == (60, 32) and model.decoder.lm_head.decoder.weight is word
    ours, theirs = model.encoder.state_dict(), bert.state_dict()
    for key in [k for k in theirs if k.startswith("encoder.layer.")]:
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)
    folded = bert.embeddings.position_embeddings.weight + bert.embeddings.token_type_embeddings.weight[0]
    torch.testing.assert_close(model.encoder.embeddings.position_embeddings.weight, folded, atol=0, rtol=0)
    keys = set(model.state_dict())
    assert set(spec.report.newly_initialized) == (_cross(keys) | {
        "encoder.embeddings.word_embeddings.weight", "decoder.bert.embeddings.word_embeddings.weight",
        "decoder.lm_head.bias", "decoder.lm_head.decoder.weight"})
    assert "bert:embeddings.word_embeddings.weight" in spec.report.unused
    src, mask, labels = _training_batch(spec)
    model(input_ids=src.clamp(max=59), attention_mask=mask, labels=labels.clamp(max=59)).loss.backward()

    model, spec = build("gpt", **_dirs(checkpoints), vocabulary=vocabulary)
    assert model.transformer.wte.weight.shape == (60, 32) and model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model.transformer.wpe.weight, gpt2.transformer.wpe.weight, atol=0, rtol=0)
    assert set(spec.report.newly_initialized) == {"transformer.wte.weight", "lm_head.weight"}

    with pytest.raises(ValueError, match="bert2gpt reads two vocabularies"):
        build("bert2gpt", **_dirs(checkpoints), vocabulary=vocabulary)


def test_random_scheme_with_a_trained_wordpiece_vocabulary_and_its_own_depth(checkpoints, tmp_path):
    """Table 4's Transformer baseline: rnd2rnd at 6 layers (here 2) and other widths, reading a WordPiece vocabulary
    trained on the task's text, cased."""
    vocabulary = _own_vocabulary(tmp_path, "wordpiece", 70)
    model, spec = build("rnd2rnd", **_dirs(checkpoints), vocabulary=vocabulary, num_hidden_layers=2, hidden_size=16,
                        num_attention_heads=2, intermediate_size=24)
    tokenizer = spec.inputs.tokenizer
    assert model.config.encoder.vocab_size == tokenizer.vocab_size <= 70 and len(model.encoder.encoder.layer) == 2
    assert model.encoder.embeddings.word_embeddings.weight.shape == (tokenizer.vocab_size, 16)
    assert tokenizer.decode(tokenizer.encode("Haus Straße"), skip_special_tokens=True) == "Haus Straße"
    assert spec.report.loaded == []
