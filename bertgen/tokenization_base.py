"""What every bertgen tokenizer shares: the kinds and their special tokens, ``TokenizerError``, the
``BaseTokenizer`` interface (batch encoding with padding and truncation, decoding, the start / end / pad ids), and
writing ``tokenizer_config.json``. The tokenizers themselves and ``load_tokenizer`` are in ``bertgen.tokenization``,
which re-exports these names.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .families import FAMILIES

# The kinds: one per checkpoint family (bertgen.families), plus the SentencePiece tokenizer of the paper's released
# BertGeneration checkpoints, which no family warm-starts from.
TOKENIZER_KINDS = (*(family.tokenizer for family in FAMILIES.values()), "sentencepiece")

# The order in which transformers registers special tokens; it fixes the ids of specials missing from a vocabulary
# (BertGeneration's "<::::>" and "<pad>" get the two ids after the SentencePiece pieces, in this order).
SPECIAL_ROLES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")

DEFAULT_SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    **{family.tokenizer: family.special_tokens for family in FAMILIES.values()},
    "sentencepiece": {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "sep": "<::::>", "pad": "<pad>"},
}

# Written to tokenizer_config.json so that transformers' AutoTokenizer can read a saved directory too.
TOKENIZER_CLASSES = {"bert": "BertTokenizer", "roberta": "RobertaTokenizer", "gpt2": "GPT2Tokenizer",
                     "sentencepiece": "BertGenerationTokenizer"}


class TokenizerError(ValueError):
    """Tokenizer files or arguments that cannot be used as asked."""


class BaseTokenizer(ABC):
    """What every kind shares: special-token ids, ``__call__``/``encode``/``decode``, built on the abstract
    primitives below."""

    def __init__(self, kind: str, special_tokens: dict[str, str], vocab_file: str | os.PathLike | None) -> None:
        self.kind = kind
        self.special_tokens = {role: token for role, token in special_tokens.items() if token is not None}
        # The file the vocabulary was read from (vocab.txt, vocab.json, tokenizer.json, *.model): what an error about
        # the vocabulary names.
        self.vocab_file = Path(vocab_file) if vocab_file is not None else None

    # -- primitives ---------------------------------------------------------------------------------------------
    @abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of a token, ``None`` when it is not in the vocabulary."""

    @abstractmethod
    def id_to_token(self, index: int) -> str | None:
        """The token of an id, ``None`` when no token has it."""

    @abstractmethod
    def _encode_batch(self, texts: list[str], *, add_special_tokens: bool, truncate_to: int | None,
                      pad_to: int | str | None) -> tuple[list[list[int]], list[list[int]]]:
        """(input ids, attention masks); ``pad_to`` is ``"longest"``, a length, or ``None`` for no padding."""

    @abstractmethod
    def _decode_batch(self, sequences: list[list[int]], skip_special_tokens: bool) -> list[str]:
        """One text per id sequence."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Size of an embedding table that holds every id."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of distinct tokens, added specials included."""

    @abstractmethod
    def save_pretrained(self, directory: str | os.PathLike) -> list[Path]:
        """Write the files :func:`load_tokenizer` reads back; returns their paths."""

    # -- special tokens -----------------------------------------------------------------------------------------
    def _ordered_special_tokens(self) -> list[str]:
        ordered: list[str] = []
        for role in SPECIAL_ROLES:
            token = self.special_tokens.get(role)
            if token is not None and token not in ordered:
                ordered.append(token)
        return ordered

    def _role_id(self, role: str) -> int | None:
        token = self.special_tokens.get(role)
        return None if token is None else self.token_to_id(token)

    @property
    def pad_token_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def unk_token_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def cls_token_id(self) -> int | None:
        return self._role_id("cls")

    @property
    def sep_token_id(self) -> int | None:
        return self._role_id("sep")

    @property
    def mask_token_id(self) -> int | None:
        return self._role_id("mask")

    @property
    def bos_token_id(self) -> int | None:
        """The id that starts a sequence: the bos token, or ``[CLS]`` for kinds without one (BERT)."""
        return self._role_id("bos") if "bos" in self.special_tokens else self._role_id("cls")

    @property
    def eos_token_id(self) -> int | None:
        """The id that ends a sequence: the eos token, or ``[SEP]`` for kinds without one (BERT)."""
        return self._role_id("eos") if "eos" in self.special_tokens else self._role_id("sep")

    @property
    def decoder_start_token_id(self) -> int | None:
        """``[CLS]`` for BERT (as in the paper's BERT decoders), the bos token for every other kind."""
        if self.kind == "bert" and "cls" in self.special_tokens:
            return self.cls_token_id
        return self.bos_token_id

    @property
    def all_special_ids(self) -> list[int]:
        ids = {self.token_to_id(token) for token in self._ordered_special_tokens()}
        return sorted(i for i in ids if i is not None)

    # -- encoding -----------------------------------------------------------------------------------------------
    def __call__(self, texts: str | Sequence[str], max_length: int | None = None,
                 padding: bool | str = True, truncation: bool = True, return_tensors: str | None = "pt",
                 add_special_tokens: bool = True) -> dict[str, Any]:
        """Encode one text or a batch into ``{"input_ids", "attention_mask"}``.

        ``padding``: ``True``/``"longest"`` pads to the longest sequence of the batch, ``"max_length"`` to
        ``max_length``, ``False`` not at all (always on the right). ``truncation`` cuts sequences, special tokens
        included, to ``max_length`` from the right; without ``max_length`` nothing is cut. ``return_tensors="pt"``
        gives ``[batch, length]`` long tensors (``[1, length]`` for a single text), ``None`` lists (a flat list for
        a single text), as transformers does.
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        for position, text in enumerate(batch):
            if not isinstance(text, str):
                raise TokenizerError(f"texts[{position}]: expected a str, got {type(text).__name__}")
        if return_tensors not in ("pt", None):
            raise TokenizerError(f"return_tensors: expected 'pt' or None, got {return_tensors!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
            raise TokenizerError(f"max_length: expected a non-negative int or None, got {max_length!r}")
        if padding is True or padding == "longest":
            pad_to: int | str | None = "longest"
        elif padding == "max_length":
            if max_length is None:
                raise TokenizerError("padding='max_length' needs max_length")
            pad_to = max_length
        elif padding is False or padding == "do_not_pad":
            pad_to = None
        else:
            raise TokenizerError(f"padding: expected True, False, 'longest' or 'max_length', got {padding!r}")
        if pad_to is not None and self.pad_token_id is None:
            raise TokenizerError(f"this {self.kind} tokenizer has no pad token; pass padding=False")
        truncate_to = max_length if truncation and max_length is not None else None

        input_ids, attention_mask = self._encode_batch(batch, add_special_tokens=add_special_tokens,
                                                       truncate_to=truncate_to, pad_to=pad_to)
        if return_tensors is None:
            if single:
                return {"input_ids": input_ids[0], "attention_mask": attention_mask[0]}
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        lengths = {len(ids) for ids in input_ids}
        if len(lengths) > 1:
            raise TokenizerError(f"sequences have different lengths {sorted(lengths)}; use padding=True or "
                                 "return_tensors=None")
        width = lengths.pop() if lengths else 0
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long).reshape(len(batch), width),
                "attention_mask": torch.tensor(attention_mask, dtype=torch.long).reshape(len(batch), width)}

    def encode(self, text: str, add_special_tokens: bool = True, max_length: int | None = None,
               truncation: bool = True) -> list[int]:
        """The ids of one text, unpadded."""
        return self(text, max_length=max_length, padding=False, truncation=truncation, return_tensors=None,
                    add_special_tokens=add_special_tokens)["input_ids"]

    def tokenize(self, text: str) -> list[str]:
        """The tokens of one text, without special tokens added."""
        return self.convert_ids_to_tokens(self.encode(text, add_special_tokens=False))

    # -- decoding -----------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of one sequence; by default without special tokens (padding included), which is what generated
        outputs need (transformers defaults to keeping them)."""
        sequence = _as_id_list(ids)
        if isinstance(sequence, int):
            sequence = [sequence]
        if any(isinstance(item, list) for item in sequence):
            raise TokenizerError("decode: expected one sequence of ids; use batch_decode for a batch")
        return self._decode_batch([sequence], skip_special_tokens)[0]

    def batch_decode(self, ids: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        sequences = _as_id_list(ids)
        if not isinstance(sequences, list) or any(not isinstance(sequence, list) for sequence in sequences):
            raise TokenizerError("batch_decode: expected a batch of id sequences (2-d)")
        return self._decode_batch(sequences, skip_special_tokens)

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | torch.Tensor) -> str | list[str]:
        ids = _as_id_list(ids)
        if isinstance(ids, int):
            return self._checked_token(ids)
        return [self._checked_token(index) for index in ids]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Ids of tokens; a token outside the vocabulary maps to the unk id, as in transformers."""
        if isinstance(tokens, str):
            found = self.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def _checked_token(self, index: int) -> str:
        token = self.id_to_token(index)
        if token is None:
            raise TokenizerError(f"id {index} is not in the vocabulary (ids 0..{self.vocab_size - 1})")
        return token

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _check_room_for_specials(max_length: int, special_count: int, kind: str) -> None:
    if max_length < special_count:
        raise TokenizerError(f"max_length={max_length} is shorter than the {special_count} special tokens a {kind} "
                             "tokenizer adds; expected at least that many")


def _as_id_list(ids: Any) -> Any:
    """Python ints, or (nested) lists of them, from tensors, arrays and sequences."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, (list, tuple)):
        return [_as_id_list(item) for item in ids]
    return int(ids)


def _write_tokenizer_config(directory: Path, kind: str, special_tokens: dict[str, str],
                            options: dict[str, Any]) -> Path:
    config = {"tokenizer_class": TOKENIZER_CLASSES[kind], **options}
    config.update({f"{role}_token": token for role, token in special_tokens.items()})
    path = directory / "tokenizer_config.json"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
