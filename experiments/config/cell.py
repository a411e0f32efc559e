"""One cell's configuration as frozen dataclasses: every setting, its type, its range and its default, once.

A *cell* is one training run: one task, one scheme, one seed and every setting needed to reproduce it. Its fields
are declared here and nowhere else; the rest of the harness derives what it needs from them:

* the grid schema (:func:`schema`): types and ranges from the annotations and ``setting(...)`` metadata, unknown
  keys answered with the nearest field name;
* the JSON form a job receives and ``cell.json`` holds (:func:`to_dict` / :meth:`CellConfig.from_dict`), which is
  also what MLflow's params flatten (``train.lr``, ``decode.length_penalty`` ...);
* the cell id (:func:`experiments.grid.identity.compute_cell_id`): a hash of the JSON form minus :data:`COSMETIC_KEYS` and
  :data:`DECODING_SECTIONS` (its training identity).

To add a setting: add a field with its default and a one-line comment saying where the value comes from, mark it
``omit_default=True`` so that cells which leave it at its default keep their ids (finished runs stay found), and read
it from the typed config where it is used. The grid accepts it at once (``defaults: {train: {my_field: ...}}``,
``--set train.my_field=...``).

Defaults that are the paper's (Rothe et al. 2020) cite it; per-task values (steps, batch size, beam, length
penalty, target length) are the task table's (:mod:`experiments.config.tasks`) and fill a cell in :func:`paper_cell`.
"""

from __future__ import annotations

import contextvars
import re
import copy
import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertgen.checkpoint import is_local_reference
from bertgen.configuration import BertGenerationConfig
from bertgen.families import FAMILIES as BERTGEN_FAMILIES
from bertgen.generation import LENGTH_PENALTY_STYLE, LENGTH_PENALTY_STYLES
from bertgen.schemes import CROSS_ATTENTION_INITS, GPT2_OVERRIDE_NAMES, SCHEMES, WarmStart

from . import validate as v
from .data_spec import FORMATS, MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, SPEC_KEYS, VOCAB_TRAINERS, archive_for
from .model_size import SIZE_PATTERN
from .tasks import STANDARD_SPLITS, TASKS, Task

CELL_CONFIG_FILE = "cell.json"  # the JSON form (to_dict) a job receives and a trained cell's directory holds
SPLITS = STANDARD_SPLITS  # every task's; DataSources and ExampleCaps also hold the extra test sets (WMT's)
FAMILIES = tuple(BERTGEN_FAMILIES)  # bert, roberta, gpt2: the rows of bertgen.families
SCHEDULES = ("noam", "constant", "linear")  # what experiments.recipes.optim.LRSchedule implements
SELECT_LAST, SELECT_BEST_DEV = SELECTIONS = ("last", "best_dev")  # train.select: the weights that decode the tests
# Where a grid writes unless it says (`output_root`), and where evaluations and the analysis look by default.
DEFAULT_OUTPUT_ROOT = "outputs"
# the checkpoints a trained cell keeps under <cell dir>/checkpoints/ (the last, resumable; the best on dev)
LAST, BEST = CHECKPOINT_NAMES = ("last", "best")
# train.optimizer: the paper's Adam (§4, the default) and Adafactor (§5's GPT-2 tuning; experiments.recipes.optim)
ADAM, ADAFACTOR = OPTIMIZERS = ("adam", "adafactor")
DATA_VARIANTS = ("paper", "full")  # data.variant
# What a cell decodes with, not what it trains: left out of its training identity (the cell id), so decoding a trained
# cell differently re-decodes it (an evaluation run, experiments.recipes.evaluate) instead of training it again.
DECODING_SECTIONS = ("decode",)

# Upper bounds of the integer settings: far above the paper's (500k steps, batch 256, beam 4, 24 layers), low
# enough that a typo (steps: 10**30, batch_size: 2**63) is refused at launch instead of overflowing a schedule,
# a tensor shape or a seed after hours.
MAX_STEPS = 100_000_000
MAX_BATCH = 1 << 20
MAX_BEAMS = 1024
MAX_LAYERS = 1024
MAX_MODEL_SIZE = 1 << 20  # model size overrides (hidden_size, layers, positions ...) and decode.max_new_tokens
MAX_SEED = 2**32 - 1  # numpy's seeds

# Whether checks may look at the file system (existence of local checkpoints and data files); load_grid sets it.
check_paths: contextvars.ContextVar[bool] = contextvars.ContextVar("check_paths", default=True)


def setting(default: Any = dataclasses.MISSING, *, check: v.Check | None = None, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, choices: tuple[str, ...] | None = None,
            what: str = "value", section: dict | None = None, cosmetic: bool = False, omit_default: bool = False,
            grid: bool = True) -> Any:
    """A config field. Its check is ``check`` or derived from its annotation with ``lo``/``hi``/``choices``;
    ``section`` (a mapping of checks) makes a dict-valued field merge key by key in grids; ``cosmetic`` keeps it out
    of the cell id; ``omit_default`` leaves it out of the JSON form (and the id) while it has its default;
    ``grid=False``: set by the grid's matrix (task, scheme, seed), not by a grid key."""
    meta = {"check": check, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices, "what": what,
            "section": section, "cosmetic": cosmetic, "omit_default": omit_default, "grid": grid}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- checks of the fields that are more than a number --------------------------------------------------------------
def _package_dir(value: str, path: str) -> str:
    """``pkg:<python package>/<sub dir>`` → that directory inside the installed package (e.g. the MiniLM wheel)."""
    package, _, sub = value[len("pkg:"):].partition("/")
    try:
        spec = importlib.util.find_spec(package) if package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise v.Invalid(path, f"expected pkg:<installed python package>/<directory>, package {v.short_repr(package)} is not "
                              "installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def checkpoint_ref(value: Any, path: str) -> Any:
    if value is None:
        return None
    v.path_text(what="a hub id, a local checkpoint directory or pkg:<package>/<dir>")(value, path)
    if value.startswith("pkg:"):
        value = _package_dir(value, path)
        if not Path(value).is_dir():
            raise v.Invalid(path, f"expected a checkpoint directory, {v.short_repr(value, 300)} does not exist")
    if check_paths.get() and is_local_reference(value) and not Path(value).expanduser().is_dir():
        raise v.Invalid(path, f"expected a checkpoint directory, {v.short_repr(value, 300)} does not exist")
    return value


def _data_file(value: Any, path: str) -> str:
    v.path_text(what="a file path")(value, path)
    if check_paths.get() and not Path(value).expanduser().is_file():
        fetch = "; python -m experiments.launch.prefetch GRID fetches it" if archive_for(value) is not None else ""
        raise v.Invalid(path, f"expected an existing file, {v.short_repr(value, 300)} does not exist{fetch}")
    return value


def data_spec(value: Any, path: str) -> Any:
    """One split's source as experiments.data.sources.load_split takes it: null (hub), a file path, or a mapping."""
    if value is None:
        return None
    if isinstance(value, str):
        return _data_file(value, path)
    if not isinstance(value, dict):
        raise v.Invalid(path, f"expected null (the hub), a file path or a mapping with {sorted(SPEC_KEYS)}, "
                              f"got {v.type_name(value)}")
    spec = {}
    for key, item in value.items():
        where = v.join(path, key)
        if key not in SPEC_KEYS:
            raise v.unknown(where, key, SPEC_KEYS)
        if key in ("path", "source_path", "target_path"):
            spec[key] = _data_file(item, where)
        elif key == "format":
            spec[key] = v.choice(sorted(FORMATS), what="format")(item, where)
        elif key == "xml_unescape":
            spec[key] = v.boolean()(item, where)
        else:  # columns
            if not isinstance(item, dict) or not {"input", "target"} <= set(item) or set(item) - {"input", "target", "id"}:
                raise v.Invalid(where, f"expected a mapping with input, target and optionally id, got "
                                       f"{v.short_repr(item)}")
            for name, column in item.items():  # a column name: text, as the files' headers and JSON keys are
                v.text(what="a column name", max_len=200)(column, v.join(where, name))
            spec[key] = dict(item)
    if "path" not in spec and not {"source_path", "target_path"} <= set(spec):
        raise v.Invalid(path, "expected 'path' or both 'source_path' and 'target_path'")
    return spec


def init_layers(value: Any, path: str) -> Any:
    """null | {embeddings_only: true} | {without_embeddings: true} | {first_k: k} | {layers: [i, j, ...]} (1-based,
    strictly increasing). ``without_embeddings``: every layer warm, the word-embedding matrix random (Table 6's "-
    embeddings from checkpoint", §5; positions and the embedding LayerNorm come from the checkpoint)."""
    kinds = ("embeddings_only", "without_embeddings", "first_k", "layers")
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise v.Invalid(path, "expected null or a mapping with exactly one of embeddings_only: true, "
                              "without_embeddings: true, first_k: <k>, "
                              f"layers: [<1-based layer>, ...], got {v.short_repr(value)}")
    (kind, item), = value.items()
    where = v.join(path, kind)
    if kind not in kinds:
        raise v.unknown(where, kind, kinds)
    if kind in ("embeddings_only", "without_embeddings"):
        if item is not True:
            raise v.Invalid(where, f"expected true, got {v.short_repr(item)}")
        return {kind: True}
    if kind == "first_k":
        return {kind: v.integer(1, hi=MAX_LAYERS)(item, where)}
    if not isinstance(item, list) or not item:
        raise v.Invalid(where, f"expected a non-empty list of 1-based layer numbers, got {v.short_repr(item)}")
    if len(item) > MAX_LAYERS:
        raise v.Invalid(where, f"expected at most {MAX_LAYERS} layer numbers, got {len(item)}")
    for i, layer in enumerate(item):
        v.integer(1, hi=MAX_LAYERS)(layer, v.join(where, i))
    if any(b <= a for a, b in zip(item, item[1:])):
        raise v.Invalid(where, f"expected strictly increasing layer numbers, got {item}")
    return {kind: list(item)}


def vocab_setting(value: Any, path: str) -> Any:
    """null (the checkpoints' own vocabularies) | {train: wordpiece | sentencepiece, size: <ids>}: a vocabulary the
    harness trains on the cell's training data (experiments.data.vocabulary) for both sides of the model."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"train", "size"}:
        raise v.Invalid(path, f"expected null or a mapping with train ({' or '.join(VOCAB_TRAINERS)}) and size, got "
                              f"{v.short_repr(value)}")
    return {"train": v.choice(tuple(VOCAB_TRAINERS), what="vocabulary trainer")(value["train"], v.join(path, "train")),
            "size": v.integer(MIN_VOCAB_SIZE, hi=MAX_VOCAB_SIZE)(value["size"], v.join(path, "size"))}


def _model_override_checks() -> dict[str, v.Check]:
    """Size overrides: the config fields bertgen.schemes.build can change on every stack (BERT and GPT-2 alike),
    typed from BertGenerationConfig's annotations."""
    checks: dict[str, v.Check] = {}
    for item in dataclasses.fields(BertGenerationConfig):
        if item.name not in GPT2_OVERRIDE_NAMES:
            continue
        annotation = str(item.type).replace(" ", "")
        nullable = "None" in annotation
        if annotation.startswith("int"):
            checks[item.name] = v.integer(1, nullable, hi=MAX_MODEL_SIZE)
        elif item.name.endswith("dropout_prob"):
            checks[item.name] = v.probability
        elif annotation.startswith("float"):
            checks[item.name] = v.number(0.0, lo_open=True, nullable=nullable)
        else:
            checks[item.name] = v.text(nullable)
    return checks


def model_size_text(value: Any, path: str) -> str | None:
    if value is None or (isinstance(value, str) and SIZE_PATTERN.fullmatch(value)):
        return value
    raise v.Invalid(path, "expected null or a model size L<layers>-H<hidden> (encoder+decoder: "
                          f"L<l>-H<h>+L<l>-H<h>), got {v.short_repr(value)}")


def bf16_setting(value: Any, path: str) -> bool | str:
    if value is True or value is False or value == "auto":
        return value
    raise v.Invalid(path, f"expected true, false or auto, got {v.short_repr(value)}")


# -- the cell ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoints:
    """Where each family's weights and vocabulary come from: hub ids, local directories or pkg:<package>/<dir>. A
    family the cell's scheme does not read is null (so it cannot change the id)."""

    bert: str | None = setting("bert-base-cased", check=checkpoint_ref)  # §3: BERT-Base, cased vocabulary
    roberta: str | None = setting("roberta-base", check=checkpoint_ref)  # §3: RoBERTa-Base
    gpt2: str | None = setting("gpt2", check=checkpoint_ref)  # §3: the 124M GPT-2


@dataclass(frozen=True)
class DataSources:
    """Per split, a source spec for experiments.data.sources.load_split; null is the task's hub dataset."""

    train: Any = setting(None, check=data_spec)
    validation: Any = setting(None, check=data_spec)
    test: Any = setting(None, check=data_spec)
    newstest2016: Any = setting(None, check=data_spec, omit_default=True)  # WMT's extra test set (tasks.py)
    # "paper": the paper's data; a task whose paper data is not on the hub (Task.paper_data: DiscoFuse's balanced
    # set) must then name it as local files. "full": the hub's set instead (DiscoFuse: the 16.3M full release),
    # an explicit departure the tables footnote.
    variant: str = setting("paper", choices=DATA_VARIANTS, what="data variant", omit_default=True)

    @property
    def splits(self) -> dict[str, Any]:
        """split → source spec (None: the hub), without the variant."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "variant"}


@dataclass(frozen=True)
class ExampleCaps:
    """Per split, at most this many examples (null: all). An extra test set takes the test split's cap."""

    train: int | None = setting(None, lo=1)
    validation: int | None = setting(None, lo=1)
    test: int | None = setting(None, lo=1)
    newstest2016: int | None = setting(None, lo=1, omit_default=True)  # WMT's extra test set (tasks.py)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (experiments.recipes.optim, experiments.trainer). ``steps`` and ``batch_size`` are the task's."""

    steps: int = setting(lo=1, hi=MAX_STEPS)  # the task table's (§4: 200k-500k per task; WMT: 30 epochs, set in the grid)
    batch_size: int = setting(lo=1, hi=MAX_BATCH)  # the task table's (§4: 256; 128 for the 512-token summarisation inputs)
    grad_accum: int = setting(1, lo=1, hi=MAX_BATCH)  # micro-batches per update (memory only: the update sees batch_size)
    lr: float = setting(0.05, lo=0.0, lo_open=True)  # §4: "learning rate 0.05" (scaled by hidden^-0.5 in noam)
    warmup_steps: int = setting(40_000, lo=0, hi=MAX_STEPS)  # §4: "linear warmup over 40k steps"
    schedule: str = setting("noam", choices=SCHEDULES, what="schedule")  # §4: warmup, rsqrt decay, rsqrt hidden
    max_grad_norm: float | None = setting(None, lo=0.0, lo_open=True)  # the paper clips nothing
    # the paper's setup: Adam; §5 tunes GPT-2 cells with Adafactor too (experiments.recipes.optim: t2t/T5 settings)
    optimizer: str = setting(ADAM, choices=OPTIMIZERS, what="optimizer", omit_default=True)
    # fp32 unless asked (the paper trained on TPUs; not stated); "auto": bf16 autocast where the hardware computes it
    # natively (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), fp32 elsewhere (experiments.recipes.decode).
    bf16: bool | str = setting(False, check=bf16_setting)
    eval_every: int = setting(5000, lo=0, hi=MAX_STEPS)  # dev loss and best weights every this many steps (0: at the end)
    checkpoint_every: int = setting(5000, lo=0, hi=MAX_STEPS, cosmetic=True)  # resumable state every this many steps
    eval_examples: int | None = setting(1000, lo=1)  # validation examples in the dev loss (null: all)
    # Validation examples decoded (the cell's decode settings) at each evaluation for the task metric's dev curve
    # (dev_sari, dev_bleu ...; predictions in dev_predictions.jsonl); 0: none. Logging only: not in the cell id.
    dev_decode_examples: int = setting(64, lo=0, cosmetic=True)
    # Which weights decode the test sets: "last" (§4: the model at the end of training's fixed steps) or "best_dev"
    # (the lowest dev loss of the evaluations every eval_every steps; then checkpoints/best is kept).
    select: str = setting(SELECTIONS[0], choices=SELECTIONS, what="checkpoint selection")
    num_workers: int = setting(2, lo=0, hi=256, cosmetic=True)  # DataLoader worker processes
    # Divide lr by sqrt(hidden_size) (null: only the noam schedule does, as the paper's).
    scale_lr_by_hidden: bool | None = setting(None, omit_default=True)
    # Log the training curve every this many steps (null: min(50, eval_every / 5)).
    log_every: int | None = setting(None, lo=1, hi=MAX_STEPS, cosmetic=True, omit_default=True)
    # Table 6's "pre-training SentencePieces": the parameters warm-started from a checkpoint get no update (and no
    # optimizer state) for this many steps, so the new ones (a new vocabulary's embeddings) learn first; 0: none.
    freeze_warm_started_steps: int = setting(0, lo=0, hi=MAX_STEPS, omit_default=True)

    def cross_check(self, path: str) -> None:
        if self.batch_size < self.grad_accum:
            raise v.Invalid(v.join(path, "batch_size"), f"expected at least train.grad_accum={self.grad_accum} "
                                                        f"examples, got {self.batch_size}")
        if self.freeze_warm_started_steps >= self.steps:
            raise v.Invalid(v.join(path, "freeze_warm_started_steps"),
                            f"expected fewer than train.steps={self.steps} steps, got {self.freeze_warm_started_steps}")


@dataclass(frozen=True)
class DecodeConfig:
    """Beam search on the test sets (bertgen.generation). Beam, penalty and length are the task table's."""

    num_beams: int = setting(lo=1, hi=MAX_BEAMS)  # the task table's (4: the paper's for WMT, §4.3; ours elsewhere)
    length_penalty: float = setting(lo=0.0)  # the task table's (α = 0.6: the paper's for WMT, §4.3; ours elsewhere)
    max_new_tokens: int = setting(lo=1, hi=MAX_MODEL_SIZE)  # the task table's max_target_length
    length_penalty_style: str = setting(LENGTH_PENALTY_STYLE, choices=LENGTH_PENALTY_STYLES,
                                        what="length penalty style")
    # Sources per beam-search batch (null: the training micro-batch).
    batch_size: int | None = setting(None, lo=1, hi=MAX_BATCH, omit_default=True)


@dataclass(frozen=True)
class CellConfig:
    """One training run. ``task``, ``scheme`` and ``seed`` come from the grid's matrix; the rest from its keys."""

    task: str = setting(choices=tuple(TASKS), what="task", grid=False)  # a row of experiments.config.tasks.TASKS
    scheme: str = setting(choices=tuple(SCHEMES), what="scheme", grid=False)  # a row of bertgen.schemes.SCHEMES
    seed: int = setting(lo=0, hi=MAX_SEED, grid=False)
    train: TrainConfig = setting()
    decode: DecodeConfig = setting()
    checkpoints: Checkpoints = setting(Checkpoints())
    data: DataSources = setting(DataSources())
    data_fraction: float = setting(1.0, lo=0.0, hi=1.0, lo_open=True)  # §4.1: DiscoFuse at 100, 10 and 1 %
    max_examples: ExampleCaps = setting(ExampleCaps())
    model: dict = setting({}, section=_model_override_checks())  # size overrides, {}: the checkpoints' sizes
    # {embeddings_only: true} | {without_embeddings: true} | {first_k: k} | {layers: [...]} (§5 and Table 6,
    # 1-based as in the paper); null: all
    init_layers: dict | None = setting(None, check=init_layers)
    # How a warm decoder's new cross-attention starts: "random" (§3: it is always newly initialised) or
    # "self_attention" (a copy of the layer's own self-attention; docs/investigations.md: "Why the decoder ignored the encoder").
    cross_attention_init: str = setting(WarmStart.cross_attention, choices=CROSS_ATTENTION_INITS,
                                        what="cross-attention init", omit_default=True)
    # L<layers>-H<hidden> of the model the checkpoints build (experiments.config.model_size), filled by the grid (null: a
    # config not readable yet). Part of the cell id where a checkpoint is a local directory (experiments.grid.identity).
    size: str | None = setting(None, check=model_size_text, grid=False, omit_default=True)
    # A vocabulary the harness trains on the cell's training data for both sides, {train: wordpiece | sentencepiece,
    # size: N} (Table 4's 32k WMT wordpiece Transformer, Table 6's 16k SentencePieces; experiments.data.vocabulary); the
    # checkpoints' word embeddings are then not used. null: the checkpoints' vocabularies (the paper's schemes).
    vocab: dict | None = setting(None, check=vocab_setting, omit_default=True)
    # The paper's row this cell fills when its scheme and settings alone do not name it (Table 4's "Transformer
    # (ours)" baselines are rnd2rnd cells: transformer_base); the tables key the row by it. Not in the cell id.
    variant: str | None = setting(None, check=v.text(nullable=True, pattern=re.compile(r"[a-z0-9_]+"),
                                                     what="a variant name of a-z, 0-9 and _", max_len=100),
                                  cosmetic=True, omit_default=True)
    cell_id: str | None = setting(None, cosmetic=True, grid=False)  # filled by the grid: experiments.grid.identity
    grid: str = setting("", cosmetic=True, grid=False)  # the grid that produced it
    output_root: str = setting("", cosmetic=True, grid=False)  # the cell writes under experiments.grid.identity.cell_dir

    @classmethod
    def from_dict(cls, value: Any, path: str = "") -> CellConfig:
        """The typed cell of a JSON-form cell (grid output, cell.json); :class:`Invalid` names the key."""
        return from_dict(cls, value, path)

    def missing_paper_data(self) -> tuple[str, str] | None:
        """(field, message) when the cell would read the hub where the paper's data is not there (DiscoFuse's
        balanced set) without opting into the hub's (``data.variant: full``); None otherwise. The launch refuses
        such cells (experiments.launch.preflight)."""
        task = TASKS[self.task]
        if task.paper_data is None or self.data.variant == "full":
            return None
        hub = [split for split in STANDARD_SPLITS if getattr(self.data, split) is None]
        if not hub:
            return None
        return (f"data.{hub[0]}", f"{self.task}: the paper used {task.paper_data}, which is not on the hub; name "
                                  f"its file (data.{hub[0]}: <file>) or set data.variant: full for the hub's set")


# -- derived: schema, JSON form, defaults ------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check(item: dataclasses.Field, annotation: Any) -> v.Check:
    meta = item.metadata
    if meta["check"] is not None:
        return meta["check"]
    args = typing.get_args(annotation)
    nullable = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    if meta["choices"] is not None:
        return v.choice(meta["choices"], nullable, what=meta["what"])
    if base is bool:
        return v.boolean(nullable)
    if base is int:
        return v.integer(meta["lo"], nullable, meta["hi"])
    if base is float:
        return v.number(meta["lo"], meta["hi"], meta["lo_open"], nullable)
    if base is str:
        return v.text(nullable)
    raise TypeError(f"{item.name}: no check for {annotation!r}; pass setting(check=...)")


def schema(cls: type = CellConfig, grid_only: bool = True) -> dict[str, Any]:
    """Field name → check (a leaf, replaced by a grid patch) or a mapping of checks (a section, merged key by key)."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if grid_only and not item.metadata["grid"]:
            continue
        annotation = _hints(cls)[item.name]
        if dataclasses.is_dataclass(annotation):
            out[item.name] = schema(annotation)
        elif item.metadata["section"] is not None:
            out[item.name] = item.metadata["section"]
        else:
            out[item.name] = _check(item, annotation)
    return out


def _default(item: dataclasses.Field) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def from_dict(cls: type, value: Any, path: str = "") -> Any:
    if not isinstance(value, dict):
        raise v.Invalid(path, f"expected a mapping, got {v.type_name(value)} {v.short_repr(value)}")
    items = {item.name: item for item in dataclasses.fields(cls)}
    for key in value:
        if key not in items:
            raise v.unknown(v.join(path, key), key, items)
    hints = _hints(cls)
    kwargs = {}
    for name, item in items.items():
        where = v.join(path, name)
        annotation = hints[name]
        if name not in value:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(annotation):
                    raise v.Invalid(where, f"expected a mapping with {[f.name for f in dataclasses.fields(annotation)]}")
                _check(item, annotation)(None, where)  # raises: the field is required
            kwargs[name] = _default(item)
        elif dataclasses.is_dataclass(annotation):
            kwargs[name] = from_dict(annotation, value[name], where)
        elif item.metadata["section"] is not None:
            kwargs[name] = v.section(item.metadata["section"], value[name], where)
        else:
            kwargs[name] = _check(item, annotation)(value[name], where)
    config = cls(**kwargs)
    if hasattr(config, "cross_check"):
        config.cross_check(path)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """The JSON form: nested dicts, fields marked ``omit_default`` left out while at their default."""
    out = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if item.metadata["omit_default"] and value == _default(item):
            continue
        out[item.name] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def defaults(cls: type) -> dict[str, Any]:
    """The JSON form of the fields that have defaults (those marked ``omit_default`` left out)."""
    out = {}
    for item in dataclasses.fields(cls):
        if item.metadata["omit_default"] or (item.default is dataclasses.MISSING
                                             and item.default_factory is dataclasses.MISSING):
            continue
        value = _default(item)
        out[item.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def cosmetic_keys(cls: type = CellConfig, prefix: str = "") -> tuple[str, ...]:
    """Dotted fields that do not change what a cell computes, only where its files go or how fast it gets there."""
    out: list[str] = []
    hints = _hints(cls)
    for item in dataclasses.fields(cls):
        if item.metadata["cosmetic"]:
            out.append(prefix + item.name)
        elif dataclasses.is_dataclass(hints[item.name]):
            out.extend(cosmetic_keys(hints[item.name], f"{prefix}{item.name}."))
    return tuple(out)


COSMETIC_KEYS = cosmetic_keys()


def paper_cell(task: Task, scheme: str, seed: int, grid: str, output_root: str) -> dict[str, Any]:
    """The JSON form of a cell with the paper's settings for ``task`` (its row) and the harness defaults, before
    the grid's own values are merged in. ``train.steps`` is None for an epoch-based task until the grid sets it."""
    return {
        **defaults(CellConfig), "task": task.name, "scheme": scheme, "seed": seed, "grid": grid,
        "output_root": output_root,
        "train": {**defaults(TrainConfig), "steps": task.train_steps, "batch_size": task.batch_size},
        "decode": {**defaults(DecodeConfig), "num_beams": task.beam_size,
                   "length_penalty": float(task.length_penalty_alpha), "max_new_tokens": task.max_target_length},
    }
