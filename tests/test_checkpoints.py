"""Checkpoint I/O in both directions with transformers 5.24, the legacy ``pytorch_model.bin`` path, and config.json.

A checkpoint bertgen writes must load in transformers with no missing or unexpected keys and give the same outputs
(so released models work with the HF ecosystem); a checkpoint transformers writes must load in bertgen, again with
equal outputs. Pickled weights are read with ``weights_only=True``: a pickle that would run code is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers as hf

from bertgen import (
    BertGenerationConfig,
    BertGenerationDecoder,
    BertGenerationEncoder,
    CheckpointError,
    ConfigError,
    EncoderDecoderConfig,
    EncoderDecoderModel,
)
from tolerances import assert_fp32_close



def assert_clean_hf_load(info: dict, what: str) -> None:
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[kind], f"{what}: transformers reports {kind}: {sorted(info[kind])[:8]}"


def inputs(tiny: dict) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, tiny["vocab_size"], (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"ids": ids, "mask": mask, "dec_ids": torch.randint(3, tiny["vocab_size"], (2, 6)),
            "states": torch.randn(2, 8, tiny["hidden_size"])}


def run_encoder(model, x):
    with torch.no_grad():
        return model(input_ids=x["ids"], attention_mask=x["mask"]).last_hidden_state


def run_decoder(model, x):
    with torch.no_grad():
        return model(input_ids=x["dec_ids"], encoder_hidden_states=x["states"],
                     encoder_attention_mask=x["mask"]).logits


def run_seq2seq(model, x):
    with torch.no_grad():
        return model(input_ids=x["ids"], attention_mask=x["mask"], decoder_input_ids=x["dec_ids"]).logits


def our_seq2seq(tiny: dict, tie: bool) -> EncoderDecoderModel:
    config = EncoderDecoderConfig(
        encoder=BertGenerationConfig(**tiny),
        decoder=BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True),
        tie_encoder_decoder=tie, decoder_start_token_id=2, pad_token_id=0,
    )
    return EncoderDecoderModel(config).eval()


def randomise_lm_bias(model) -> None:
    """The LM-head bias starts at zero; a random one makes sure it is saved and loaded, not just re-zeroed."""
    decoder = model.decoder if hasattr(model, "decoder") and not hasattr(model, "lm_head") else model
    with torch.no_grad():
        decoder.lm_head.bias.normal_()


def hf_decoder_config(tiny: dict) -> hf.BertGenerationConfig:
    return hf.BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True)


# -- bertgen → transformers ------------------------------------------------------------------------------------
def test_our_encoder_save_loads_in_transformers(tiny, tmp_path):
    ours = BertGenerationEncoder(BertGenerationConfig(**tiny)).eval()
    ours.save_pretrained(tmp_path)
    theirs, info = hf.BertGenerationEncoder.from_pretrained(tmp_path, output_loading_info=True)
    assert_clean_hf_load(info, "encoder")
    x = inputs(tiny)
    assert_fp32_close(run_encoder(ours, x), run_encoder(theirs.eval(), x), "encoder saved by bertgen")


def test_our_decoder_save_loads_in_transformers(tiny, tmp_path):
    ours = BertGenerationDecoder(BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True)).eval()
    randomise_lm_bias(ours)
    ours.save_pretrained(tmp_path)
    theirs, info = hf.BertGenerationDecoder.from_pretrained(tmp_path, output_loading_info=True)
    assert_clean_hf_load(info, "decoder")
    assert theirs.lm_head.decoder.weight is theirs.bert.embeddings.word_embeddings.weight
    x = inputs(tiny)
    assert_fp32_close(run_decoder(ours, x), run_decoder(theirs.eval(), x), "decoder saved by bertgen")


@pytest.mark.parametrize("tie", [False, True], ids=["plain", "tie_encoder_decoder"])
def test_our_encoder_decoder_save_loads_in_transformers(tiny, tmp_path, tie):
    ours = our_seq2seq(tiny, tie)
    randomise_lm_bias(ours)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "encoder-decoder" and saved["tie_encoder_decoder"] is tie
    theirs, info = hf.EncoderDecoderModel.from_pretrained(tmp_path, output_loading_info=True)
    # transformers 5.24 does not tie encoder and decoder, so the shared stack must be in the file for each side.
    assert_clean_hf_load(info, f"encoder-decoder (tie={tie})")
    x = inputs(tiny)
    assert_fp32_close(run_seq2seq(ours, x), run_seq2seq(theirs.eval(), x), f"encoder-decoder (tie={tie}) saved by bertgen")

    # ... and reading our own file back restores the sharing, with nothing reported missing or unused.
    again = EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert again.loading_report.newly_initialized == [] and again.loading_report.unused == []
    shared = again.decoder.bert.embeddings.word_embeddings.weight is again.encoder.embeddings.word_embeddings.weight
    assert shared is tie
    assert again.num_parameters() == ours.num_parameters()
    assert_fp32_close(run_seq2seq(again, x), run_seq2seq(ours, x), f"encoder-decoder (tie={tie}) round trip")


# -- transformers → bertgen ------------------------------------------------------------------------------------
def test_transformers_encoder_and_decoder_saves_load_in_bertgen(tiny, tmp_path):
    x = inputs(tiny)
    encoder = hf.BertGenerationEncoder(hf.BertGenerationConfig(**tiny)).eval()
    encoder.save_pretrained(tmp_path / "enc")
    ours = BertGenerationEncoder.from_pretrained(tmp_path / "enc").eval()
    assert ours.loading_report.newly_initialized == [] and ours.loading_report.unused == []
    assert_fp32_close(run_encoder(ours, x), run_encoder(encoder, x), "encoder saved by transformers")

    decoder = hf.BertGenerationDecoder(hf_decoder_config(tiny)).eval()
    randomise_lm_bias(decoder)
    decoder.save_pretrained(tmp_path / "dec")
    ours = BertGenerationDecoder.from_pretrained(tmp_path / "dec").eval()
    assert ours.loading_report.newly_initialized == [] and ours.loading_report.unused == []
    assert_fp32_close(run_decoder(ours, x), run_decoder(decoder, x), "decoder saved by transformers")


def test_untied_transformers_decoder_uses_the_bias_its_forward_used(tiny, tmp_path):
    """With tie_word_embeddings=False transformers saves lm_head.bias and lm_head.decoder.bias separately, and its
    forward adds decoder.bias; that is the one to load."""
    x = inputs(tiny)
    decoder = hf.BertGenerationDecoder(hf.BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True,
                                                               tie_word_embeddings=False)).eval()
    with torch.no_grad():
        decoder.lm_head.decoder.bias.normal_()
    decoder.save_pretrained(tmp_path / "dec")
    ours = BertGenerationDecoder.from_pretrained(tmp_path / "dec").eval()
    assert_fp32_close(run_decoder(ours, x), run_decoder(decoder, x), "untied decoder saved by transformers")


def hf_seq2seq(tiny: dict) -> hf.EncoderDecoderModel:
    model = hf.EncoderDecoderModel(encoder=hf.BertGenerationEncoder(hf.BertGenerationConfig(**tiny)),
                                   decoder=hf.BertGenerationDecoder(hf_decoder_config(tiny)))
    model.config.decoder_start_token_id, model.config.pad_token_id = 2, 0
    randomise_lm_bias(model)
    return model.eval()


def test_transformers_encoder_decoder_save_loads_in_bertgen(tiny, tmp_path):
    theirs = hf_seq2seq(tiny)
    theirs.save_pretrained(tmp_path)
    ours = EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert ours.loading_report.newly_initialized == [] and ours.loading_report.unused == []
    assert ours.config.decoder_start_token_id == 2 and ours.config.pad_token_id == 0
    x = inputs(tiny)
    assert_fp32_close(run_seq2seq(ours, x), run_seq2seq(theirs, x), "encoder-decoder saved by transformers")


def test_transformers_save_of_a_shared_model_loads_tied_in_bertgen(tiny, tmp_path):
    """transformers 5.24 cannot save a hand-tied encoder-decoder (it refuses undeclared shared tensors), so a shared
    model reaches it as two equal copies; bertgen loads such a file with ``tie_encoder_decoder=True`` as one stack."""
    theirs = hf_seq2seq(tiny)
    encoder_state = theirs.encoder.state_dict()
    theirs.decoder.bert.load_state_dict(encoder_state, strict=False)
    theirs.decoder.tie_weights()
    theirs.save_pretrained(tmp_path)
    ours = EncoderDecoderModel.from_pretrained(tmp_path, tie_encoder_decoder=True).eval()
    assert ours.config.tie_encoder_decoder
    assert ours.decoder.bert.encoder.layer[1].output.dense.weight is ours.encoder.encoder.layer[1].output.dense.weight
    assert ours.decoder.bert.encoder.layer[1].crossattention.self.key.weight.shape == (tiny["hidden_size"],) * 2
    assert ours.loading_report.newly_initialized == []
    x = inputs(tiny)
    assert_fp32_close(run_seq2seq(ours, x), run_seq2seq(theirs, x), "shared encoder-decoder saved by transformers")


def test_tying_a_checkpoint_with_different_stacks_keeps_the_encoder(tiny, tmp_path):
    """Loading an untied bert2bert with ``tie_encoder_decoder=True``: the encoder's tensors win, as when two separately
    loaded stacks are tied (from_encoder_decoder_pretrained) and as transformers 4.x did."""
    theirs = hf_seq2seq(tiny)
    theirs.save_pretrained(tmp_path)
    ours = EncoderDecoderModel.from_pretrained(tmp_path, tie_encoder_decoder=True).eval()
    x = inputs(tiny)
    assert_fp32_close(run_encoder(ours.encoder, x), run_encoder(theirs.encoder, x), "encoder of the tied model")
    own = ours.decoder.bert.encoder.layer[0].crossattention.self.query.weight
    assert_fp32_close(own, theirs.decoder.bert.encoder.layer[0].crossattention.self.query.weight, "cross-attention")


def test_sharded_transformers_save_loads_in_bertgen(tiny, tmp_path):
    theirs = hf_seq2seq(tiny)
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours = EncoderDecoderModel.from_pretrained(tmp_path).eval()
    assert ours.loading_report.newly_initialized == []
    x = inputs(tiny)
    assert_fp32_close(run_seq2seq(ours, x), run_seq2seq(theirs, x), "sharded checkpoint")


# -- pytorch_model.bin -----------------------------------------------------------------------------------------
def test_pytorch_model_bin_loads(tiny, tmp_path):
    theirs = hf.BertGenerationDecoder(hf_decoder_config(tiny)).eval()
    randomise_lm_bias(theirs)
    theirs.config.save_pretrained(tmp_path)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")
    assert not (tmp_path / "model.safetensors").exists()
    ours = BertGenerationDecoder.from_pretrained(tmp_path).eval()
    assert ours.loading_report.newly_initialized == []
    x = inputs(tiny)
    assert_fp32_close(run_decoder(ours, x), run_decoder(theirs, x), "decoder from pytorch_model.bin")


class _RunsCodeWhenUnpickled:
    """What a malicious checkpoint looks like: unpickling calls os.system."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_without_running_it(tiny, tmp_path):
    BertGenerationConfig(**tiny).save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    payload = {"embeddings.word_embeddings.weight": torch.zeros(tiny["vocab_size"], tiny["hidden_size"]),
               "evil": _RunsCodeWhenUnpickled(f"touch {marker}")}
    torch.save(payload, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: refused or unreadable"):
        BertGenerationEncoder.from_pretrained(tmp_path)
    assert not marker.exists(), "the pickle's payload ran"


# -- config.json -----------------------------------------------------------------------------------------------
def test_config_round_trip_keeps_unknown_keys(tiny, tmp_path):
    raw = {**tiny, "model_type": "bert-generation", "hidden_act": "gelu_new", "my_project_note": {"a": [1, 2]},
           "architectures": ["BertGenerationEncoder"], "transformers_version": "5.24.0"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = BertGenerationConfig.from_json_file(tmp_path / "config.json")
    assert config.hidden_act == "gelu_new" and config.extra["my_project_note"] == {"a": [1, 2]}
    config.save_pretrained(tmp_path / "again")
    written = json.loads((tmp_path / "again" / "config.json").read_text())
    for key, value in raw.items():
        assert written[key] == value, key
    # And transformers reads what bertgen wrote.
    theirs = hf.BertGenerationConfig.from_pretrained(tmp_path / "again")
    assert theirs.hidden_size == tiny["hidden_size"] and theirs.hidden_act == "gelu_new"


def test_encoder_decoder_config_round_trip(tiny, tmp_path):
    config = EncoderDecoderConfig(encoder=BertGenerationConfig(**tiny),
                                  decoder=BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True),
                                  decoder_start_token_id=2, pad_token_id=0, extra={"task": "wikisplit"})
    config.save_pretrained(tmp_path)
    again = EncoderDecoderConfig.from_json_file(tmp_path / "config.json")
    assert again.to_dict() == config.to_dict()
    assert again.decoder.add_cross_attention and not again.encoder.is_decoder and again.extra["task"] == "wikisplit"


@pytest.mark.parametrize("field,value,expected", [
    ("hidden_size", "32", "expected int"),
    ("hidden_size", 30, "multiple of num_attention_heads"),
    ("num_hidden_layers", 0, "positive integer"),
    ("hidden_act", "gelu_fast", "one of"),
    ("position_embedding_type", "rotary", "one of"),
    ("hidden_dropout_prob", 1.5, "probability"),
    ("is_decoder", "yes", "expected bool"),
    ("pad_token_id", 500, "below vocab_size"),
    ("layer_norm_eps", 0.0, "positive float"),
])
def test_bad_config_values_raise_config_error_naming_the_field(tiny, tmp_path, field, value, expected):
    with pytest.raises(ConfigError, match=f"BertGenerationConfig.{field}: .*{expected}"):
        BertGenerationConfig(**{**tiny, field: value})
    # The same error through a checkpoint directory names the file too.
    (tmp_path / "config.json").write_text(json.dumps({**tiny, "model_type": "bert-generation", field: value}))
    with pytest.raises(ValueError, match=f"config.json.*{field}"):
        BertGenerationConfig.from_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=f"{field}"):
        BertGenerationEncoder.from_pretrained(tmp_path)


def test_config_that_is_not_json_is_a_config_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BertGenerationConfig.from_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        BertGenerationEncoder.from_pretrained(tmp_path)


def test_loading_report_of_a_decoder_from_an_encoder_checkpoint(tiny, tmp_path):
    """Warm-starting a decoder from an encoder-only checkpoint: cross-attention and LM bias are new, nothing else."""
    BertGenerationEncoder(BertGenerationConfig(**tiny)).save_pretrained(tmp_path)
    decoder = BertGenerationDecoder.from_pretrained(tmp_path, is_decoder=True, add_cross_attention=True)
    new = set(decoder.loading_report.newly_initialized)
    assert "lm_head.bias" in new
    assert all(k == "lm_head.bias" or ".crossattention." in k for k in new), sorted(new)
    assert len(new) == 1 + tiny["num_hidden_layers"] * 10
    assert "lm_head.decoder.weight" not in new  # tied to the loaded word embeddings


def test_save_is_atomic_and_leaves_no_temporary_files(tiny, tmp_path):
    BertGenerationEncoder(BertGenerationConfig(**tiny)).save_pretrained(tmp_path)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["config.json", "model.safetensors"]


def test_an_rng_state_saved_on_a_gpu_machine_restores_on_a_cpu_one(tmp_path):
    """A checkpoint written by a CUDA job carries the CUDA generators' states too; resuming where there is no GPU
    restores the CPU, numpy and Python generators and skips those (simulated: the entry a GPU job adds)."""
    import random

    import numpy as np

    from experiments.recipes import checkpointing

    state = checkpointing.capture_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # what torch.cuda.get_rng_state_all() returns, per device
    torch.save([state], tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", map_location="cpu", weights_only=True)[0]
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpointing.restore_rng_state(loaded)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
