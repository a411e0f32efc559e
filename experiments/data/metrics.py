"""The metric table the harness scores with, each metric with per-example statistics for bootstrap confidence
intervals, and the trivial baselines a task's scores are read against.

The metrics themselves are plain functions in :mod:`experiments.data.metric_functions`. Here, ``METRICS`` names
them; ``example_statistics(names, ...)`` gives, per metric, an array with one row per example, and
``score_from_statistics(name, rows)`` turns any subset/resample of those rows back into the corpus score.  For mean
metrics (Exact, SARI, ROUGE) a row is the example's score; for corpus BLEU a row holds the example's sufficient
statistics (lengths, clipped n-gram matches and totals), because corpus BLEU is not a mean of sentence scores.
``compute_metrics`` is the two steps together.

All scores are on 0–100.  ``references`` is always one list of reference strings per example (a bare string is
accepted as a single reference).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .metric_functions import (ROUGE_TYPES, ReferenceLists, check_lengths, exact_match, nltk_bleu_from_statistics,
                               nltk_bleu_statistics, reference_lists, rouge, sacrebleu_from_statistics,
                               sacrebleu_statistics, sari, split_sentences)


# ----------------------------------------------------------------------------------------------------------------------
# the trivial baselines


def lead_sentences(text: str, k: int) -> str:
    """The first ``k`` sentences of ``text`` (split as :func:`split_sentences` does), newline-separated."""
    return "\n".join(split_sentences(text).split("\n")[:k])


# The trivial systems a task's scores are read against (experiments.config.tasks.Task.baseline): source → prediction.
BASELINES = {
    "copy_source": lambda source: source,  # fusion and splitting: the target is mostly the source
    "lead_1": lambda source: lead_sentences(source, 1),  # headline and extreme summaries: the first sentence
    "lead_3": lambda source: lead_sentences(source, 3),  # CNN/DailyMail's classic Lead-3
}


def baseline_predictions(name: str, sources: Sequence[str]) -> list[str]:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}: expected one of {sorted(BASELINES)}")
    return [BASELINES[name](source) for source in sources]


# ----------------------------------------------------------------------------------------------------------------------
# registry used by the harness and the analysis


def mean_score(rows: np.ndarray) -> float:
    """Score of a mean-decomposable metric (one value per example)."""
    return float(np.mean(rows))


@dataclass(frozen=True)
class MetricSpec:
    """How to get per-example rows for a metric and how to turn rows back into the corpus score."""

    name: str
    description: str
    statistics: Callable[[Sequence[str], Sequence[str], ReferenceLists], np.ndarray]
    score: Callable[[np.ndarray], float]


def _column(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 1)


METRICS: dict[str, MetricSpec] = {
    "exact": MetricSpec(
        "exact", "Exact match, % (DiscoFuse, WikiSplit)",
        lambda s, p, r: _column(exact_match(p, r, per_example=True)), mean_score,
    ),
    "sari": MetricSpec(
        "sari", "SARI, Xu et al. 2016 as tensor2tensor computes it (DiscoFuse, WikiSplit)",
        lambda s, p, r: _column(sari(s, p, r, per_example=True)), mean_score,
    ),
    "bleu_nltk": MetricSpec(
        "bleu_nltk", "NLTK-style corpus BLEU-4, whitespace tokens, case-sensitive (WikiSplit)",
        lambda s, p, r: nltk_bleu_statistics(p, r), nltk_bleu_from_statistics,
    ),
    "sacrebleu": MetricSpec(
        "sacrebleu", "sacreBLEU corpus BLEU, cased, 13a tokenisation",
        lambda s, p, r: sacrebleu_statistics(p, r), sacrebleu_from_statistics,
    ),
    # WMT14 only (experiments.config.tasks): the paper's number, so its quote normalisation too. "sacrebleu" stays
    # sacreBLEU's standard score on the raw text (comparable with any other sacreBLEU 13a number, and WikiSplit's).
    "bleu_uncased": MetricSpec(
        "bleu_uncased", "the paper's uncased BLEU-4 (TF official Transformer script = sacreBLEU lowercase + intl, "
                        "UTF-8 quotes normalised)",
        lambda s, p, r: sacrebleu_statistics(p, r, lowercase=True, tokenize="intl", quotes=True),
        lambda rows: sacrebleu_from_statistics(rows, lowercase=True, tokenize="intl"),
    ),
    **{
        t: MetricSpec(t, f"{t} F1 ×100, stemmed (rouge-score)",
                      lambda s, p, r, t=t: _column(rouge(p, r, (t,), per_example=True)[t]), mean_score)
        for t in ROUGE_TYPES
    },
}


# Metrics computed on whitespace tokens: their inputs are put in one tokenisation first (see split_punctuation).
WHITESPACE_TOKEN_METRICS = frozenset({"exact", "sari", "bleu_nltk"})
_PUNCTUATION = re.compile(r"([^\w\s])")


def split_punctuation(text: str) -> str:
    """Put every punctuation character between spaces and collapse whitespace.

    DiscoFuse and WikiSplit references are released tokenised ("monday , they"), while a WordPiece or BPE decoder
    writes detokenised text ("monday, they"): compared token by token, a correct output would score as wrong.
    Splitting punctuation on every side (sources, predictions, references) makes both spellings one; on text that is
    already tokenised it only collapses whitespace.
    """
    return " ".join(_PUNCTUATION.sub(r" \1 ", text).split())


def _check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: expected names from {sorted(METRICS)}")


def example_statistics(
    names: Sequence[str], sources: Sequence[str], predictions: Sequence[str], references: ReferenceLists,
    lowercase: bool = False,
) -> dict[str, np.ndarray]:
    """Per metric, an array with one row per example (see the module docstring); resample rows for bootstrap CIs.

    Exact, SARI and NLTK BLEU see every text through ``split_punctuation``. ``lowercase`` compares case-insensitively:
    for a model whose vocabulary is uncased, whose outputs can never match a cased reference exactly.
    """
    _check_names(names)
    check_lengths(predictions, references, sources)
    references = reference_lists(references)
    if lowercase:
        sources, predictions = [s.lower() for s in sources], [p.lower() for p in predictions]
        references = [[r.lower() for r in refs] for refs in references]
    stats: dict[str, np.ndarray] = {}
    if any(name in WHITESPACE_TOKEN_METRICS for name in names):
        split_sources = [split_punctuation(s) for s in sources]
        split_predictions = [split_punctuation(p) for p in predictions]
        split_references = [[split_punctuation(r) for r in refs] for refs in references]
        for name in names:
            if name in WHITESPACE_TOKEN_METRICS:
                stats[name] = METRICS[name].statistics(split_sources, split_predictions, split_references)
    rouge_names = [n for n in names if n in ROUGE_TYPES]
    if rouge_names:
        # One rouge-score pass for all requested variants.  Splitting sentences for rougeLsum only turns spaces
        # into newlines, which rouge-score's tokeniser treats as spaces, so ROUGE-1/2/L are unaffected by it.
        for t, v in rouge(predictions, references, rouge_names, per_example=True).items():
            stats[t] = _column(v)
    for name in names:
        if name not in stats:
            stats[name] = METRICS[name].statistics(sources, predictions, references)
    return {name: stats[name] for name in names}


def score_from_statistics(name: str, rows: np.ndarray) -> float:
    _check_names([name])
    return METRICS[name].score(rows)


def compute_metrics(
    task_metric_names: Sequence[str],
    sources: Sequence[str],
    predictions: Sequence[str],
    references: ReferenceLists,
    lowercase: bool = False,
) -> dict[str, float]:
    """The corpus score of each named metric, e.g. ``compute_metrics(TASKS["wikisplit"].metrics, ...)``."""
    stats = example_statistics(task_metric_names, sources, predictions, references, lowercase)
    return {name: score_from_statistics(name, rows) for name, rows in stats.items()}
