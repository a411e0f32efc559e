"""Seed aggregation, bootstrap confidence intervals and paired significance over test examples.

Why a bootstrap over *examples* and not just the seed standard deviation: with 1–3 seeds the standard deviation says
little, and two schemes can differ by less than the noise of a finite test set. Resampling the test set answers "how
much would this number move on another test set of the same size".

A metric is given as per-example *rows* plus a ``score(rows) -> float`` that turns any subset or resample of rows
back into the corpus score — exactly the contract of ``experiments.data.metrics.example_statistics`` /
``score_from_statistics``: for mean metrics (Exact, SARI, ROUGE) a row is the example's value, for corpus BLEU it
holds the example's sufficient statistics, so a resample recomputes corpus BLEU (Koehn, 2004) rather than averaging
sentence BLEU.

Seeds: a cell's score is the mean over its seeds. The seeds share the test set, so one replicate draws one set of
example indices and averages the per-seed scores on it. A paired comparison draws the same indices for both systems.
The draws are generated from a fixed seed, so every number is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from experiments.data.metrics import mean_score

Score = Callable[[np.ndarray], float]

DEFAULT_N_BOOT = 1000
DEFAULT_ALPHA = 0.05
DEFAULT_BOOT_SEED = 12345
_CHUNK = 100  # replicates drawn at once; bounds the index matrix to 100 * n integers


@dataclass(frozen=True)
class SeedSummary:
    """Mean, sample standard deviation (ddof=1, NaN for one seed) and count of the per-seed test scores."""

    mean: float
    sd: float
    n: int


def summarize_seeds(values: Sequence[float]) -> SeedSummary:
    """Mean/sd/n over the finite values; all-missing gives NaN mean and n = 0."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return SeedSummary(float("nan"), float("nan"), 0)
    sd = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return SeedSummary(float(arr.mean()), sd, int(arr.size))


def _check_rows(per_seed: Sequence[np.ndarray], what: str = "bootstrap") -> list[np.ndarray]:
    if not per_seed:
        raise ValueError(f"{what}: no per-seed statistics given (expected at least one array with a row per example)")
    arrays = [np.asarray(s) for s in per_seed]
    arrays = [a[:, None] if a.ndim == 1 else a for a in arrays]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"{what}: seeds must be scored on the same test set, got row counts {sorted(lengths)}")
    if arrays[0].shape[0] == 0:
        raise ValueError(f"{what}: per-seed statistics have no examples (0 rows)")
    return arrays


def _index_chunks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Replicates' example indices (with replacement), ``[chunk, n]`` at a time; same seed → same sequence."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _CHUNK):
        yield rng.integers(0, n, size=(min(_CHUNK, n_boot - start), n))


def replicate_scores(
    per_seed: Sequence[np.ndarray], score: Score = mean_score, *, n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_BOOT_SEED,
) -> np.ndarray:
    """Seed-mean score of every bootstrap replicate, ``[n_boot]``."""
    arrays = _check_rows(per_seed)
    out = []
    for chunk in _index_chunks(arrays[0].shape[0], n_boot, seed):
        for idx in chunk:
            out.append(np.mean([score(a[idx]) for a in arrays]))
    return np.asarray(out, dtype=float)


def point_score(per_seed: Sequence[np.ndarray], score: Score = mean_score) -> float:
    """Seed-mean score on the full test set (the estimate the bootstrap interval surrounds)."""
    return float(np.mean([score(a) for a in _check_rows(per_seed)]))


@dataclass(frozen=True)
class Interval:
    """Percentile bootstrap interval of the seed-mean score, plus the full-sample point estimate."""

    point: float
    low: float
    high: float
    n_examples: int
    n_boot: int


def bootstrap_ci(
    per_seed: Sequence[np.ndarray],
    score: Score = mean_score,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    alpha: float = DEFAULT_ALPHA,
    seed: int = DEFAULT_BOOT_SEED,
) -> Interval:
    """Percentile interval (``1 - alpha``) of the seed-mean score under resampling of test examples."""
    arrays = _check_rows(per_seed)
    reps = replicate_scores(arrays, score, n_boot=n_boot, seed=seed)
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Interval(point_score(arrays, score), float(low), float(high), arrays[0].shape[0], n_boot)


@dataclass(frozen=True)
class PairedTest:
    """Paired bootstrap (Koehn, 2004) of ``a - b`` on a shared test set.

    ``p_value`` is the one-sided probability that ``a`` is *not* better than ``b``: the fraction of replicates in
    which ``score(a) - score(b) <= 0``. The caller orients the pair so that ``a`` is the observed better system.
    """

    delta: float
    p_value: float
    n_examples: int
    n_boot: int


def paired_bootstrap(
    a_per_seed: Sequence[np.ndarray],
    b_per_seed: Sequence[np.ndarray],
    score: Score = mean_score,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_BOOT_SEED,
) -> PairedTest:
    """Both systems' rows must be aligned (same examples, same order); the same indices resample both."""
    a_arrays = _check_rows(a_per_seed, "paired_bootstrap")
    b_arrays = _check_rows(b_per_seed, "paired_bootstrap")
    n = a_arrays[0].shape[0]
    if b_arrays[0].shape[0] != n:
        raise ValueError(
            f"paired_bootstrap: systems must be scored on the same examples, got {n} and {b_arrays[0].shape[0]} rows"
        )
    diff = replicate_scores(a_arrays, score, n_boot=n_boot, seed=seed) - replicate_scores(
        b_arrays, score, n_boot=n_boot, seed=seed
    )
    delta = point_score(a_arrays, score) - point_score(b_arrays, score)
    return PairedTest(delta, float(np.mean(diff <= 0)), n, n_boot)
