"""What an evaluation is: its typed settings (:class:`EvaluationConfig`), the released checkpoints it knows
(:data:`RELEASED`), how the settings are built from a checkpoint, a task and ``--set`` overrides, and the id that
names an evaluation (:func:`evaluation_id`). :mod:`experiments.recipes.evaluate` runs them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertgen.checkpoint import is_local_reference

from . import validate as v
from .cell import (BEST, CELL_CONFIG_FILE, CHECKPOINT_NAMES, LAST, SELECT_BEST_DEV, CellConfig, DataSources, DecodeConfig,
                   ExampleCaps, bf16_setting, from_dict, setting, to_dict)
from .tasks import TASKS, Task, get_task
from .yaml_text import parse_sets, set_dotted

EVALUATION_FILE = "evaluation.json"
DEFAULT_EXPERIMENT = "bertgen-evaluate"

# How a source becomes encoder input ids: "tokenizer" (the tokenizer's own special tokens), "bare" (none) or
# "bos_eos" (<s> text </s>).
INPUT_FORMATS = ("tokenizer", "bare", "bos_eos")


# The WMT cards' tokenizer arguments: their repos ship a bare WordPiece vocab.txt (no tokenizer_config.json or
# special_tokens_map.json) and the cards load it as AutoTokenizer.from_pretrained(repo, pad_token="<pad>",
# eos_token="</s>", bos_token="<s>"), with config.json's BertTokenizer defaults otherwise (do_lower_case).
WMT_CARD_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>"}
WMT_NO_PAPER_NUMBER = ("two untied 24-layer BERT stacks (3.09 GB) with a WordPiece vocabulary built on WMT14 "
                       "(not mBERT's): the paper's custom-vocabulary 24-layer block of Table 4, which reports "
                       "bert2rnd and bertShare only; Table 4's bert2bert is 12 layers with mBERT's vocabulary")


@dataclass(frozen=True)
class Released:
    """One of Google's released warm-started models (hub ids: ../shared/notes/hub-ids.md) and how its model card
    uses it (read from the cards on the hub)."""

    task: str  # the task it was fine-tuned on
    scheme: str  # the scheme it is: robertaShare (24-layer, Tables 2, 3, 5); bert2bert (two untied stacks)
    # Its model card's input convention. The roberta2roberta repos ship a SentencePiece spiece.model with
    # bert-generation stacks, whose tokenizer adds no special tokens; the WikiSplit card wraps the input in <s> … </s>
    # (transformers issue 7898: without them the model repeats words); the WMT cards pass add_special_tokens=False.
    input_format: str = "tokenizer"
    size: str = "large"  # 24 layers
    # The card's AutoTokenizer keyword arguments (special tokens; they override the repo's tokenizer files).
    tokenizer_args: dict = field(default_factory=dict)
    # The card's preprocessing: (text, replacement) applied to every source before encoding. The DiscoFuse card:
    # replace all " with a single ` (back tick); the WikiSplit card: with two single ' (single quotation marks).
    replace_in_source: tuple[tuple[str, str], ...] = ()
    # None: the paper reports this model (its scheme's 24-layer row); else why no paper number is its.
    no_paper_number: str | None = None

    @property
    def variant(self) -> str:
        """The analysis' variant tag of its evaluation runs (a row of its own)."""
        return RELEASED_VARIANT if self.no_paper_number is None else RELEASED_UNREPORTED_VARIANT


RELEASED: dict[str, Released] = {
    "google/roberta2roberta_L-24_discofuse": Released("discofuse", "robertaShare", replace_in_source=(('"', "`"),)),
    "google/roberta2roberta_L-24_wikisplit": Released("wikisplit", "robertaShare", "bos_eos",
                                                      replace_in_source=(('"', "''"),)),
    "google/roberta2roberta_L-24_gigaword": Released("gigaword", "robertaShare"),
    "google/roberta2roberta_L-24_cnn_daily_mail": Released("cnn_dailymail", "robertaShare"),
    "google/roberta2roberta_L-24_bbc": Released("xsum", "robertaShare"),
    "google/bert2bert_L-24_wmt_de_en": Released("wmt14_de_en", "bert2bert", "bare",
                                                tokenizer_args=dict(WMT_CARD_TOKENS),
                                                no_paper_number=WMT_NO_PAPER_NUMBER),
    "google/bert2bert_L-24_wmt_en_de": Released("wmt14_en_de", "bert2bert", "bare",
                                                tokenizer_args=dict(WMT_CARD_TOKENS),
                                                no_paper_number=WMT_NO_PAPER_NUMBER),
}
RELEASED_VARIANT = "released"  # the analysis' variant tag for released models' rows (analysis.schema)
RELEASED_UNREPORTED_VARIANT = "released_unreported"  # a released model the paper reports no number for


def released_entry(checkpoint: str) -> Released | None:
    """The released model a hub id or a local copy (a directory named like the hub repo) is."""
    if checkpoint in RELEASED:
        return RELEASED[checkpoint]
    name = checkpoint.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    return next((entry for hub_id, entry in RELEASED.items() if hub_id.rsplit("/", 1)[-1] == name), None)


class EvaluationError(v.Refusal, ValueError):
    """A checkpoint, task or setting that cannot be evaluated as asked (one line, names what is wrong)."""


@dataclass(frozen=True)
class EvaluationConfig:
    """One evaluation: what is decoded, on what, how. Its JSON form is ``evaluation.json`` and the run's params."""

    checkpoint: str = setting()  # an HF-layout encoder-decoder (directory or hub id) or a trained cell's directory
    task: str = setting()
    decode: DecodeConfig = setting()
    data: DataSources = setting(DataSources())
    max_examples: ExampleCaps = setting(ExampleCaps())
    select: str | None = setting(None)  # trained cells: which checkpoint (CHECKPOINT_NAMES); None for HF-layout models
    revision: str | None = setting(None)  # hub revision of an HF-layout checkpoint
    input_format: str = setting("tokenizer")  # INPUT_FORMATS; a released model's card's (RELEASED) by default
    # fp32 by default: bf16 decoding is faster where the hardware has it but can change tokens ("auto": where native)
    bf16: bool | str = setting(False, check=bf16_setting)
    # A released model's card (RELEASED) by default: keyword arguments the tokenizer is read with (special tokens,
    # tokenizer options), and (text, replacement) pairs applied to every source before encoding; left out of the
    # JSON form and the id while empty.
    tokenizer_args: dict = setting({}, omit_default=True)
    replace_in_source: list = setting([], omit_default=True)

    @property
    def is_cell(self) -> bool:
        return self.select is not None


def is_cell_dir(checkpoint: str | os.PathLike) -> bool:
    return is_local_reference(checkpoint) and (Path(checkpoint).expanduser() / CELL_CONFIG_FILE).is_file()


def read_cell(directory: Path) -> CellConfig:
    path = directory / CELL_CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EvaluationError(f"{path}: not a readable cell config ({v.one_line(err)})") from None
    try:
        return CellConfig.from_dict(raw, str(path))
    except v.Invalid as err:
        raise EvaluationError(str(err)) from None


def evaluation_id(config: EvaluationConfig) -> str:
    """12 hex digits over what the evaluation decodes: the checkpoint (a cell by its id, so moving the output root
    keeps it), the task, the decoding settings, the test data and caps, the selected checkpoint."""
    view = to_dict(config)
    if config.is_cell:
        view["checkpoint"] = "cell:" + (read_cell(Path(config.checkpoint).expanduser()).cell_id or "")
    canonical = json.dumps(view, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def paper_decode(task: Task) -> dict[str, Any]:
    """The paper's decoding for ``task`` (§4: beam 4, α = 0.6, the task's maximum target length)."""
    return {"num_beams": task.beam_size, "length_penalty": float(task.length_penalty_alpha),
            "max_new_tokens": task.max_target_length}


SETTABLE = ("decode", "data", "max_examples", "input_format", "bf16", "tokenizer_args", "replace_in_source")
TOP_LEVEL = ("input_format", "bf16", "replace_in_source")


def build_config(checkpoint: str, task: str | None, sets: list[str], max_examples: int | None = None,
                 select: str | None = None, revision: str | None = None) -> EvaluationConfig:
    """The evaluation of ``checkpoint``: defaults from the trained cell (its task, data, caps and decoding) or, for
    an HF-layout model, the paper's decoding for ``task`` on the task's hub data; then ``--set`` overrides."""
    if is_cell_dir(checkpoint):
        directory = Path(checkpoint).expanduser()
        cell = read_cell(directory)
        if task is not None and task != cell.task:
            raise EvaluationError(f"--task {task}: {checkpoint} was trained on {cell.task}; a trained cell is "
                                  f"evaluated on its own task (pass --set data.test=FILE for other test data)")
        doc = cell_evaluation_doc(cell, directory)
        doc["select"] = select or doc["select"]
    else:
        if select is not None:
            raise EvaluationError(f"--select {select}: only a trained cell's directory has last/best checkpoints; "
                                  f"{checkpoint} has no {CELL_CONFIG_FILE}")
        released = released_entry(checkpoint)
        if task is None:
            if released is None:
                raise EvaluationError(f"--task: required for {checkpoint} (one of {sorted(TASKS)})")
            task = released.task
        if task not in TASKS:
            raise EvaluationError(str(v.unknown("--task", task, TASKS)))
        doc = {"checkpoint": checkpoint, "task": task, "decode": paper_decode(get_task(task)), "revision": revision,
               "input_format": released.input_format if released is not None else "tokenizer"}
        if released is not None:  # its model card's tokenizer arguments and preprocessing
            doc["tokenizer_args"] = dict(released.tokenizer_args)
            doc["replace_in_source"] = [list(pair) for pair in released.replace_in_source]
    if max_examples is not None:
        doc.setdefault("max_examples", {})["test"] = max_examples
    for key, value in parse_sets(sets):
        if key.split(".", 1)[0] not in SETTABLE or ("." not in key) != (key in TOP_LEVEL):
            raise EvaluationError(f"--set {key}: expected a key under {', '.join(SETTABLE)} "
                                  f"(e.g. decode.num_beams=4, data.test=FILE, max_examples.test=500)")
        set_dotted(doc, key, value)
    return config_from_dict(doc, "evaluation")


def config_from_dict(doc: dict[str, Any], where: str) -> EvaluationConfig:
    known = {f.name for f in dataclasses.fields(EvaluationConfig)}
    for key in doc:
        if key not in known:
            raise v.unknown(v.join(where, key), key, known)
    try:
        task = v.choice(tuple(TASKS), what="task")(doc.get("task"), v.join(where, "task"))
        checkpoint = v.text(what="a checkpoint directory or hub id")(doc.get("checkpoint"), v.join(where, "checkpoint"))
        select = doc.get("select")
        if select is not None:
            select = v.choice(CHECKPOINT_NAMES, what="checkpoint selection")(select, v.join(where, "select"))
        data = from_dict(DataSources, doc.get("data") or {}, v.join(where, "data"))
        for split in ("train", "validation"):
            if getattr(data, split) is not None:
                raise v.Invalid(v.join(where, "data", split), "an evaluation reads test sets only")
        decode = from_dict(DecodeConfig, doc.get("decode") or {}, v.join(where, "decode"))
        caps = from_dict(ExampleCaps, doc.get("max_examples") or {}, v.join(where, "max_examples"))
        revision = v.text(nullable=True)(doc.get("revision"), v.join(where, "revision"))
        input_format = v.choice(INPUT_FORMATS, what="input format")(doc.get("input_format", "tokenizer"),
                                                                    v.join(where, "input_format"))
        bf16 = bf16_setting(doc.get("bf16", False), v.join(where, "bf16"))
        tokenizer_args = _tokenizer_args(doc.get("tokenizer_args") or {}, v.join(where, "tokenizer_args"))
        replace_in_source = _replacements(doc.get("replace_in_source") or [], v.join(where, "replace_in_source"))
    except v.Invalid as err:
        raise EvaluationError(str(err)) from None
    return EvaluationConfig(checkpoint=checkpoint, task=task, decode=decode, data=data, max_examples=caps,
                            select=select, revision=revision, input_format=input_format, bf16=bf16,
                            tokenizer_args=tokenizer_args, replace_in_source=replace_in_source)


def _tokenizer_args(value: Any, where: str) -> dict[str, Any]:
    """``{name: value}`` with text or true/false values (bertgen.tokenization.load_tokenizer checks the names)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(x, (str, bool))
                                              for k, x in value.items()):
        raise v.Invalid(where, f"expected a mapping of tokenizer arguments to text or true/false (e.g. "
                               f"pad_token: <pad>), got {v.short_repr(value)}")
    return dict(value)


def _replacements(value: Any, where: str) -> list[list[str]]:
    """``[[text, replacement], ...]``, each text non-empty."""
    if not isinstance(value, list) or not all(isinstance(pair, (list, tuple)) and len(pair) == 2
                                              and all(isinstance(x, str) for x in pair) and pair[0]
                                              for pair in value):
        raise v.Invalid(where, f"expected a list of [text, replacement] pairs of strings (e.g. [['\"', '`']]), "
                               f"got {v.short_repr(value)}")
    return [list(pair) for pair in value]


def cell_evaluation_doc(cell: CellConfig, directory: Path) -> dict[str, Any]:
    """A trained cell's evaluation as it was tested: its decoding, its test sets and cap, the checkpoint its
    ``train.select`` names."""
    data = {split: spec for split, spec in cell.data.splits.items()
            if split not in ("train", "validation") and spec is not None}
    return {"checkpoint": str(Path(directory).resolve()), "task": cell.task, "decode": to_dict(cell.decode),
            "data": data, "max_examples": {"test": cell.max_examples.test},
            "select": BEST if cell.train.select == SELECT_BEST_DEV else LAST}


def cell_evaluation(cell: CellConfig, directory: Path) -> EvaluationConfig:
    """The re-decoding of a trained cell (in ``directory``) with the decoding settings ``cell`` holds now: what the
    launcher runs when a grid changes only how a finished cell decodes (its training identity is unchanged)."""
    return config_from_dict(cell_evaluation_doc(cell, directory), f"cell {cell.cell_id}")
