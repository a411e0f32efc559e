"""The tiny pretrained checkpoints and tasks of experiments.smoke.pretrain.

transformers is the oracle: its BertForMaskedLM / RobertaForMaskedLM / GPT2LMHeadModel must load what we write with
no missing key and compute the same logits as the model we pretrained, and its tokenizers must read our vocabulary
files to the same ids as bertgen's. The assets are built once per session at a reduced size (seconds, not a minute).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from experiments.smoke import assets as smoke_assets, pretrain as pt
from integration_helpers import quick_assets

SMALL = smoke_assets.SmokeSettings.quick()
FAMILIES = ("bert", "roberta", "gpt2")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    return quick_assets(tmp_path_factory)


# -- the grammar ---------------------------------------------------------------------------------------------------
def test_corpus_is_deterministic_and_has_a_few_hundred_word_types():
    first, again, other = (pt.generate_corpus(2000, seed) for seed in (7, 7, 8))
    assert first == again
    assert first != other
    words = set(re.findall(r"[a-z]+", " ".join(first)))
    assert 200 <= len(words) <= 400
    assert {"however", "because", "although", "and", "he", "she", "they", "who"} <= words


@pytest.mark.parametrize("kind", ["fusion", "split"])
def test_tasks_fuse_or_split_two_sentences(kind):
    examples = pt.generate_task(kind, 300, seed=5)
    assert len({e["source"] for e in examples}) == 300
    for e in examples:
        separate, fused = (e["source"], e["target"]) if kind == "fusion" else (e["target"], e["source"])
        assert separate.count(". ") == 1 and separate.endswith(".")
        assert fused.count(".") == 1 and fused.endswith(".")
    # The fused sentence refers back with a pronoun (or drops the repeated subject) where the pair repeats it.
    with_pronoun = [e for e in examples if re.search(r"\b(he|she|they)\b", e["target" if kind == "fusion" else "source"])]
    assert len(with_pronoun) > 100


def test_vocabularies_are_the_same_on_every_build(tmp_path):
    """The assets are cached by a hash of their inputs, so building them must give the same files every time."""
    corpus = pt.generate_corpus(500, seed=1)
    for name in ("first", "second"):
        pt.train_wordpiece(corpus, tmp_path / name, 400)
    assert (tmp_path / "first" / "vocab.txt").read_bytes() == (tmp_path / "second" / "vocab.txt").read_bytes()
    assert pt.train_byte_level_bpe(corpus, 400) == pt.train_byte_level_bpe(corpus, 400)
    words = set(re.findall(r"[a-z]+", " ".join(corpus)))
    assert words <= set((tmp_path / "first" / "vocab.txt").read_text().split())  # every word is one token


def test_bad_task_kind():
    with pytest.raises(ValueError, match="task kind"):
        pt.generate_task("summary", 3, 0)


# -- model layouts against transformers (unit level) ----------------------------------------------------------------
def _perturb(model: torch.nn.Module) -> None:
    """Random values everywhere (LayerNorms and biases too), so a mis-mapped tensor cannot go unnoticed."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_masked_lm_checkpoint_loads_in_transformers_with_same_logits(family, tmp_path):
    from transformers import BertForMaskedLM, RobertaForMaskedLM

    size = smoke_assets.TinySize(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       max_length=24, dropout=0.0)
    ours = pt.TinyMaskedLM(family, 50, size).eval()
    _perturb(ours)
    pt._save_hf_checkpoint(ours, tmp_path)
    cls = BertForMaskedLM if family == "bert" else RobertaForMaskedLM
    theirs, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert set(info["unexpected_keys"]) <= {f"{family}.pooler.dense.weight", f"{family}.pooler.dense.bias"}
    theirs.eval()
    pad = ours.pad_token_id
    ids = torch.randint(3, 50, (3, 10))
    mask = torch.ones_like(ids)
    ids[1, 7:], mask[1, 7:] = pad, 0  # right padding shifts nothing, but RoBERTa's pad positions are special
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The training path (loss on masked positions only) is the same cross-entropy transformers computes.
    labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) > 0.3, -100)
    labels[0, 0] = ids[0, 0]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask, labels), theirs(input_ids=ids, attention_mask=mask, labels=labels).loss,
                                   atol=1e-5, rtol=1e-5)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == family
    if family == "roberta":
        assert config["max_position_embeddings"] == size.max_length + 2 and config["type_vocab_size"] == 1
    else:
        assert config["type_vocab_size"] == 2


def test_gpt2_checkpoint_loads_in_transformers_with_same_logits(tmp_path):
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    size = smoke_assets.TinySize(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       max_length=24, dropout=0.0)
    ours = pt.tiny_gpt2(50, size, eos_token_id=49).eval()
    _perturb(ours)
    ours.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: [in, out]
    theirs, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs.eval()(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)


# -- the built assets -----------------------------------------------------------------------------------------------
def test_assets_are_cached_by_content_hash_and_built_atomically(assets, monkeypatch):
    root = Path(assets["root"])
    assert root.name == f"smoke-{smoke_assets.content_hash(SMALL)}" and assets["hash"] == smoke_assets.content_hash(SMALL)
    assert smoke_assets.content_hash(SMALL) != smoke_assets.content_hash(smoke_assets.SmokeSettings())
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".tmp-")]

    def rebuild(*_args, **_kwargs):
        raise AssertionError("ensure_smoke_assets rebuilt assets that were already there")

    monkeypatch.setattr(pt, "build_assets", rebuild)
    assert smoke_assets.ensure_smoke_assets(root.parent, SMALL) == assets


def test_assets_have_checkpoint_vocabulary_and_task_files(assets):
    for family in FAMILIES:
        directory = Path(assets["checkpoints"][family])
        assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()
        assert (directory / ("vocab.txt" if family == "bert" else "vocab.json")).is_file()
    roberta = json.loads((Path(assets["checkpoints"]["roberta"]) / "vocab.json").read_text())
    gpt2 = json.loads((Path(assets["checkpoints"]["gpt2"]) / "vocab.json").read_text())
    assert [roberta[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert roberta["<mask>"] == len(roberta) - 1 and gpt2["<|endoftext|>"] == len(gpt2) - 1
    for kind in ("fusion", "split"):
        seen = set()
        for split, count in SMALL.task_sizes.items():
            rows = [json.loads(line) for line in Path(assets["tasks"][kind][split]).read_text().splitlines()]
            assert len(rows) == count and all(set(r) == {"id", "source", "target"} for r in rows)
            sources = {r["source"] for r in rows}
            assert not sources & seen, f"{kind}/{split} shares sources with another split"
            seen |= sources


def test_pretraining_lowers_the_held_out_loss(assets):
    for family in FAMILIES:
        report = assets["pretraining"][family]
        assert report["eval_loss_after"] < report["eval_loss_before"] - 0.5, (family, report)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_reproduces_the_pretraining_loss_of_the_saved_checkpoint(assets, family):
    """Our pretraining model measured ``eval_loss_after`` on fixed held-out batches just before saving; transformers,
    loading the files, must measure the same on the same batches."""
    from transformers import BertForMaskedLM, GPT2LMHeadModel, RobertaForMaskedLM

    directory = Path(assets["checkpoints"][family])
    cls = {"bert": BertForMaskedLM, "roberta": RobertaForMaskedLM, "gpt2": GPT2LMHeadModel}[family]
    model, info = cls.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"]
    model.eval()
    corpus = pt.generate_corpus(SMALL.corpus_documents, SMALL.corpus_seed)
    examples = pt._tokenize_corpus(corpus, family, directory, SMALL)
    objective = pt._Objective(family, model, examples, pt._vocab_of(family, directory), SMALL.pretrain)
    losses = []
    with torch.no_grad():
        for ids, mask, labels in objective.eval_batches:
            if family == "gpt2":
                losses.append(model(input_ids=ids, labels=ids).loss.item())
            else:
                losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss.item())
    assert sum(losses) / len(losses) == pytest.approx(assets["pretraining"][family]["eval_loss_after"], abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_tokenizers_read_the_vocabulary_files_like_bertgen(assets, family):
    from transformers import BertTokenizer, GPT2Tokenizer, RobertaTokenizer

    from bertgen.tokenization import load_tokenizer

    directory = Path(assets["checkpoints"][family])
    cls = {"bert": BertTokenizer, "roberta": RobertaTokenizer, "gpt2": GPT2Tokenizer}[family]
    theirs = cls.from_pretrained(directory)
    ours = load_tokenizer(directory)
    texts = [row["target"] for row in pt.generate_task("split", 5, seed=3)]
    assert [theirs(t)["input_ids"] for t in texts] == [ours.encode(t) for t in texts]
    assert [ours.decode(ours.encode(t)) for t in texts] == texts  # references survive a round trip


def test_bertgen_warm_starts_from_the_assets(assets):
    """The schemes read the checkpoints: the BERT encoder's weights come from the file (none newly initialised)."""
    from bertgen.schemes import build

    built = build("bert2bert", bert=assets["checkpoints"]["bert"])
    newly = [k for k in built.spec.report.newly_initialized if k.startswith("encoder.")]
    assert newly == []
    assert any("crossattention" in k for k in built.spec.report.newly_initialized)


def test_settings_dataclasses_round_trip_into_the_hash():
    changed = dataclasses.replace(SMALL, pretrain=dataclasses.replace(SMALL.pretrain, steps=31))
    assert smoke_assets.content_hash(changed) != smoke_assets.content_hash(SMALL)
