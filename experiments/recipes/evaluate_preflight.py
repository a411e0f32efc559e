"""What ``python -m experiments.recipes.evaluate`` checks before it writes anything (issue 24), as the launch does: every
refusal is one line and exit status 2, before any output folder, MLflow experiment or run exists.

- the output folders (``--output-dir``, ``--output-root``): a directory, or a place where one can be created, that
  this user can write (:func:`check_writable`);
- the local test files (:func:`check_test_data`), read as the evaluation reads them, as the launch checks a cell's;
- the checkpoint (:func:`check_checkpoint`), read as the evaluation will read it but without tensor data:

  * a trained cell: ``checkpoints/<select>`` complete (``--select best`` of a cell without a best checkpoint is
    refused here), its ``model.safetensors`` header whole (a truncated file is a ``CheckpointError``, not a
    ``SafetensorError`` traceback), and every tensor of it a tensor of the model ``cell.json``'s scheme builds (on
    the meta device), with the same shape, tied tensors stored once: a ``cell.json`` that names another scheme than
    its weights is refused;
  * an HF-layout encoder-decoder: ``config.json`` of ``model_type: encoder-decoder`` (a plain BERT directory is
    refused), the weights checked against it by ``EncoderDecoderModel.from_pretrained(meta=True)``, the tokenizer
    files beside it loaded (their vocabulary checks, ``bertgen.tokenization_vocab``) and their ids inside the model's
    vocabulary, and the generation ids found.

The tracking URI is checked by :func:`experiments.tracking.store.check_tracking`, the same probe as the launch's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bertgen.checkpoint import CheckpointError, read_config_dict, read_weight_headers, resolve_checkpoint_dir
from bertgen.modeling_encoder_decoder import EncoderDecoderModel
from bertgen.tokenization import load_tokenizer

from ..config.cell import CELL_CONFIG_FILE
from ..config.evaluation import EvaluationConfig, EvaluationError, read_cell
from ..config.tasks import get_task
from ..config.validate import nearest_existing, one_line, short_text
from ..data.local_files import load_local_split
from . import checkpointing
from .build import build_model, extra_test_splits, trained_vocabulary_copy


def check_writable(path: Path, option: str) -> None:
    """``path`` is a directory this user can write, or can be created as one (its nearest existing ancestor is)."""
    if path.exists() and not path.is_dir():
        raise EvaluationError(f"{option} {path}: not a directory; expected a folder to write the evaluation into")
    probe = nearest_existing(path.absolute())
    if not probe.is_dir():
        raise EvaluationError(f"{option} {path}: {probe} is not a directory; expected a folder that can be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EvaluationError(f"{option} {path}: {probe} is not writable by this user; expected a writable folder "
                              "(nothing was written)")


def selected_checkpoint(directory: Path, select: str) -> Path:
    """A trained cell's complete ``checkpoints/<select>`` (or the copy an interrupted save set aside)."""
    found = checkpointing.find_checkpoint(directory / checkpointing.CHECKPOINT_DIR / select)
    if found is None:
        have = sorted(p.name for p in (directory / checkpointing.CHECKPOINT_DIR).glob("*") if p.is_dir())
        raise EvaluationError(f"{directory}: no complete checkpoints/{select} (has {have or 'none'}); the cell has "
                              f"not trained yet, or pass --select {'best' if select == 'last' else 'last'}")
    return found


def check_cell_weights(directory: Path, select: str) -> None:
    """The selected checkpoint's weights fit the model that ``cell.json``'s scheme builds."""
    cell = read_cell(directory)
    weights = selected_checkpoint(directory, select) / checkpointing.MODEL_FILE
    headers = read_weight_headers(weights.parent)  # CheckpointError: truncated, corrupt, integer weights
    try:
        model = build_model(cell, device="meta", vocabulary=trained_vocabulary_copy(cell, directory))[0]
    except (ValueError, OSError) as err:
        raise EvaluationError(f"{directory / CELL_CONFIG_FILE}: scheme {cell.scheme} cannot be built from its "
                              f"checkpoints ({short_text(err, 200)})") from None
    tensors = model.state_dict(keep_vars=True)
    of_scheme = f"expected the weights of a {cell.scheme} cell (the scheme {directory / CELL_CONFIG_FILE} names)"
    for name, header in headers.items():
        if name not in tensors:
            raise EvaluationError(f"{weights}: tensor {name} is not in the {cell.scheme} model; {of_scheme}")
        if tuple(tensors[name].shape) != header.shape:
            raise EvaluationError(f"{weights}: tensor {name} has shape {header.shape}, the {cell.scheme} model's "
                                  f"{tuple(tensors[name].shape)}; {of_scheme}")
    names_of: dict[int, list[str]] = {}
    for name, tensor in tensors.items():
        names_of.setdefault(id(tensor), []).append(name)
    for names in names_of.values():
        stored = [name for name in names if name in headers]
        if not stored:
            raise EvaluationError(f"{weights}: no tensor {names[0]}; {of_scheme}")
        if len(stored) > 1:
            raise EvaluationError(f"{weights}: {stored[0]} and {stored[1]} are stored apart, but the {cell.scheme} "
                                  f"model shares one tensor between them; {of_scheme}")


def released_config(checkpoint: str, revision: str | None) -> tuple[Path, dict]:
    """(directory, config.json) of an HF-layout encoder-decoder; a plain single-stack checkpoint is refused."""
    try:
        directory = resolve_checkpoint_dir(checkpoint, revision=revision)
        raw = read_config_dict(directory)
    except (OSError, CheckpointError, ValueError) as err:
        raise EvaluationError(str(err) if checkpoint in str(err) else f"{checkpoint}: {err}") from None
    if raw.get("model_type") != "encoder-decoder":
        raise EvaluationError(f"{directory / 'config.json'}: model_type {raw.get('model_type')!r}: expected an "
                              "encoder-decoder checkpoint (or a trained cell's directory with cell.json)")
    return directory, raw


def check_released(checkpoint: str, revision: str | None) -> None:
    """An HF-layout encoder-decoder: its config, weights (headers only), tokenizer files and generation ids."""

    directory, raw = released_config(checkpoint, revision)
    model = EncoderDecoderModel.from_pretrained(directory, meta=True)
    tokenizer = load_tokenizer(directory)
    # More tokens than embedding rows: not the model's tokenizer. (A special token past the rows may be one the
    # model never sees, as <mask> of a RoBERTa vocabulary in a table of len(tokenizer) rows; the ids it decodes with
    # must fit, and generate checks those.)
    for side in ("encoder", "decoder"):
        rows = getattr(model.config, side).vocab_size
        if len(tokenizer) > rows:
            raise EvaluationError(f"{tokenizer.vocab_file}: the tokenizer has {len(tokenizer)} tokens, but the {side} "
                                  f"of {directory / 'config.json'} has vocab_size={rows}; expected the tokenizer the "
                                  "model was trained with")
    set_generation_ids(model, directory, raw, tokenizer)


def check_test_data(config: EvaluationConfig) -> None:
    """The local test files the evaluation decodes, read as it will read them (the launch's data check)."""
    task = get_task(config.task)
    for split in ("test", *extra_test_splits(config.data, task)[0]):
        spec = getattr(config.data, split, None)
        if spec is None:
            continue  # the task's hub dataset
        try:
            load_local_split(task.name, split, spec, max_examples=getattr(config.max_examples, split, None)
                             or config.max_examples.test)
        except (ValueError, OSError) as err:
            message = short_text(err, 300)
            raise EvaluationError(f"data.{split}: {message}" + ("" if "expected" in message else
                                  f"; expected {split} examples of task {task.name}")) from None


def check_checkpoint(config: EvaluationConfig) -> None:
    """Raises EvaluationError, CheckpointError or TokenizerError (one line each) when the checkpoint of ``config``
    cannot be evaluated."""
    if config.is_cell:
        check_cell_weights(Path(config.checkpoint), config.select)
    else:
        check_released(config.checkpoint, config.revision)


def set_generation_ids(model: Any, directory: Path, raw: dict[str, Any], tokenizer: Any) -> None:
    """Start, end and padding ids the way transformers' ``generate`` finds them: the model config's, else
    ``generation_config.json``'s, else the top-level ``bos_token_id`` (the decoder start when nothing names one; the
    released models' sub-configs leave bos/eos null), else the decoder config's, else the tokenizer's."""
    generation = {}
    if (directory / "generation_config.json").is_file():
        try:
            generation = json.loads((directory / "generation_config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise EvaluationError(f"{directory / 'generation_config.json'}: {one_line(err)}") from None
    decoder = model.config.decoder
    candidates = {
        "decoder_start_token_id": (generation.get("decoder_start_token_id"), raw.get("bos_token_id"),
                                   generation.get("bos_token_id"), decoder.bos_token_id,
                                   tokenizer.decoder_start_token_id),
        "eos_token_id": (generation.get("eos_token_id"), decoder.eos_token_id, tokenizer.eos_token_id),
        "pad_token_id": (generation.get("pad_token_id"), decoder.pad_token_id, tokenizer.pad_token_id),
    }
    for name, options in candidates.items():
        if getattr(model.config, name) is None:
            found = next((value for value in options if isinstance(value, int)), None)
            if found is None:
                raise EvaluationError(f"{directory}: no {name} in config.json, generation_config.json or the "
                                      "tokenizer files")
            setattr(model.config, name, found)
