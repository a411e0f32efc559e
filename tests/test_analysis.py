"""analysis/: tables, statistics, plots and the results notebook, on a small synthetic MLflow store built here.

The store imitates what experiments.tracking.runs writes for cell runs (tags role/cell_id/task/scheme/seed/grid, params
flattened with dots, ``test_<metric>`` and ``dev_<metric>`` metrics, predictions.jsonl / metrics.json artifacts) with
predictions whose scores are known by construction, so table cells can be checked against exact numbers. Building a
sqlite MLflow store costs ~15 s, so one module-scoped store serves every test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import paper, schema, stats, textstats

REPO = Path(__file__).resolve().parents[1]
N_EXAMPLES = 100
N_BOOT = 300  # enough for stable 95 % intervals on 200 examples, fast enough for CI

# ---------------------------------------------------------------------------------------------------------------------
# synthetic store


def _fusion_examples(n_correct: int, seed: int, wrong: str = "went out") -> list[dict]:
    """DiscoFuse-like predictions: the first ``n_correct`` (after a seeded shuffle) copy the reference exactly."""
    rng = np.random.default_rng(seed)
    correct = set(rng.permutation(N_EXAMPLES)[:n_correct].tolist())
    rows = []
    for i in range(N_EXAMPLES):
        source = f"went home {i} . slept"
        reference = f"went home {i} and slept"
        rows.append(dict(id=f"ex{i:04d}", source=source, reference=reference,
                         prediction=reference if i in correct else f"{wrong} {i}"))
    return rows


XSUM_PREDICTIONS = [
    # (prediction, reference): lengths and repetitions known by hand
    ("the police said the police arrested a man", "a man was arrested in leeds on monday"),  # "police" twice
    ("a storm hit wales on friday", "storm damage closed roads across wales"),
    ("profits rose and profits fell", "the bank reported mixed results"),  # "profits" twice
    ("it was a good day", "the team won the cup final in cardiff"),  # only stop words + good/day
]

# WMT's second test set, logged as test_newstest2016_<metric> with predictions_newstest2016.jsonl (experiments.recipes.train)
NT2016_PREDICTIONS = [dict(id=f"v{i}", source=f"ein baum {i}", reference=f"a tree {i} grows there",
                           prediction=f"a tree {i} grows" if i % 2 else f"one tree {i} grows there") for i in range(20)]


def _log_run(client, experiment_id, parent_id, *, task, scheme, seed, params, metrics, predictions=None,
             dev=None, status="FINISHED", extra_files=None, tmp: Path) -> str:
    from mlflow.entities import Metric, Param

    cell_id = f"{task}-{scheme}-{seed}-{abs(hash(json.dumps(params, sort_keys=True))) % 10**6}"
    tags = {"role": "cell", "cell_id": cell_id, "task": task, "scheme": scheme, "seed": str(seed), "grid": "synthetic",
            "mlflow.parentRunId": parent_id}
    run = client.create_run(experiment_id, tags=tags, run_name=f"{task}/{scheme}/seed{seed}")
    run_id = run.info.run_id
    all_params = {"seed": str(seed), "output_root": f"/tmp/out/{run_id}", **params}
    metric_rows = [Metric(f"test_{k}", v, 0, 0) for k, v in metrics.items()]
    for step, value in (dev or []):  # train_cell logs the teacher-forced dev loss
        metric_rows.append(Metric("dev_loss", value, 0, step))
    client.log_batch(run_id, metrics=metric_rows, params=[Param(k, v) for k, v in all_params.items()])
    files = dict(extra_files or {})
    if predictions is not None:
        files["predictions.jsonl"] = "\n".join(json.dumps(p) for p in predictions) + "\n"
    files["metrics.json"] = json.dumps({f"test_{k}": v for k, v in metrics.items()})
    run_dir = tmp / run_id
    run_dir.mkdir()
    for name, text in files.items():
        (run_dir / name).write_text(text)
        client.log_artifact(run_id, str(run_dir / name))
    client.set_terminated(run_id, status=status)
    return run_id


def _new_store(root: Path, experiment: str):
    """An empty sqlite MLflow store under ``root`` with one experiment and a launch run: (uri, client,
    experiment_id, launch run id, a folder for artifact files)."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={"role": "launch"}).info.run_id
    files = root / "files"
    files.mkdir()
    return uri, client, experiment_id, parent, files


def _scores(predictions: list[dict], names: list[str]) -> dict[str, float]:
    from experiments.data import metrics as m

    return m.compute_metrics(names, [p["source"] for p in predictions], [p["prediction"] for p in predictions],
                             [p["reference"] for p in predictions])


def build_synthetic_store(root: Path) -> str:
    """A sqlite MLflow store with known runs; returns its tracking URI. Layout (all grid "synthetic"):

    - discofuse bertShare 100 %: seeds 1-3, Exact 60/62/64 % (60/62/64 of 100 exact copies)
    - discofuse rnd2rnd 100 %: seeds 1-2, Exact 20/21 %; plus a second group (other lr) with worse dev scores
    - discofuse gpt 10 %: one seed, logged scores only (no predictions: no CI)
    - discofuse bertShare first_10 (init_layers.first_k=10 of bert-large-cased: a 10-layer, 1024-wide model): one seed
      (Table 6)
    - discofuse bertShare and gpt without checkpoint embeddings (init_layers.without_embeddings=true): one seed each
      (Table 6's "- embeddings from checkpoint" row)
    - xsum bertShare: one seed, the four XSUM_PREDICTIONS
    - wmt14_en_de bertShare: one seed, newstest2014 and newstest2016 BLEU and predictions logged (the harness' names)
    - a FAILED discofuse run and the launch's parent run, which the analysis must ignore
    """
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("synthetic", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={"role": "launch"}, run_name="launch").info.run_id
    tmp = root / "files"
    tmp.mkdir()
    base = {"data_fraction": "1.0", "init_layers": "null", "train.lr": "0.05"}

    def fusion(scheme, seed, n_correct, params=base, dev=None, with_predictions=True, status="FINISHED"):
        preds = _fusion_examples(n_correct, seed)
        _log_run(client, experiment_id, parent, task="discofuse", scheme=scheme, seed=seed, params=params,
                 metrics=_scores(preds, ["exact", "sari"]), predictions=preds if with_predictions else None,
                 dev=dev, status=status, tmp=tmp)

    for seed, n_correct in ((1, 60), (2, 62), (3, 64)):
        fusion("bertShare", seed, n_correct, dev=[(100, 2.0), (200, 1.5)])
    for seed, n_correct in ((1, 20), (2, 21)):
        fusion("rnd2rnd", seed, n_correct, dev=[(100, 3.0), (200, 2.5)])
    fusion("rnd2rnd", 1, 90, params={**base, "train.lr": "0.5"}, dev=[(100, 3.5), (200, 2.9)])  # worse on dev
    fusion("gpt", 1, 50, params={**base, "data_fraction": "0.1"}, with_predictions=False)
    fusion("bertShare", 1, 55, params={"data_fraction": "1.0", "init_layers.first_k": "10", "train.lr": "0.05",
                                       "checkpoints.bert": "bert-large-cased"})
    for scheme, n_correct in (("bertShare", 45), ("gpt", 30)):
        fusion(scheme, 1, n_correct,
               params={"data_fraction": "1.0", "init_layers.without_embeddings": "true", "train.lr": "0.05"})
    fusion("bert2bert", 1, 99, status="FAILED")

    xsum = [dict(id=f"x{i}", source="document text", reference=r, prediction=p)
            for i, (p, r) in enumerate(XSUM_PREDICTIONS)]
    _log_run(client, experiment_id, parent, task="xsum", scheme="bertShare", seed=1, params=base,
             metrics=_scores(xsum, ["rouge1", "rouge2", "rougeL"]), predictions=xsum, tmp=tmp)
    wmt = [dict(id=f"w{i}", source=f"ein haus {i}", reference=f"a house {i} stands here", prediction=f"a house {i} stands")
           for i in range(20)]
    nt2016 = _scores(NT2016_PREDICTIONS, ["bleu_uncased"])["bleu_uncased"]
    _log_run(client, experiment_id, parent, task="wmt14_en_de", scheme="bertShare", seed=1, params=base,
             metrics={**_scores(wmt, ["bleu_uncased"]), "newstest2016_bleu_uncased": nt2016}, predictions=wmt,
             extra_files={"predictions_newstest2016.jsonl": "\n".join(json.dumps(p) for p in NT2016_PREDICTIONS) + "\n"},
             tmp=tmp)
    client.set_terminated(parent, status="FINISHED")
    return uri


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    return build_synthetic_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def store(store_uri):
    from analysis.runs import RunStore

    return RunStore(store_uri)


@pytest.fixture(scope="module")
def tables(store):
    from analysis.tables import build_table

    return {n: build_table(n, store, n_boot=N_BOOT) for n in range(1, 8)}


def cell(result, row: str, column: str) -> pd.Series:
    hit = result.cells[(result.cells.row == row) & (result.cells.column == column)]
    assert len(hit) == 1, f"expected one cell {row!r}/{column!r}, got {len(hit)}"
    return hit.iloc[0]


# ---------------------------------------------------------------------------------------------------------------------
# the paper's numbers


def test_paper_numbers_map_every_row_to_canonical_keys():
    numbers = paper.paper_numbers()
    assert set(numbers.table) == set(range(1, 8))
    # spot checks in canonical keys, including the inconsistencies SOURCES.md documents
    assert paper.paper_value(2, "robertaShare", "base", "full", "discofuse", "test", 0.1, "sari") == 86.9
    assert paper.paper_value(2, "bertShare", "base", "full", "discofuse", "test", 1.0, "sari") == 89.2
    assert paper.paper_value(6, "bertShare", "base", "full", "discofuse", "test", 1.0, "sari") == 89.3
    assert paper.paper_value(1, "rnd2bert", "base", "full", "parameters", "test", 1.0, "random_init_M") == 26
    assert paper.paper_value(4, "bert2rnd", "base", "full", "wmt14_en_de", "test", 1.0, "bleu_uncased") == 30.1
    assert paper.paper_value(4, "bert2rnd", "base", "custom_ende_vocab", "wmt14_de_en", "newstest2016", 1.0,
                             "bleu_uncased") == 40.2
    assert paper.paper_value(5, "robertaShare", "large", "full", "xsum", "test", 1.0, "rougeL") == 33.9
    # 10 of BERT-Large's layers: a 10-layer, 1024-wide model, keyed by that size (experiments.config.model_size; issue 20)
    assert paper.paper_value(6, "bertShare", "L10-H1024", "layers_9,10,13-18,23,24", "discofuse", "test", 1.0,
                             "sari") == 89.1
    assert paper.paper_value(6, "bertShare", "base", "layers_9,10,13-18,23,24", "discofuse", "test", 1.0,
                             "sari") is None
    assert paper.paper_value(7, "Gold", "base", "full", "xsum", "test", 1.0, "repetition") == 4.66
    assert paper.paper_value(3, "gpt", "base", "full", "wikisplit", "test", 1.0, "sari") == 61.1
    assert paper.paper_value(2, "gpt", "base", "full", "discofuse", "test", 0.5, "sari") is None
    sources = (paper.PAPER_DIR / "SOURCES.md").read_text()
    for inconsistency in ("86.9", "26M", "89.3"):
        assert inconsistency in sources


def test_paper_csvs_are_copies_of_the_shared_transcription(shared_dir):
    for name in [*paper.TABLE_FILES.values(), paper.TEXT_ABLATIONS_FILE]:
        assert (paper.PAPER_DIR / name).read_bytes() == (shared_dir / "paper" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------------------------------
# statistics and text statistics


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_examples():
    rng = np.random.default_rng(0)
    seeds = [rng.normal(50, 10, size=(400, 1)) + shift for shift in (-1.0, 0.0, 1.0)]
    interval = stats.bootstrap_ci(seeds, n_boot=500)
    assert interval.low < interval.point < interval.high
    assert interval.point == pytest.approx(np.mean([s.mean() for s in seeds]))
    narrow = stats.bootstrap_ci([np.tile(s, (4, 1)) for s in seeds], n_boot=500)
    assert (narrow.high - narrow.low) < 0.7 * (interval.high - interval.low)
    # same seed, same numbers
    assert stats.bootstrap_ci(seeds, n_boot=500) == interval
    summary = stats.summarize_seeds([60.0, 62.0, 64.0])
    assert (summary.mean, summary.sd, summary.n) == (62.0, 2.0, 3)
    assert np.isnan(stats.summarize_seeds([5.0]).sd) and stats.summarize_seeds([]).n == 0


def test_bootstrap_recomputes_corpus_bleu_from_sufficient_statistics():
    from experiments.data import metric_functions, metrics

    predictions = [f"the cat sat on mat number {i}" if i % 3 else f"a dog ran {i}" for i in range(60)]
    references = [[f"the cat sat on the mat number {i}"] for i in range(60)]
    rows = metrics.example_statistics(["bleu_nltk"], ["x"] * 60, predictions, references)["bleu_nltk"]
    score = lambda r: metrics.score_from_statistics("bleu_nltk", r)  # noqa: E731
    interval = stats.bootstrap_ci([rows], score, n_boot=200)
    assert interval.point == pytest.approx(metric_functions.corpus_bleu_nltk(predictions, references))
    assert interval.low < interval.point < interval.high


def test_paired_bootstrap_separates_a_clearly_better_system_from_an_equal_one():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=(300, 1)).astype(float) * 100
    better = np.where(rng.random((300, 1)) < 0.3, 100.0, a)  # a, with 30 % of the misses fixed
    clear = stats.paired_bootstrap([better], [a], n_boot=500)
    assert clear.delta > 0 and clear.p_value < 0.01
    same = stats.paired_bootstrap([a], [a.copy()], n_boot=500)
    assert same.delta == 0 and same.p_value == 1.0
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_bootstrap([a], [a[:10]])


def test_length_and_repetition_follow_the_documented_definition():
    assert textstats.words("It's the BBC's 2nd report, isn't it?") == ["it", "s", "the", "bbc", "s", "2nd", "report",
                                                                       "isn", "t", "it"]
    assert textstats.summary_length("A man, 45, was arrested.") == 5


def _letters(i: int) -> str:
    """The i-th purely alphabetic filler word (``qaa``, ``qab`` ...): 26**2 distinct words."""
    return "q" + chr(ord("a") + i // 26) + chr(ord("a") + i % 26)


def test_repetition_counts_words_outside_the_500_most_frequent_of_the_references():
    # A reference corpus built by hand: "police" 5 times; twelve everyday words and 487 filler words 3 times each;
    # "whom", "storm", "flood" and "2019" once. Ranked by count (ties alphabetically), the 500 most frequent
    # alphabetic words are "police", the twelve and the fillers: "whom", "storm" and "flood" are content words, and
    # "2019" never is (not alphabetic).
    everyday = "the said arrested him in and again a was we hit feared".split()
    frequent = everyday + [_letters(i) for i in range(487)]
    corpus = ["police " * 5, *(" ".join(frequent) for _ in range(3)), "whom storm flood 2019"]
    common = textstats.frequent_words(corpus)
    assert len(common) == 500 and {"police", *everyday} <= common and not {"whom", "storm", "flood"} & common
    assert textstats.frequent_words(["b a", "c"], top_k=2) == {"a", "b"}  # ties broken alphabetically
    summaries = [
        "the police said the police arrested him",  # old (stop-word) definition: repeats "police"; paper's: no
        "whom the storm hit was whom we feared",  # old: "whom" is a stop word, no repeat; paper's: repeats "whom"
        "in 2019 and 2019 again",  # numbers are never content words
        "a flood and a storm",  # content words, each once; "a" is frequent
        f"{frequent[20]} {frequent[20]}",  # a frequent word repeated
    ]
    assert [textstats.repeated_content_words(t, common) for t in summaries] == [[], ["whom"], [], [], []]
    assert textstats.repetition_stats(summaries, corpus).ravel().tolist() == [0.0, 100.0, 0.0, 0.0, 0.0]
    # the ranking comes from the reference corpus only: under 500 distinct words, all of its words are common and
    # only words it lacks are content words
    assert textstats.repetition_stats(["rain rain", "sun"], ["rain", "sun"]).ravel().tolist() == [0.0, 0.0]
    assert textstats.repetition_stats(["hail hail", "sun"], ["rain", "sun"]).ravel().tolist() == [100.0, 0.0]
    assert textstats.repetition_stats(["rain rain", "sun"], ["rain"], top_k=0).ravel().tolist() == [100.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------------
# harness naming (the one mapping place)


def test_schema_reads_the_harness_names():
    assert schema.split_metric_key("test_bleu_uncased", schema.TEST_METRIC_PREFIXES) == ("test", "bleu_uncased")
    assert schema.split_metric_key("test_newstest2016_bleu_uncased", schema.TEST_METRIC_PREFIXES) == (
        "newstest2016", "bleu_uncased")
    assert schema.split_metric_key("test_newstest2014_sacrebleu", schema.TEST_METRIC_PREFIXES) == ("test", "sacrebleu")
    assert schema.split_metric_key("dev_sari", schema.TEST_METRIC_PREFIXES) is None
    assert schema.init_layers_variant({"init_layers": "null"}) == "full"
    assert schema.init_layers_variant({"init_layers.embeddings_only": "true"}) == "embeddings_only"
    assert schema.init_layers_variant({"init_layers.without_embeddings": "true"}) == "no_checkpoint_embeddings"
    assert schema.init_layers_variant({"init_layers.layers": "[9, 10, 13, 14, 15, 16, 17, 18, 23, 24]"}) == (
        "layers_9,10,13-18,23,24")
    assert schema.run_fields("r", {"role": "launch"}, {}) is None
    a = schema.run_fields("a", {"task": "disco_fuse", "scheme": "BERTSHARE", "seed": "1"},
                          {"seed": "1", "data_fraction": "0.1", "train.lr": "0.05", "output_root": "/x"})
    b = schema.run_fields("b", {"task": "discofuse", "scheme": "bertShare", "seed": "2"},
                          {"seed": "2", "data_fraction": "0.1", "train.lr": "0.05", "output_root": "/y"})
    assert (a.task, a.scheme, a.data_fraction) == ("discofuse", "bertShare", 0.1)
    assert a.group == b.group  # seeds and cosmetic params do not split a group
    with pytest.raises(ValueError, match="data_fraction"):
        schema.run_fields("c", {"task": "discofuse", "scheme": "gpt"}, {"data_fraction": "lots"})


def test_analysis_never_imports_transformers():
    code = ("import sys, analysis.tables, analysis.plots, analysis.runs, analysis.paper, analysis.textstats; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=300)


# ---------------------------------------------------------------------------------------------------------------------
# tables from the synthetic store


def test_store_keeps_finished_cell_runs_only(store):
    assert len(store.runs) == 12  # 13 cell runs, one FAILED; the parent run is not a cell
    assert "bert2bert" not in set(store.runs.scheme)
    assert any("FAILED" in reason for reason in store.skipped)


def test_store_refuses_a_missing_store_or_experiment(store_uri, tmp_path):
    from analysis.runs import RunStore

    with pytest.raises(ValueError, match="no MLflow store at"):
        RunStore(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()  # and did not create one
    with pytest.raises(ValueError, match="no experiment named 'nope'"):
        RunStore(store_uri, experiment="nope")
    assert len(RunStore(store_uri, experiment="synthetic", grid="other").runs) == 0


def test_multi_seed_cell_aggregates_seeds_with_a_bootstrap_interval(tables):
    exact = cell(tables[2], "bertShare", "exact_100")
    assert (exact["mean"], exact["sd"], exact["n"]) == (pytest.approx(62.0), pytest.approx(2.0), 3)
    assert exact.paper == 63.9 and exact["diff"] == pytest.approx(-1.9)
    assert exact.ci_low < exact["mean"] < exact.ci_high and exact.n_examples == N_EXAMPLES
    assert exact.ci_point == pytest.approx(62.0)  # per-example rows reproduce the logged scores
    sari = cell(tables[2], "bertShare", "sari_100")
    assert sari.ci_low < sari["mean"] < sari.ci_high


def test_duplicate_groups_are_resolved_on_dev_not_test(tables):
    rnd = cell(tables[2], "rnd2rnd", "exact_100")
    assert (rnd["mean"], rnd["n"], rnd.groups_matching) == (pytest.approx(20.5), 2, 2)  # not the lr=0.5 run (90 %)
    assert any("rnd2rnd / Exact 100%: 2 run groups match; took the best dev loss" in n for n in tables[2].notes)


def test_significance_marks_the_clearly_worse_scheme(tables):
    best, worse = cell(tables[2], "bertShare", "sari_100"), cell(tables[2], "rnd2rnd", "sari_100")
    assert best.is_best and best.mark == ""
    assert worse.mark == "†" and worse.p_vs_best < 0.05
    from analysis.table_render import render

    markdown = render(tables[2], "markdown")
    assert "| rnd2rnd | 20.5 ± 0.7 [" in markdown and "(n=2)† | 58.3 | -37.8 |" in markdown
    assert "**62.0 ± 2.0 [" in markdown


def test_missing_cells_show_a_dash(tables):
    from analysis.table_render import wide

    frame = wide(tables[2])
    assert frame.loc["bert2bert", ("SARI 100%", "ours")] == "—"  # its only run FAILED
    assert frame.loc["bert2bert", ("SARI 100%", "paper")] == "89.3"
    assert frame.loc["bert2bert", ("SARI 100%", "Δ")] == "—"
    assert frame.loc["Geva et al. (2019)", ("SARI 10%", "paper")] == "—"
    gpt = cell(tables[2], "gpt", "sari_10")  # logged scores, no predictions: a mean without an interval
    assert gpt["n"] == 1 and np.isnan(gpt.ci_low) and gpt.paper == 82.9
    assert frame.loc["gpt", ("SARI 10%", "ours")] == f"{gpt['mean']:.1f} (n=1)"


def test_tables_4_6_7_lay_out_test_sets_ablations_and_text_statistics(tables):
    nt2016 = cell(tables[4], "bertShare", "ende_2016")  # the logged score, its interval from the predictions file
    assert nt2016["mean"] == pytest.approx(_scores(NT2016_PREDICTIONS, ["bleu_uncased"])["bleu_uncased"])
    assert nt2016.n_examples == len(NT2016_PREDICTIONS) and nt2016.ci_point == pytest.approx(nt2016["mean"])
    assert nt2016.ci_low < nt2016["mean"] < nt2016.ci_high and nt2016.paper == 34.4
    nt2014 = cell(tables[4], "bertShare", "ende_2014")
    assert nt2014.paper == 29.6 and np.isfinite(nt2014["mean"])
    assert np.isnan(cell(tables[4], "bertShare", "deen_2014")["mean"])
    first10 = cell(tables[6], "bertShare (L10-H1024): first 10 layers", "sari")  # its size (issue 20)
    assert first10.paper == 88.2 and first10["n"] == 1 and np.isfinite(first10["mean"])
    assert cell(tables[6], "bertShare", "sari")["n"] == 3
    for scheme, n_correct, paper_sari in (("bertShare", 45, 87.5), ("gpt", 30, 77.0)):  # "- embeddings" row
        noemb = cell(tables[6], f"{scheme}: − embeddings from checkpoint", "sari")
        assert noemb.paper == paper_sari and noemb["n"] == 1
        assert noemb["mean"] == pytest.approx(_scores(_fusion_examples(n_correct, 1), ["sari"])["sari"])
    lengths = [textstats.summary_length(p) for p, _ in XSUM_PREDICTIONS]
    assert cell(tables[7], "bertShare", "length")["mean"] == pytest.approx(np.mean(lengths))
    # Content words are those outside the 500 most frequent words of the references: the four references have fewer
    # distinct words than that, so every reference word is common (Gold repeats nothing), while "police" and
    # "profits", which no reference uses, are rare: two of the four predictions repeat one.
    references = [r for _, r in XSUM_PREDICTIONS]
    expected = textstats.repetition_stats([p for p, _ in XSUM_PREDICTIONS], references).mean()
    assert expected == 50.0 and cell(tables[7], "bertShare", "repetition")["mean"] == pytest.approx(expected)
    gold = cell(tables[7], "Gold", "length")
    assert gold["mean"] == pytest.approx(np.mean([textstats.summary_length(r) for r in references]))
    assert gold.paper == 24.61 and cell(tables[7], "Gold", "repetition")["mean"] == 0.0
    assert np.isnan(cell(tables[7], "bertShare", "human")["mean"])


def test_table1_counts_parameters_of_the_schemes(tables):
    totals = tables[1].cells[tables[1].cells.column == "total"].set_index("system")
    assert set(schema.SCHEME_ORDER) <= set(totals.index)
    for scheme in schema.SCHEME_ORDER:  # bertgen.schemes builds the models the paper counted (rounded to millions)
        assert abs(totals.loc[scheme, "mean"] - totals.loc[scheme, "paper"]) <= 1.5, scheme


def test_every_format_renders(tables, store_uri, tmp_path):
    from analysis.tables import main, render

    for number, result in tables.items():
        assert f"Table {number}" in render(result, "markdown")
        latex = render(result, "latex")
        assert latex.count(r"\begin{tabular}") == 1 and r"\bottomrule" in latex
        back = pd.read_csv(pd.io.common.StringIO(render(result, "csv")))
        assert len(back) == len(result.cells) and {"mean", "sd", "n", "ci_low", "ci_high", "paper", "diff"} <= set(back)
    assert r"$^\dagger$" in render(tables[2], "latex")
    main(["--tracking-uri", store_uri, "--table", "2,7", "--format", "csv", "--out", str(tmp_path), "--n-boot", "50"])
    written = pd.read_csv(tmp_path / "table2.csv")
    assert written.loc[(written.row == "bertShare") & (written.column == "exact_100"), "mean"].item() == pytest.approx(62)
    assert (tmp_path / "table7.csv").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# plots


def test_figures_show_the_table_numbers(store, tables, tmp_path):
    from analysis import plots

    figures = plots.make_figures(store, tables, n_boot=N_BOOT)
    assert set(figures) == {"bars_discofuse", "curves_discofuse", "bars_wmt14_en_de", "bars_xsum",
                            "discofuse_fraction", "xsum_length_repetition"}
    exact_axis = figures["bars_discofuse"].axes[0]
    labels = [t.get_text() for t in exact_axis.get_xticklabels()]
    ours_heights = [p.get_height() for p in exact_axis.patches[: len(labels)]]
    assert ours_heights[labels.index("bertShare")] == pytest.approx(62.0)
    curve_labels = [line.get_label() for line in figures["curves_discofuse"].axes[0].lines]
    assert curve_labels == ["rnd2rnd (n=2)", "bertShare (n=3)"]
    for name, fig in figures.items():
        formats = ("png", "pdf") if name == "discofuse_fraction" else ("png",)  # PDF is slow to write; one suffices
        for path in plots.save(fig, tmp_path, name, formats):
            assert path.stat().st_size > 1000, path


# ---------------------------------------------------------------------------------------------------------------------
# the notebook (CI executes it, so it cannot rot)


def execute_notebook(tracking_uri: str) -> list[dict]:
    import nbclient
    import nbformat

    notebook = nbformat.read(REPO / "notebooks" / "results.ipynb", as_version=4)
    env_before = {k: os.environ.get(k) for k in ("BERTGEN_TRACKING_URI", "BERTGEN_N_BOOT")}
    os.environ.update(BERTGEN_TRACKING_URI=tracking_uri, BERTGEN_N_BOOT="100")
    try:  # the kernel inherits this process' environment
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    finally:
        for key, value in env_before.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]


@pytest.mark.slow
def test_notebook_executes_against_the_synthetic_store(store_uri):
    outputs = execute_notebook(store_uri)
    markdown = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    for number in range(1, 8):
        assert f"**Table {number}.**" in markdown
    assert "**Table gpt2.** GPT-2 tuning" in markdown  # Section 5's, registered in the notebook too
    assert "**62.0 ± 2.0 [" in markdown
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 6


SMOKE_STORE = REPO / "outputs" / "mlflow.db"


@pytest.mark.slow
@pytest.mark.skipif(not SMOKE_STORE.is_file(), reason="no smoke-grid store (run `make smoke` first)")
def test_real_smoke_store_renders_every_table_and_the_notebook():
    from analysis.runs import RunStore
    from analysis.tables import build_table, render

    uri = f"sqlite:///{SMOKE_STORE}"
    smoke = RunStore(uri)
    assert len(smoke.runs) > 0, f"{uri} holds no finished cell runs"
    results = {number: build_table(number, smoke, n_boot=100) for number in range(1, 8)}
    for number, result in results.items():
        for fmt in ("markdown", "latex", "csv"):
            assert f"{number}" in render(result, fmt)
    filled = sum(int(np.isfinite(results[n].cells["mean"]).sum()) for n in range(2, 8))
    assert filled > 0, "no table cell was filled from the smoke runs"
    outputs = execute_notebook(uri)
    assert not [o for o in outputs if o.get("output_type") == "error"]


# ---------------------------------------------------------------------------------------------------------------------
# trivial baselines, cross-attention variants, synthetic tasks, the summary


def test_copy_source_row_scores_the_sources_of_a_run_with_a_ci_and_is_never_the_best(tables):
    from experiments.data import metrics as m

    examples = _fusion_examples(0, 1)
    sources = [e["source"] for e in examples]
    expected = m.compute_metrics(["exact", "sari"], sources, sources, [[e["reference"]] for e in examples])
    for column, metric in (("exact_100", "exact"), ("sari_100", "sari")):
        copy = cell(tables[2], "copy source", column)
        assert copy["mean"] == pytest.approx(expected[metric], abs=1e-6)
        assert copy["ci_low"] <= copy["mean"] <= copy["ci_high"] and not copy["is_best"]
        assert math.isnan(copy["paper"])
    assert "copy source" not in set(tables[4].cells.row)  # WMT has no trivial baseline


def test_cross_attention_variant_is_a_marked_row_and_synthetic_tasks_stay_out_of_the_paper_tables(tmp_path):
    from analysis.runs import RunStore
    from analysis.summary import render_summary
    from analysis.tables import build_table

    uri, client, experiment_id, parent, files = _new_store(tmp_path, "mini")
    base = {"data_fraction": "1.0", "init_layers": "null"}
    for task, scheme, params, n_correct in (
            ("discofuse", "bert2bert", base, 40),
            ("discofuse", "bert2bert", {**base, "cross_attention_init": "self_attention"}, 70),
            ("synthetic_fusion", "bert2bert", base, 90)):
        preds = _fusion_examples(n_correct, 3)
        run_id = _log_run(client, experiment_id, parent, task=task, scheme=scheme, seed=1, params=params,
                          metrics=_scores(preds, ["exact", "sari"]), predictions=preds, tmp=files,
                          dev=[(10, 1.0), (20, 0.5)])
        for step, gap in ((10, 0.0), (20, n_correct / 20)):
            client.log_metric(run_id, "dev_source_gap", gap, step=step)
    store = RunStore(uri)
    assert set(store.runs.variant) == {"full", "xattn_self_attention"}
    table2 = build_table(2, store, n_boot=N_BOOT)
    marked = "bert2bert: cross-attention init: self attention"
    assert cell(table2, marked, "exact_100")["mean"] == pytest.approx(70.0)
    assert cell(table2, "bert2bert", "exact_100")["mean"] == pytest.approx(40.0)
    assert math.isnan(cell(table2, marked, "exact_100")["paper"])
    # The synthetic run is in no paper table, only in the summary, under its own name beside its copy baseline.
    assert all(90.0 not in set(build_table(n, store, n_boot=N_BOOT).cells["mean"]) for n in range(2, 8))
    text = render_summary(store, n_boot=N_BOOT)
    assert "task synthetic_fusion (synthetic stand-in: not comparable with the paper)" in text
    assert "| bert2bert (cross-attention init: self attention) | 1 | 70.0 [" in text
    assert text.count("| copy source (no model) | 0 |") == 2
    assert "| bert2bert | 1 | 40.0 [" in text and " | 2.00 |" in text  # the last dev source gap
    from analysis.plots import make_figures

    figures = make_figures(store, n_boot=N_BOOT)
    assert {"input_use_discofuse", "input_use_synthetic_fusion", "curves_synthetic_fusion"} <= set(figures)
    assert "bars_synthetic_fusion" not in figures
    lines = figures["input_use_synthetic_fusion"].axes[0].lines
    assert [list(line.get_ydata()) for line in lines if line.get_label().startswith("bert2bert")] == [[0.0, 4.5]]


def test_transformer_baselines_sentencepiece_rows_and_10pct_embeddings_only_sit_beside_the_papers_numbers(tmp_path):
    """The cells issue 20 added, as their runs log them: Table 4's Transformer baselines (rnd2rnd cells naming their
    variant) in their own rows beside 28.1 / 23.7, never in rnd2rnd's; Table 6's SentencePiece rows from the cells'
    vocab and freeze settings beside 87.5 / 88.0; the 10 % embeddings-only run in Table 6's 10 % column; the custom
    En+De BERT rows say why they are empty."""
    from analysis.runs import RunStore
    from analysis.tables import build_table, render

    uri, client, experiment_id, parent, files = _new_store(tmp_path, "systems")
    base = {"data_fraction": "1.0", "init_layers": "null"}
    spm = {**base, "vocab.train": "sentencepiece", "vocab.size": "16000", "train.steps": "300000"}
    for task, scheme, params, score in (
            ("wmt14_en_de", "rnd2rnd", {**base, "variant": "transformer_wmt_vocab", "vocab.train": "wordpiece",
                                        "vocab.size": "32000", "size": "L6-H512"}, 27.0),
            ("wmt14_en_de", "rnd2rnd", {**base, "variant": "transformer_public_vocab", "size": "L12-H512"}, 22.0),
            ("wmt14_en_de", "rnd2rnd", base, 25.0),
            ("discofuse", "bertShare", base, 89.0),
            ("discofuse", "bertShare", spm, 86.0),
            # the paper's "freeze 100k steps, then 300k": 400k steps in all are its budget for that row
            ("discofuse", "bertShare", {**spm, "train.steps": "400000", "train.freeze_warm_started_steps": "100000"},
             87.0),
            ("discofuse", "bertShare", {**base, "data_fraction": "0.1", "init_layers.embeddings_only": "true"}, 80.0)):
        metric = "bleu_uncased" if task.startswith("wmt") else "sari"
        _log_run(client, experiment_id, parent, task=task, scheme=scheme, seed=1, params=params,
                 metrics={metric: score}, tmp=files)
    store = RunStore(uri)
    table4 = build_table(4, store, n_boot=N_BOOT)
    six = cell(table4, "rnd2rnd (L6-H512): " + paper.variant_label("transformer_wmt_vocab"), "ende_2014")
    assert (six["mean"], six["paper"]) == (27.0, 28.1)
    twelve = cell(table4, "rnd2rnd (L12-H512): " + paper.variant_label("transformer_public_vocab"), "ende_2014")
    assert (twelve["mean"], twelve["paper"]) == (22.0, 23.7)
    assert (cell(table4, "rnd2rnd", "ende_2014")["mean"], cell(table4, "rnd2rnd", "ende_2014")["paper"]) == (25.0, 26.0)
    custom = cell(table4, "bert2rnd (24L large): custom En+De BERT, 32k vocab", "deen_2016")
    assert custom["not_run"] == "n/a (never released)" and custom["paper"] == 41.1
    assert "| n/a (never released) | 41.1 |" in render(table4, "markdown")

    table6 = build_table(6, store, n_boot=N_BOOT)
    task_spm = cell(table6, "bertShare: + task-specific SentencePieces", "sari")
    pretrain = cell(table6, "bertShare: + pre-training SentencePieces", "sari")
    assert (task_spm["mean"], task_spm["paper"], pretrain["mean"], pretrain["paper"]) == (86.0, 87.5, 87.0, 88.0)
    assert cell(table6, "bertShare", "sari")["mean"] == 89.0
    emb10 = cell(table6, "bertShare: embeddings only from checkpoint", "sari_10")
    assert emb10["mean"] == 80.0 and math.isnan(emb10["paper"])
    assert math.isnan(cell(table6, "bertShare: embeddings only from checkpoint", "sari")["mean"])
    table7 = build_table(7, None)
    assert set(table7.cells[table7.cells.column == "human"].not_run) == {"n/a (human eval)"}


def test_gpt2_tuning_table_lays_out_optimizer_lr_and_warmup_beside_the_papers_default_and_tuned(tmp_path):
    """Section 5's GPT-2 tuning (analysis.gpt2_tuning, ``--table gpt2``): one row per setting the runs hold, the
    default first with the paper's default SARI, and a "best on dev" row (chosen on dev, not test) with its tuned SARI;
    other schemes, data fractions and the paper-only schemes behave as in the numbered tables."""
    from analysis.runs import RunStore
    from analysis.table_render import render, wide
    from analysis.tables import build_table, main, parse_tables

    uri, client, experiment_id, parent, files = _new_store(tmp_path, "tuning")
    default = {"data_fraction": "1.0", "init_layers": "null", "train.lr": "0.05", "train.warmup_steps": "40000"}
    adafactor = {**default, "train.optimizer": "adafactor", "train.lr": "5.0", "train.warmup_steps": "10000"}
    hot_adam = {**default, "train.lr": "0.25", "train.warmup_steps": "10000"}
    for scheme, params, seed, n_correct, dev_loss in (
            ("bert2gpt", default, 1, 40, 2.0), ("bert2gpt", default, 2, 42, 2.0),
            ("bert2gpt", adafactor, 1, 70, 1.0), ("bert2gpt", adafactor, 2, 72, 1.1),
            ("bert2gpt", hot_adam, 1, 90, 3.0),  # the best on test but the worst on dev: not the tuned pick
            ("bertShare", default, 1, 95, 0.5),  # not a GPT-2 scheme
            ("bert2gpt", {**adafactor, "data_fraction": "0.1"}, 1, 99, 0.1)):  # not the full training data
        preds = _fusion_examples(n_correct, seed)
        _log_run(client, experiment_id, parent, task="discofuse", scheme=scheme, seed=seed, params=params,
                 metrics=_scores(preds, ["exact", "sari"]), predictions=preds, dev=[(100, dev_loss + 1), (200, dev_loss)],
                 tmp=files)
    store = RunStore(uri)
    table = build_table("gpt2", store, n_boot=N_BOOT)
    assert list(dict.fromkeys(table.cells.row)) == [
        "gpt: adam, lr 0.05, warmup 40000 (default)", "gpt: best on dev (paper: tuned)",
        "rnd2gpt: adam, lr 0.05, warmup 40000 (default)", "rnd2gpt: best on dev (paper: tuned)",
        "bert2gpt: adam, lr 0.05, warmup 40000 (default)", "bert2gpt: adam, lr 0.25, warmup 10000",
        "bert2gpt: adafactor, lr 5, warmup 10000", "bert2gpt: best on dev (paper: tuned)"]
    base = cell(table, "bert2gpt: adam, lr 0.05, warmup 40000 (default)", "exact")
    assert (base["mean"], base["sd"], base["n"]) == (pytest.approx(41.0), pytest.approx(math.sqrt(2)), 2)
    assert base.ci_low < base["mean"] < base.ci_high and base.n_examples == N_EXAMPLES and math.isnan(base.paper)
    base_sari = cell(table, "bert2gpt: adam, lr 0.05, warmup 40000 (default)", "sari")
    assert base_sari.paper == 88.4 and base_sari["diff"] == pytest.approx(base_sari["mean"] - 88.4)
    ada = cell(table, "bert2gpt: adafactor, lr 5, warmup 10000", "exact")
    assert (ada["mean"], ada["n"]) == (pytest.approx(71.0), 2) and math.isnan(cell(table, ada.row, "sari").paper)
    tuned = cell(table, "bert2gpt: best on dev (paper: tuned)", "exact")
    assert (tuned["mean"], tuned["n"], tuned.groups_matching) == (pytest.approx(71.0), 2, 3)
    assert cell(table, tuned.row, "sari").paper == 88.8 and not tuned.is_best and tuned.mark == ""
    assert "bert2gpt: best on dev is adafactor, lr 5, warmup 10000" in table.notes
    hot = cell(table, "bert2gpt: adam, lr 0.25, warmup 10000", "exact")
    assert hot["mean"] == pytest.approx(90.0) and hot.is_best and base.mark == "†" and ada.mark == "†"
    for scheme, default_sari, tuned_sari in (("gpt", 88.0, 88.1), ("rnd2gpt", 86.5, 87.7)):  # paper only
        assert cell(table, f"{scheme}: adam, lr 0.05, warmup 40000 (default)", "sari").paper == default_sari
        paper_only = cell(table, f"{scheme}: best on dev (paper: tuned)", "sari")
        assert paper_only.paper == tuned_sari and np.isnan(paper_only["mean"])
    assert set(table.cells.system) == {"gpt", "rnd2gpt", "bert2gpt"}
    used = {r for ids in table.cells.run_ids if ids for r in ids.split(",")}
    assert len(used) == 5 and set(store.runs[store.runs.run_id.isin(used)].data_fraction) == {1.0}
    frame = wide(table)
    assert frame.loc["gpt: best on dev (paper: tuned)", ("SARI", "ours")] == "—"
    markdown = render(table, "markdown")
    assert markdown.startswith("**Table gpt2.** GPT-2 tuning (Section 5)") and "**90.0 ± " not in markdown
    assert "| bert2gpt: adam, lr 0.25, warmup 10000 | **90.0 [" in markdown
    assert r"\begin{tabular}" in render(table, "latex") and len(pd.read_csv(
        pd.io.common.StringIO(render(table, "csv")))) == len(table.cells) == 16
    # registered with the numbered tables: --table gpt2, and in "all"
    assert parse_tables("all") == [1, 2, 3, 4, 5, 6, 7, "gpt2"] and parse_tables("2,gpt2") == [2, "gpt2"]
    main(["--tracking-uri", uri, "--table", "gpt2", "--format", "csv", "--out", str(tmp_path / "out"), "--n-boot", "50"])
    written = pd.read_csv(tmp_path / "out" / "tablegpt2.csv")
    assert written.loc[(written.row == hot.row) & (written.column == "exact"), "mean"].item() == pytest.approx(90.0)
    without_store = build_table("gpt2")
    assert without_store.cells["mean"].isna().all() and without_store.cells.paper.notna().sum() == 6


def test_released_checkpoints_get_their_own_rows_re_decodings_are_not_extra_seeds_and_hub_data_is_footnoted(
        tmp_path):
    """experiments.recipes.evaluate's runs: a released model (variant "released", size large) is a row of its own beside the
    paper's 24-layer robertaShare; a trained cell decoded again (role evaluation of a cell) is no extra seed of its
    cell; a cell trained on the hub's full DiscoFuse (data.variant: full) is footnoted."""
    from analysis.runs import RunStore
    from analysis.tables import build_table

    uri, client, experiment_id, parent, files = _new_store(tmp_path, "evals")
    base = {"data_fraction": "1.0", "init_layers": "null"}
    trained = _log_run(client, experiment_id, parent, task="discofuse", scheme="bertShare", seed=1,
                       params={**base, "data.variant": "full"}, metrics=_scores(_fusion_examples(40, 1), ["exact"]),
                       predictions=_fusion_examples(40, 1), tmp=files)
    for extra_tags, params, n_correct in (
            ({"variant": "released", "scheme": "robertaShare"}, {**base, "size": "large"}, 80),
            ({"model_kind": "trained_cell", "scheme": "bertShare",
              "cell_id": client.get_run(trained).data.tags["cell_id"]}, base, 99)):
        run_id = _log_run(client, experiment_id, parent, task="discofuse", scheme=extra_tags["scheme"], seed=1,
                          params=params, metrics=_scores(_fusion_examples(n_correct, 2), ["exact"]),
                          predictions=_fusion_examples(n_correct, 2), tmp=files)
        for key, value in {"role": "evaluation", **extra_tags}.items():
            client.set_tag(run_id, key, value)
    store = RunStore(uri)
    assert sorted(zip(store.runs.scheme, store.runs.variant)) == [("bertShare", "full"), ("robertaShare", "released")]
    table2 = build_table(2, store, n_boot=N_BOOT)
    released = cell(table2, "robertaShare (24L large): Google's released checkpoint, evaluated here",
                    "exact_100")
    assert released["mean"] == pytest.approx(80.0) and math.isnan(released["paper"])
    assert cell(table2, "robertaShare (24L large)", "exact_100")["paper"] == pytest.approx(66.6)  # Table 2
    assert cell(table2, "bertShare", "exact_100")["mean"] == pytest.approx(40.0)  # the re-decoding's 99 is not in it
    assert any("hub's full data (data.variant: full)" in note and "balanced 4.5M" in note for note in table2.notes)


def test_released_wmt_models_are_no_row_of_the_papers_and_say_why(tmp_path):
    """google/bert2bert_L-24_wmt_* (two untied 24-layer stacks, a WMT WordPiece vocabulary) are not Table 4's 12-layer
    mBERT bert2bert nor any other row the paper reports: their row says no paper number is theirs and the notes say
    why; the roberta2roberta releases stay rows of the paper's 24-layer robertaShare."""
    from analysis.runs import RunStore
    from analysis.tables import build_table
    from experiments.config.evaluation import RELEASED

    entry = RELEASED["google/bert2bert_L-24_wmt_de_en"]
    uri, client, experiment_id, parent, files = _new_store(tmp_path, "wmt")
    run_id = _log_run(client, experiment_id, parent, task="wmt14_de_en", scheme=entry.scheme, seed=1,
                      params={"data_fraction": "1.0", "size": entry.size}, metrics={"bleu_uncased": 31.5}, tmp=files)
    for key, value in {"role": "evaluation", "variant": entry.variant}.items():
        client.set_tag(run_id, key, value)
    table4 = build_table(4, RunStore(uri), n_boot=N_BOOT)
    ours = table4.cells[table4.cells.run_ids == run_id]
    assert set(ours.column) == {"deen_2014"} and ours["mean"].item() == pytest.approx(31.5)
    label = ours.row.item()
    assert "no paper number" in label and math.isnan(ours.paper.item()) and math.isnan(ours["diff"].item())
    assert label != cell(table4, "bert2bert", "deen_2014").row  # the 12-layer mBERT row keeps its own number
    assert cell(table4, "bert2bert", "deen_2014")["paper"] == pytest.approx(32.7)
    (note,) = [n for n in table4.notes if n.startswith(label)]
    assert "bert2rnd and bertShare only" in note and "not mBERT's" in note
    assert RELEASED["google/roberta2roberta_L-24_discofuse"].variant == "released"


def test_the_summary_keeps_runs_of_other_settings_apart(tmp_path):
    """Two runs of one scheme that differ in a setting (300 and 1,000 updates) are two rows, not two seeds."""
    from analysis.runs import RunStore
    from analysis.summary import render_summary

    uri, client, experiment_id, parent, files = _new_store(tmp_path, "steps")
    for steps, n_correct in (("300", 40), ("1000", 70)):
        preds = _fusion_examples(n_correct, 3)
        _log_run(client, experiment_id, parent, task="synthetic_fusion", scheme="bert2bert", seed=1,
                 params={"data_fraction": "1.0", "init_layers": "null", "train.steps": steps},
                 metrics=_scores(preds, ["exact", "sari"]), predictions=preds, tmp=files)
    text = render_summary(RunStore(uri), n_boot=N_BOOT)
    assert "| bert2bert [train.steps=1000] | 1 | 70.0 [" in text and "| bert2bert [train.steps=300] | 1 | 40.0 [" in text


def test_precision_comparison_pairs_fp32_and_bf16_runs_with_the_seed_spread(tmp_path, capsys):
    """analysis.precision: per scheme and measure, the fp32 and bf16 means, their difference and the fp32 seed
    spread (the noise it is read against), and one curve per run in the figure."""
    from mlflow.entities import Metric

    from analysis.precision import comparison, curves_figure, main, precision_runs
    from analysis.runs import RunStore

    uri, client, experiment_id, parent, files = _new_store(tmp_path, "bf16")
    final_loss = {("False", 1): 1.0, ("False", 2): 1.2, ("True", 1): 1.05, ("True", 2): 1.25}
    for (bf16, seed), loss in final_loss.items():
        preds = _fusion_examples(40 + 10 * seed, seed)
        run_id = _log_run(client, experiment_id, parent, task="synthetic_fusion", scheme="bert2bert", seed=seed,
                          params={"data_fraction": "1.0", "init_layers": "null", "train.bf16": bf16},
                          metrics=_scores(preds, ["exact", "sari"]), predictions=preds, dev=[(100, loss - 0.1)],
                          tmp=files)
        client.log_batch(run_id, metrics=[Metric("loss", loss + 1.0, 0, 10), Metric("loss", loss, 0, 100)])
    store = RunStore(uri, experiment="bf16")
    runs = precision_runs(store)
    assert sorted(runs.precision) == ["bf16", "bf16", "fp32", "fp32"]
    table = comparison(store, runs).set_index("measure")
    train = table.loc["train_loss"]
    assert train.fp32 == pytest.approx(1.1) and train.bf16 == pytest.approx(1.15)
    assert train.difference == pytest.approx(0.05) and train.fp32_seed_spread == pytest.approx(0.2)
    assert table.loc["dev_loss"].fp32 == pytest.approx(1.0) and table.loc["sari"].seeds == 2
    fig = curves_figure(store, runs)
    assert len(fig.axes[0].lines) == 4
    main(["--tracking-uri", uri, "--experiment", "bf16", "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["--tracking-uri", uri, "--experiment", "Default"]) == 2
    assert "needs finished runs in both fp32 and bf16" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# the commands: one store for one URI, one refusal line


def test_an_analysis_command_reads_the_store_the_launcher_writes_for_the_same_uri(tmp_path, monkeypatch, capsys):
    """``--tracking-uri sqlite:///study/mlflow.db`` (relative, as the README prints it) and ``$MLFLOW_TRACKING_URI``
    mean for ``python -m analysis.*`` the store ``python -m experiments.launch`` writes for them
    (:func:`experiments.cli.tracking_uri`, which the launcher calls): the analysis used to ignore
    ``$MLFLOW_TRACKING_URI`` and read ``outputs/mlflow.db`` instead."""
    from experiments import cli
    from analysis import summary, tables
    from analysis.runs import RunStore

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BERTGEN_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    relative = "sqlite:///study/mlflow.db"
    launcher_uri = cli.tracking_uri(relative, "outputs")
    (tmp_path / "study").mkdir()
    uri, client, experiment_id, parent, files = _new_store(tmp_path / "study", "study")
    assert uri == launcher_uri
    preds = _fusion_examples(70, 1)
    _log_run(client, experiment_id, parent, task="synthetic_fusion", scheme="bert2bert", seed=1,
             params={"data_fraction": "1.0", "init_layers": "null"}, metrics=_scores(preds, ["exact", "sari"]),
             predictions=preds, tmp=files)

    assert RunStore(relative).tracking_uri == launcher_uri
    assert tables.main(["--tracking-uri", relative, "--table", "2", "--format", "csv", "--out", "tables",
                        "--n-boot", "20"]) == 0
    assert (tmp_path / "tables" / "table2.csv").is_file()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", relative)
    capsys.readouterr()
    assert summary.main(["--n-boot", "20"]) == 0
    assert "| bert2bert | 1 | 70.0 [" in capsys.readouterr().out


@pytest.mark.parametrize("command, args", [
    ("summary", ["--tracking-uri", "sqlite:///absent/mlflow.db"]),
    ("tables", ["--tracking-uri", "sqlite:///absent/mlflow.db", "--table", "2"]),
    ("plots", ["--tracking-uri", "sqlite:///absent/mlflow.db", "--out", "figures"]),
    ("precision", ["--tracking-uri", "sqlite:///absent/mlflow.db"]),
    ("coverage", ["absent.yaml"]),
])
def test_every_analysis_command_refuses_in_one_error_line_and_exit_status_2(command, args, tmp_path, monkeypatch,
                                                                              capsys):
    """A store that is not there (or a grid file that is not) is one ``error:`` line on stderr and exit status 2
    (experiments.cli.entry_point), never a traceback or argparse's usage text; nothing is created."""
    import importlib

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"analysis.{command}").main
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "absent" in err
    assert list(tmp_path.iterdir()) == []
