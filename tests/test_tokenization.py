"""Tokenizers: id-for-id parity with transformers' own tokenizers, the common interface, saving and file choice.

The references are transformers 5's BertTokenizerFast, GPT2TokenizerFast, RobertaTokenizerFast (RoBERTa's vocab with
GPT-2's merges) and BertGenerationTokenizer on the tokenizer files in ../shared/data/tokenizers. File-choice and
error tests use tiny vocabularies written here, so they run without ../shared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import BertGenerationTokenizer as HFBertGenerationTokenizer
from transformers import BertTokenizerFast, GPT2TokenizerFast, RobertaTokenizerFast

from bertgen.tokenization import BertGenerationTokenizer, FastTokenizer, TokenizerError, load_tokenizer

SENTENCES = [
    "Hello world!",
    "Héllo, Wörld! naïve café résumé façade Ångström",
    "3.14159 and 1,000,000 dollars; 42% off?! (really) [sic] {x} <y> a-b_c/d\\e",
    "",
    "   ",
    "日本語のテキスト、東京は晴れ。中文字符와 한국어",
    "Ünïcödé ™ © — “quotes” ‘single’ … emoji 😀🚀 Ω≈ç√ \u200b zero-width",
    "don't won't I'm y'all rock'n'roll",
    "tab\tnew\nline\r\n  double  spaces ",
    "a <s> b </s> c [SEP] d <|endoftext|> e <pad> <::::> <unk> [CLS][MASK] <mask>",
    " leading space and trailing ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism " + "x" * 150,
    "The quick brown fox jumps over the lazy dog. " * 60,
]
JAPANESE = ["日本語のテキストです。", "東京は今日も晴れ、気温は２５度でした！", "ＡＢＣ１２３ ｶﾀｶﾅ カタカナ ひらがな", "吾輩は猫である。名前はまだ無い。"]

CASES = ["bert", "gpt2", "roberta", "sentencepiece", "sentencepiece_ja"]


@pytest.fixture(scope="module")
def tokenizer_files(shared_dir) -> Path:
    return shared_dir / "data" / "tokenizers"


def _build(case: str, files: Path):
    """(ours, transformers' reference) for one case."""
    gpt2_vocab, gpt2_merges = files / "gpt2" / "gpt2-vocab.json", files / "gpt2" / "gpt2-merges.txt"
    if case == "bert":
        vocab = files / "bert-base-uncased" / "vocab.txt"
        # transformers 5 ignores vocab_file= in the constructor (it builds a 5-token vocabulary); vocab= reads the file.
        reference = BertTokenizerFast(vocab=str(vocab))
        assert len(reference) == 30522
        return load_tokenizer(files / "bert-base-uncased"), reference
    if case == "gpt2":
        reference = GPT2TokenizerFast(str(gpt2_vocab), str(gpt2_merges))
        reference.pad_token = reference.eos_token  # the customary GPT-2 padding we adopt
        return load_tokenizer([gpt2_vocab, gpt2_merges]), reference
    if case == "roberta":
        roberta_vocab = files / "roberta" / "roberta-base-vocab.json"
        return (load_tokenizer([roberta_vocab, gpt2_merges]),
                RobertaTokenizerFast(str(roberta_vocab), str(gpt2_merges)))
    model = files / "sentencepiece" / ("test_ja_model.model" if case == "sentencepiece_ja" else "test_model.model")
    return load_tokenizer(model), HFBertGenerationTokenizer(str(model))


@pytest.fixture(scope="module")
def built(tokenizer_files):
    """Each (ours, reference) pair is built once per module: the 50k-token BPE vocabularies take a while."""
    cache: dict[str, tuple] = {}

    def get(case: str):
        if case not in cache:
            cache[case] = _build(case, tokenizer_files)
        return cache[case]
    return get


@pytest.fixture(scope="module", params=CASES)
def pair(request, built):
    ours, reference = built(request.param)
    return request.param, ours, reference


def _sentences(case: str) -> list[str]:
    return SENTENCES + JAPANESE if case == "sentencepiece_ja" else SENTENCES


# -- parity with transformers -----------------------------------------------------------------------------------
def test_ids_tokens_and_decoding_match_transformers(pair):
    case, ours, reference = pair
    for text in _sentences(case):
        expected = reference(text)["input_ids"]
        ids = ours.encode(text)
        assert ids == expected, (case, text[:50])
        assert ours.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(expected)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(expected, skip_special_tokens=skip)
        assert ours.encode(text, add_special_tokens=False) == reference(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("options", [
    dict(),
    dict(max_length=9),
    dict(max_length=24, padding="max_length"),
    dict(max_length=5, padding=False, return_tensors=None),
    dict(padding=False, return_tensors=None),
    dict(max_length=9, add_special_tokens=False),
])
def test_batch_padding_truncation_and_masks_match_transformers(pair, options):
    case, ours, reference = pair
    texts = _sentences(case)
    got = ours(texts, **options)
    expected = reference(texts, padding=options.get("padding", True), truncation=True,
                         max_length=options.get("max_length"), return_tensors=options.get("return_tensors", "pt"),
                         add_special_tokens=options.get("add_special_tokens", True))
    for key in ("input_ids", "attention_mask"):
        if options.get("return_tensors", "pt") == "pt":
            assert got[key].dtype == torch.long
            assert got[key].shape == expected[key].shape and torch.equal(got[key], expected[key]), key
        else:
            assert got[key] == expected[key]
    assert ours.batch_decode(got["input_ids"], skip_special_tokens=True) == \
        reference.batch_decode(expected["input_ids"], skip_special_tokens=True)


def test_special_ids_and_sizes_match_transformers(pair):
    case, ours, reference = pair
    assert len(ours) == len(reference)
    assert ours.all_special_ids == sorted(reference.all_special_ids)
    for name in ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
        assert getattr(ours, name) == getattr(reference, name), name
    if case == "roberta":  # the shared vocab.json lacks ids 50261-50263; the embedding table must still hold <mask>
        assert (len(ours), ours.vocab_size, ours.mask_token_id) == (50262, 50265, 50264)
    else:
        assert ours.vocab_size == len(reference)


def test_single_text_shapes_match_transformers(pair):
    case, ours, reference = pair
    text = "Short sentence, with 2 numbers: 7 and 8."
    as_tensor = ours(text)
    assert as_tensor["input_ids"].shape == (1, len(reference(text)["input_ids"]))
    assert ours(text, return_tensors=None) == {key: reference(text)[key] for key in ("input_ids", "attention_mask")}


# -- per-kind conventions ---------------------------------------------------------------------------------------
def test_start_and_end_ids_per_kind(built):
    bert, _ = built("bert")
    assert (bert.decoder_start_token_id, bert.bos_token_id, bert.eos_token_id, bert.pad_token_id) == (101, 101, 102, 0)
    sentencepiece, _ = built("sentencepiece")
    assert (sentencepiece.decoder_start_token_id, sentencepiece.eos_token_id, sentencepiece.pad_token_id,
            sentencepiece.sep_token_id) == (1, 2, 1001, 1000)


def test_roberta_wraps_in_s_and_gpt2_adds_nothing(pair):
    case, ours, _ = pair
    ids = ours.encode("Hello there")
    bare = ours.encode("Hello there", add_special_tokens=False)
    if case == "roberta":
        assert ids == [0] + bare + [2] and ours.decoder_start_token_id == 0
    elif case == "gpt2":
        assert ids == bare and ours.decoder_start_token_id == 50256
    elif case == "bert":
        assert ids == [101] + bare + [102]
    else:
        assert ids == bare  # transformers' BertGenerationTokenizer appends nothing


def test_gpt2_pads_with_endoftext_and_masks_it(built):
    gpt2, _ = built("gpt2")
    batch = gpt2(["Hi", "Hello there, how are you?"])
    assert gpt2.pad_token_id == gpt2.eos_token_id == 50256
    short = batch["input_ids"][0]
    length = int(batch["attention_mask"][0].sum())
    assert length == len(gpt2.encode("Hi"))
    assert (short[length:] == 50256).all() and (batch["attention_mask"][0, length:] == 0).all()
    assert gpt2.batch_decode(batch["input_ids"]) == ["Hi", "Hello there, how are you?"]


def test_long_text_is_truncated_keeping_the_closing_token(pair):
    case, ours, _ = pair
    long_text = "The quick brown fox jumps over the lazy dog. " * 60
    ids = ours.encode(long_text, max_length=32)
    assert len(ids) == 32
    closing = {"bert": 102, "roberta": 2}.get(case)
    if closing is not None:
        assert ids[-1] == closing
    assert len(ours.encode(long_text, max_length=32, truncation=False)) > 32


def test_sentencepiece_add_eos_token_appends_within_max_length(tokenizer_files):
    model = tokenizer_files / "sentencepiece" / "test_model.model"
    plain, with_eos = BertGenerationTokenizer(model), BertGenerationTokenizer(model, add_eos_token=True)
    text = "I was born in 92000, and this is falsé."
    assert with_eos.encode(text) == plain.encode(text) + [2]
    assert with_eos.encode(text, add_special_tokens=False) == plain.encode(text)
    assert with_eos.encode(text, max_length=6) == plain.encode(text)[:5] + [2]
    batch = with_eos(["a", text], max_length=8, padding="max_length")
    assert batch["input_ids"][0].tolist() == plain.encode("a") + [2] + [1001] * (7 - len(plain.encode("a")))
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(plain.encode("a")) + 1, 8]


def test_sp_model_kwargs_reach_sentencepiece(tokenizer_files):
    model = tokenizer_files / "sentencepiece" / "test_model.model"
    text = "This is a test of subword regularization sampling"
    kwargs = {"enable_sampling": True, "nbest_size": -1, "alpha": 0.5}

    def draws():
        spm.set_random_generator_seed(0)
        sampling = BertGenerationTokenizer(model, sp_model_kwargs=kwargs)
        return [tuple(sampling.encode(text)) for _ in range(10)] + [tuple(sampling([text])["input_ids"][0].tolist())
                                                                    for _ in range(10)]

    first = draws()
    assert len(set(first[:10])) >= 2 and len(set(first[10:])) >= 2  # batched calls sample afresh too
    assert {BertGenerationTokenizer(model).decode(list(ids)) for ids in first} == {text}
    assert draws() == first  # seeded, the samples reproduce
    deterministic = BertGenerationTokenizer(model)
    assert len({tuple(deterministic.encode(text)) for _ in range(5)}) == 1
    with pytest.raises(ValueError, match="sp_model_kwargs"):
        BertGenerationTokenizer(model, sp_model_kwargs={"no_such_option": 1})


def test_tensor_inputs_to_decode_and_bad_ids(pair):
    case, ours, _ = pair
    batch = ours(["Hello world", "A much longer second sentence here"])
    assert ours.batch_decode(batch["input_ids"]) == ours.batch_decode(batch["input_ids"].tolist())
    assert ours.decode(batch["input_ids"][0]) == ours.batch_decode(batch["input_ids"])[0]
    assert ours.decode(list(batch["input_ids"][1])) == ours.batch_decode(batch["input_ids"])[1]  # 0-d tensors
    first = batch["input_ids"][1, 0]
    assert ours.convert_ids_to_tokens(first) == ours.convert_ids_to_tokens([int(first)])[0]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ours.convert_ids_to_tokens([ours.vocab_size + 5])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ours.decode([ours.vocab_size + 5])


def test_call_argument_errors(built):
    bert, _ = built("bert")
    with pytest.raises(ValueError, match="different lengths"):
        bert(["a", "a b c d"], padding=False)
    with pytest.raises(ValueError, match="needs max_length"):
        bert(["a"], padding="max_length")
    with pytest.raises(ValueError, match="max_length=1 is shorter than the 2 special tokens"):
        bert(["a b c"], max_length=1)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        bert(["a", 3])
    with pytest.raises(ValueError, match="return_tensors"):
        bert(["a"], return_tensors="np")
    assert bert([])["input_ids"].shape == (0, 0)


# -- saving -----------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(pair, tmp_path):
    case, ours, _ = pair
    written = ours.save_pretrained(tmp_path)
    assert all(path.is_file() for path in written)
    expected_files = {"bert": {"vocab.txt"}, "gpt2": {"vocab.json", "merges.txt"},
                      "roberta": {"vocab.json", "merges.txt"}}.get(case, {"spiece.model"})
    assert expected_files | {"tokenizer_config.json"} == {path.name for path in written}
    back = load_tokenizer(tmp_path)
    assert (type(back), back.kind, back.special_tokens, back.vocab_size) == \
        (type(ours), ours.kind, ours.special_tokens, ours.vocab_size)
    texts = _sentences(case)
    assert back(texts, max_length=40)["input_ids"].tolist() == ours(texts, max_length=40)["input_ids"].tolist()


def test_transformers_reads_our_saved_directories(built, tmp_path):
    for case, reference_class in (("bert", BertTokenizerFast), ("sentencepiece", HFBertGenerationTokenizer)):
        ours, _ = built(case)
        ours.save_pretrained(tmp_path / case)
        reread = reference_class.from_pretrained(str(tmp_path / case))
        for text in SENTENCES:
            assert reread(text)["input_ids"] == ours.encode(text), (case, text[:40])


@pytest.mark.parametrize("case", ["bert", "gpt2"])
def test_tokenizer_json_saved_by_transformers(case, built, tmp_path):
    _, reference = built(case)
    reference.save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file()
    ours = load_tokenizer(tmp_path)
    assert isinstance(ours, FastTokenizer) and ours.origin == "tokenizer.json" and ours.kind == case
    batch = ours(SENTENCES, max_length=20)
    expected = reference(SENTENCES, padding=True, truncation=True, max_length=20, return_tensors="pt")
    assert batch["input_ids"].tolist() == expected["input_ids"].tolist()
    assert batch["attention_mask"].tolist() == expected["attention_mask"].tolist()
    assert ours.decoder_start_token_id == (101 if case == "bert" else 50256)


# -- choosing by files (tiny vocabularies, no ../shared needed except for the SentencePiece model) ---------------
TINY_WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]


def _write_wordpiece(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(TINY_WORDPIECE) + "\n", encoding="utf-8")
    return directory


def _write_bpe(directory: Path, roberta_specials: bool, prefix: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = (["<s>", "<pad>", "</s>", "<unk>"] if roberta_specials else []) + \
        ["h", "e", "l", "o", "he", "ll", "hell", "hello"] + (["<mask>"] if roberta_specials else ["<|endoftext|>"])
    (directory / f"{prefix}vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (directory / f"{prefix}merges.txt").write_text("#version: 0.2\nh e\nl l\nhe ll\nhell o\n", encoding="utf-8")
    return directory


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content), encoding="utf-8")


def test_wordpiece_vocab_is_bert(tmp_path):
    tokenizer = load_tokenizer(_write_wordpiece(tmp_path))
    assert tokenizer.kind == "bert"
    assert tokenizer.encode("Hello worlds") == [2, 5, 6, 7, 3]
    assert load_tokenizer(tmp_path / "vocab.txt").kind == "bert"  # a single file works as well


def test_do_lower_case_from_tokenizer_config_and_override(tmp_path):
    _write_wordpiece(tmp_path)
    _write_json(tmp_path / "tokenizer_config.json", {"do_lower_case": False})
    assert load_tokenizer(tmp_path).encode("Hello world") == [2, 1, 6, 3]  # "Hello" is not in the uncased vocab
    assert load_tokenizer(tmp_path, do_lower_case=True).encode("Hello world") == [2, 5, 6, 3]


def test_special_token_keywords_name_the_specials_of_a_bare_vocabulary_as_transformers_does(tmp_path):
    """A bare vocab.txt (Google's bert2bert_L-24_wmt_* repos) read with its model card's pad_token / eos_token /
    bos_token keywords: the same ids, encodings and decodings as transformers' BertTokenizer with those keywords, so
    decoding skips every one of them; without them the card's tokens are plain words and stay in the text."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<pad>", "<s>", "</s>", "das", "Das", "haus", "Haus", "ist",
             "##e", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    card = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>"}
    ours, theirs = load_tokenizer(tmp_path, **card), BertTokenizer(str(tmp_path / "vocab.txt"), **card)
    assert (ours.pad_token_id, ours.eos_token_id, ours.bos_token_id) == (5, 7, 6) == (
        theirs.pad_token_id, theirs.eos_token_id, theirs.bos_token_id)
    for text in ("Das Haus ist.", "das Hause"):
        assert ours.encode(text, add_special_tokens=False) == theirs(text, add_special_tokens=False).input_ids
    generated = [6, 9, 11, 12, 14, 7, 5, 5]
    assert ours.decode(generated) == theirs.decode(generated, skip_special_tokens=True) == "Das Haus ist."
    assert load_tokenizer(tmp_path).decode(generated).endswith("</s> <pad> <pad>")
    with pytest.raises(TokenizerError, match="pad_token must be a non-empty string"):
        load_tokenizer(tmp_path, pad_token="")


@pytest.mark.parametrize("configs, kind, expected", [
    ({}, None, "gpt2"),  # no hint: GPT-2's vocab has no <s>
    ({"tokenizer_config.json": {"tokenizer_class": "RobertaTokenizerFast"}}, None, "roberta"),
    ({"config.json": {"model_type": "roberta"}}, None, "roberta"),
    ({"tokenizer_config.json": {"model_type": "roberta"}}, None, "roberta"),
    ({"config.json": {"model_type": "roberta"}}, "gpt2", "gpt2"),
])
def test_bpe_kind_from_configs_and_argument(tmp_path, configs, kind, expected):
    _write_bpe(tmp_path, roberta_specials=False)
    for name, content in configs.items():
        _write_json(tmp_path / name, content)
    tokenizer = load_tokenizer(tmp_path, kind=kind)
    assert tokenizer.kind == expected
    hello = tokenizer.encode("hello", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(hello) == ["hello"]
    if expected == "roberta":
        assert tokenizer.encode("hello") == [tokenizer.cls_token_id] + hello + [tokenizer.sep_token_id]
    else:
        assert tokenizer.encode("hello") == hello


def test_bpe_vocab_with_s_is_roberta_without_hints(tmp_path):
    tokenizer = load_tokenizer(_write_bpe(tmp_path, roberta_specials=True, prefix="roberta-base-"))
    assert tokenizer.kind == "roberta" and tokenizer.encode("hello") == [0, 11, 2]


def test_file_priority(tmp_path, tokenizer_files):
    model = tokenizer_files / "sentencepiece" / "test_model.model"
    directory = tmp_path / "all"
    _write_wordpiece(directory)
    os.symlink(model, directory / "spiece.model")
    assert load_tokenizer(directory).kind == "bert"  # vocab.txt > *.model
    assert isinstance(load_tokenizer(directory, kind="sentencepiece"), BertGenerationTokenizer)
    _write_bpe(directory, roberta_specials=False)
    assert load_tokenizer(directory).kind == "gpt2"  # vocab.json + merges.txt > vocab.txt
    assert load_tokenizer(directory, kind="bert").kind == "bert"
    FastTokenizer.from_wordpiece_vocab(directory / "vocab.txt").backend.save(str(directory / "tokenizer.json"))
    chosen = load_tokenizer(directory)
    assert chosen.origin == "tokenizer.json" and chosen.kind == "bert"  # tokenizer.json > everything
    only_model = tmp_path / "sp"
    only_model.mkdir()
    os.symlink(model, only_model / "whatever_name.model")
    assert isinstance(load_tokenizer(only_model), BertGenerationTokenizer)


# -- errors -----------------------------------------------------------------------------------------------------
def test_directory_without_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    assert issubclass(TokenizerError, ValueError)
    with pytest.raises(TokenizerError) as raised:
        load_tokenizer(tmp_path)
    message = str(raised.value)
    assert str(tmp_path) in message
    for expected in ("tokenizer.json", "vocab.json + merges.txt", "vocab.txt", "*.model"):
        assert expected in message
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_vocab_json_without_merges_is_not_enough(tmp_path):
    _write_bpe(tmp_path, roberta_specials=False)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(ValueError, match=r"found: vocab\.json"):
        load_tokenizer(tmp_path)


def test_kind_without_its_files(tmp_path):
    with pytest.raises(ValueError, match="kind='roberta'"):
        load_tokenizer(_write_wordpiece(tmp_path), kind="roberta")
    with pytest.raises(ValueError, match="kind: expected one of"):
        load_tokenizer(tmp_path, kind="t5")


def test_bad_options_and_files(tmp_path, tokenizer_files):
    _write_wordpiece(tmp_path / "wp")
    with pytest.raises(ValueError, match="'add_prefix_space' does not apply to a bert tokenizer"):
        load_tokenizer(tmp_path / "wp", add_prefix_space=True)
    _write_json(tmp_path / "wp" / "tokenizer_config.json", {"pad_token": 3})
    with pytest.raises(ValueError, match="tokenizer_config.json: pad_token must be"):
        load_tokenizer(tmp_path / "wp")

    bad_bpe = _write_bpe(tmp_path / "bpe", roberta_specials=False)
    (bad_bpe / "vocab.json").write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.json"):
        load_tokenizer(bad_bpe)

    (tmp_path / "garbage.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="garbage.model: not a readable SentencePiece model"):
        load_tokenizer(tmp_path / "garbage.model")

    two_models = tmp_path / "two"
    two_models.mkdir()
    for name in ("a.model", "b.model"):
        os.symlink(tokenizer_files / "sentencepiece" / "test_model.model", two_models / name)
    with pytest.raises(ValueError, match="several sentencepiece files"):
        load_tokenizer(two_models)

    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="not a tokenizer file"):
        load_tokenizer([tmp_path / "wp" / "vocab.txt", tmp_path / "notes.md"])


# -- vocabularies the harness trains (experiments.data.vocabulary) ---------------------------------------------------------
def _corpus(seed: int = 0, lines: int = 300) -> list[str]:
    """A few hundred English and German lines, cased, with umlauts: what a WMT vocabulary sees, in miniature."""
    import random

    rng = random.Random(seed)
    words = ["The", "house", "Haus", "der", "die", "Straße", "street", "Kätzchen", "kitten", "runs", "läuft", "and",
             "und", "quickly", "schnell", "über", "over", "bridge", "Brücke", "Mädchen", "girl", "reads", "liest"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))) + rng.choice([".", "!", "?"])
            for _ in range(lines)]


def test_the_trainers_a_cell_may_name_are_the_trainers_the_harness_has():
    """A cell's vocab.train is checked against experiments.config.data_spec's names (the config stage); each must be a
    trainer experiments.data.vocabulary has, and every trainer must be nameable."""
    from experiments.config.data_spec import VOCAB_TRAINERS
    from experiments.data.vocabulary import TRAINERS

    assert tuple(TRAINERS) == VOCAB_TRAINERS and all(TRAINERS[name].name == name for name in VOCAB_TRAINERS)


@pytest.mark.parametrize("train,size", [("wordpiece", 120), ("sentencepiece", 80)])
def test_trained_vocabulary_is_cased_deterministic_and_read_by_load_tokenizer(tmp_path, train, size):
    """A vocabulary trained by the harness on a few hundred lines: read back by load_tokenizer as BERT WordPiece or
    BertGenerationTokenizer, cased (Haus and haus differ, umlauts kept), with start / end / pad tokens, at most
    ``size`` ids (SentencePiece: exactly); two trainings on the same lines write byte-identical files."""
    from experiments.data.vocabulary import ensure_vocabulary, load_vocabulary

    texts = _corpus()
    first, trained = ensure_vocabulary(lambda: texts, "corpus-0", {"train": train, "size": size}, tmp_path / "a")
    again, _ = ensure_vocabulary(lambda: texts, "corpus-0", {"train": train, "size": size}, tmp_path / "b")
    assert trained and first.name == again.name
    for name in sorted(p.name for p in first.iterdir()):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    tokenizer = load_vocabulary(first)
    assert tokenizer.kind == {"wordpiece": "bert", "sentencepiece": "sentencepiece"}[train]
    assert (tokenizer.vocab_size == size) if train == "sentencepiece" else (50 < tokenizer.vocab_size <= size)
    assert None not in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert tokenizer.encode("Haus", add_special_tokens=False) != tokenizer.encode("haus", add_special_tokens=False)
    for text in ("The Mädchen läuft über die Brücke.", "Straße und street"):
        assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == text


def test_vocabulary_cache_key_follows_the_data_and_the_settings_and_a_cached_one_is_reused(tmp_path):
    """Same data and settings: the cached directory, without calling for the texts again (nothing is retrained).
    Another data identity, size or trainer: another directory. An incomplete directory (no manifest) is never read:
    it is trained again and replaced; a training that fails leaves nothing behind."""
    from experiments.data.vocabulary import MANIFEST, ensure_vocabulary, vocabulary_dir, vocabulary_key

    settings = {"train": "wordpiece", "size": 100}
    texts = _corpus()
    directory, trained = ensure_vocabulary(lambda: texts, "discofuse:abc", settings, tmp_path)
    assert trained and directory == vocabulary_dir(tmp_path, "discofuse:abc", settings)
    stamp = (directory / "vocab.txt").stat().st_mtime_ns

    def must_not_train():
        raise AssertionError("a cached vocabulary was trained again")

    reused, trained = ensure_vocabulary(must_not_train, "discofuse:abc", settings, tmp_path)
    assert reused == directory and not trained and (directory / "vocab.txt").stat().st_mtime_ns == stamp
    keys = {vocabulary_key("discofuse:abc", settings), vocabulary_key("discofuse:abd", settings),
            vocabulary_key("discofuse:abc", {**settings, "size": 101}),
            vocabulary_key("discofuse:abc", {"train": "sentencepiece", "size": 100})}
    assert len(keys) == 4
    other, trained = ensure_vocabulary(lambda: _corpus(seed=1), "discofuse:abd", settings, tmp_path)
    assert trained and other != directory

    (directory / MANIFEST).unlink()  # as if written by something else, incomplete
    rebuilt, trained = ensure_vocabulary(lambda: texts, "discofuse:abc", settings, tmp_path)
    assert trained and rebuilt == directory and (directory / MANIFEST).is_file()

    def failing():
        yield "one line"
        raise OSError("disk gone")

    with pytest.raises((OSError, RuntimeError), match="disk gone"):  # sentencepiece re-raises it as RuntimeError
        ensure_vocabulary(failing, "broken", settings, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([directory.name, other.name])
