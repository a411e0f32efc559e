"""The SentencePiece tokenizer of the paper's released BertGeneration checkpoints (kind ``"sentencepiece"``);
``bertgen.tokenization`` re-exports it and ``load_tokenizer`` builds it from a ``*.model`` file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import sentencepiece as spm

from .tokenization_base import BaseTokenizer, TokenizerError, _check_room_for_specials, _write_tokenizer_config
from .tokenization_vocab import shown

SPIECE_UNDERLINE = "\u2581"


class BertGenerationTokenizer(BaseTokenizer):
    """The SentencePiece tokenizer of the paper's released BertGeneration checkpoints (transformers'
    ``BertGenerationTokenizer``).

    Text is split around the special tokens first (they are never cut into pieces), the rest is encoded by
    SentencePiece. Specials missing from the model get the ids after its pieces, in the order bos, eos, unk, sep, pad
    (``<::::>`` and ``<pad>`` usually). Like transformers, nothing is added to a sequence by default; pass
    ``add_eos_token=True`` to append ``</s>`` (within ``max_length``), e.g. to decoder targets. Decoding joins the
    pieces and turns ``▁`` into spaces. ``sp_model_kwargs`` go to ``SentencePieceProcessor`` (e.g.
    ``enable_sampling``, ``nbest_size``, ``alpha`` for subword regularisation).
    """

    def __init__(self, model_file: str | os.PathLike, *, bos_token: str = "<s>", eos_token: str = "</s>",
                 unk_token: str = "<unk>", pad_token: str = "<pad>", sep_token: str = "<::::>",
                 sp_model_kwargs: dict[str, Any] | None = None, add_eos_token: bool = False) -> None:
        super().__init__("sentencepiece", {"bos": bos_token, "eos": eos_token, "unk": unk_token, "sep": sep_token,
                                           "pad": pad_token}, model_file)
        self.model_file = Path(model_file)
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.add_eos_token = bool(add_eos_token)
        try:
            self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        except TypeError as err:
            raise TokenizerError(f"sp_model_kwargs: not accepted by SentencePieceProcessor ({err})") from None
        try:
            self.sp_model.Load(str(model_file))
        except (OSError, RuntimeError) as err:
            repeated = _repeated_piece(Path(model_file))  # SentencePiece names a repeated piece, not its two ids
            raise TokenizerError(repeated or f"{model_file}: not a readable SentencePiece model "
                                             f"({str(err).strip().splitlines()[0] if str(err).strip() else err})") \
                from None
        _check_piece_ids(self.sp_model, model_file)
        self._sampling = bool(self.sp_model_kwargs.get("enable_sampling", False))
        self._piece_count = self.sp_model.get_piece_size()
        self._added_ids: dict[str, int] = {}
        next_id = self._piece_count
        for token in self._ordered_special_tokens():
            piece_id = self.sp_model.piece_to_id(token)
            if piece_id < self._piece_count and self.sp_model.id_to_piece(piece_id) == token:
                self._added_ids[token] = piece_id
            else:
                self._added_ids[token] = next_id
                next_id += 1
        self._added_tokens = {index: token for token, index in self._added_ids.items()}
        self._vocab_size = next_id
        ordered = sorted(self._added_ids, key=len, reverse=True)  # longest first, as transformers' trie matches
        self._special_split = (re.compile("(" + "|".join(re.escape(token) for token in ordered) + ")")
                               if ordered else None)
        self._special_ids = set(self._added_ids.values())

    # -- primitives ---------------------------------------------------------------------------------------------
    def token_to_id(self, token: str) -> int | None:
        if token in self._added_ids:
            return self._added_ids[token]
        piece_id = self.sp_model.piece_to_id(token)
        return piece_id if self.sp_model.id_to_piece(piece_id) == token else None

    def id_to_token(self, index: int) -> str | None:
        if index in self._added_tokens:
            return self._added_tokens[index]
        if 0 <= index < self._piece_count:
            return self.sp_model.id_to_piece(index)
        return None

    @property
    def vocab_size(self) -> int:
        """SentencePiece pieces plus the special tokens it lacks (transformers' ``len(tokenizer)``)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(self._special_ids)

    def _encode_batch(self, texts, *, add_special_tokens, truncate_to, pad_to):
        # Split every text around special tokens, encode all plain chunks in one SentencePiece call, reassemble.
        chunks: list[str] = []
        plans: list[list[tuple[bool, int]]] = []  # (is_special, special id or chunk index)
        for text in texts:
            plan = []
            parts = self._special_split.split(text) if self._special_split is not None else [text]
            for position, part in enumerate(parts):
                if position % 2:
                    plan.append((True, self._added_ids[part]))
                elif part:
                    plan.append((False, len(chunks)))
                    chunks.append(part)
            plans.append(plan)
        if self._sampling:
            # SentencePiece seeds a fresh generator for every list call, so with a fixed seed each batch would draw
            # the same "random" segmentation; one call per chunk uses the processor's persistent generator.
            encoded = [self.sp_model.encode(chunk) for chunk in chunks]
        else:
            encoded = self.sp_model.encode(chunks) if chunks else []
        append_eos = add_special_tokens and self.add_eos_token
        if truncate_to is not None:
            _check_room_for_specials(truncate_to, int(append_eos), self.kind)
        input_ids = []
        for plan in plans:
            ids: list[int] = []
            for is_special, value in plan:
                if is_special:
                    ids.append(value)
                else:
                    ids.extend(encoded[value])
            if truncate_to is not None:
                ids = ids[:truncate_to - int(append_eos)]
            if append_eos:
                ids.append(self.eos_token_id)
            input_ids.append(ids)
        attention_mask = [[1] * len(ids) for ids in input_ids]
        if pad_to is not None:
            width = max((len(ids) for ids in input_ids), default=0) if pad_to == "longest" else pad_to
            pad_id = self.pad_token_id
            for ids, mask in zip(input_ids, attention_mask):
                missing = width - len(ids)
                if missing > 0:
                    ids.extend([pad_id] * missing)
                    mask.extend([0] * missing)
        return input_ids, attention_mask

    def _decode_batch(self, sequences, skip_special_tokens):
        skip = self._special_ids if skip_special_tokens else set()
        return ["".join(self._checked_token(index) for index in sequence if index not in skip)
                .replace(SPIECE_UNDERLINE, " ").strip()
                for sequence in sequences]

    # -- saving -------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> list[Path]:
        """Write ``spiece.model`` (the name transformers uses) and tokenizer_config.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / "spiece.model"
        model_path.write_bytes(self.sp_model.serialized_model_proto())
        options = {"sp_model_kwargs": self.sp_model_kwargs, "add_eos_token": self.add_eos_token}
        return [model_path, _write_tokenizer_config(directory, self.kind, self.special_tokens, options)]


# -- checking a model's pieces ---------------------------------------------------------------------------------------
def _check_piece_ids(sp_model: spm.SentencePieceProcessor, model_file: str | os.PathLike) -> None:
    """Each id's piece maps back to that id. SentencePiece refuses a normal piece defined twice, but keeps control
    and user-defined pieces in a map of their own: a normal piece that repeats ``<s>`` loads, and text never
    reaches the second id. One batched round trip: about 2 ms for 8,000 pieces."""
    count = sp_model.get_piece_size()
    pieces = sp_model.id_to_piece(list(range(count)))
    for index, back in enumerate(sp_model.piece_to_id(pieces)):
        if back != index:
            raise TokenizerError(f"{model_file}: piece {shown(pieces[index])} at id {max(index, back)} repeats id "
                                 f"{min(index, back)}; expected each piece once")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of one protobuf message: bytes for length-delimited fields, None for the others."""
    out, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        wire = key & 7
        if wire == 0:
            _, at = _varint(data, at)
            out.append((key >> 3, None))
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
            out.append((key >> 3, None))
        elif wire == 2:
            length, at = _varint(data, at)
            out.append((key >> 3, data[at:at + length]))
            at += length
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _repeated_piece(model_file: Path) -> str | None:
    """The message for a model SentencePiece refused because a piece repeats (or is empty), with both ids, read
    from the model's protobuf (``ModelProto.pieces``, field 1; each piece's text is its field 1); None otherwise."""
    try:
        pieces = [next((value for number, value in _fields(message) if number == 1), b"").decode("utf-8")
                  for number, message in _fields(model_file.read_bytes()) if number == 1]
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    seen: dict[str, int] = {}
    for index, piece in enumerate(pieces):
        if not piece:
            return f"{model_file}: piece {index} is empty; expected a non-empty piece at each id"
        first = seen.setdefault(piece, index)
        if first != index:
            return f"{model_file}: piece {shown(piece)} at id {index} repeats id {first}; expected each piece " \
                   "once"
    return None
