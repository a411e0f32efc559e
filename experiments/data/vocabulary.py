"""Vocabularies the harness trains itself on a task's training data (cell setting ``vocab``), cached by content.

The paper builds two kinds of vocabulary of its own: Table 4's Transformer baseline reads a 32k WordPiece vocabulary
"built on the WMT training data", and Table 6 replaces a checkpoint's vocabulary by a task-specific 16k SentencePiece
(BPE) one. A cell asks for one with ``vocab: {train: wordpiece | sentencepiece, size: N}``; the trainers are the
well-kept libraries the project already reads vocabularies with:

* ``wordpiece``: BERT's WordPiece format, **cased** and with accents kept (German; the paper does not say, and a cased
  vocabulary can still be scored uncased), special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4), written as
  ``vocab.txt`` + ``tokenizer_config.json``, which ``bertgen.tokenization.load_tokenizer`` reads as a BERT tokenizer.
  Its pieces are SentencePiece BPE merges learnt on the text as BERT pre-tokenises it (``tokenizers``' normaliser
  and pre-tokenizer); ``tokenizers``' own WordPieceTrainer is not used because it is not deterministic (ties between
  equally frequent merges are broken in hash-map order: two runs on one text gave two vocabularies);
* ``sentencepiece``: ``sentencepiece`` BPE ("16k BPE" in Table 6) with full character coverage and the specials of
  the paper's released SentencePiece checkpoints (``<pad> </s> <s> <unk>`` = 0-3, ``<::::>`` a user symbol), so the
  vocabulary has exactly ``size`` ids; written as ``spiece.model``, read as ``BertGenerationTokenizer``.

Both are trained on every source and target text of the cell's training split as the cell loads it (its
``data_fraction`` and ``max_examples.train`` applied: a vocabulary never sees text its cell does not train on).

Cache: ``<cache root>/<train>-<size>-<key>/``, ``key`` a hash of the training data's identity (its datasets
fingerprint: files, columns, subset), the trainer settings, the library versions and :data:`FORMAT_VERSION`. A second
cell with the same data and settings (another seed, Table 6's frozen-embedding row) reuses the directory without
training; another data set or setting makes another one. A vocabulary is built in a temporary directory and renamed
into place once complete (``vocabulary.json`` written last), so a killed run leaves no half-written vocabulary that
a later cell could read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
import io
import sentencepiece as spm
from tokenizers import normalizers, pre_tokenizers
from importlib.metadata import version

from bertgen.tokenization import SPIECE_UNDERLINE, BaseTokenizer, load_tokenizer

FORMAT_VERSION = 1  # bump when a trainer's settings or files change, so cached vocabularies are not reused
MANIFEST = "vocabulary.json"  # written last: a directory without it is incomplete

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SENTENCEPIECE_SEPARATOR = "<::::>"  # the released BertGeneration vocabularies' sep token (bertgen.tokenization)


@dataclass(frozen=True)
class Trainer:
    """One way to train a vocabulary: its libraries, what it writes, and how."""

    name: str
    libraries: tuple[str, ...]  # the packages whose versions are part of the cache key
    description: str
    train: Callable[[Iterator[str], int, Path], None]


def _bpe_pieces(texts: Iterable[str], size: int, **options: Any) -> bytes:
    """A serialised SentencePiece BPE model of ``size`` pieces trained on ``texts``. One thread: SentencePiece's
    pieces are then the same on every run (tokenizers' WordPieceTrainer breaks ties between equally frequent merges
    in hash-map order, so two runs on the same text gave two vocabularies)."""

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=(text for text in texts if text.strip()), model_writer=model,
                                   vocab_size=size, model_type="bpe", character_coverage=1.0, minloglevel=2,
                                   num_threads=1, **options)
    return model.getvalue()


def _train_wordpiece(texts: Iterator[str], size: int, directory: Path) -> None:
    """BERT's WordPiece format from BPE pieces learnt on BERT's own pre-tokenisation (cased, accents kept): a
    word-initial piece ``▁abc`` becomes ``abc``, any other ``abc`` becomes ``##abc``; every character is kept in both
    forms (so no word falls back to [UNK] for want of a piece), the lowest-ranked merges giving way to them."""

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                            lowercase=False)
    splitter = pre_tokenizers.BertPreTokenizer()

    def words() -> Iterator[str]:
        for text in texts:
            yield " ".join(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))

    processor = spm.SentencePieceProcessor(model_proto=_bpe_pieces(words(), size - len(WORDPIECE_SPECIALS)))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())
              if not (processor.is_control(i) or processor.is_unknown(i))]
    merged, characters = [], []
    for piece in pieces:
        token = piece[1:] if piece.startswith(SPIECE_UNDERLINE) else "##" + piece
        if token in ("", "##"):
            continue
        (characters if len(piece.lstrip(SPIECE_UNDERLINE)) == 1 else merged).append(token)
    singles = {token.removeprefix("##") for token in characters}
    characters = [form for char in sorted(singles) for form in (char, "##" + char)]
    room = size - len(WORDPIECE_SPECIALS) - len(characters)
    vocab = list(dict.fromkeys([*WORDPIECE_SPECIALS, *characters, *merged[:max(room, 0)]]))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": False, "strip_accents": False,
              "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
              "mask_token": "[MASK]"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _train_sentencepiece(texts: Iterator[str], size: int, directory: Path) -> None:
    model = _bpe_pieces(texts, size, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                        user_defined_symbols=[SENTENCEPIECE_SEPARATOR])
    (directory / "spiece.model").write_bytes(model)


# The trainers a cell's vocab.train names, one per name in experiments.config.data_spec.VOCAB_TRAINERS.
TRAINERS: dict[str, Trainer] = {t.name: t for t in (
    Trainer("wordpiece", ("sentencepiece", "tokenizers"), "cased WordPiece (BERT pre-tokenisation), pieces by SentencePiece BPE",
            _train_wordpiece),
    Trainer("sentencepiece", ("sentencepiece",), "SentencePiece BPE, full character coverage", _train_sentencepiece),
)}


def _library_version(name: str) -> str:
    return version(name)


def vocabulary_key(data_identity: str, settings: dict[str, Any]) -> str:
    """16 hex digits of sha256 over what makes a vocabulary: the training data's identity, the trainer settings
    (``{"train": ..., "size": ...}``), the trainer libraries' versions and this module's format version."""
    trainer = TRAINERS[settings["train"]]
    payload = {"format": FORMAT_VERSION, "data": data_identity, "settings": dict(sorted(settings.items())),
               "libraries": [f"{name}=={_library_version(name)}" for name in trainer.libraries]}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def vocabulary_dir(cache_root: str | os.PathLike, data_identity: str, settings: dict[str, Any]) -> Path:
    return Path(cache_root) / f"{settings['train']}-{settings['size']}-{vocabulary_key(data_identity, settings)}"


def is_complete(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def ensure_vocabulary(texts: Callable[[], Iterable[str]], data_identity: str, settings: dict[str, Any],
                      cache_root: str | os.PathLike) -> tuple[Path, bool]:
    """The cached vocabulary for ``settings`` trained on ``texts()`` (called only when it must be trained), and
    whether it was trained now (False: reused). ``data_identity`` names the texts (a datasets fingerprint)."""
    if settings.get("train") not in TRAINERS:
        raise ValueError(f"vocab.train: expected one of {sorted(TRAINERS)}, got {settings.get('train')!r}")
    final = vocabulary_dir(cache_root, data_identity, settings)
    if is_complete(final):
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        TRAINERS[settings["train"]].train(iter(texts()), int(settings["size"]), tmp)
        tokenizer = load_tokenizer(tmp)
        manifest = {"settings": settings, "data": data_identity, "key": final.name,
                    "trainer": TRAINERS[settings["train"]].description, "vocab_size": tokenizer.vocab_size}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if is_complete(final):  # another process finished the same vocabulary meanwhile: keep its copy
            return final, False
        if final.exists():  # not complete (written by hand, or by another tool): never read, replaced
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, True


def load_vocabulary(directory: str | os.PathLike) -> BaseTokenizer:
    """The tokenizer of a trained vocabulary directory (complete, or a cell's copy of one)."""
    return load_tokenizer(directory)


def split_texts(raw) -> Callable[[], Iterator[str]]:
    """The source and target texts of a ``load_split`` dataset, read in chunks (a WMT training split is 4.5M pairs)."""

    def texts() -> Iterator[str]:
        for start in range(0, len(raw), 10_000):
            chunk = raw[start:start + 10_000]
            yield from chunk["source"]
            yield from chunk["target"]

    return texts
