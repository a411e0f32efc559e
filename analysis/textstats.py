"""Summary length and repetition (the paper's Table 7), computed from generated text alone.

Definitions (the paper gives none beyond "% summaries with at least one repeated rare/content word"; these are ours):

* **words** — maximal runs of letters/digits after lower-casing; apostrophes split words (``don't`` → ``don``,
  ``t``), so tokenised (``it 's``) and untokenised (``it's``) text agree and punctuation never counts as a word.
  ``length`` = number of words, so ``it's`` counts as two (as in tokenised XSum references).
* **content word** — a word that contains at least one letter, is at least two characters long, and is not in
  :data:`STOP_WORDS` (English function words: articles, pronouns, auxiliaries, prepositions, conjunctions,
  determiners, common adverbs of degree/negation, and the contraction fragments ``s``/``t``/``ll``...). Pure numbers
  are not content words (a year repeated in a summary is not the degenerate repetition Table 7 is about).
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

STOP_WORDS = frozenset(
    """
    a about above after again against all almost also although always am among an and another any anyone anything
    are around as at away back be became because become been before being below between both but by can cannot could
    did do does doing done down during each either else enough even ever every few for from further get gets got had
    has have having he her here hers herself him himself his how however i if in into is it its itself just least
    less like made make many may me might more most much must my myself neither never no nor not now of off often on
    once one only onto or other others our ours ourselves out over own per perhaps quite rather really said same say
    says see seem seemed several shall she should since so some something still such than that the their theirs them
    themselves then there these they this those though through thus to too toward towards under until up upon us very
    was we well were what whatever when where whether which while who whom whose why will with within without would
    yet you your yours yourself yourselves
    s t d ll m re ve nt don doesn didn isn wasn aren weren wouldn couldn shouldn hasn haven hadn
    mr mrs ms dr
    """.split()
)


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (see the module docstring)."""
    return _WORD.findall(text.lower())


def is_content_word(word: str) -> bool:
    return len(word) >= 2 and any(ch.isalpha() for ch in word) and word not in STOP_WORDS


def summary_length(text: str) -> int:
    return len(words(text))


def repeated_content_words(text: str) -> list[str]:
    """Content words that occur at least twice in ``text``, most frequent first (useful when inspecting examples)."""
    counts = Counter(w for w in words(text) if is_content_word(w))
    return [w for w, c in counts.most_common() if c >= 2]


def repeats_content_word(text: str) -> bool:
    return bool(repeated_content_words(text))


def length_stats(texts: Iterable[str]) -> np.ndarray:
    """Per-example statistics ``[n, 1]`` whose mean is the average length in words."""
    return np.asarray([[summary_length(t)] for t in texts], dtype=float).reshape(-1, 1)


def repetition_stats(texts: Iterable[str]) -> np.ndarray:
    """Per-example statistics ``[n, 1]`` (0 or 100) whose mean is the repetition rate in percent."""
    return np.asarray([[100.0 if repeats_content_word(t) else 0.0] for t in texts], dtype=float).reshape(-1, 1)
