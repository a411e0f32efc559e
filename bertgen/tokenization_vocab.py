"""Vocabulary files read and checked before a tokenizer is built from them: a vocabulary that lies is refused.

A tokenizer file maps tokens to ids, and nothing in the ``tokenizers`` library checks that the map is one to one. A
``vocab.txt`` with a token on two lines keeps the later line's id, so the earlier id is never produced and decodes to
nothing; a ``vocab.json`` with one token twice, or two tokens on one id, trains silently and decodes some ids to the
wrong token. Every file :func:`bertgen.tokenization.load_tokenizer` reads goes through here first, and a lie is one
line naming the file, the token and both places (``vocab.txt: token "foo" on line 12 repeats line 7; each token must
appear once``). The checks cost milliseconds for a 50k vocabulary (Python parses what Rust parses once more).

What is refused:

- ``vocab.txt``: a token on two lines (after trailing whitespace is trimmed, as the reader does), an empty line (it
  shifts every later id), an empty file, bytes that are not UTF-8.
- ``vocab.json`` and the vocabulary of a ``tokenizer.json``: a token twice (JSON readers keep one of the two values;
  ``object_pairs_hook`` sees both), two tokens on one id, ids that are not non-negative integers, and ids skipped in
  the middle. Released vocabularies do skip ids in one place: RoBERTa's ``vocab.json`` has no 50261-50263 (fairseq's
  ``madeupword0000``-``0002``, which round its table to a multiple of 8) and puts ``<mask>`` at 50264. So a gap is
  allowed only where every id after it is a special token; one in the middle of ordinary tokens is refused.
- ``tokenizer.json``'s added tokens: an id that the model's vocabulary gives to another token, one token on two ids.
- ``merges.txt``: a merge line twice (the later rank silently wins), a line that is not two tokens.
- SentencePiece ``.model`` files: see :mod:`bertgen.tokenization_sentencepiece` (a piece on two ids).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .tokenization_base import DEFAULT_SPECIAL_TOKENS, TokenizerError

# What the tokenizers library's line reader trims from the end of a vocab.txt line (Rust's char::is_whitespace).
_TRAILING_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
                       "\u200a\u2028\u2029\u202f\u205f\u3000"
# Tokens that may follow a gap of unused ids at the end of a vocabulary (RoBERTa's <mask>), besides the caller's.
KNOWN_SPECIAL_TOKENS = frozenset(token for specials in DEFAULT_SPECIAL_TOKENS.values() for token in specials.values())


def shown(token: str) -> str:
    """A token in a message: quoted, escaped (a newline in a token must not break the line), at most 60 chars."""
    return json.dumps(token if len(token) <= 60 else token[:60] + "…", ensure_ascii=False)


def _text(path: Path, what: str) -> str:
    """The file as UTF-8 text; a bad byte is named by line and byte offset."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TokenizerError(f"{path}: cannot read ({err.strerror or err}); expected {what}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        start = raw.rfind(b"\n", 0, err.start) + 1
        end = raw.find(b"\n", err.start)
        snippet = raw[start:end if end != -1 else len(raw)][:40]
        raise TokenizerError(f"{path}: line {line} is not UTF-8 (byte {err.start}: {snippet!r}); expected {what} in "
                             "UTF-8") from None


def _lines(text: str) -> list[str]:
    """Lines as the tokenizers library's reader sees them: split on \\n, without the empty one after a last \\n."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# -- vocab.txt ---------------------------------------------------------------------------------------------------
def read_wordpiece_vocab(path: str | os.PathLike) -> dict[str, int]:
    """``vocab.txt`` as token -> id (the line number from 0), each line's trailing whitespace trimmed as the
    tokenizers library's reader trims it; refused when a token repeats, a line is empty or the file is."""
    path = Path(path)
    what = "a WordPiece vocab.txt, one token a line"
    lines = _lines(_text(path, what))
    if not lines:
        raise TokenizerError(f"{path}: empty vocabulary; expected {what}")
    vocab: dict[str, int] = {}
    for index, line in enumerate(lines):
        token = line.rstrip(_TRAILING_WHITESPACE)
        if not token:
            raise TokenizerError(f"{path}: line {index + 1} is empty; expected {what} (an empty line shifts every "
                                 "later id)")
        first = vocab.setdefault(token, index)
        if first != index:
            raise TokenizerError(f"{path}: token {shown(token)} on line {index + 1} repeats line {first + 1}; "
                                 "expected each token once")
    return vocab


# -- token -> id maps (vocab.json, tokenizer.json) ---------------------------------------------------------------
class _Pairs(list):
    """A JSON object as the (key, value) pairs it was written with, duplicates kept."""


def _parse_json(text: str, path: Path, what: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{path}: not valid JSON (line {err.lineno} column {err.colno}: {err.msg}); expected "
                             f"{what}") from None
    except RecursionError:
        raise TokenizerError(f"{path}: nested too deeply to read; expected {what}") from None


def _as_dict(value: Any) -> Any:
    """Plain dicts and lists again, once duplicate keys have been looked for where they matter."""
    if isinstance(value, _Pairs):
        return {key: _as_dict(item) for key, item in value}
    if isinstance(value, list):
        return [_as_dict(item) for item in value]
    return value


def check_token_ids(pairs: Iterable[tuple[str, Any]], where: str, specials: Iterable[str] = (),
                    taken: dict[int, str] | None = None) -> dict[str, int]:
    """A token -> id map, checked: each token once, each id a non-negative integer naming one token, no id skipped
    except before special tokens at the end (``specials`` and :data:`KNOWN_SPECIAL_TOKENS`). ``taken``: ids already
    given to other tokens (a tokenizer.json's added tokens), which fill gaps and must not collide."""
    vocab: dict[str, int] = {}
    by_id: dict[int, str] = dict(taken or {})
    for token, index in pairs:
        if type(index) is not int or index < 0:
            raise TokenizerError(f"{where}: token {shown(token)} has id {json.dumps(index)[:40]}; expected a "
                                 "non-negative integer id")
        if token in vocab:
            raise TokenizerError(f"{where}: token {shown(token)} appears twice (ids {vocab[token]} and {index}); "
                                 "expected each token once")
        other = by_id.get(index)
        if other is not None and other != token:
            raise TokenizerError(f"{where}: tokens {shown(other)} and {shown(token)} both have id {index}; "
                                 "expected each id to name one token")
        vocab[token] = index
        by_id[index] = token
    if not vocab:
        return vocab
    size = max(by_id) + 1
    if len(by_id) < size:
        allowed = KNOWN_SPECIAL_TOKENS | set(specials)
        first_gap = next(i for i in range(size) if i not in by_id)
        gap_end = next(i for i in range(first_gap, size) if i in by_id)
        after = [(i, t) for i, t in by_id.items() if i > first_gap and t not in allowed]
        if after:
            index, token = min(after)
            gap = str(first_gap) if gap_end == first_gap + 1 else f"{first_gap}-{gap_end - 1}"
            raise TokenizerError(f"{where}: no token has id {gap}, yet {shown(token)} has id {index}; expected ids "
                                 f"0..{size - 1} without gaps (only special tokens, as RoBERTa's <mask>, may follow "
                                 "unused ids)")
    return vocab


def read_bpe_vocab(path: str | os.PathLike, specials: Iterable[str] = ()) -> dict[str, int]:
    """``vocab.json`` as token -> id, checked by :func:`check_token_ids`."""
    path = Path(path)
    what = "a JSON object token -> id"
    doc = _parse_json(_text(path, what), path, what)
    if not isinstance(doc, _Pairs):
        raise TokenizerError(f"{path}: expected {what}, got a JSON {type(_as_dict(doc)).__name__}")
    if not doc:
        raise TokenizerError(f"{path}: empty vocabulary; expected {what}")
    return check_token_ids(doc, str(path), specials)


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``merges.txt`` as (left, right) pairs in rank order: ``#version`` lines skipped, every other line two tokens
    split by one space (the tokenizers library's rule), each merge once."""
    path = Path(path)
    what = "BPE merges, two tokens a line"
    merges: list[tuple[str, str]] = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in enumerate(_lines(_text(path, what)), start=1):
        line = line.removesuffix("\r")
        if line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{path}: line {number} is {shown(line)}; expected {what} split by one space")
        pair = (parts[0], parts[1])
        first = seen.setdefault(pair, number)
        if first != number:
            raise TokenizerError(f"{path}: merge {shown(line)} on line {number} repeats line {first}; "
                                 "expected each merge once")
        merges.append(pair)
    return merges


# -- tokenizer.json ----------------------------------------------------------------------------------------------
def check_tokenizer_json(path: str | os.PathLike) -> None:
    """The token -> id maps of a ``tokenizer.json``: the model's vocabulary (WordPiece, BPE, WordLevel: an object;
    Unigram: a list of [piece, score], ids by position) and the added tokens, checked as one id space."""
    path = Path(path)
    what = "a tokenizers JSON file"
    doc = _parse_json(_text(path, what), path, what)
    top = dict(doc) if isinstance(doc, _Pairs) else None
    model = top.get("model") if top is not None else None
    if not isinstance(model, _Pairs):
        raise TokenizerError(f"{path}: expected {what} (an object with a \"model\" object)")
    added_tokens = top.get("added_tokens") or []
    if not isinstance(added_tokens, list):
        raise TokenizerError(f"{path}: added_tokens: expected a list of {{\"id\", \"content\"}} objects")
    added: dict[int, str] = {}
    added_ids: dict[str, int] = {}
    for position, entry in enumerate(added_tokens):
        entry = dict(entry) if isinstance(entry, _Pairs) else {}
        token, index = entry.get("content"), entry.get("id")
        if not isinstance(token, str) or type(index) is not int or index < 0:
            raise TokenizerError(f"{path}: added_tokens[{position}]: expected a \"content\" string and a non-negative "
                                 f"integer \"id\", got {json.dumps(_as_dict(entry))[:80]}")
        if added.get(index, token) != token:
            raise TokenizerError(f"{path}: added tokens {shown(added[index])} and {shown(token)} both have id "
                                 f"{index}; expected each id to name one token")
        if added_ids.get(token, index) != index:
            raise TokenizerError(f"{path}: added token {shown(token)} appears twice (ids {added_ids[token]} and "
                                 f"{index}); expected each token once")
        added[index], added_ids[token] = token, index
    vocab = dict(model).get("vocab")
    if isinstance(vocab, _Pairs):
        pairs: list[tuple[str, Any]] = list(vocab)
    elif isinstance(vocab, list):  # Unigram: [piece, score] at each id
        pairs = []
        for index, item in enumerate(vocab):
            if not (isinstance(item, list) and item and isinstance(item[0], str)):
                raise TokenizerError(f"{path}: model vocab[{index}]: expected [piece, score], got "
                                     f"{json.dumps(_as_dict(item))[:60]}")
            pairs.append((item[0], index))
    else:
        return  # a model without a vocabulary to check (the Rust reader says what is wrong with it)
    where = f"{path}: model vocab"
    for token, index in pairs:  # an added token is usually also in the model's vocabulary, with the same id
        if token in added_ids and index != added_ids[token] and type(index) is int:
            raise TokenizerError(f"{path}: added token {shown(token)} has id {added_ids[token]}, but the model's "
                                 f"vocabulary gives it id {index}; expected one id per token")
        other = added.get(index) if type(index) is int else None
        if other is not None and other != token:
            raise TokenizerError(f"{path}: added token {shown(other)} has id {index}, which the model's vocabulary "
                                 f"gives to {shown(token)}; expected each id to name one token")
    in_model = {token for token, _ in pairs}
    check_token_ids(pairs, where, specials=added_ids, taken={i: t for i, t in added.items() if t not in in_model})
