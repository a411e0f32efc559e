"""Tokenizers for the checkpoints the paper warm-starts from, behind one interface.

Four kinds, each matching the transformers 5 tokenizer of the same checkpoint id for id (tests check this):

- ``"bert"``: WordPiece over ``vocab.txt``; adds ``[CLS] text [SEP]``.
- ``"roberta"``: byte-level BPE over ``vocab.json`` + ``merges.txt``; adds ``<s> text </s>``.
- ``"gpt2"``: the same byte-level BPE; adds nothing. GPT-2 has no pad token, so ``<|endoftext|>`` (its bos, eos and
  unk) pads as well, as is customary; the attention mask tells padding from a real ``<|endoftext|>``.
- ``"sentencepiece"``: :class:`BertGenerationTokenizer`, the SentencePiece tokenizer of the paper's own released
  checkpoints; adds nothing unless ``add_eos_token=True``.

The first three, and any ``tokenizer.json``, run on the ``tokenizers`` library (:class:`FastTokenizer`), whose
``encode_batch`` does the batch work, padding and truncation in Rust. :func:`load_tokenizer` picks the kind from the
files in a directory.

``bos_token_id``/``eos_token_id`` are the ids that start and end a sequence, so a harness needs no per-kind logic:
for BERT, which has neither, they are ``[CLS]`` and ``[SEP]`` (transformers reports ``None``).
``decoder_start_token_id`` is the id a decoder starts from: ``[CLS]`` for BERT, ``<s>`` for RoBERTa and SentencePiece,
``<|endoftext|>`` for GPT-2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece

from .families import FAMILIES
# Re-exported: the base interface and the SentencePiece tokenizer live in their own modules, imported from here.
from .tokenization_base import (  # noqa: F401
    DEFAULT_SPECIAL_TOKENS,
    SPECIAL_ROLES,
    TOKENIZER_CLASSES,
    TOKENIZER_KINDS,
    BaseTokenizer,
    TokenizerError,
    _check_room_for_specials,
    _write_tokenizer_config,
)
from .tokenization_sentencepiece import SPIECE_UNDERLINE, BertGenerationTokenizer  # noqa: F401
from .tokenization_vocab import check_tokenizer_json, read_bpe_vocab, read_merges, read_wordpiece_vocab

__all__ = ["BertGenerationTokenizer", "FastTokenizer", "TokenizerError", "TOKENIZER_KINDS", "has_tokenizer_files",
           "load_tokenizer"]

# What a directory's tokenizer_config.json / config.json says, read as a kind: the families' own names, and the
# model types and tokenizer classes of other checkpoints that ship the same tokenizers.
_KIND_BY_MODEL_TYPE = {**{name: family.tokenizer for name, family in FAMILIES.items()},
                       "distilbert": "bert", "bart": "roberta"}
_KIND_BY_CLASS = {**_KIND_BY_MODEL_TYPE, "bertgeneration": "sentencepiece"}

# Options each kind accepts, from load_tokenizer's keywords or tokenizer_config.json.
_OPTIONS = {
    "bert": ("do_lower_case", "strip_accents", "tokenize_chinese_chars"),
    "roberta": ("add_prefix_space", "trim_offsets"),
    "gpt2": ("add_prefix_space",),
    "sentencepiece": ("sp_model_kwargs", "add_eos_token"),
    "tokenizer.json": (),
}
_EXPECTED_FILES = "tokenizer.json, vocab.json + merges.txt, vocab.txt or a SentencePiece *.model"


# -- tokenizers-library kinds -----------------------------------------------------------------------------------
class FastTokenizer(BaseTokenizer):
    """BERT WordPiece, RoBERTa/GPT-2 byte-level BPE, or any ``tokenizer.json``, on the ``tokenizers`` library.

    Build one with :meth:`from_wordpiece_vocab`, :meth:`from_byte_level_bpe` or :meth:`from_tokenizer_json` (or
    :func:`load_tokenizer`). Special tokens missing from the backend are registered as special added tokens, as
    transformers does, so they are never split and ``skip_special_tokens`` removes them.
    """

    def __init__(self, backend: Tokenizer, *, kind: str, special_tokens: dict[str, str], origin: str,
                 options: dict[str, Any] | None = None, model_vocab: dict[str, int] | None = None,
                 vocab_file: str | os.PathLike | None = None) -> None:
        if kind not in TOKENIZER_KINDS:
            raise TokenizerError(f"kind: expected one of {TOKENIZER_KINDS}, got {kind!r}")
        super().__init__(kind, special_tokens, vocab_file)
        self.backend = backend
        self.origin = origin  # "vocab" (vocab.txt / vocab.json + merges.txt) or "tokenizer.json"
        self.options = dict(options or {})
        # Padding and truncation are set per call; whatever a tokenizer.json carried would leak into every call.
        backend.no_padding()
        backend.no_truncation()
        registered = {token.content for token in backend.get_added_tokens_decoder().values()}
        missing = [AddedToken(token, special=True, normalized=False)
                   for token in self._ordered_special_tokens() if token not in registered]
        if missing:
            backend.add_special_tokens(missing)
        # The largest id, not the token count: a vocabulary may have holes. Reading the model's vocabulary back from
        # Rust costs a noticeable fraction of a second for 50k tokens, so callers that hold it pass it in.
        if model_vocab is None:
            model_vocab = backend.get_vocab(with_added_tokens=False)
        added_ids = backend.get_added_tokens_decoder().keys()
        self._vocab_size = max(max(model_vocab.values(), default=-1), max(added_ids, default=-1)) + 1

    @classmethod
    def from_wordpiece_vocab(cls, vocab_file: str | os.PathLike, *, do_lower_case: bool = True,
                             strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                             special_tokens: dict[str, str] | None = None) -> FastTokenizer:
        """BERT's tokenizer: BERT normalisation (lower-casing per ``do_lower_case``; accents stripped when lower-casing
        unless ``strip_accents`` says otherwise), BERT pre-tokenisation, WordPiece, ``[CLS] $A [SEP]``."""
        specials = {**DEFAULT_SPECIAL_TOKENS["bert"], **(special_tokens or {})}
        vocab = read_wordpiece_vocab(vocab_file)  # refuses repeated tokens, empty lines, non-UTF-8
        backend = Tokenizer(WordPiece(vocab, unk_token=specials["unk"], continuing_subword_prefix="##",
                                      max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                                        strip_accents=strip_accents, lowercase=do_lower_case)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        tokenizer = cls(backend, kind="bert", special_tokens=specials, origin="vocab", model_vocab=vocab,
                        vocab_file=vocab_file,
                        options={"do_lower_case": do_lower_case, "strip_accents": strip_accents,
                                 "tokenize_chinese_chars": tokenize_chinese_chars})
        cls_token, sep_token = specials["cls"], specials["sep"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0",
            pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, tokenizer.cls_token_id), (sep_token, tokenizer.sep_token_id)])
        return tokenizer

    @classmethod
    def from_byte_level_bpe(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike, *,
                            kind: str = "gpt2", add_prefix_space: bool = False, trim_offsets: bool = True,
                            special_tokens: dict[str, str] | None = None) -> FastTokenizer:
        """GPT-2's byte-level BPE; ``kind="roberta"`` adds ``<s> $A </s>``, ``kind="gpt2"`` adds nothing."""
        if kind not in ("gpt2", "roberta"):
            raise TokenizerError(f"kind: a byte-level BPE tokenizer is 'gpt2' or 'roberta', got {kind!r}")
        specials = {**DEFAULT_SPECIAL_TOKENS[kind], **(special_tokens or {})}
        # refuses repeated tokens and ids, skipped ids, repeated merges, non-UTF-8
        vocab = read_bpe_vocab(vocab_file, specials.values())
        merges = read_merges(merges_file)
        try:
            model = BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                        fuse_unk=False)
        except Exception as err:  # the Rust builder raises plain Exception, e.g. a merge of unknown tokens
            raise TokenizerError(f"{vocab_file} + {merges_file}: not a usable vocab.json + merges.txt ({err})") \
                from None
        backend = Tokenizer(model)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
        backend.decoder = decoders.ByteLevel()
        options: dict[str, Any] = {"add_prefix_space": add_prefix_space}
        if kind == "roberta":
            options["trim_offsets"] = trim_offsets
        tokenizer = cls(backend, kind=kind, special_tokens=specials, origin="vocab", options=options,
                        model_vocab=vocab, vocab_file=vocab_file)
        if kind == "roberta":
            backend.post_processor = processors.RobertaProcessing(
                (specials["sep"], tokenizer.sep_token_id), (specials["cls"], tokenizer.cls_token_id),
                trim_offsets=trim_offsets, add_prefix_space=add_prefix_space)
        return tokenizer

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike, *, kind: str | None = None,
                            special_tokens: dict[str, str] | None = None) -> FastTokenizer:
        """A serialised ``tokenizers`` pipeline, used as is. ``kind`` (inferred from the model when not given) sets
        which special tokens to look for; only those present in the file are used unless named in
        ``special_tokens``."""
        check_tokenizer_json(path)  # refuses repeated tokens and ids, skipped ids, added tokens on taken ids
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust reader raises plain Exception
            raise TokenizerError(f"{path}: not a tokenizers JSON file ({err})") from None
        kind = kind or _infer_kind(backend, path)
        if kind not in TOKENIZER_KINDS:
            raise TokenizerError(f"kind: expected one of {TOKENIZER_KINDS}, got {kind!r}")
        present = {role: token for role, token in DEFAULT_SPECIAL_TOKENS[kind].items()
                   if backend.token_to_id(token) is not None}
        specials = {**present, **(special_tokens or {})}
        if "pad" not in specials and kind == "gpt2" and "eos" in specials:
            specials["pad"] = specials["eos"]
        return cls(backend, kind=kind, special_tokens=specials, origin="tokenizer.json", vocab_file=path)

    # -- primitives ---------------------------------------------------------------------------------------------
    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        if index < 0:
            return None
        return self.backend.id_to_token(index)

    @property
    def vocab_size(self) -> int:
        """Size of an embedding table that holds every id: the largest id + 1. It equals transformers'
        ``len(tokenizer)`` unless the vocabulary has holes (the shared RoBERTa vocab.json lacks 50261-50263)."""
        return self._vocab_size

    def __len__(self) -> int:
        """Number of distinct tokens, added specials included (transformers' ``len(tokenizer)``)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _encode_batch(self, texts, *, add_special_tokens, truncate_to, pad_to):
        backend = self.backend
        if truncate_to is not None and add_special_tokens and backend.post_processor is not None:
            # tokenizers (and so transformers) would silently return sequences longer than max_length here.
            _check_room_for_specials(truncate_to, backend.post_processor.num_special_tokens_to_add(False), self.kind)
        try:
            if truncate_to is not None:
                backend.enable_truncation(max_length=truncate_to)
            if pad_to is not None:
                backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.special_tokens["pad"],
                                       length=None if pad_to == "longest" else pad_to)
            encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        except Exception as err:  # e.g. max_length shorter than the special tokens added
            raise TokenizerError(f"cannot encode with max_length={truncate_to}: {err}") from None
        finally:
            backend.no_truncation()
            backend.no_padding()
        return [encoding.ids for encoding in encodings], [encoding.attention_mask for encoding in encodings]

    def _decode_batch(self, sequences, skip_special_tokens):
        for sequence in sequences:
            for index in sequence:
                if not 0 <= index < self._vocab_size:
                    raise TokenizerError(f"id {index} is not in the vocabulary (ids 0..{self._vocab_size - 1})")
        return self.backend.decode_batch(sequences, skip_special_tokens=skip_special_tokens)

    # -- saving -------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> list[Path]:
        """Write the vocabulary in its original format (vocab.txt; vocab.json + merges.txt; tokenizer.json) and a
        tokenizer_config.json with the kind's class name, options and special tokens."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.origin == "tokenizer.json":
            self.backend.save(str(directory / "tokenizer.json"))
            written = [directory / "tokenizer.json"]
        else:
            written = [Path(name) for name in self.backend.model.save(str(directory))]
        written.append(_write_tokenizer_config(directory, self.kind, self.special_tokens, self.options))
        return written


def _infer_kind(backend: Tokenizer, path: Any) -> str:
    model = type(backend.model).__name__
    if model == "WordPiece":
        return "bert"
    if model == "BPE":
        roberta_like = (type(backend.post_processor).__name__ == "RobertaProcessing"
                        or backend.token_to_id("<s>") is not None)
        return "roberta" if roberta_like else "gpt2"
    if model == "Unigram":
        return "sentencepiece"
    raise TokenizerError(f"{path}: cannot tell the kind of a {model} tokenizer; pass kind= one of {TOKENIZER_KINDS}")


# -- choosing a tokenizer from files ----------------------------------------------------------------------------
def _file_role(name: str) -> str | None:
    if name.endswith("tokenizer.json"):
        return "tokenizer.json"
    if name.endswith("vocab.json"):
        return "vocab.json"
    if name.endswith("merges.txt"):
        return "merges.txt"
    if name.endswith("vocab.txt"):
        return "vocab.txt"
    if name.endswith(".model"):
        return "sentencepiece"
    return None


def has_tokenizer_files(directory: str | os.PathLike) -> bool:
    """Whether a directory holds any file :func:`load_tokenizer` reads (a checkpoint may come without them)."""
    path = Path(directory).expanduser()
    return path.is_dir() and any(_file_role(child.name) is not None and child.is_file() for child in path.iterdir())


_CANONICAL = {"tokenizer.json": "tokenizer.json", "vocab.json": "vocab.json", "merges.txt": "merges.txt",
              "vocab.txt": "vocab.txt", "sentencepiece": "spiece.model"}


def _find_files(source: str | os.PathLike | Sequence[str | os.PathLike]
                ) -> tuple[str, Path, dict[str, Path | list[Path]]]:
    """(description for messages, directory holding configs, role -> file, or the candidates when ambiguous)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise TokenizerError(f"{path} does not exist; expected a directory or tokenizer files ({_EXPECTED_FILES})")
        if path.is_dir():
            by_role: dict[str, list[Path]] = {}
            for child in sorted(path.iterdir()):
                role = _file_role(child.name)
                if role is not None and child.is_file():
                    by_role.setdefault(role, []).append(child)
            found = {}
            for role, candidates in by_role.items():
                canonical = [c for c in candidates if c.name == _CANONICAL[role]]
                if canonical:
                    found[role] = canonical[0]
                elif len(candidates) == 1:
                    found[role] = candidates[0]
                else:
                    found[role] = candidates  # ambiguous; an error only if this role is the one chosen
            return str(path), path, found
        files = [path]
    else:
        files = [Path(f).expanduser() for f in source]
        if not files:
            raise TokenizerError(f"no tokenizer files given; expected {_EXPECTED_FILES}")
    found = {}
    for file in files:
        if not file.is_file():
            raise TokenizerError(f"{file} does not exist or is not a file")
        role = _file_role(file.name)
        if role is None:
            raise TokenizerError(f"{file}: not a tokenizer file by its name; expected {_EXPECTED_FILES}")
        if role in found:
            raise TokenizerError(f"{file} and {found[role]}: two {role} files given; expected one")
        found[role] = file
    return ", ".join(str(f) for f in files), files[0].parent, found


def _read_json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TokenizerError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _special_tokens_from(config: dict[str, Any], path: Path) -> dict[str, str]:
    """``{role}_token`` entries of a transformers tokenizer_config.json / special_tokens_map.json."""
    specials = {}
    for role in SPECIAL_ROLES:
        value = config.get(f"{role}_token")
        if value is None:
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if not isinstance(value, str) or not value:
            raise TokenizerError(f"{path}: {role}_token must be a non-empty string or {{\"content\": ...}}, "
                                 f"got {config.get(f'{role}_token')!r}")
        specials[role] = value
    return specials


def _kind_from_configs(tokenizer_config: dict[str, Any], model_config: dict[str, Any]) -> str | None:
    if isinstance(tokenizer_config.get("model_type"), str) and tokenizer_config["model_type"] in _KIND_BY_MODEL_TYPE:
        return _KIND_BY_MODEL_TYPE[tokenizer_config["model_type"]]
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    if isinstance(tokenizer_class, str):
        name = tokenizer_class.removesuffix("Fast").removesuffix("Tokenizer").lower()
        if name in _KIND_BY_CLASS:
            return _KIND_BY_CLASS[name]
    model_type = model_config.get("model_type")
    if isinstance(model_type, str) and model_type in _KIND_BY_MODEL_TYPE:
        return _KIND_BY_MODEL_TYPE[model_type]
    return None


def _bpe_kind_from_vocab(vocab_file: Path) -> str:
    """RoBERTa's vocab has ``<s>``; GPT-2's has not."""
    vocab = read_bpe_vocab(vocab_file)
    return "roberta" if "<s>" in vocab and "</s>" in vocab else "gpt2"


def load_tokenizer(source: str | os.PathLike | Sequence[str | os.PathLike], *, kind: str | None = None,
                   **options: Any) -> BaseTokenizer:
    """The tokenizer for a checkpoint directory, a tokenizer file or a list of files.

    Files are recognised by name and chosen in this order: ``tokenizer.json`` (used as is); ``*vocab.json`` +
    ``*merges.txt`` (RoBERTa or GPT-2, decided by ``kind``, else tokenizer_config.json's model_type/tokenizer_class,
    else config.json's model_type, else whether the vocab has ``<s>``); ``*vocab.txt`` (BERT WordPiece); ``*.model``
    (SentencePiece, :class:`BertGenerationTokenizer`). ``kind`` restricts the choice to that kind's files. Options
    (``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``, ``add_prefix_space``, ``trim_offsets``,
    ``sp_model_kwargs``, ``add_eos_token``) default to tokenizer_config.json's values, then to the kind's defaults;
    special tokens named in tokenizer_config.json / special_tokens_map.json are used, and ``<role>_token`` keywords
    (``pad_token="<pad>"``, as transformers' ``from_pretrained`` takes them) override those: a model card's arguments
    for a checkpoint whose only tokenizer file is its vocabulary (Google's bert2bert_L-24_wmt_* ship a bare vocab.txt).
    """
    if kind is not None and kind not in TOKENIZER_KINDS:
        raise TokenizerError(f"kind: expected one of {TOKENIZER_KINDS}, got {kind!r}")
    where, config_dir, found = _find_files(source)
    tokenizer_config = _read_json_object(config_dir / "tokenizer_config.json")
    model_config = _read_json_object(config_dir / "config.json")
    by_keyword = {key: options.pop(key) for key in [f"{role}_token" for role in SPECIAL_ROLES] if key in options}
    specials = {**_special_tokens_from(_read_json_object(config_dir / "special_tokens_map.json"),
                                       config_dir / "special_tokens_map.json"),
                **_special_tokens_from(tokenizer_config, config_dir / "tokenizer_config.json"),
                **_special_tokens_from(by_keyword, "load_tokenizer keywords")}

    def file(role: str) -> Path:
        chosen = found[role]
        if isinstance(chosen, list):
            raise TokenizerError(f"{where}: several {role} files ({', '.join(p.name for p in chosen)}); pass the "
                                 "files to use")
        return chosen

    def settings(chosen_kind: str) -> dict[str, Any]:
        allowed = _OPTIONS[chosen_kind]
        for name in options:
            if name not in allowed:
                raise TokenizerError(f"option {name!r} does not apply to a {chosen_kind} tokenizer; expected one of "
                                     f"{list(allowed)}")
        from_config = {name: tokenizer_config[name] for name in allowed if name in tokenizer_config}
        return {**from_config, **options}

    if "tokenizer.json" in found:
        chosen_kind = kind or _kind_from_configs(tokenizer_config, model_config)
        settings("tokenizer.json")
        return FastTokenizer.from_tokenizer_json(file("tokenizer.json"), kind=chosen_kind, special_tokens=specials)
    if kind in (None, "roberta", "gpt2") and "vocab.json" in found and "merges.txt" in found:
        vocab_file = file("vocab.json")
        chosen_kind = kind or _kind_from_configs(tokenizer_config, model_config)
        if chosen_kind not in ("roberta", "gpt2"):
            chosen_kind = _bpe_kind_from_vocab(vocab_file)
        return FastTokenizer.from_byte_level_bpe(vocab_file, file("merges.txt"), kind=chosen_kind,
                                                 special_tokens=specials, **settings(chosen_kind))
    if kind in (None, "bert") and "vocab.txt" in found:
        return FastTokenizer.from_wordpiece_vocab(file("vocab.txt"), special_tokens=specials, **settings("bert"))
    if kind in (None, "sentencepiece") and "sentencepiece" in found:
        named = {f"{role}_token": token for role, token in specials.items()
                 if role in ("bos", "eos", "unk", "sep", "pad")}
        return BertGenerationTokenizer(file("sentencepiece"), **named, **settings("sentencepiece"))
    wanted = f" for kind={kind!r}" if kind else ""
    present = sorted(p.name for value in found.values() for p in (value if isinstance(value, list) else [value]))
    raise TokenizerError(f"{where}: no tokenizer files{wanted}; expected {_EXPECTED_FILES}"
                         f" (found: {', '.join(present) or 'none'})")
