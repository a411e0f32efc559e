"""Reading one checkpoint as a scheme needs it (``read_checkpoint``): its ``config.json``, which must be of the
family the scheme asked for, and the tokenizer beside it (or passed), which must fit the embedding matrix exactly.

``bertgen.schemes`` plans and builds from the ``Checkpoint`` read here and re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError, build_config, read_config_dict, resolve_checkpoint_dir
from .configuration import PretrainedConfig
from .families import FAMILIES, Family
from .tokenization import BaseTokenizer, has_tokenizer_files, load_tokenizer

@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizer of one side: its family, where its files are, the ids the model is configured with, and the
    tokenizer itself (None when the checkpoint is a config dict or has no tokenizer files beside it).

    ``kind`` is ``<family>-<subwords>`` ("bert-wordpiece", "gpt2-bpe"), for people; ``load_tokenizer``'s kind is
    the family's ``tokenizer``. When ``pad_token_id == eos_token_id`` (GPT-2) the label mask must come from the
    attention mask, not from comparing ids with the pad id, or every end token would be dropped from the loss.
    """

    kind: str
    family: str
    source: str | None
    vocab_file: str | None
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    tokenizer: BaseTokenizer | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint as a scheme reads it: its ``config.json`` (``raw``, and as our ``config``), where it is
    (``directory``: None for a config dict), and its tokenizer. Read once by ``read_checkpoint``; ``plan`` takes it
    in place of a path, so a caller checking many cells reads each checkpoint once."""

    family: Family
    name: str
    raw: dict[str, Any]
    directory: Path | None
    config: PretrainedConfig
    tokens: TokenizerSpec


class WrongFamily(CheckpointError):
    """A checkpoint whose ``config.json`` names another family than the argument it was given for; the fields let a
    caller word it for its own users (the launch pre-flight names the grid field)."""

    def __init__(self, where: Path | str, model_type: Any, family: Family, scheme: str):
        self.where, self.model_type, self.family, self.scheme = where, model_type, family, scheme
        super().__init__(f"{where}: model_type {model_type!r}, but {scheme} needs a {family.name} checkpoint for "
                         f"{family.name}= ({family.expected_model_types})")


def read_checkpoint(family: str, value: str | Path | dict, *, scheme: str,
                    tokenizer: str | Path | None = None) -> Checkpoint:
    """Read the ``family`` checkpoint ``value`` (a directory, a hub id or a config.json dict) for ``scheme`` (named
    in errors): its config, which must be of that family, and its tokenizer, from ``tokenizer`` (a vocabulary file or
    directory) or else from beside the checkpoint, which must have exactly the checkpoint's ``vocab_size`` ids."""
    fam = FAMILIES[family]
    if isinstance(value, dict):
        raw, directory, name = dict(value), None, f"{family}= config"
    elif isinstance(value, (str, Path)):
        directory = resolve_checkpoint_dir(value)
        raw, name = read_config_dict(directory), str(value)
    else:
        raise ValueError(f"{family}=: expected a checkpoint directory, a hub id or a config.json dict, "
                         f"got {type(value).__name__}")
    if raw.get("model_type") not in fam.model_types:
        raise WrongFamily(directory / "config.json" if directory is not None else name, raw.get("model_type"), fam,
                          scheme)
    config = build_config(raw, name)
    return Checkpoint(fam, name, raw, directory, config, _tokens(fam, name, raw, directory, config, tokenizer))


def _tokens(family: Family, name: str, raw: dict[str, Any], directory: Path | None, config: PretrainedConfig,
            override: str | Path | None) -> TokenizerSpec:
    """The checkpoint's tokenizer and its start / end / pad ids; without tokenizer files, the family's default ids
    from config.json (they must fit the embedding matrix)."""
    vocab_size = config.vocab_size
    location = Path(override) if override is not None else directory
    tokenizer = None
    if override is not None or (directory is not None and has_tokenizer_files(directory)):
        tokenizer = load_tokenizer(location, kind=family.tokenizer)
    if tokenizer is not None:
        if tokenizer.vocab_size != vocab_size:
            weights = directory / "config.json" if directory is not None else name
            raise CheckpointError(f"{tokenizer.vocab_file}: the {family.name} vocabulary has {tokenizer.vocab_size} "
                                  f"token ids, but {weights} has vocab_size={vocab_size}; the tokenizer does not match "
                                  "the checkpoint")
        ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        missing = [what for what, i in zip(("start", "end", "pad"), ids) if i is None]
        if missing:
            raise CheckpointError(f"{tokenizer.vocab_file}: the {family.name} tokenizer has no {', '.join(missing)} "
                                  "token")
    else:
        ids = family.default_ids(raw)
        if not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids):
            raise CheckpointError(f"{name}: no vocabulary file beside the checkpoint and the default "
                                  f"{family.name} ids (start, end, pad) = {ids} do not fit vocab_size={vocab_size}; "
                                  f"pass tokenizers={{'{family.name}': <vocab file or directory>}}")
    return TokenizerSpec(
        kind=f"{family.name}-{family.subwords}", family=family.name,
        source=str(override) if override is not None else (str(directory) if directory is not None else None),
        vocab_file=str(tokenizer.vocab_file) if tokenizer is not None else None, vocab_size=vocab_size,
        bos_token_id=ids[0], eos_token_id=ids[1], pad_token_id=ids[2], tokenizer=tokenizer,
    )
