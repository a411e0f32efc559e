"""Vocabularies that lie (issue 24, part 4): every tokenizer file ``load_tokenizer`` reads is checked for tokens on
two ids, ids on two tokens, skipped and out-of-range ids, and refused in one line naming the file, the token and both
places; the released vocabularies in ../shared/data/tokenizers still load (RoBERTa's, with its gap before <mask>).

Before these checks every bad vocabulary below loaded silently (the ``tokenizers`` readers keep one id of a repeated
token and leave the other unreachable) or failed with a message that named neither the token nor the places.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from bertgen.tokenization import TokenizerError, load_tokenizer
from bertgen.tokenization_vocab import read_bpe_vocab, read_merges, read_wordpiece_vocab

WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]
BPE_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "h", "e", "l", "o", "he", "ll", "hell", "hello", "<mask>"]
MERGES = "#version: 0.2\nh e\nl l\nhe ll\nhell o\n"


Writer = Callable[[Path, Path], Path]  # (directory, the shared tokenizer files) -> the directory


def _wordpiece(content: str | bytes) -> Writer:
    def write(directory: Path, shared: Path) -> Path:
        data = content.encode("utf-8") if isinstance(content, str) else content
        (directory / "vocab.txt").write_bytes(data)
        return directory
    return write


def _bpe(vocab_text: str | bytes, merges: str = MERGES) -> Writer:
    def write(directory: Path, shared: Path) -> Path:
        data = vocab_text.encode("utf-8") if isinstance(vocab_text, str) else vocab_text
        (directory / "vocab.json").write_bytes(data)
        (directory / "merges.txt").write_text(merges, encoding="utf-8")
        return directory
    return write


def _pairs(pairs: list[tuple[str, object]]) -> str:
    """A JSON object written pair by pair, so a key may appear twice."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


GOOD_BPE = [(token, i) for i, token in enumerate(BPE_TOKENS)]


def _tokenizer_json(edit: Callable[[dict], None], model_type: str = "WordPiece") -> Writer:
    """A tokenizer.json as the tokenizers library writes it, then edited (``edit`` may set ``doc["model"]["vocab"]``
    to a str of raw JSON, for repeated keys)."""
    def write(directory: Path, shared: Path) -> Path:
        from tokenizers import Tokenizer
        from tokenizers.models import Unigram, WordPiece

        if model_type == "Unigram":
            backend = Tokenizer(Unigram([(p, -1.0) for p in ["<unk>", "▁he", "llo", "▁world"]], unk_id=0))
        else:
            backend = Tokenizer(WordPiece({t: i for i, t in enumerate(WORDPIECE)}, unk_token="[UNK]"))
            backend.add_special_tokens(["[CLS]", "[SEP]"])
        doc = json.loads(backend.to_str())
        edit(doc)
        raw_vocab = doc["model"]["vocab"]
        doc["model"]["vocab"] = "VOCAB"
        text = json.dumps(doc).replace('"VOCAB"', raw_vocab if isinstance(raw_vocab, str) else json.dumps(raw_vocab))
        (directory / "tokenizer.json").write_text(text, encoding="utf-8")
        return directory
    return write


def _added(content: str, index: int) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        doc["added_tokens"].append({"id": index, "content": content, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    return edit


def _vocab(raw: str) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        doc["model"]["vocab"] = raw
    return edit


def _sentencepiece(edit: Callable[[list], None]) -> Writer:
    """The shared test_model.model with its pieces edited through SentencePiece's own protobuf module."""
    def write(directory: Path, shared: Path) -> Path:
        model_pb2 = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
        proto = model_pb2.ModelProto()
        proto.ParseFromString((shared / "sentencepiece" / "test_model.model").read_bytes())
        edit(proto.pieces)
        (directory / "spiece.model").write_bytes(proto.SerializeToString())
        return directory
    return write


def _set_piece(index: int, text_of: Callable[[list], str]) -> Callable[[list], None]:
    def edit(pieces) -> None:
        pieces[index].piece = text_of(pieces)
    return edit


@dataclass
class Case:
    id: str
    write: Writer
    file: str  # the file the message names
    expect: tuple[str, ...]


CASES = [
    # vocab.txt: ids are line numbers
    Case("vocab-txt-repeated-token", _wordpiece("\n".join(WORDPIECE + ["hello"]) + "\n"), "vocab.txt",
         ('token "hello" on line 9 repeats line 6; expected each token once',)),
    Case("vocab-txt-repeated-after-trailing-space", _wordpiece("\n".join(WORDPIECE + ["world \r"]) + "\n"),
         "vocab.txt", ('token "world" on line 9 repeats line 7',)),
    Case("vocab-txt-repeated-special", _wordpiece("\n".join(WORDPIECE + ["[SEP]"]) + "\n"), "vocab.txt",
         ('token "[SEP]" on line 9 repeats line 4',)),
    Case("vocab-txt-empty-line", _wordpiece("\n".join(WORDPIECE[:5] + [""] + WORDPIECE[5:]) + "\n"), "vocab.txt",
         ("line 6 is empty", "an empty line shifts every later id")),
    Case("vocab-txt-empty-file", _wordpiece(""), "vocab.txt", ("empty vocabulary", "one token a line")),
    Case("vocab-txt-not-utf8", _wordpiece("\n".join(WORDPIECE).encode() + b"\ncaf\xe9\n"), "vocab.txt",
         ("line 9 is not UTF-8", "caf\\xe9")),
    # vocab.json: a JSON object token -> id
    Case("vocab-json-repeated-token", _bpe(_pairs(GOOD_BPE + [("ll", 13)])), "vocab.json",
         ('token "ll" appears twice (ids 9 and 13); expected each token once',)),
    Case("vocab-json-two-tokens-one-id", _bpe(_pairs(GOOD_BPE[:12] + [("<mask>", 9)])), "vocab.json",
         ('tokens "ll" and "<mask>" both have id 9; expected each id to name one token',)),
    Case("vocab-json-skipped-id", _bpe(_pairs(GOOD_BPE[:6] + [(t, i + 1) for t, i in GOOD_BPE[6:]])),
         "vocab.json", ('no token has id 6, yet "l" has id 7', "without gaps")),
    Case("vocab-json-id-past-its-size", _bpe(_pairs(GOOD_BPE[:11] + [("hello", 40)])), "vocab.json",
         ('no token has id 11-39, yet "hello" has id 40',)),
    Case("vocab-json-negative-id", _bpe(_pairs(GOOD_BPE + [("lo", -1)])), "vocab.json",
         ('token "lo" has id -1; expected a non-negative integer id',)),
    Case("vocab-json-id-a-string", _bpe(_pairs(GOOD_BPE + [("lo", "13")])), "vocab.json",
         ('token "lo" has id "13"',)),
    Case("vocab-json-id-a-float", _bpe(_pairs(GOOD_BPE + [("lo", 13.0)])), "vocab.json",
         ('token "lo" has id 13.0',)),
    Case("vocab-json-empty", _bpe("{}"), "vocab.json", ("empty vocabulary",)),
    Case("vocab-json-a-list", _bpe(json.dumps(BPE_TOKENS)), "vocab.json",
         ("expected a JSON object token -> id, got a JSON list",)),
    Case("vocab-json-not-utf8", _bpe(b'{"<s>": 0, "caf\xe9": 1}'), "vocab.json", ("line 1 is not UTF-8",)),
    # merges.txt
    Case("merges-repeated", _bpe(_pairs(GOOD_BPE), MERGES + "l l\n"), "merges.txt",
         ('merge "l l" on line 6 repeats line 3; expected each merge once',)),
    Case("merges-three-tokens", _bpe(_pairs(GOOD_BPE), MERGES + "h e l\n"), "merges.txt",
         ('line 6 is "h e l"', "two tokens a line")),
    Case("merges-unknown-token", _bpe(_pairs(GOOD_BPE), MERGES + "x y\n"), "merges.txt",
         ("Token `x` out of vocabulary",)),
    # tokenizer.json: the model's vocabulary and the added tokens, one id space
    Case("tokenizer-json-repeated-token", _tokenizer_json(_vocab(_pairs(
        [(t, i) for i, t in enumerate(WORDPIECE)] + [("hello", 8)]))), "tokenizer.json",
         ('token "hello" appears twice (ids 5 and 8)',)),
    Case("tokenizer-json-two-tokens-one-id", _tokenizer_json(_vocab(_pairs(
        [(t, i) for i, t in enumerate(WORDPIECE)] + [("worlds", 6)]))), "tokenizer.json",
         ('tokens "world" and "worlds" both have id 6',)),
    Case("tokenizer-json-skipped-id", _tokenizer_json(_vocab(_pairs(
        [(t, i) for i, t in enumerate(WORDPIECE)] + [("worlds", 12)]))), "tokenizer.json",
         ('no token has id 8-11, yet "worlds" has id 12',)),
    Case("tokenizer-json-added-token-on-a-taken-id", _tokenizer_json(_added("<extra>", 5)), "tokenizer.json",
         ('added token "<extra>" has id 5, which the model\'s vocabulary gives to "hello"',)),
    Case("tokenizer-json-added-token-with-another-id", _tokenizer_json(_added("hello", 9)), "tokenizer.json",
         ('added token "hello" has id 9, but the model\'s vocabulary gives it id 5',)),
    Case("tokenizer-json-two-added-tokens-one-id", _tokenizer_json(_added("<extra>", 2)), "tokenizer.json",
         ('added tokens "[CLS]" and "<extra>" both have id 2',)),
    Case("tokenizer-json-unigram-repeated-piece", _tokenizer_json(
        lambda doc: doc["model"]["vocab"].append(["llo", -2.0]), "Unigram"), "tokenizer.json",
         ('token "llo" appears twice (ids 2 and 4)',)),
    # SentencePiece: pieces by position
    Case("spiece-repeated-piece", _sentencepiece(_set_piece(10, lambda pieces: pieces[7].piece)), "spiece.model",
         ('piece "▁the" at id 10 repeats id 7; expected each piece once',)),
    Case("spiece-piece-repeats-a-control-piece", _sentencepiece(_set_piece(10, lambda pieces: "<s>")),
         "spiece.model", ('piece "<s>" at id 10 repeats id 1',)),
    Case("spiece-empty-piece", _sentencepiece(_set_piece(10, lambda pieces: "")), "spiece.model",
         ("piece 10 is empty",)),
]


@pytest.fixture
def shared_tokenizers(shared_dir) -> Path:
    return shared_dir / "data" / "tokenizers"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_lying_vocabulary_is_refused_in_one_line_naming_file_and_token(case, tmp_path, shared_tokenizers):
    directory = case.write(tmp_path, shared_tokenizers)
    with pytest.raises(TokenizerError) as raised:
        load_tokenizer(directory)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 400, message
    assert str(tmp_path / case.file) in message, message
    for fragment in case.expect:
        assert fragment in message, (fragment, message)


def test_the_catalogue_covers_every_file_kind_and_lie():
    assert len({c.id for c in CASES}) == len(CASES) >= 25
    assert {c.file for c in CASES} == {"vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "spiece.model"}


def test_released_vocabularies_still_load(shared_tokenizers):
    """bert-base-uncased (its [unused...] tokens are distinct), GPT-2, RoBERTa (no ids 50261-50263: fairseq's
    madeupword slots; <mask> at 50264 after them) and SentencePiece models."""
    bert = load_tokenizer(shared_tokenizers / "bert-base-uncased")
    assert bert.vocab_size == len(bert) == 30522 and bert.token_to_id("[unused0]") == 1
    roberta = load_tokenizer([shared_tokenizers / "roberta" / "roberta-base-vocab.json",
                              shared_tokenizers / "gpt2" / "gpt2-merges.txt"])
    assert roberta.vocab_size == 50265 and roberta.mask_token_id == 50264
    assert all(roberta.id_to_token(i) is None for i in (50261, 50262, 50263))
    gpt2 = load_tokenizer([shared_tokenizers / "gpt2" / "gpt2-vocab.json",
                           shared_tokenizers / "gpt2" / "gpt2-merges.txt"])
    assert gpt2.vocab_size == 50257
    for name in ("test_model.model", "test_ja_model.model"):
        assert load_tokenizer(shared_tokenizers / "sentencepiece" / name).vocab_size > 1000


def test_a_gap_before_ordinary_tokens_is_refused_but_before_trailing_specials_allowed(tmp_path):
    _bpe(_pairs(GOOD_BPE[:12] + [("<mask>", 20)]))(tmp_path, tmp_path)
    assert load_tokenizer(tmp_path).mask_token_id == 20  # RoBERTa's layout, small
    _bpe(_pairs(GOOD_BPE[:12] + [("<mask>", 20), ("lo", 21)]))(tmp_path, tmp_path)
    with pytest.raises(TokenizerError, match='no token has id 12-19, yet "lo" has id 21'):
        load_tokenizer(tmp_path)


def test_the_real_50k_vocabularies_read_whole(shared_tokenizers):
    """GPT-2's vocabulary and merges and BERT's WordPiece list pass the checks with every entry kept."""
    vocab = read_bpe_vocab(shared_tokenizers / "gpt2" / "gpt2-vocab.json")
    merges = read_merges(shared_tokenizers / "gpt2" / "gpt2-merges.txt")
    wordpiece = read_wordpiece_vocab(shared_tokenizers / "bert-base-uncased" / "vocab.txt")
    assert len(vocab) == 50257 and len(merges) == 50000 and len(wordpiece) == 30522
