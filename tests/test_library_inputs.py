"""The model library used as a transformers user would (issue 12), and its refusals of bad arguments (issue 13,
class 8).

A loaded model is in eval mode, so ``generate`` is deterministic; ``generate`` takes transformers' ``max_length``
and refuses sampling and unknown options; ``from_encoder_decoder_pretrained`` shares one word-embedding matrix
when both sides are one vocabulary, as ``bertgen.schemes`` does. Every bad input to ``generate`` is one
ValueError line naming the argument and what was expected; the tests assert the whole message.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from bertgen import BertGenerationConfig, BertGenerationEncoder, EncoderDecoderModel, schemes
from bertgen.generation import _GENERATE_OPTIONS, generate

pytestmark = pytest.mark.usefixtures("one_thread")

START = 2  # the tiny config's bos_token_id; eos is 1, pad 0, vocabulary 99


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny BERT-like encoder checkpoint with dropout on (so train mode would make decoding random) and a
    vocabulary file, as a released checkpoint has."""
    directory = tmp_path_factory.mktemp("tiny_bert")
    config = BertGenerationConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.3,
                                  attention_probs_dropout_prob=0.3, pad_token_id=0, bos_token_id=START,
                                  eos_token_id=1)
    torch.manual_seed(0)
    BertGenerationEncoder(config).save_pretrained(directory)
    (directory / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(99)), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def model(checkpoint) -> EncoderDecoderModel:
    return EncoderDecoderModel.from_encoder_decoder_pretrained(checkpoint, checkpoint, decoder_start_token_id=START)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 99, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


# -- eval mode --------------------------------------------------------------------------------------------------
def test_loaded_models_are_in_eval_mode(checkpoint, model, tmp_path):
    assert BertGenerationEncoder.from_pretrained(checkpoint).training is False
    assert model.training is False and not any(m.training for m in model.modules())
    model.save_pretrained(tmp_path)
    assert EncoderDecoderModel.from_pretrained(tmp_path).training is False


def test_generate_twice_gives_the_same_tokens(model):
    ids, mask = batch()
    first = model.generate(ids, mask, num_beams=2, max_new_tokens=8)
    assert torch.equal(first, model.generate(ids, mask, num_beams=2, max_new_tokens=8))


def test_train_mode_is_still_one_call_away(model):
    """Dropout really is on in train mode (what from_pretrained's eval mode protects generate from)."""
    ids, mask = batch()
    try:
        model.train()
        with torch.no_grad():
            a = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).logits
            b = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids).logits
        assert not torch.equal(a, b)
    finally:
        model.eval()


# -- max_length, do_sample, unknown options -------------------------------------------------------------------------
@pytest.mark.parametrize("max_length", [2, 5, 9])
def test_max_length_counts_the_start_token(model, max_length):
    ids, mask = batch()
    out = model.generate(ids, mask, num_beams=1, max_length=max_length, min_new_tokens=max_length - 1)
    assert out.size(1) == max_length
    assert torch.equal(out, model.generate(ids, mask, num_beams=1, max_new_tokens=max_length - 1,
                                           min_new_tokens=max_length - 1))


def test_do_sample_false_is_what_generate_does(model):
    ids, mask = batch()
    assert torch.equal(model.generate(ids, mask, num_beams=1, max_new_tokens=4, do_sample=False),
                       model.generate(ids, mask, num_beams=1, max_new_tokens=4))


# -- word-embedding sharing -----------------------------------------------------------------------------------------
def shared(model: EncoderDecoderModel) -> bool:
    return model.encoder.get_input_embeddings().weight is model.decoder.get_input_embeddings().weight


def test_same_checkpoint_shares_one_word_embedding_matrix(checkpoint, model):
    assert shared(model) and model.config.share_word_embeddings is True
    assert model.decoder.lm_head.decoder.weight is model.encoder.get_input_embeddings().weight
    two = EncoderDecoderModel.from_encoder_decoder_pretrained(checkpoint, checkpoint, share_word_embeddings=False)
    assert not shared(two)
    assert two.num_parameters() - model.num_parameters() == 99 * 32


def test_copies_of_one_vocabulary_share_and_other_vocabularies_do_not(checkpoint, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    assert shared(EncoderDecoderModel.from_encoder_decoder_pretrained(checkpoint, copy))
    (copy / "vocab.txt").write_text("".join(f"other{i}\n" for i in range(99)), encoding="utf-8")
    assert not shared(EncoderDecoderModel.from_encoder_decoder_pretrained(checkpoint, copy))
    (copy / "vocab.txt").unlink()  # no vocabulary to compare: not shared unless asked
    assert not shared(EncoderDecoderModel.from_encoder_decoder_pretrained(checkpoint, copy))
    assert shared(EncoderDecoderModel.from_encoder_decoder_pretrained(checkpoint, copy, share_word_embeddings=True))


def test_a_random_side_shares_the_warm_sides_matrix(checkpoint):
    warm = BertGenerationEncoder.from_pretrained(checkpoint).get_input_embeddings().weight
    config = BertGenerationEncoder.from_pretrained(checkpoint).config
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(None, checkpoint, encoder_config=config,
                                                                share_word_embeddings=True)
    assert shared(model) and torch.equal(model.encoder.get_input_embeddings().weight, warm)
    assert not shared(EncoderDecoderModel.from_encoder_decoder_pretrained(None, checkpoint, encoder_config=config))


def test_shared_model_saves_and_loads_shared(model, tmp_path):
    model.save_pretrained(tmp_path)
    again = EncoderDecoderModel.from_pretrained(tmp_path)
    assert shared(again) and again.num_parameters() == model.num_parameters()
    ids, mask = batch()
    assert torch.equal(again.generate(ids, mask, max_new_tokens=6), model.generate(ids, mask, max_new_tokens=6))


def test_minilm_bert2bert_has_the_parameters_of_the_scheme(minilm_dir):
    """Issue 12: 48.7M parameters from from_encoder_decoder_pretrained against 37.0M from bertgen.schemes."""
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(minilm_dir, minilm_dir, decoder_start_token_id=101)
    built = schemes.build("bert2bert", bert=str(minilm_dir), device="meta").model
    assert model.num_parameters() == built.num_parameters() == 36_992_058


# -- bad arguments: one ValueError line naming the argument ---------------------------------------------------------
IDS, MASK = batch()
OPTIONS = ", ".join(_GENERATE_OPTIONS)
BAD_ARGUMENTS = [
    # (case, input_ids, attention_mask, options, message)
    ("empty-sequences", torch.zeros(2, 0, dtype=torch.long), None, {},
     "generate: input_ids must be a non-empty [batch, length] tensor, got (2, 0)"),
    ("empty-batch", torch.zeros(0, 5, dtype=torch.long), None, {},
     "generate: input_ids must be a non-empty [batch, length] tensor, got (0, 5)"),
    ("one-dimensional", IDS[0], None, {},
     "generate: input_ids must be a non-empty [batch, length] tensor, got (7,)"),
    ("list-input", IDS.tolist(), None, {},
     "generate: input_ids must be a non-empty [batch, length] tensor, got list"),
    ("float-ids", IDS.float(), MASK, {}, "generate: input_ids must be an integer tensor, got torch.float32"),
    ("id-past-vocabulary", IDS.clone().fill_(99), MASK, {},
     "generate: input_ids holds token id 99, outside the input vocabulary [0, 99)"),
    ("negative-id", IDS.clone().fill_(-4), MASK, {},
     "generate: input_ids holds token id -4, outside the input vocabulary [0, 99)"),
    ("mask-shape", IDS, MASK[:, :-1], {},
     "generate: attention_mask shape (2, 6) does not match input_ids shape (2, 7)"),
    ("mask-not-a-tensor", IDS, MASK.tolist(), {}, "generate: attention_mask must be a tensor or None, got list"),
    ("mask-values", IDS, MASK * 2, {}, "generate: attention_mask must hold only 0 (padding) and 1 (token)"),
    ("mask-all-zero", IDS, torch.zeros_like(MASK), {},
     "generate: attention_mask row 0 attends to no token; every source of an encoder-decoder needs at least one"),
    ("mask-row-zero", IDS, MASK * torch.tensor([[1], [0]]), {},
     "generate: attention_mask row 1 attends to no token; every source of an encoder-decoder needs at least one"),
    ("length-penalty-nan", IDS, MASK, dict(length_penalty=float("nan")),
     "generate: length_penalty must be a finite number, got nan"),
    ("length-penalty-inf", IDS, MASK, dict(length_penalty=float("-inf")),
     "generate: length_penalty must be a finite number, got -inf"),
    ("eos-past-vocabulary", IDS, MASK, dict(eos_token_id=99),
     "generate: eos_token_id=99 is outside the output vocabulary [0, 99)"),
    ("eos-list-past-vocabulary", IDS, MASK, dict(eos_token_id=[1, 1000]),
     "generate: eos_token_id=1000 is outside the output vocabulary [0, 99)"),
    ("pad-past-vocabulary", IDS, MASK, dict(pad_token_id=500),
     "generate: pad_token_id=500 is outside the output vocabulary [0, 99)"),
    ("start-past-vocabulary", IDS, MASK, dict(decoder_start_token_id=99),
     "generate: decoder_start_token_id=99 is outside the output vocabulary [0, 99)"),
    ("num-beams-zero", IDS, MASK, dict(num_beams=0), "generate: num_beams must be an integer >= 1, got 0"),
    ("num-beams-negative", IDS, MASK, dict(num_beams=-3), "generate: num_beams must be an integer >= 1, got -3"),
    ("num-beams-float", IDS, MASK, dict(num_beams=2.0), "generate: num_beams must be an integer >= 1, got 2.0"),
    ("num-beams-past-vocabulary", IDS, MASK, dict(num_beams=50),
     "generate: num_beams=50: the output vocabulary (99) must have at least 100 tokens (beam search keeps 2 "
     "candidates per beam)"),
    ("max-new-tokens-zero", IDS, MASK, dict(max_new_tokens=0),
     "generate: max_new_tokens must be an integer >= 1, got 0"),
    ("max-new-tokens-past-positions", IDS, MASK, dict(max_new_tokens=65),
     "generate: max_new_tokens=65 exceeds the 64 output positions of EncoderDecoderModel "
     "(max_position_embeddings; a decoder-only model's input takes its share)"),
    ("max-length-one", IDS, MASK, dict(max_length=1), "generate: max_length must be an integer >= 2, got 1"),
    ("max-length-and-max-new-tokens", IDS, MASK, dict(max_length=5, max_new_tokens=4),
     "generate: pass max_new_tokens or max_length, not both (got 4 and 5)"),
    ("min-above-max", IDS, MASK, dict(max_new_tokens=4, min_new_tokens=5),
     "generate: min_new_tokens=5 exceeds max_new_tokens=4; no hypothesis could end with EOS"),
    ("do-sample", IDS, MASK, dict(do_sample=True),
     "generate: do_sample=True is not supported: sampling is not implemented (beam search, or greedy with "
     "num_beams=1)"),
    ("unknown-option", IDS, MASK, dict(temperature=0.7),
     f"generate: unknown option 'temperature'; expected one of {OPTIONS}"),
    ("misspelt-option", IDS, MASK, dict(num_beam=4), f"generate: unknown option 'num_beam'; expected one of {OPTIONS}"),
]


@pytest.mark.parametrize("case, input_ids, attention_mask, options, message", BAD_ARGUMENTS,
                         ids=[case[0] for case in BAD_ARGUMENTS])
def test_bad_generate_arguments_are_one_clear_line(model, case, input_ids, attention_mask, options, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$") as err:
        model.generate(input_ids, attention_mask, **{"max_new_tokens": 4, **options}
                       if "max_length" not in options else options)
    assert "\n" not in str(err.value) and len(str(err.value)) <= 300


def test_generate_refuses_before_the_model_runs(model, monkeypatch):
    """The checks come first: a bad argument never costs an encoder pass (nor leaves half-done work)."""
    calls = []
    monkeypatch.setattr(model, "decoding_step", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError):
        generate(model, IDS, MASK, max_new_tokens=4, length_penalty=float("nan"))
    assert calls == []


def test_gpt2_loads_in_eval_mode(tmp_path):
    from bertgen import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=49, eos_token_id=49)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    assert GPT2LMHeadModel.from_pretrained(tmp_path).training is False


# -- the README's example ---------------------------------------------------------------------------------------------
def test_readme_model_library_example_runs_as_written(minilm_dir, tmp_path, monkeypatch, capsys):
    """The first code block of the README's "The model library" section, with the real MiniLM BERT in place of
    bert-base-cased (no network here): it loads, trains a step, decodes twice the same, and saves."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The model library"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]
    hub_id = '"google-bert/bert-base-cased"'
    assert hub_id in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(hub_id, repr(str(minilm_dir))), "README.md", "exec"), namespace := {})
    model, out = namespace["model"], namespace["out"]
    assert model.training is False and out.size(1) <= 32
    assert torch.equal(model.generate(**namespace["sources"], num_beams=4, max_length=32), out)
    assert (tmp_path / "bert2bert" / "model.safetensors").is_file()
    assert "crossattention" in capsys.readouterr().out
