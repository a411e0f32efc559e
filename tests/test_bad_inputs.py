"""Bad input fails early with a one-line ValueError that says what was wrong, never with an IndexError from deep
inside an embedding lookup or a kernel's shape error."""

from __future__ import annotations

import json

import pytest
import torch

from bertgen import (
    BertGenerationConfig,
    BertGenerationDecoder,
    BertGenerationEncoder,
    CheckpointError,
    ConfigError,
    EncoderDecoderConfig,
    EncoderDecoderModel,
)
from bertgen.configuration import config_from_dict


@pytest.fixture
def encoder(tiny):
    return BertGenerationEncoder(BertGenerationConfig(**tiny)).eval()


@pytest.fixture
def seq2seq(tiny):
    config = EncoderDecoderConfig(encoder=BertGenerationConfig(**tiny),
                                  decoder=BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True),
                                  decoder_start_token_id=2, pad_token_id=0)
    return EncoderDecoderModel(config).eval()


def raises_value_error(match: str):
    """ValueError (or a subclass) with a single-line message; IndexError is not a ValueError, so it fails this."""
    return pytest.raises(ValueError, match=match)


def one_line(excinfo) -> None:
    assert "\n" not in str(excinfo.value), str(excinfo.value)


# -- token ids and lengths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_id", [99, 10_000, -1])
def test_out_of_vocabulary_ids(encoder, bad_id):
    ids = torch.tensor([[5, 6, bad_id, 7]])
    with raises_value_error(rf"BertGenerationEncoder: token id {bad_id} is outside the vocabulary \[0, 99\)") as err:
        encoder(input_ids=ids)
    one_line(err)


def test_out_of_vocabulary_decoder_ids_and_labels(seq2seq, tiny):
    ids = torch.randint(3, tiny["vocab_size"], (2, 5))
    with raises_value_error("token id 99 is outside the vocabulary"):
        seq2seq(input_ids=ids, decoder_input_ids=torch.tensor([[2, 99], [2, 3]]))
    # A bad id in the last label position never reaches the decoder's input ids; it must still be caught.
    labels = torch.tensor([[5, 6, 150], [5, -100, -100]])
    for return_logits in (True, False):
        with raises_value_error(r"labels: token id 150 is outside the vocabulary \[0, 99\)"):
            seq2seq(input_ids=ids, labels=labels, return_logits=return_logits)
    with raises_value_error("labels: token id -7 is outside the vocabulary"):
        seq2seq(input_ids=ids, labels=torch.tensor([[5, 6, -7], [5, 6, 7]]))


def test_non_integer_ids(encoder):
    with raises_value_error("input_ids must be an integer tensor"):
        encoder(input_ids=torch.tensor([[1.0, 2.0]]))


def test_sequence_longer_than_position_table(encoder, tiny):
    ids = torch.randint(3, tiny["vocab_size"], (1, tiny["max_position_embeddings"] + 1))
    with raises_value_error(r"65 positions is longer than the 64 .*max_position_embeddings") as err:
        encoder(input_ids=ids)
    one_line(err)
    with raises_value_error("longer than"):
        encoder(inputs_embeds=torch.randn(1, tiny["max_position_embeddings"] + 1, tiny["hidden_size"]))


def test_cached_decoding_past_the_position_table(tiny):
    decoder = BertGenerationDecoder(BertGenerationConfig(**tiny, is_decoder=True)).eval()
    prefix = decoder(input_ids=torch.randint(3, 99, (1, tiny["max_position_embeddings"])), use_cache=True)
    with raises_value_error("65 positions is longer than"):
        decoder(input_ids=torch.tensor([[5]]), past_key_values=prefix.past_key_values)


def test_attention_mask_of_the_wrong_shape(encoder, seq2seq):
    ids = torch.randint(3, 99, (2, 6))
    with raises_value_error(r"attention_mask: expected shape \(2, 6\), got \(2, 7\)"):
        encoder(input_ids=ids, attention_mask=torch.ones(2, 7, dtype=torch.long))
    with raises_value_error(r"attention_mask: expected shape \(2, 6\), got \(2, 5\)"):
        seq2seq(input_ids=ids, attention_mask=torch.ones(2, 5, dtype=torch.long),
                decoder_input_ids=torch.tensor([[2, 5], [2, 6]]))
    states = torch.randn(2, 6, 32)
    with raises_value_error(r"encoder_attention_mask: expected shape \(2, 6\), got \(2, 5\)"):
        seq2seq.decoder(input_ids=torch.tensor([[2, 5], [2, 6]]), encoder_hidden_states=states,
                        encoder_attention_mask=torch.ones(2, 5, dtype=torch.long))
    # With a cache, the source length is the cached cross keys'.
    first = seq2seq.decoder(input_ids=torch.tensor([[2], [2]]), encoder_hidden_states=states, use_cache=True)
    with raises_value_error(r"encoder_attention_mask: expected shape \(2, 6\), got \(2, 7\)"):
        seq2seq.decoder(input_ids=torch.tensor([[5], [6]]), past_key_values=first.past_key_values,
                        encoder_attention_mask=torch.ones(2, 7, dtype=torch.long))


def test_labels_without_decoder_start_token(tiny):
    config = EncoderDecoderConfig(encoder=BertGenerationConfig(**tiny),
                                  decoder=BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True),
                                  pad_token_id=0)
    model = EncoderDecoderModel(config)
    with raises_value_error("decoder_start_token_id is not set") as err:
        model(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[7, 8]]))
    one_line(err)


def test_neither_labels_nor_decoder_inputs(seq2seq):
    with raises_value_error("pass labels, decoder_input_ids or decoder_inputs_embeds"):
        seq2seq(input_ids=torch.tensor([[5, 6]]))


# -- checkpoints -----------------------------------------------------------------------------------------------
def test_unsupported_model_type(tmp_path, tiny):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 32}))
    with raises_value_error(r"unsupported model_type 't5'; expected one of .*'bert'") as err:
        BertGenerationEncoder.from_pretrained(tmp_path)
    one_line(err)
    with raises_value_error("unsupported model_type 't5'"):
        EncoderDecoderModel.from_encoder_decoder_pretrained(tmp_path, tmp_path)
    with pytest.raises(ConfigError, match="model_type: expected one of .* got 't5'"):
        config_from_dict({"model_type": "t5"})


def test_encoder_decoder_with_unsupported_side(tmp_path, tiny):
    raw = {"model_type": "encoder-decoder", "encoder": {**tiny, "model_type": "bert-generation"},
           "decoder": {"model_type": "t5"}}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with raises_value_error(r"decoder: unsupported model_type 't5'"):
        EncoderDecoderModel.from_pretrained(tmp_path)


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path, tiny):
    BertGenerationEncoder(BertGenerationConfig(**tiny)).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["vocab_size"] = 120
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"tensor embeddings\.word_embeddings\.weight has shape "
                                              r"\(99, 32\) in the checkpoint but \(120, 32\) in the model") as err:
        BertGenerationEncoder.from_pretrained(tmp_path)
    one_line(err)


def test_truncated_safetensors(tmp_path, tiny):
    BertGenerationEncoder(BertGenerationConfig(**tiny)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt safetensors") as err:
        BertGenerationEncoder.from_pretrained(tmp_path)
    one_line(err)


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", b"not a safetensors file"])
def test_corrupt_safetensors(tmp_path, tiny, content):
    BertGenerationConfig(**tiny).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        BertGenerationEncoder.from_pretrained(tmp_path)


def test_missing_weights_file(tmp_path, tiny):
    BertGenerationConfig(**tiny).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        BertGenerationEncoder.from_pretrained(tmp_path)


def test_offline_hub_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.chdir(tmp_path)  # so the id cannot be a relative directory by accident
    with pytest.raises(CheckpointError, match="google-bert/bert-base-cased: not found locally, pass a directory") as err:
        BertGenerationEncoder.from_pretrained("google-bert/bert-base-cased")
    one_line(err)
    with pytest.raises(CheckpointError, match="not found locally, pass a directory"):
        EncoderDecoderModel.from_encoder_decoder_pretrained("google-bert/bert-base-cased",
                                                            "google-bert/bert-base-cased")


def test_missing_local_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        BertGenerationEncoder.from_pretrained(tmp_path / "nowhere" / "model")


def test_loading_an_encoder_decoder_checkpoint_as_a_single_stack(tmp_path, seq2seq):
    seq2seq.save_pretrained(tmp_path)
    with raises_value_error("encoder-decoder"):
        BertGenerationEncoder.from_pretrained(tmp_path)
