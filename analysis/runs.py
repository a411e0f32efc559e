"""Runs from an MLflow tracking store, in the canonical names of :mod:`analysis.schema`.

:class:`RunStore` is the analysis' only door to MLflow. It reads every finished child run once
(``mlflow.search_runs``), keeps one row per run in :attr:`RunStore.runs` and one row per final test score in
:attr:`RunStore.scores`, and fetches artifacts (predictions, per-example metric rows, dev curves) lazily with an
in-memory cache, because per-example ROUGE on a large test set is the slowest thing the analysis does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from experiments import cli
from experiments.config.cell import DEFAULT_OUTPUT_ROOT
from experiments.config.validate import Refusal
from experiments.tracking.store import sqlite_path

from . import schema, textstats

RUN_COLUMNS = ("run_id", "experiment_id", "status", "start_time", "artifact_uri", "task", "scheme", "seed",
               "cell_id", "group", "grid", "data_fraction", "variant", "size", "data_variant")  # fmt: skip


TRACKING_URI_ENV = "BERTGEN_TRACKING_URI"  # the analysis' own override (the notebook reads it too)


class StoreUnavailable(Refusal, ValueError):
    """No store at the tracking URI, or no experiment of that name in it: every analysis command refuses."""


def resolve_tracking_uri(given: str | None = None) -> str:
    """The store the analysis reads: ``given`` (``--tracking-uri``), else ``$BERTGEN_TRACKING_URI``, else what the
    launcher writes to with no URI of its own (``$MLFLOW_TRACKING_URI``, else ``outputs/mlflow.db``), resolved by
    :func:`experiments.cli.tracking_uri` so that one URI (a relative ``sqlite:///`` path included) is one store for
    both."""
    return cli.tracking_uri(given or os.environ.get(TRACKING_URI_ENV), DEFAULT_OUTPUT_ROOT)


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    """``--tracking-uri`` as every analysis command takes it (read by :func:`resolve_tracking_uri`)."""
    cli.add_tracking_uri(parser, f"MLflow tracking URI (default: ${TRACKING_URI_ENV}, else $MLFLOW_TRACKING_URI, else "
                                 f"sqlite:///{DEFAULT_OUTPUT_ROOT}/mlflow.db, as the launcher)")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}/" if isinstance(value, dict) else f"{prefix}{key}"))
        return out
    return {prefix.rstrip("/"): obj}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RunStore:
    """Finished grid-cell runs of one tracking store (optionally one experiment, one grid)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None, grid: str | None = None):
        # One progress bar per downloaded predictions file would drown the tables' output.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow  # slow import (seconds): only when a store is actually opened

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        db = sqlite_path(self.tracking_uri)
        if db is not None:
            if not db.is_file():  # MLflow would silently create an empty store there
                raise StoreUnavailable(f"tracking URI {self.tracking_uri}: no MLflow store at {db} (run `make smoke`, or "
                                       f"pass --tracking-uri / set ${TRACKING_URI_ENV})")
        self.experiment = experiment
        self.grid = grid
        self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self._artifact_cache: dict[tuple[str, str], Path | None] = {}
        self._predictions_cache: dict[tuple[str, str], list[dict] | None] = {}
        self._rows_cache: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self.skipped: list[str] = []  # why runs were left out, for the tables' notes
        self.runs, self.scores, self.dev_final = self._load()

    # -- loading --------------------------------------------------------------------------------------------------

    def _experiment_ids(self) -> list[str]:
        if self.experiment is not None:
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                names = [e.name for e in self._client.search_experiments()]
                raise StoreUnavailable(f"tracking store {self.tracking_uri}: no experiment named {self.experiment!r} (have {names})")
            return [found.experiment_id]
        return [e.experiment_id for e in self._client.search_experiments()]

    def _load(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        import mlflow

        ids = self._experiment_ids()
        # mlflow.search_runs only reads the process-wide tracking URI: point it at ours for the call, then restore.
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            raw = mlflow.search_runs(experiment_ids=ids, output_format="pandas") if ids else pd.DataFrame()
        finally:
            mlflow.set_tracking_uri(previous)
        runs, scores, dev = [], [], []
        for record in raw.to_dict("records"):
            run_id = record["run_id"]
            # search_runs gives every run every column: a param/tag the run never logged is NaN/None.
            tags = {k[5:]: v for k, v in record.items() if k.startswith("tags.") and isinstance(v, str)}
            params = {k[7:]: v for k, v in record.items() if k.startswith("params.") and isinstance(v, str)}
            fields = schema.run_fields(run_id, tags, params)
            if fields is None:
                continue
            if record.get("status") != "FINISHED":
                self.skipped.append(f"run {run_id} ({fields.task}/{fields.scheme}) has status {record.get('status')}")
                continue
            if self.grid is not None and fields.grid != self.grid:
                continue
            start = record.get("start_time")
            runs.append(dict(run_id=run_id, experiment_id=record.get("experiment_id"), status=record.get("status"),
                             start_time=start, artifact_uri=record.get("artifact_uri"), **fields.__dict__))
            for key, value in record.items():
                if not key.startswith("metrics.") or not _finite(value):
                    continue
                name = key[8:]
                if (parsed := schema.split_metric_key(name, schema.TEST_METRIC_PREFIXES)) is not None:
                    scores.append(dict(run_id=run_id, testset=parsed[0], metric=parsed[1], value=float(value)))
                elif (parsed := schema.split_metric_key(name, schema.DEV_METRIC_PREFIXES)) is not None:
                    dev.append(dict(run_id=run_id, testset=parsed[0], metric=parsed[1], key=name, value=float(value)))
        runs_df = pd.DataFrame.from_records(runs, columns=list(RUN_COLUMNS))
        scores_df = pd.DataFrame.from_records(scores, columns=["run_id", "testset", "metric", "value"])
        dev_df = pd.DataFrame.from_records(dev, columns=["run_id", "testset", "metric", "key", "value"])
        missing = sorted(set(runs_df.run_id) - set(scores_df.run_id))
        if missing:  # no logged test metrics: fall back to the run's metrics.json artifact
            scores_df = pd.concat([scores_df, self._scores_from_metrics_json(missing)], ignore_index=True)
        return runs_df, scores_df, dev_df

    def _scores_from_metrics_json(self, run_ids: Iterable[str]) -> pd.DataFrame:
        records = []
        for run_id in run_ids:
            path = self.artifact(run_id, schema.METRICS_ARTIFACT)
            if path is None:
                continue
            try:
                flat = _flatten(json.loads(path.read_text()))
            except json.JSONDecodeError as err:
                raise ValueError(f"run {run_id}: {schema.METRICS_ARTIFACT} is not valid JSON ({err})") from None
            parsed = [(schema.split_metric_key(k, schema.TEST_METRIC_PREFIXES), v) for k, v in flat.items()]
            if not any(p for p, _ in parsed):  # a bare {"sari": 88.1} is the test scores themselves
                parsed = [((schema.DEFAULT_TESTSET, schema.canonical_metric(k.rsplit("/", 1)[-1])), v) for k, v in flat.items()]
            records += [dict(run_id=run_id, testset=p[0], metric=p[1], value=float(v)) for p, v in parsed if p and _finite(v)]
        return pd.DataFrame.from_records(records, columns=["run_id", "testset", "metric", "value"])

    @cached_property
    def _run_keys(self) -> frozenset[tuple]:
        return frozenset(self.runs[["task", "scheme", "size", "variant"]].itertuples(index=False, name=None))

    def has_runs(self, task: str, scheme: str, size: str, variant: str) -> bool:
        """Cheap pre-check before filtering :attr:`runs` (most table cells have no run)."""
        return (task, scheme, size, variant) in self._run_keys

    # -- artifacts ------------------------------------------------------------------------------------------------

    @cached_property
    def _download_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="bertgen-analysis-"))

    def artifact(self, run_id: str, path: str) -> Path | None:
        """Local copy of one artifact file, or ``None`` if the run has no such artifact."""
        key = (run_id, path)
        if key not in self._artifact_cache:
            parent = str(Path(path).parent) if Path(path).parent != Path(".") else None
            listed = {a.path for a in self._client.list_artifacts(run_id, parent)}
            if path not in listed:
                self._artifact_cache[key] = None
            else:
                local = self._client.download_artifacts(run_id, path, str(self._download_dir / run_id))
                self._artifact_cache[key] = Path(local)
        return self._artifact_cache[key]

    def predictions(self, run_id: str, testset: str = schema.DEFAULT_TESTSET) -> list[dict] | None:
        """The run's predictions on ``testset`` as dicts with canonical keys, or ``None`` if it logged none."""
        key = (run_id, testset)
        if key not in self._predictions_cache:
            self._predictions_cache[key] = None
            for candidate in schema.predictions_artifact_candidates(testset):
                path = self.artifact(run_id, candidate)
                if path is not None:
                    self._predictions_cache[key] = read_predictions(path, f"run {run_id} artifact {candidate}")
                    break
        return self._predictions_cache[key]

    def example_rows(self, run_id: str, testset: str, metrics: Sequence[str]) -> dict[str, np.ndarray] | None:
        """``{"ids": ..., metric: rows, ...}`` with rows ordered by example id; ``None`` without predictions."""
        preds = self.predictions(run_id, testset)
        if preds is None:
            return None
        cached = self._rows_cache.setdefault((run_id, testset), {})
        todo = [m for m in metrics if m not in cached]
        if todo or "ids" not in cached:
            cached.update(example_statistics(preds, todo))
        return {m: cached[m] for m in ["ids", *metrics]}

    def gold_rows(self, run_id: str, testset: str, metrics: Sequence[str]) -> dict[str, np.ndarray] | None:
        """Text statistics of the references (Table 7's "Gold" row), from any run's predictions file."""
        preds = self.predictions(run_id, testset)
        if preds is None:
            return None
        ordered = sorted(preds, key=lambda p: p["id"])
        texts = [r if isinstance(r, str) else r[0] for r in (p["reference"] for p in ordered)]
        out = {"ids": np.asarray([p["id"] for p in ordered], dtype=object)}
        for metric in metrics:
            if metric not in schema.TEXT_METRICS:
                raise ValueError(f"gold_rows: metric {metric!r} needs a prediction; expected one of {schema.TEXT_METRICS}")
            out[metric] = _text_statistic(metric, texts, _reference_corpus(ordered))
        return out

    def baseline_rows(self, run_id: str, testset: str, metrics: Sequence[str],
                      baseline: str) -> dict[str, np.ndarray] | None:
        """Per-example rows of a trivial baseline (experiments.data.metrics.BASELINES) on a run's test examples: its
        predictions file keeps every source, so the baseline is scored on exactly the examples the run was."""
        from experiments.data.metrics import baseline_predictions

        preds = self.predictions(run_id, testset)
        if preds is None:
            return None
        sources = [p["source"] for p in preds]
        copied = [{**p, "prediction": text} for p, text in zip(preds, baseline_predictions(baseline, sources))]
        return example_statistics(copied, metrics)

    def run_data(self, run_id: str):
        """The run's MLflow data: ``params``, ``tags`` and final ``metrics`` dicts."""
        return self._client.get_run(run_id).data

    def dev_history(self, run_id: str, key: str) -> pd.DataFrame:
        """``step, value`` of one dev metric over training."""
        history = self._client.get_metric_history(run_id, key)
        return pd.DataFrame({"step": [m.step for m in history], "value": [m.value for m in history]})


def read_predictions(path: Path, where: str) -> list[dict]:
    """Rows of a predictions.jsonl, keys renamed to ``id, source, reference, prediction``; ids unique."""
    rows, seen = [], set()
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} line {line_no}: not JSON ({err})") from None
        missing = [k for k in (schema.PRED_ID, schema.PRED_REFERENCE, schema.PRED_PREDICTION) if k not in record]
        if missing:
            raise ValueError(f"{where} line {line_no}: missing field(s) {missing}; expected id, source, reference, prediction")
        example_id = str(record[schema.PRED_ID])
        if example_id in seen:
            raise ValueError(f"{where} line {line_no}: duplicate id {example_id!r}")
        seen.add(example_id)
        rows.append(dict(id=example_id, source=str(record.get(schema.PRED_SOURCE, "")),
                         reference=record[schema.PRED_REFERENCE], prediction=str(record[schema.PRED_PREDICTION])))
    return rows


def _reference_corpus(predictions: Sequence[dict]) -> list[str]:
    """Every reference of the examples: the corpus whose 500 most frequent words are not content words (Table 7's
    repetition, :mod:`analysis.textstats`), the same for every run scored on the same test set."""
    return [r for p in predictions for r in ([p["reference"]] if isinstance(p["reference"], str) else p["reference"])]


def _text_statistic(metric: str, texts: Sequence[str], reference_corpus: Sequence[str]) -> np.ndarray:
    if metric == "length":
        return textstats.length_stats(texts)
    return textstats.repetition_stats(texts, reference_corpus)


def example_statistics(predictions: Sequence[dict], metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example rows for ``metrics`` (ordered by id), via ``experiments.data.metrics`` or :mod:`analysis.textstats`."""
    from experiments.data import metrics as harness_metrics

    ordered = sorted(predictions, key=lambda p: p["id"])
    out: dict[str, np.ndarray] = {"ids": np.asarray([p["id"] for p in ordered], dtype=object)}
    texts = [p["prediction"] for p in ordered]
    harness = [m for m in metrics if m in harness_metrics.METRICS]
    unknown = [m for m in metrics if m not in harness_metrics.METRICS and m not in schema.TEXT_METRICS]
    if unknown:
        raise ValueError(f"no per-example statistics for metric(s) {unknown}: expected names from "
                         f"{sorted(harness_metrics.METRICS)} or {list(schema.TEXT_METRICS)}")
    if harness:
        out.update(harness_metrics.example_statistics(
            harness, [p["source"] for p in ordered], texts, [p["reference"] for p in ordered]))
    for metric in metrics:
        if metric in schema.TEXT_METRICS:
            out[metric] = _text_statistic(metric, texts, _reference_corpus(ordered))
    return out


def metric_score(metric: str):
    """``rows -> corpus score`` for a metric (the harness' own for its metrics; the mean for text statistics)."""
    if metric in schema.TEXT_METRICS:
        return lambda rows: float(np.mean(rows))
    from experiments.data import metrics as harness_metrics

    if metric not in harness_metrics.METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected names from {sorted(harness_metrics.METRICS)}")
    return lambda rows: harness_metrics.score_from_statistics(metric, rows)


def align(rows_by_system: Sequence[dict[str, np.ndarray]], metric: str) -> list[np.ndarray]:
    """Row arrays of several runs restricted to the example ids all of them share, in one common order."""
    common = set(rows_by_system[0]["ids"])
    for rows in rows_by_system[1:]:
        common &= set(rows["ids"])
    if not common:
        raise ValueError("align: the runs share no example ids (were they scored on different test sets?)")
    out = []
    for rows in rows_by_system:
        mask = np.isin(rows["ids"], list(common))
        out.append(rows[metric][mask])  # ids are sorted in every array, so masked rows line up
    if len(common) < max(len(r["ids"]) for r in rows_by_system):
        warnings.warn(f"align: runs cover different examples; comparing on the {len(common)} they share", stacklevel=2)
    return out
