"""Summary length and repetition (the paper's Table 7), computed from generated text and its references.

Definitions:

* **words** — maximal runs of letters/digits after lower-casing; apostrophes split words (``don't`` → ``don``,
  ``t``), so tokenised (``it 's``) and untokenised (``it's``) text agree and punctuation never counts as a word.
  ``length`` = number of words, so ``it's`` counts as two (as in tokenised XSum references).
* **content word** — the paper's cut (Rothe et al. 2020, with Table 7: the 500 most common words are discarded and
  the rest count as rare or content words) with what the paper leaves open chosen by us (docs/paper-settings.md):
  an alphabetic word (``str.isalpha``, so numbers and mixed tokens like ``2nd`` never are) that is not among the
  :data:`COMMON_WORDS` (500) most frequent alphabetic words of a **reference corpus**. Ranking: count of each
  alphabetic word over the corpus, most frequent first, ties broken alphabetically (:func:`frequent_words`), so the
  cut at 500 is deterministic.
* **reference corpus** (ours: the paper does not say which corpus ranks the words) — the reference summaries of
  the evaluated examples (every reference of the run's predictions file; analysis reads nothing else: no training
  targets reach MLflow). The same corpus serves every
  system scored on the same test set and the Gold row, so all rows of Table 7 share one content-word list, and a
  system's own output never moves a word in or out of it (counting the predictions too would let a system that
  repeats a word push it into the common list and so hide the very repetition measured). A word the corpus never
  uses is rare, so a content word; on a corpus with fewer than 500 distinct words, every word it uses is common.
* **repeats** — a summary repeats if some content word occurs in it two or more times.
* **repetition rate** — percentage of summaries that repeat (0–100).

Both are per-example quantities, so their bootstrap intervals use :func:`analysis.stats.bootstrap_ci` directly.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import numpy as np

_WORD = re.compile(r"[^\W_]+")

COMMON_WORDS = 500  # the paper's cut: words outside the 500 most frequent are "rare or content words"


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (see the module docstring)."""
    return _WORD.findall(text.lower())


def frequent_words(corpus: Iterable[str], top_k: int = COMMON_WORDS) -> frozenset[str]:
    """The ``top_k`` most frequent alphabetic words of ``corpus`` (texts), ties broken alphabetically."""
    counts = Counter(w for text in corpus for w in words(text) if w.isalpha())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return frozenset(w for w, _ in ranked[:top_k])


def is_content_word(word: str, common: frozenset[str]) -> bool:
    """Alphabetic and not among ``common`` (:func:`frequent_words` of the reference corpus)."""
    return word.isalpha() and word not in common


def summary_length(text: str) -> int:
    return len(words(text))


def repeated_content_words(text: str, common: frozenset[str]) -> list[str]:
    """Content words that occur at least twice in ``text``, most frequent first (useful when inspecting examples)."""
    counts = Counter(w for w in words(text) if is_content_word(w, common))
    return [w for w, c in counts.most_common() if c >= 2]


def repeats_content_word(text: str, common: frozenset[str]) -> bool:
    return bool(repeated_content_words(text, common))


def length_stats(texts: Iterable[str]) -> np.ndarray:
    """Per-example statistics ``[n, 1]`` whose mean is the average length in words."""
    return np.asarray([[summary_length(t)] for t in texts], dtype=float).reshape(-1, 1)


def repetition_stats(texts: Iterable[str], reference_corpus: Iterable[str], top_k: int = COMMON_WORDS) -> np.ndarray:
    """Per-example statistics ``[n, 1]`` (0 or 100) whose mean is the repetition rate in percent; content words are
    the alphabetic words outside the ``top_k`` most frequent of ``reference_corpus`` (the task's references)."""
    common = frequent_words(reference_corpus, top_k)
    return np.asarray([[100.0 if repeats_content_word(t, common) else 0.0] for t in texts],
                      dtype=float).reshape(-1, 1)
