"""The one place that knows how the experiment harness names things in MLflow, and what the analysis calls them.

Everything else in ``analysis/`` works with the canonical names defined here (tasks, schemes, metrics, test sets,
variants), so when the harness renames a tag, a metric prefix or an artifact, this file is the only one to change.

Canonical names:

* **tasks** — :data:`TASKS` keys (``discofuse``, ``wikisplit``, ``wmt14_en_de``, ``wmt14_de_en``, ``gigaword``,
  ``cnn_dailymail``, ``xsum``).
* **schemes** — :data:`SCHEME_ORDER` (the paper's spelling: ``bertShare``, ``robertaShare``...).
* **metrics** — the keys of ``experiments.data.metrics.METRICS`` (``exact``, ``sari``, ``bleu_nltk``, ``bleu_uncased``,
  ``sacrebleu``, ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``) plus the text statistics ``length`` and
  ``repetition`` (:mod:`analysis.textstats`).
* **test sets** — ``test`` unless the harness logs several (WMT: ``newstest2014``, ``newstest2016``).
* **variants** — ``full`` (the scheme as defined) or an ablation's name (Table 6).
* **sizes** — a run's row key for its model and budget (:func:`run_size`): ``base`` (12 layers, 768 wide) and
  ``large`` (24 layers, 1024 wide) at the paper's budget; any other size is its ``L<layers>-H<hidden>``
  (experiments.config.model_size: ``L6-H384`` for MiniLM, ``L10-H1024`` for 10 of BERT-Large's layers), and a run trained
  for another number of updates or batch size than the paper's gets it appended (``base, 300 steps, batch 16``):
  a row of its own that no paper number is set beside.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from bertgen.schemes import SCHEMES as HARNESS_SCHEMES
from bertgen.schemes import WarmStart
from experiments.grid.identity import METRICS_FILE, PREDICTIONS_FILE
from experiments.config.cell import COSMETIC_KEYS
from experiments.config.evaluation import RELEASED, RELEASED_UNREPORTED_VARIANT, RELEASED_VARIANT
from experiments.config.model_size import PAPER_SIZES, SIZE_PATTERN, model_size
from experiments.config.tasks import TASKS as HARNESS_TASKS

# ---------------------------------------------------------------------------------------------------------------------
# Harness names (MLflow tags, params, metric keys, artifacts) — adapt these when the harness changes.

TAG_TASK = "task"
TAG_SCHEME = "scheme"
TAG_SEED = "seed"
TAG_CELL_ID = "cell_id"
TAG_GRID = "grid"
DATA_VARIANT_PARAM = "data.variant"
TAG_ROLE = "role"  # experiments.tracking.runs: cell, launch, evaluation
TAG_VARIANT = "variant"
# RELEASED_VARIANT (imported from experiments.config.evaluation): a released checkpoint evaluated without training;
# RELEASED_UNREPORTED_VARIANT: one the paper reports no number for (the WMT bert2bert_L-24: a row of its own that says
# why, never beside Table 4's 12-layer mBERT bert2bert).
RELEASED_VARIANTS = (RELEASED_VARIANT, RELEASED_UNREPORTED_VARIANT)
# Why no paper number is a released variant's (analysis.tables notes it under the table).
NO_PAPER_NUMBER = {entry.variant: entry.no_paper_number for entry in RELEASED.values() if entry.no_paper_number}

# Final test metrics are "test_<metric>" (experiments.grid.identity.TEST_PREFIX); dev metrics over steps "dev_<metric>". A
# second test set (WMT's newstest2016) is expected as "test_<testset>_<metric>" or "test_<metric>_<testset>" with a
# test-set name from KNOWN_TESTSETS; metric names themselves contain underscores ("bleu_uncased").
TEST_METRIC_PREFIXES = ("test_", "test/")
DEV_METRIC_PREFIXES = ("dev_", "dev/")
# train_cell logs the teacher-forced dev loss ("dev_loss") and keeps the checkpoint with the lowest; a dev score of
# the task's primary metric, if a harness ever logs one, is preferred for choosing between run groups.
DEV_LOSS = "loss"
KNOWN_TESTSETS = ("newstest2014", "newstest2016")

PREDICTIONS_ARTIFACT = PREDICTIONS_FILE
METRICS_ARTIFACT = METRICS_FILE
# predictions.jsonl fields
PRED_ID, PRED_SOURCE, PRED_REFERENCE, PRED_PREDICTION = "id", "source", "reference", "prediction"

# Params are the resolved cell config flattened with dots, values as text (JSON for non-strings; see
# experiments.tracking.runs.flatten). First present name wins.
DATA_FRACTION_PARAMS = ("data_fraction",)
SEED_PARAMS = ("seed",)
# experiments.config.model_size's L<layers>-H<hidden>, which every cell logs (CellConfig.size); a released model's
# evaluation logs "large". A run from before cells had a size has it derived from its checkpoint params.
SIZE_PARAMS = ("size", "model.size")
CHECKPOINT_PARAM_PREFIX, MODEL_PARAM_PREFIX = "checkpoints.", "model."
STEPS_PARAM, BATCH_PARAM = "train.steps", "train.batch_size"
# null | {"embeddings_only": true} | {"without_embeddings": true} | {"first_k": k} | {"layers": [...]}
INIT_LAYERS_PARAM = "init_layers"
VARIANT_TAGS = ("variant", "ablation")
# A cell's own name for the paper row it fills (experiments.config.cell.CellConfig.variant: Table 4's Transformer baselines).
VARIANT_PARAM = "variant"
# A cell with a vocabulary the harness trained (experiments.config.cell.CellConfig.vocab) is a variant of its scheme:
# Table 6's "+ task specific SentencePieces" (task_sentencepiece) and, with the warm-started parameters frozen first
# (train.freeze_warm_started_steps), "+ pre-training SentencePieces" (pretrain_sentencepiece); task_wordpiece else.
VOCAB_TRAIN_PARAM, FREEZE_PARAM = "vocab.train", "train.freeze_warm_started_steps"
# A cell that departs from the paper's random cross-attention (experiments.config.cell.CellConfig.cross_attention_init)
# is a variant of its scheme, "xattn_<init>" (joined to an init_layers variant with "+").
CROSS_ATTENTION_PARAM = "cross_attention_init"
CROSS_ATTENTION_VARIANT_PREFIX = "xattn_"
# Params that do not define a cell's sweep group: the seed (aggregated over) and experiments.config.cell.COSMETIC_KEYS
# (where/how fast a run goes). cell_id hashes the seed too, so it cannot group seeds; every other param does.
NON_GROUP_PARAMS = ("seed", *COSMETIC_KEYS)

# bertgen.schemes.parameter_counts(size="base") → {scheme: {name: count}}; names → Table 1's metrics (millions).
PARAMETER_COUNT_KEYS = {
    "total": "total_params_M", "embeddings": "embedding_params_M", "embedding": "embedding_params_M",
    "from_checkpoint": "initialized_from_checkpoint_M", "checkpoint": "initialized_from_checkpoint_M",
    "initialized": "initialized_from_checkpoint_M", "warm_started": "initialized_from_checkpoint_M",
    "random": "random_init_M", "random_init": "random_init_M",
}  # fmt: skip

# ---------------------------------------------------------------------------------------------------------------------
# Canonical vocabularies and aliases (case-insensitive; '-', '_', ' ' and '/' ignored when matching)

SCHEME_ORDER = tuple(HARNESS_SCHEMES)  # the scheme names in Table 1's order, as bertgen.schemes holds them


@dataclass(frozen=True)
class TaskInfo:
    name: str  # a key of experiments.config.tasks.TASKS
    label: str
    aliases: tuple[str, ...] = ()

    @property
    def primary_metric(self) -> str:
        """The harness task's (experiments.config.tasks): drawn in learning curves, used to pick between duplicate cells."""
        return HARNESS_TASKS[self.name].primary_metric


TASKS: dict[str, TaskInfo] = {
    "discofuse": TaskInfo("discofuse", "DiscoFuse", ("disco_fuse",)),
    "wikisplit": TaskInfo("wikisplit", "WikiSplit", ("wiki_split",)),
    "wmt14_en_de": TaskInfo("wmt14_en_de", "WMT14 En→De", ("wmt_en_de", "wmt14_ende", "wmt14-en-de", "en_de")),
    "wmt14_de_en": TaskInfo("wmt14_de_en", "WMT14 De→En", ("wmt_de_en", "wmt14_deen", "wmt14-de-en", "de_en")),
    "gigaword": TaskInfo("gigaword", "Gigaword", ()),
    "cnn_dailymail": TaskInfo("cnn_dailymail", "CNN/DailyMail", ("cnndm", "cnn_dm", "cnn/dailymail")),
    "xsum": TaskInfo("xsum", "BBC XSum", ("bbc_xsum",)),
    # The smoke grid's stand-ins: no paper table has their columns, so they never meet the paper's numbers.
    "synthetic_fusion": TaskInfo("synthetic_fusion", "synthetic fusion (not DiscoFuse)"),
    "synthetic_split": TaskInfo("synthetic_split", "synthetic split (not WikiSplit)"),
}

METRIC_ALIASES = {
    "exact_match": "exact", "em": "exact",
    "rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL", "rougel": "rougeL",
    "rougelsum": "rougeLsum",
}  # fmt: skip
TEXT_METRICS = ("length", "repetition")  # computed here from predictions, not logged by the harness
HIGHER_IS_BETTER_EXCEPT = frozenset(TEXT_METRICS)  # no "better" direction: not tested for significance

DEFAULT_TESTSET = "test"
# The harness' WMT "test" split IS newstest2014 (experiments.config.tasks), so a metric or paper row naming newstest2014
# means the default test set.
TESTSET_ALIASES = {"newstest2014": DEFAULT_TESTSET, "nt2014": DEFAULT_TESTSET, "newstest14": DEFAULT_TESTSET,
                   "nt2016": "newstest2016", "newstest16": "newstest2016"}  # fmt: skip

DEFAULT_VARIANT = "full"
# Table 6's "- embeddings from checkpoint" row (analysis.paper's name for it): init_layers {without_embeddings: true}
NO_CHECKPOINT_EMBEDDINGS = "no_checkpoint_embeddings"
# Variants the harness expresses as tags (Table 6's vocabulary ablations, if a grid ever runs them) → our names.
VARIANT_ALIASES = {
    "all": "full", "none": "full", "null": "full", "default": "full", "reference": "full",
    "no_embeddings": "no_checkpoint_embeddings", "random_embeddings": "no_checkpoint_embeddings",
    "task_spm": "task_sentencepiece", "pretraining_sentencepiece": "pretrain_sentencepiece",
}  # fmt: skip

DEFAULT_SIZE = "base"
# The paper's sizes by any of their names; every other size keeps its L<layers>-H<hidden> (never counted as base).
SIZE_ALIASES = {"12l": "base", "24l": "large", **{name.lower(): size for name, size in PAPER_SIZES.items()}}
UNKNOWN_SIZE = "size unknown"  # checkpoint params whose configs cannot be read here: never set beside the paper


def _key(text: str) -> str:
    return re.sub(r"[\s_\-/]+", "", str(text)).lower()


_SCHEME_LOOKUP = {_key(s): s for s in SCHEME_ORDER}
_TASK_LOOKUP = {_key(k): k for k in TASKS} | {_key(a): k for k, t in TASKS.items() for a in t.aliases}


def canonical_scheme(name: str) -> str:
    """``'BERTSHARE'`` → ``'bertShare'``; unknown names are kept as given (shown as extra rows, never dropped)."""
    return _SCHEME_LOOKUP.get(_key(name), str(name))


def canonical_task(name: str) -> str:
    return _TASK_LOOKUP.get(_key(name), str(name))


def canonical_metric(name: str) -> str:
    return METRIC_ALIASES.get(str(name).lower(), str(name))


def canonical_testset(name: str | None) -> str:
    if not name:
        return DEFAULT_TESTSET
    return TESTSET_ALIASES.get(str(name).lower(), str(name).lower())


def canonical_variant(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return DEFAULT_VARIANT
    text = str(value).strip()
    return VARIANT_ALIASES.get(text.lower(), text)


def _layer_ranges(layers: list[int]) -> str:
    """[9, 10, 13, 14, 15, 23] → '9,10,13-15,23' (the paper's own notation)."""
    parts, run = [], []
    for layer in sorted(layers):
        if run and layer == run[-1] + 1:
            run.append(layer)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
        run = [layer]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run)))
    return ",".join(parts)


def init_layers_variant(params: Mapping[str, Any], run_id: str = "?") -> str:
    """Variant name of the cell's ``init_layers``: ``full``, ``embeddings_only``, ``no_checkpoint_embeddings``
    (``without_embeddings``: Table 6's "- embeddings from checkpoint"), ``first_10``, ``layers_9,10,13-18``."""
    prefix = INIT_LAYERS_PARAM + "."
    sub = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix) and v is not None}
    if not sub:
        return DEFAULT_VARIANT
    if len(sub) != 1:
        raise ValueError(f"run {run_id}: params {sorted(prefix + k for k in sub)}: expected one init_layers option")
    (kind, raw), = sub.items()
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        value = raw
    if kind == "embeddings_only":
        return "embeddings_only" if value in (True, "true", "True") else DEFAULT_VARIANT
    if kind == "without_embeddings":
        return NO_CHECKPOINT_EMBEDDINGS if value in (True, "true", "True") else DEFAULT_VARIANT
    if kind == "first_k":
        return f"first_{int(value)}"
    if kind == "layers" and isinstance(value, list):
        return "layers_" + _layer_ranges([int(v) for v in value])
    raise ValueError(f"run {run_id}: param {prefix + kind}={raw!r}: expected embeddings_only, without_embeddings, "
                     "first_k or layers")


def vocabulary_variant(params: Mapping[str, Any]) -> str:
    """Variant name of a cell's trained vocabulary (:data:`VOCAB_TRAIN_PARAM`), ``full`` without one."""
    train = _first(params, (VOCAB_TRAIN_PARAM,))
    if train is None:
        return DEFAULT_VARIANT
    frozen = _first(params, (FREEZE_PARAM,))
    if str(train).strip('"') == "sentencepiece" and frozen is not None and float(frozen) > 0:
        return "pretrain_sentencepiece"
    return f"task_{str(train).strip(chr(34))}"


def cell_variant(params: Mapping[str, Any], run_id: str = "?") -> str:
    """A cell's variant from its params: its own ``variant`` if it names one, else its init_layers ablation and its
    trained vocabulary (joined with "+" when it has both)."""
    named = _first(params, (VARIANT_PARAM,))
    if named is not None:
        return canonical_variant(str(named).strip('"'))
    parts = [p for p in (init_layers_variant(params, run_id), vocabulary_variant(params)) if p != DEFAULT_VARIANT]
    return "+".join(parts) or DEFAULT_VARIANT


def group_key(params: Mapping[str, Any]) -> str:
    """Identity of a cell's sweep group: every param except the seed and the cosmetic ones, as sorted text."""
    kept = sorted((k, str(v)) for k, v in params.items() if k not in NON_GROUP_PARAMS and v is not None
                  and not (isinstance(v, float) and math.isnan(v)))
    return json.dumps(kept, separators=(",", ":"))


def group_params(group: str) -> dict[str, str]:
    """The params a run's sweep group (:attr:`RunFields.group`, ``task|scheme|variant|`` + :func:`group_key`) holds."""
    return dict(json.loads(group[group.index("|[") + 1:]))


# Section 5's GPT-2 tuning (analysis.gpt2_tuning) keys its rows by these params; a run without one had the
# default (experiments.config.cell.TrainConfig; train.optimizer is left out of the params at its default, Adam).
OPTIMIZER_PARAM, LR_PARAM, WARMUP_PARAM = "train.optimizer", "train.lr", "train.warmup_steps"


def canonical_size(value: Any) -> str:
    """``L12-H768`` → ``base``, ``L24-H1024`` → ``large``; another ``L<layers>-H<hidden>`` is kept as it is."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == "":
        return DEFAULT_SIZE
    text = str(value).strip()
    if SIZE_PATTERN.fullmatch(text):
        return SIZE_ALIASES.get(text.lower(), text)
    return SIZE_ALIASES.get(text.lower(), text.lower())


def _json_param(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return value


def _derived_size(params: Mapping[str, Any], scheme: str) -> str:
    """The size of a run that logged no ``size`` (runs from before cells had one), from its checkpoint, model and
    init_layers params (experiments.config.model_size); DEFAULT_SIZE when it logged no checkpoints at all."""
    checkpoints = {k[len(CHECKPOINT_PARAM_PREFIX):]: v for k, v in params.items()
                   if k.startswith(CHECKPOINT_PARAM_PREFIX) and v not in (None, "", "null")}
    if not checkpoints or scheme not in HARNESS_SCHEMES:
        return DEFAULT_SIZE if not checkpoints else UNKNOWN_SIZE
    model = {k[len(MODEL_PARAM_PREFIX):]: _json_param(v) for k, v in params.items() if k.startswith(MODEL_PARAM_PREFIX)}
    init = {k[len(INIT_LAYERS_PARAM) + 1:]: _json_param(v) for k, v in params.items()
            if k.startswith(INIT_LAYERS_PARAM + ".")}
    return model_size(scheme, checkpoints, model, init_layers=init or None) or UNKNOWN_SIZE


def paper_budget(task: str, size: str) -> tuple[int | None, int] | None:
    """(updates, batch size) the paper trains ``task`` with at a paper size (experiments.config.tasks; None updates: an
    epoch count, WMT), or None for a task or size the paper has no budget for (synthetic tasks, other sizes)."""
    harness_task = HARNESS_TASKS.get(task)
    if harness_task is None or harness_task.synthetic or size not in PAPER_SIZES.values():
        return None
    steps = harness_task.large_train_steps if size == "large" and harness_task.large_train_steps else \
        harness_task.train_steps
    return steps, harness_task.batch_size


def run_size(params: Mapping[str, Any], task: str, scheme: str) -> str:
    """A run's row key (module docstring, **sizes**): its size, with its budget appended where that is logged and
    is not the paper's for the task at that size."""
    logged = _first(params, SIZE_PARAMS)
    size = canonical_size(logged if logged is not None else _derived_size(params, scheme))
    budget = paper_budget(task, size)
    if budget is None:
        return size
    steps, batch = (_as_seed(_first(params, (name,))) for name in (STEPS_PARAM, BATCH_PARAM))
    paper_steps, paper_batch = budget
    if paper_steps is not None:  # steps that train only the new parameters come before the paper's (Table 6's
        paper_steps += _as_seed(_first(params, (FREEZE_PARAM,))) or 0  # "freeze 100k steps, then 300k")
    departs = [f"{steps} steps" if steps is not None and paper_steps is not None and steps != paper_steps else "",
               f"batch {batch}" if batch is not None and batch != paper_batch else ""]
    departs = [d for d in departs if d]
    return f"{size}, {', '.join(departs)}" if departs else size


def size_label(size: str) -> str:
    """How a row's size reads after its system: nothing for the paper's 12-layer base, ``(24L large)``, else the
    size itself (``(L6-H384)``, ``(12L base, 300 steps: not the paper's budget)``)."""
    if size == DEFAULT_SIZE:
        return ""
    head, _, budget = size.partition(", ")
    head = {"base": "12L base", "large": "24L large"}.get(head, head)
    return f" ({head}, {budget}: not the paper's budget)" if budget else f" ({head})"


# ---------------------------------------------------------------------------------------------------------------------
# Reading one run


@dataclass(frozen=True)
class RunFields:
    """What the analysis needs to know about one child run, in canonical names.

    ``group`` identifies the run's sweep group (all settings but the seed): the runs of one group are the seeds
    that a table cell aggregates.
    """

    task: str
    scheme: str
    seed: int | None
    cell_id: str
    group: str
    grid: str
    data_fraction: float
    variant: str
    size: str
    data_variant: str = "paper"  # experiments.config.cell.DataSources.variant: "full" departs from the paper's data


def _first(mapping: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = mapping.get(name)
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) != "":
            return value
    return None


def _as_fraction(value: Any, run_id: str) -> float:
    if value is None:
        return 1.0
    text = str(value).strip().rstrip("%")
    try:
        fraction = float(text)
    except ValueError:
        raise ValueError(f"run {run_id}: param data_fraction={value!r}: expected a number in (0, 1] or a percentage") from None
    if str(value).strip().endswith("%") or fraction > 1.0:
        fraction /= 100.0
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"run {run_id}: param data_fraction={value!r}: expected a number in (0, 1]")
    return fraction


def _as_seed(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def run_fields(run_id: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> RunFields | None:
    """Canonical fields of a child run; ``None`` for runs that are not grid cells (parents, ad-hoc runs) and for
    re-decodings of trained cells (experiments.recipes.evaluate; their cell's own run is the one the tables count). A
    released model's evaluation is a run of its paper scheme with variant ``released``."""
    task, scheme = tags.get(TAG_TASK), tags.get(TAG_SCHEME)
    if not task or not scheme:
        return None
    if tags.get(TAG_ROLE) == "evaluation" and tags.get(TAG_VARIANT) not in RELEASED_VARIANTS:
        return None
    tagged_variant = _first(tags, VARIANT_TAGS)
    variant = canonical_variant(tagged_variant) if tagged_variant else cell_variant(params, run_id)
    cross_attention = params.get(CROSS_ATTENTION_PARAM)
    harness_scheme = HARNESS_SCHEMES.get(canonical_scheme(scheme))
    warm_decoder = harness_scheme is not None and harness_scheme.encoder is not None and harness_scheme.decoder in (
        "bert", "roberta", "gpt2")  # elsewhere the init is a no-op (experiments.grid.load drops it from new cells)
    unset = cross_attention in (None, "", WarmStart.cross_attention) or (isinstance(cross_attention, float)
                                                                      and math.isnan(cross_attention))
    if warm_decoder and not unset:
        setting = CROSS_ATTENTION_VARIANT_PREFIX + str(cross_attention).strip('"')
        variant = setting if variant == DEFAULT_VARIANT else f"{variant}+{setting}"
    return RunFields(
        task=canonical_task(task),
        scheme=canonical_scheme(scheme),
        seed=_as_seed(_first(tags, (TAG_SEED,)) or _first(params, SEED_PARAMS)),
        cell_id=str(tags.get(TAG_CELL_ID) or run_id),
        group=f"{canonical_task(task)}|{canonical_scheme(scheme)}|{variant}|{group_key(params)}",
        grid=str(tags.get(TAG_GRID) or ""),
        data_fraction=_as_fraction(_first(params, DATA_FRACTION_PARAMS), run_id),
        variant=variant,
        size=run_size(params, canonical_task(task), canonical_scheme(scheme)),
        data_variant=str(_first(params, (DATA_VARIANT_PARAM,)) or "paper"),
    )


def split_metric_key(key: str, prefixes: tuple[str, ...]) -> tuple[str, str] | None:
    """``'test_bleu_uncased'`` → ``('test', 'bleu_uncased')``; ``'test_newstest2016_bleu_uncased'`` →
    ``('newstest2016', 'bleu_uncased')``; ``None`` when no prefix matches."""
    for prefix in prefixes:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        for testset in KNOWN_TESTSETS:
            for sep in ("_", "/", "."):
                if rest.startswith(testset + sep):
                    return canonical_testset(testset), canonical_metric(rest[len(testset) + 1:])
                if rest.endswith(sep + testset):
                    return canonical_testset(testset), canonical_metric(rest[: -len(testset) - 1])
        return DEFAULT_TESTSET, canonical_metric(rest)
    return None


def predictions_artifact_candidates(testset: str) -> tuple[str, ...]:
    """Artifact paths that may hold the predictions on ``testset``, tried in order."""
    if testset == DEFAULT_TESTSET:
        return (PREDICTIONS_ARTIFACT,)
    stem = PREDICTIONS_ARTIFACT.rsplit(".", 1)[0]
    return (f"{testset}/{PREDICTIONS_ARTIFACT}", f"{stem}_{testset}.jsonl", f"{stem}.{testset}.jsonl")
