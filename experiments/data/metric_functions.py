"""The evaluation metrics of the paper's six tasks as plain functions: ``exact_match``, ``sari``,
``corpus_bleu_nltk``, ``sacrebleu_score`` and ``rouge`` return the corpus score (and, where the score is a mean over
examples, the per-example values with ``per_example=True``); ``sari_components``, ``nltk_bleu_statistics`` and
``sacrebleu_statistics`` give the per-example sufficient statistics corpus scores are rebuilt from.

:mod:`experiments.data.metrics` is the harness's table of them (what a task is scored with, per-example rows for
bootstrap intervals). All scores are on 0–100.  ``references`` is always one list of reference strings per example (a
bare string is accepted as a single reference).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU
from rouge_score import rouge_scorer

WIKISPLIT_SEPARATOR = "<::::>"
"""Sentence separator of the WikiSplit TSVs.  SARI and NLTK-style BLEU drop it before scoring, as the published
WikiSplit protocols do (LaserTagger's SARI replaces `` <::::> `` by a space; google-research's wiki_split_bleu_eval
splits on it and re-joins the sentences with a space), so a model is scored the same whether or not it emits it."""

ReferenceLists = Sequence[Sequence[str] | str]


# ----------------------------------------------------------------------------------------------------------------------
# input checks


def reference_lists(references: ReferenceLists) -> list[list[str]]:
    lists = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError(f"references[{i}] is empty: expected at least one reference string per example")
        lists.append(refs)
    return lists


def check_lengths(predictions: Sequence[str], references: ReferenceLists, sources: Sequence[str] | None = None):
    if len(predictions) == 0:
        raise ValueError("predictions is empty: expected one prediction per example")
    if len(references) != len(predictions):
        raise ValueError(f"references has {len(references)} entries but predictions has {len(predictions)}")
    if sources is not None and len(sources) != len(predictions):
        raise ValueError(f"sources has {len(sources)} entries but predictions has {len(predictions)}")


def _whitespace_tokens(text: str, drop_tokens: Collection[str]) -> list[str]:
    return [token for token in text.split() if token not in drop_tokens]


# ----------------------------------------------------------------------------------------------------------------------
# Exact match


def _normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def exact_match(
    predictions: Sequence[str], references: ReferenceLists, per_example: bool = False
) -> float | list[float]:
    """Percentage of predictions equal to at least one reference (DiscoFuse/WikiSplit "Exact").

    Case-sensitive; runs of whitespace are collapsed and ends stripped first, so a detokeniser's stray space does not
    count as an error.
    """
    check_lengths(predictions, references)
    values = []
    for prediction, refs in zip(predictions, reference_lists(references)):
        normalized = _normalize_whitespace(prediction)
        values.append(100.0 if any(normalized == _normalize_whitespace(r) for r in refs) else 0.0)
    return values if per_example else float(np.mean(values))


# ----------------------------------------------------------------------------------------------------------------------
# SARI (Xu et al., 2016), as tensor2tensor's sari_hook computes it


@dataclass(frozen=True)
class SariComponents:
    """One example's SARI and its three operation scores, each averaged over n-gram orders (all on 0–1)."""

    sari: float
    keep: float
    add: float
    delete: float


def _ngram_set(tokens: Sequence[str], n: int) -> Counter:
    """The example's distinct n-grams, each with weight 1: SARI scores n-gram types, not occurrences."""
    return Counter({tuple(tokens[i : i + n]): 1 for i in range(len(tokens) - n + 1)})


def _f_beta(true_positives: float, selected: float, relevant: float, beta: float) -> float:
    """F-beta where an empty selection has precision 1 and an empty relevant set recall 1 (t2t's 0/0 = 1 convention:
    an output that correctly does nothing scores full marks, rather than 0 as in Xu et al.'s released script)."""
    precision = true_positives / selected if selected > 0 else 1.0
    if beta == 0:
        return precision
    recall = true_positives / relevant if relevant > 0 else 1.0
    if precision <= 0 or recall <= 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (b2 * precision + recall)


def _total(counts: Counter) -> float:
    return float(sum(counts.values()))


def sari_components(
    source: str,
    prediction: str,
    references: Sequence[str] | str,
    max_ngram: int = 4,
    deletion_beta: float = 0.0,
    drop_tokens: Collection[str] = (WIKISPLIT_SEPARATOR,),
    lowercase: bool = False,
) -> SariComponents:
    """SARI of one example: mean over n = 1..max_ngram of keep-F1, add-F1 and deletion precision, averaged.

    Tokenisation: whitespace split (the DiscoFuse and WikiSplit releases are already tokenised), case-sensitive
    unless ``lowercase``, tokens in ``drop_tokens`` removed.  With several references an n-gram's reference weight is
    the fraction r/R of (non-empty) references that contain it; keep and deletion use those fractional weights, the
    addition score uses plain membership in any reference.  ``deletion_beta=0`` is Xu et al.'s deletion *precision*;
    LaserTagger's published DiscoFuse/WikiSplit numbers used ``deletion_beta=1`` (deletion F1).
    """
    refs = [references] if isinstance(references, str) else list(references)

    def tokens(text: str) -> list[str]:
        return _whitespace_tokens(text.lower() if lowercase else text, drop_tokens)

    source_tokens, prediction_tokens = tokens(source), tokens(prediction)
    reference_tokens = [tokens(r) for r in refs]
    keep_scores, add_scores, delete_scores = [], [], []
    for n in range(1, max_ngram + 1):
        src = _ngram_set(source_tokens, n)
        pred = _ngram_set(prediction_tokens, n)
        per_reference = [s for s in (_ngram_set(t, n) for t in reference_tokens) if s]
        weighted_ref: Counter = Counter()
        for grams in per_reference:
            weighted_ref.update(grams)
        for gram in weighted_ref:
            weighted_ref[gram] /= len(per_reference)
        any_ref = Counter({gram: 1 for gram in weighted_ref})

        # keep: source n-grams the output retained, scored against those the references retained.
        kept_by_pred, kept_by_ref = src & pred, src & weighted_ref
        keep_scores.append(
            _f_beta(_total(kept_by_pred & kept_by_ref), _total(kept_by_pred), _total(kept_by_ref), beta=1)
        )
        # add: output n-grams not in the source, scored against reference n-grams not in the source.
        added_by_pred, added_by_ref = pred - src, any_ref - src
        add_scores.append(
            _f_beta(_total(added_by_pred & any_ref), _total(added_by_pred), _total(added_by_ref), beta=1)
        )
        # delete: source n-grams the output dropped, scored against those the references dropped (weight 1 - r/R).
        deleted_by_pred, deleted_by_ref = src - pred, src - weighted_ref
        delete_scores.append(
            _f_beta(
                _total(deleted_by_pred & deleted_by_ref), _total(deleted_by_pred), _total(deleted_by_ref),
                beta=deletion_beta,
            )
        )
    keep, add, delete = (sum(s) / max_ngram for s in (keep_scores, add_scores, delete_scores))
    return SariComponents(sari=(keep + add + delete) / 3.0, keep=keep, add=add, delete=delete)


def sari(
    sources: Sequence[str],
    predictions: Sequence[str],
    references: ReferenceLists,
    per_example: bool = False,
    **options,
) -> float | list[float]:
    """Corpus SARI on 0–100: the mean of per-example SARI (tensor2tensor / LaserTagger convention).

    ``options`` go to :func:`sari_components` (``max_ngram``, ``deletion_beta``, ``drop_tokens``, ``lowercase``).
    """
    check_lengths(predictions, references, sources)
    values = [
        100.0 * sari_components(s, p, r, **options).sari
        for s, p, r in zip(sources, predictions, reference_lists(references))
    ]
    return values if per_example else float(np.mean(values))


# ----------------------------------------------------------------------------------------------------------------------
# NLTK-style corpus BLEU (the paper's WikiSplit BLEU: NLTK 3.2.2 corpus_bleu, whitespace tokens, case-sensitive)

BLEU_MAX_ORDER = 4


def nltk_bleu_statistics(
    predictions: Sequence[str], references: ReferenceLists, drop_tokens: Collection[str] = (WIKISPLIT_SEPARATOR,)
) -> np.ndarray:
    """Per-example sufficient statistics of NLTK's corpus BLEU-4: [hyp_len, ref_len, matches_1..4, totals_1..4].

    As NLTK's ``modified_precision``: a hypothesis n-gram's count is clipped by its largest count in any one
    reference; an example's n-gram total is max(1, number of hypothesis n-grams); the reference length is the one
    closest to the hypothesis length, the shorter on a tie.
    """
    check_lengths(predictions, references)
    rows = np.zeros((len(predictions), 2 + 2 * BLEU_MAX_ORDER), dtype=np.int64)
    for i, (prediction, refs) in enumerate(zip(predictions, reference_lists(references))):
        hyp = _whitespace_tokens(prediction, drop_tokens)
        ref_tokens = [_whitespace_tokens(r, drop_tokens) for r in refs]
        rows[i, 0] = len(hyp)
        rows[i, 1] = min((len(r) for r in ref_tokens), key=lambda length: (abs(length - len(hyp)), length))
        for n in range(1, BLEU_MAX_ORDER + 1):
            hyp_counts = Counter(tuple(hyp[j : j + n]) for j in range(len(hyp) - n + 1))
            max_ref_counts: Counter = Counter()
            for r in ref_tokens:
                max_ref_counts |= Counter(tuple(r[j : j + n]) for j in range(len(r) - n + 1))
            rows[i, 1 + n] = sum(min(count, max_ref_counts[gram]) for gram, count in hyp_counts.items())
            rows[i, 1 + BLEU_MAX_ORDER + n] = max(1, sum(hyp_counts.values()))
    return rows


def nltk_bleu_from_statistics(rows: np.ndarray) -> float:
    """Corpus BLEU-4 (uniform weights, no smoothing, 0–100) from summed :func:`nltk_bleu_statistics` rows.

    Without smoothing NLTK returns 0 when there is no unigram match and an effectively-zero score when any higher
    order has no match; both are 0 here.
    """
    totals = np.asarray(rows, dtype=np.int64).reshape(-1, 2 + 2 * BLEU_MAX_ORDER).sum(axis=0)
    hyp_len, ref_len = int(totals[0]), int(totals[1])
    matches = totals[2 : 2 + BLEU_MAX_ORDER]
    counts = totals[2 + BLEU_MAX_ORDER :]
    if hyp_len == 0 or np.any(matches == 0):
        return 0.0
    log_precision = sum(math.log(m / c) for m, c in zip(matches, counts)) / BLEU_MAX_ORDER
    brevity_penalty = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return 100.0 * brevity_penalty * math.exp(log_precision)


def corpus_bleu_nltk(
    predictions: Sequence[str], references: ReferenceLists, drop_tokens: Collection[str] = (WIKISPLIT_SEPARATOR,)
) -> float:
    """NLTK-style corpus BLEU-4 on whitespace tokens, case-sensitive, unsmoothed, 0–100 (the paper's WikiSplit
    BLEU, which Botha et al. computed with NLTK 3.2.2's ``corpus_bleu``)."""
    return nltk_bleu_from_statistics(nltk_bleu_statistics(predictions, references, drop_tokens))


# ----------------------------------------------------------------------------------------------------------------------
# sacreBLEU (WMT)


def _sacrebleu(lowercase: bool, tokenize: str):
    # force: WMT outputs may legitimately end in " ." and the warning is noise in a sweep's logs.
    return BLEU(lowercase=lowercase, tokenize=tokenize, force=True)


def _reference_streams(references: ReferenceLists) -> list[list[str | None]]:
    """sacreBLEU wants one stream per reference position; examples with fewer references are padded with None."""
    lists = reference_lists(references)
    width = max(len(refs) for refs in lists)
    return [[refs[k] if k < len(refs) else None for refs in lists] for k in range(width)]


# Typographic quotes → ASCII, for the WMT BLEU the paper reports (``bleu_uncased``, see normalize_quotes).
QUOTE_NORMALIZATION: dict[str, str] = {
    # double quotes → "
    "\u201e": '"',  # „ DOUBLE LOW-9 QUOTATION MARK (German opening quote)
    "\u201c": '"',  # “ LEFT DOUBLE QUOTATION MARK (German closing, English opening)
    "\u201d": '"',  # ” RIGHT DOUBLE QUOTATION MARK
    "\u201f": '"',  # ‟ DOUBLE HIGH-REVERSED-9 QUOTATION MARK
    "\u00ab": '"',  # « LEFT-POINTING DOUBLE ANGLE QUOTATION MARK (guillemet)
    "\u00bb": '"',  # » RIGHT-POINTING DOUBLE ANGLE QUOTATION MARK
    # single quotes and the typographic apostrophe → '
    "\u201a": "'",  # ‚ SINGLE LOW-9 QUOTATION MARK (German nested opening quote)
    "\u2018": "'",  # ‘ LEFT SINGLE QUOTATION MARK
    "\u2019": "'",  # ’ RIGHT SINGLE QUOTATION MARK (also the typographic apostrophe: don’t)
    "\u201b": "'",  # ‛ SINGLE HIGH-REVERSED-9 QUOTATION MARK
    "\u2039": "'",  # ‹ SINGLE LEFT-POINTING ANGLE QUOTATION MARK
    "\u203a": "'",  # › SINGLE RIGHT-POINTING ANGLE QUOTATION MARK
    "\u00b4": "'",  # ´ ACUTE ACCENT, typed as an apostrophe (Moses: s/´/'/g)
}
_QUOTE_TABLE = str.maketrans(QUOTE_NORMALIZATION)


def normalize_quotes(text: str) -> str:
    """``text`` with every typographic quote of :data:`QUOTE_NORMALIZATION` replaced by its ASCII quote.

    Why: the paper normalises UTF-8 quotes before scoring WMT14 (its tensor2tensor pipeline, in the spirit of Moses'
    ``normalize-punctuation.perl``). newstest references mix „German“ quotes, “English” ones, «guillemets» and ASCII
    ``"`` from one document to the next, and a model trained on WMT's equally mixed training data writes whichever it
    saw most; BLEU tokenises each quote as its own token, so a translation that differs from its reference only in
    quote style loses n-gram matches for no difference in meaning.

    What: double quotes („ “ ” ‟ « ») become ``"``; single quotes (‚ ‘ ’ ‛ ‹ ›) and ´ become ``'``. Unlike Moses,
    which turns ‘ ’ ‚ into ``"`` except between letters (where they are apostrophes), single marks stay single here:
    a one-to-one character map keeps the rule simple and stateless, and ’ as an apostrophe (don’t) still meets the
    ASCII ``'`` that most references and models write. Spacing is not touched (« x » keeps its spaces): BLEU's
    tokenisers split quotes off as tokens either way. Applied alike to predictions and references.
    """
    return text.translate(_QUOTE_TABLE)


def sacrebleu_statistics(
    predictions: Sequence[str], references: ReferenceLists, lowercase: bool = False, tokenize: str = "13a",
    quotes: bool = False,
) -> np.ndarray:
    """Per-example sacreBLEU sufficient statistics [sys_len, ref_len, correct_1..4, total_1..4].

    Uses sacreBLEU's own segment-statistics routine (the one its paired bootstrap uses), so summed rows give
    exactly ``corpus_score``. ``quotes``: :func:`normalize_quotes` on predictions and references first (WMT).
    """
    check_lengths(predictions, references)
    if quotes:
        predictions = [normalize_quotes(p) for p in predictions]
        references = [[normalize_quotes(r) for r in refs] for refs in reference_lists(references)]
    bleu = _sacrebleu(lowercase, tokenize)
    rows = bleu._extract_corpus_statistics(list(predictions), _reference_streams(references))
    return np.asarray(rows, dtype=np.int64)


def sacrebleu_from_statistics(rows: np.ndarray, lowercase: bool = False, tokenize: str = "13a") -> float:
    summed = np.asarray(rows, dtype=np.int64).sum(axis=0).tolist()
    return float(_sacrebleu(lowercase, tokenize)._compute_score_from_stats(summed).score)


def sacrebleu_score(
    predictions: Sequence[str], references: ReferenceLists, lowercase: bool = False, tokenize: str = "13a",
    quotes: bool = False,
) -> float:
    """Corpus BLEU via sacreBLEU (default: cased, 13a tokenisation, the WMT standard; inputs should be detokenised).

    ``lowercase=True, tokenize="intl", quotes=True`` is the paper's "uncased BLEU-4" on WMT14 (the registry's
    ``bleu_uncased``): the TF official Transformer script (tensor2tensor's ``bleu_hook``) lowercases and tokenises
    as mteval-v14 ``--international-normalization``, which is what sacreBLEU's ``intl`` tokeniser implements, after
    the UTF-8 quotes are normalised (:func:`normalize_quotes`).
    """
    return sacrebleu_from_statistics(sacrebleu_statistics(predictions, references, lowercase, tokenize, quotes),
                                     lowercase, tokenize)


# ----------------------------------------------------------------------------------------------------------------------
# ROUGE (summarisation)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_sentences(text: str) -> str:
    """Newline-separated sentences for ROUGE-Lsum.

    Text that already has newlines (CNN/DailyMail highlights) is kept as is; otherwise (model outputs: wordpiece
    decoding loses newlines) it is split after ``.``, ``!`` or ``?`` followed by whitespace.  That is a simple stand-in
    for NLTK's Punkt splitter, which is not a dependency; it agrees with it on the tokenised CNN/DM style of text.
    """
    if "\n" in text:
        return text
    return "\n".join(_SENTENCE_END.split(text.strip()))


def rouge(
    predictions: Sequence[str],
    references: ReferenceLists,
    rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
    per_example: bool = False,
) -> dict[str, float] | dict[str, list[float]]:
    """ROUGE F1 ×100 via Google's ``rouge-score`` with Porter stemming (its default tokeniser lowercases and keeps
    only alphanumerics).  ``rougeLsum`` splits both sides into sentences with :func:`split_sentences`.  With several
    references the best-scoring one counts (``score_multi``)."""
    check_lengths(predictions, references)
    unknown = set(rouge_types) - set(ROUGE_TYPES)
    if unknown:
        raise ValueError(f"unknown ROUGE type(s) {sorted(unknown)}: expected some of {list(ROUGE_TYPES)}")

    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=True)
    values: dict[str, list[float]] = {t: [] for t in rouge_types}
    for prediction, refs in zip(predictions, reference_lists(references)):
        if "rougeLsum" in rouge_types:
            prediction, refs = split_sentences(prediction), [split_sentences(r) for r in refs]
        scores = scorer.score_multi(refs, prediction) if len(refs) > 1 else scorer.score(refs[0], prediction)
        for t in rouge_types:
            values[t].append(100.0 * scores[t].fmeasure)
    if per_example:
        return values
    return {t: float(np.mean(v)) for t, v in values.items()}
