"""Evaluate a checkpoint on a task without training it: decode the task's test sets, score them, log a run.

    python -m experiments.recipes.evaluate CHECKPOINT --task TASK [--set data.test=FILE] [--set decode.num_beams=4 ...]
                                   [--max-examples N] [--select last|best] [--tracking-uri URI]
                                   [--experiment NAME] [--output-dir DIR] [--force]
    python -m experiments.recipes.evaluate --grid grids/released.yaml [--executor local|slurm|debug] [--only PATTERN]

CHECKPOINT is either

* an encoder-decoder in HF layout (``config.json`` with ``model_type: encoder-decoder`` and the tokenizer files
  beside it): a local directory or a hub id such as Google's released ``google/roberta2roberta_L-24_discofuse``
  (:data:`RELEASED`), or
* a trained cell's directory (``<output_root>/cells/<task>/<scheme>/<cell id>``, with its ``cell.json``): its model
  is rebuilt from the cell's scheme and the weights of ``checkpoints/<select>`` are loaded into it, with the cell's
  own tokenizers.

Decoding is the paper's unless overridden (§4: beam 4, GNMT length penalty α = 0.6, the task's maximum target
length; a trained cell's own decode settings are its defaults), and every setting is a ``--set decode.<field>=...``
of :class:`experiments.config.cell.DecodeConfig`. Re-decoding never trains: an evaluation is a run of its own (tag
``role=evaluation``), identified by a hash of what it decodes (:func:`evaluation_id`), so rerunning the same
evaluation is skipped and a new decoding setting is a new run beside the old one. Outputs go under
``<output dir>/``: ``evaluation.json`` (the settings), ``predictions.jsonl`` (one per test set) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
import submitit

from bertgen.checkpoint import CheckpointError
from bertgen.modeling_encoder_decoder import EncoderDecoderModel
from bertgen.tokenization import TokenizerError, load_tokenizer

from .. import cli
from ..cli import EXIT_FAILED, EXIT_OK, add_device, add_tracking_uri, entry_point, tracking_uri
from ..config import validate as v
from ..config.cell import CHECKPOINT_NAMES, DEFAULT_OUTPUT_ROOT, to_dict
from ..config.tasks import TASKS, get_task
from ..config.yaml_text import load_text
from ..data.batches import tokenizer_fingerprint
from ..data.sources import load_split
from ..grid.identity import TEST_PREFIX
from ..system.disk import atomic_write_text
from ..tracking.runs import ROLE_TAG, flatten, git_commit, now_ms
from ..tracking.store import check_tracking, experiment_id_for
from . import checkpointing
from .build import build_model, example_cap, tokenize_pair, trained_vocabulary_copy
from .decode import TestDecoding, use_bf16, write_summary
from .distributed import DistributedContext
from .evaluate_preflight import check_checkpoint, check_test_data, check_writable, released_config, selected_checkpoint

from ..config.evaluation import (DEFAULT_EXPERIMENT, EVALUATION_FILE, RELEASED_VARIANT, SETTABLE,
                                 TOP_LEVEL, EvaluationConfig, EvaluationError, build_config, evaluation_id, read_cell,
                                 released_entry)
from .evaluate_preflight import set_generation_ids


# -- the model ------------------------------------------------------------------------------------------------------
class FormattedInput:
    """An input tokenizer that writes a model card's input convention (``INPUT_FORMATS``) instead of its own special
    tokens, after the card's preprocessing (``replace_in_source``: text replaced in every source before encoding);
    everything else is the wrapped tokenizer's. Its fingerprint differs, so cached tokenisations do not mix."""

    def __init__(self, tokenizer: Any, input_format: str, replace_in_source: list[list[str]] | None = None):
        if input_format == "bos_eos" and (tokenizer.bos_token_id is None or tokenizer.eos_token_id is None):
            raise EvaluationError(f"input_format bos_eos: the tokenizer has no bos/eos token "
                                  f"(bos {tokenizer.bos_token_id}, eos {tokenizer.eos_token_id})")
        self.tokenizer = tokenizer
        self.input_format = input_format
        self.replace_in_source = [tuple(pair) for pair in replace_in_source or ()]
        self.fingerprint = f"{tokenizer_fingerprint(tokenizer)}:{input_format}" + (
            f":{json.dumps(self.replace_in_source)}" if self.replace_in_source else "")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def prepare(self, text: str) -> str:
        for old, new in self.replace_in_source:
            text = text.replace(old, new)
        return text

    def __call__(self, texts: Any, max_length: int | None = None, padding: Any = False, truncation: bool = True,
                 return_tensors: str | None = "pt", add_special_tokens: bool = True) -> dict[str, Any]:
        if return_tensors is not None or padding not in (False, "do_not_pad"):
            raise EvaluationError("FormattedInput encodes unpadded id lists only (return_tensors=None, padding=False)")
        single = isinstance(texts, str)
        prepared = self.prepare(texts) if single else [self.prepare(text) for text in texts]
        if self.input_format == "tokenizer":
            return self.tokenizer(prepared, max_length=max_length, padding=False, truncation=truncation,
                                  return_tensors=None, add_special_tokens=add_special_tokens)
        bare = self.tokenizer(prepared, max_length=None, padding=False, truncation=False, return_tensors=None,
                              add_special_tokens=False)["input_ids"]
        rows = [bare] if single else bare
        out = []
        for ids in rows:
            ids = list(ids)
            if self.input_format == "bos_eos" and add_special_tokens:
                body = ids if max_length is None or not truncation else ids[:max(0, max_length - 2)]
                ids = [self.tokenizer.bos_token_id, *body, self.tokenizer.eos_token_id]
            elif max_length is not None and truncation:
                ids = ids[:max_length]
            out.append(ids)
        ids_out = out[0] if single else out
        mask = [1] * len(out[0]) if single else [[1] * len(x) for x in out]
        return {"input_ids": ids_out, "attention_mask": mask}


@dataclass
class LoadedModel:
    model: Any
    input_tokenizer: Any
    output_tokenizer: Any
    pad_token_id: int
    tags: dict[str, str]


def load_released(checkpoint: str, revision: str | None = None,
                  tokenizer_args: dict[str, Any] | None = None) -> LoadedModel:
    """An HF-layout encoder-decoder and the tokenizer saved beside it (one vocabulary for both sides, as in every
    released model of the paper), read with ``tokenizer_args`` (a model card's: its special tokens), so that
    decoding drops every special token the card names."""
    directory, raw = released_config(checkpoint, revision)
    model = EncoderDecoderModel.from_pretrained(directory)
    try:
        tokenizer = load_tokenizer(directory, **(tokenizer_args or {}))
    except TokenizerError as err:
        raise EvaluationError(f"{directory}: tokenizer_args {tokenizer_args}: {v.one_line(err)}") from None
    set_generation_ids(model, directory, raw, tokenizer)
    pad = model.config.pad_token_id
    return LoadedModel(model, tokenizer, tokenizer, pad, {"evaluated": checkpoint, "scheme": "released",
                                                          "model_kind": "released"})


def load_cell(directory: Path, select: str) -> LoadedModel:
    """A trained cell's model (its scheme rebuilt, then ``checkpoints/<select>``'s weights) and tokenizers."""
    cell = read_cell(directory)
    found = selected_checkpoint(directory, select)
    model, spec, input_tokenizer, output_tokenizer = build_model(
        cell, vocabulary=trained_vocabulary_copy(cell, directory))
    checkpointing.load_model_weights(found, model)
    return LoadedModel(model.eval(), input_tokenizer, output_tokenizer, spec.inputs.pad_token_id,
                       {"evaluated": str(directory), "scheme": cell.scheme, "cell_id": cell.cell_id or "",
                        "model_kind": "trained_cell", "select": select})


def load_model(config: EvaluationConfig) -> LoadedModel:
    loaded = (load_cell(Path(config.checkpoint), config.select) if config.is_cell
              else load_released(config.checkpoint, config.revision, config.tokenizer_args))
    if config.input_format != "tokenizer" or config.replace_in_source:
        loaded.input_tokenizer = FormattedInput(loaded.input_tokenizer, config.input_format, config.replace_in_source)
    return loaded


# -- decoding and scoring -----------------------------------------------------------------------------------------
def default_output_dir(config: EvaluationConfig, output_root: str | os.PathLike = DEFAULT_OUTPUT_ROOT) -> Path:
    """``<cell dir>/evaluations/<id>`` for a trained cell, ``<output_root>/evaluations/<task>/<name>/<id>`` else."""
    eid = evaluation_id(config)
    if config.is_cell:
        return Path(config.checkpoint) / "evaluations" / eid
    name = config.checkpoint.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    return Path(output_root) / "evaluations" / config.task / name / eid


def evaluate(config: EvaluationConfig, out_dir: Path, device: str | None = None,
             batch_size: int = 16) -> dict[str, Any]:
    """Decode and score every test set of ``config``; writes the predictions and ``metrics.json`` under
    ``out_dir`` and returns the summary (``test`` metrics, extra sets, the trivial baseline, timings)."""
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device(cli.device(device)))
    loaded = load_model(config)
    model = loaded.model.to(ctx.device)
    recipe = TestDecoding(model, loaded.output_tokenizer, get_task(config.task), config.data)
    task, limits = recipe.task, recipe.limits
    bf16 = use_bf16(config.bf16, ctx.device)
    decoder = recipe.decoder(model, loaded.output_tokenizer, loaded.pad_token_id, config.decode,
                             config.decode.batch_size or batch_size, ctx, bf16, f"decode {config.task}")
    out_dir.mkdir(parents=True, exist_ok=True)

    def loaded_splits():  # one at a time, as they are decoded
        for split in recipe.splits:
            raw = load_split(task, split, getattr(config.data, split, None), seed=0,
                             max_examples=example_cap(config.max_examples, split))
            yield split, raw, tokenize_pair(raw, loaded.input_tokenizer, loaded.output_tokenizer, *limits,
                                            out_dir.parent / "cache")

    summary = {"evaluation_id": evaluation_id(config), "task": task.name, **loaded.tags, "bf16": bf16,
               "lowercased_data": task.lowercase, "skipped_test_splits": list(recipe.skipped),  # every task's
               **recipe.summary(recipe.decode(decoder, loaded_splits(), out_dir))}
    write_summary(out_dir, summary)
    return summary


def run_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of an evaluation summary: ``test_<metric>``, ``test_<split>_<metric>``,
    ``baseline_<name>_<metric>`` (the names training cells log, so the analysis reads both alike)."""
    out = {f"{TEST_PREFIX}{k}": v for k, v in summary["test"].items()}
    for key, scores in summary.items():
        if key.startswith("test_") and isinstance(scores, dict):
            out.update({f"{key}_{k}": v for k, v in scores.items()})
        elif key.startswith("baseline_") and isinstance(scores, dict):
            out.update({f"{key}_{k}": v for k, v in scores.items()})
    return {k: float(v) for k, v in out.items()}


# -- tracking -------------------------------------------------------------------------------------------------------
class EvaluationTracker:
    """The evaluation runs of one MLflow experiment: found by ``evaluation_id``, created, finished."""

    def __init__(self, uri: str, experiment: str):
        from mlflow.tracking import MlflowClient  # lazy: loads mlflow (~4 s), which this module does not otherwise

        self.client = MlflowClient(uri)
        self.experiment_id = experiment_id_for(self.client, uri, experiment)

    def finished(self, eid: str) -> Any:
        runs = self.client.search_runs([self.experiment_id], f"tags.{ROLE_TAG} = 'evaluation' and "
                                                             f"tags.evaluation_id = '{eid}'")
        return next((r for r in runs if r.info.status == "FINISHED"), None)

    def start(self, config: EvaluationConfig, label: str) -> str:
        from mlflow.entities import Param  # lazy: loads mlflow (~4 s), which this module does not otherwise

        task = get_task(config.task)
        tags = {ROLE_TAG: "evaluation", "evaluation_id": evaluation_id(config), "task": config.task,
                "evaluated_checkpoint": config.checkpoint, "host": socket.gethostname(), "git_commit": git_commit(),
                "decode": json.dumps(to_dict(config.decode), sort_keys=True), "synthetic_task": str(task.synthetic)}
        if config.is_cell:
            cell = read_cell(Path(config.checkpoint))
            tags.update({"cell_id": cell.cell_id or "", "scheme": cell.scheme, "seed": str(cell.seed),
                         "select": config.select})
        else:
            entry = released_entry(config.checkpoint)
            tags.update({"scheme": entry.scheme if entry is not None else "released",
                         "variant": entry.variant if entry is not None else RELEASED_VARIANT,
                         "released_model": config.checkpoint.rstrip("/").rsplit("/", 1)[-1]})
            if entry is not None and entry.no_paper_number:
                tags["no_paper_number"] = entry.no_paper_number
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=label)
        flat = flatten(to_dict(config))
        if not config.is_cell and (entry := released_entry(config.checkpoint)) is not None:
            flat["size"] = entry.size  # analysis.schema.SIZE_PARAMS: the row of the paper's 24-layer models
        params = [Param(k, val) for k, val in sorted(flat.items())]
        for start in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        return run.info.run_id

    def finish(self, run_id: str, summary: dict[str, Any], out_dir: Path) -> None:
        from mlflow.entities import Metric, RunTag  # lazy: loads mlflow (~4 s), which this module does not otherwise

        stamp = now_ms()
        metrics = [Metric(k, val, stamp, 0) for k, val in sorted(run_metrics(summary).items())]
        tags = [RunTag(k, str(summary[k])) for k in ("parameters", "bf16", "lowercased_data") if k in summary]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        for path in sorted(out_dir.glob("*.json*")):
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str, reason: str) -> None:
        self.client.set_tag(run_id, "failure_reason", reason)
        self.client.set_terminated(run_id, "FAILED")


def label_of(config: EvaluationConfig) -> str:
    name = Path(config.checkpoint).name if config.is_cell else config.checkpoint.rsplit("/", 1)[-1]
    return f"eval/{config.task}/{name}/beam{config.decode.num_beams}"


@dataclass
class EvaluationJob:
    """One evaluation as a picklable callable (the unit an executor runs: in this process, a local process or a
    Slurm job). Finds its finished run and returns it unless ``force``."""

    config: EvaluationConfig
    out_dir: str
    tracking_uri: str
    experiment: str
    force: bool = False
    device: str | None = None
    num_threads: int | None = None
    run_id: str | None = None  # its MLflow run once started (the launcher's executors read it)

    def __call__(self) -> dict[str, Any]:
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        tracker = EvaluationTracker(self.tracking_uri, self.experiment)
        eid = evaluation_id(self.config)
        done = tracker.finished(eid)
        if done is not None and not self.force:
            return {"status": "SKIPPED", "run_id": done.info.run_id, "evaluation_id": eid,
                    "metrics": dict(done.data.metrics)}
        out_dir = Path(self.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / EVALUATION_FILE, json.dumps(to_dict(self.config), indent=2, sort_keys=True) + "\n")
        run_id = self.run_id = tracker.start(self.config, label_of(self.config))
        try:
            summary = evaluate(self.config, out_dir, self.device)
        except BaseException as err:
            tracker.fail(run_id, v.one_line(err))
            raise
        tracker.finish(run_id, summary, out_dir)
        return {"status": "FINISHED", "run_id": run_id, "evaluation_id": eid, "metrics": run_metrics(summary)}


# -- evaluation grids -----------------------------------------------------------------------------------------------
GRID_KEYS = ("name", "description", "output_root", "mlflow", "executor", "evaluations", "defaults")


def _item_matches(item: Any, only: str | None) -> bool:
    """``--only``: an evaluation whose checkpoint contains the text or whose task is it (comma-separated)."""
    if only is None or not isinstance(item, dict):
        return True
    checkpoint = str(item.get("checkpoint", ""))
    entry = released_entry(checkpoint)
    task = item.get("task") or (entry.task if entry is not None else None)
    return any(part and (part in checkpoint or part == task) for part in (p.strip() for p in only.split(",")))


def load_evaluation_grid(path: Path, sets: list[str],
                         only: str | None = None) -> tuple[dict[str, Any], list[EvaluationConfig]]:
    """A YAML file of evaluations (``grids/released.yaml``): ``evaluations: [{checkpoint, task?, decode?, data?,
    max_examples?}, ...]`` with shared ``defaults`` and the launch grid's ``mlflow`` / ``executor`` sections. With
    ``only``, the evaluations it selects (:func:`_item_matches`), the others not even checked."""
    where = str(path)
    try:
        doc = load_text(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise EvaluationError(f"{where}: {v.one_line(err)}") from None
    if not isinstance(doc, dict):
        raise EvaluationError(f"{where}: expected a mapping with {list(GRID_KEYS)}")
    for key in doc:
        if key not in GRID_KEYS:
            raise EvaluationError(str(v.unknown(f"{where}: {key}", key, GRID_KEYS)))
    items = doc.get("evaluations")
    if not isinstance(items, list) or not items:
        raise EvaluationError(f"{where}: evaluations: expected a non-empty list of {{checkpoint, task, ...}}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - set(SETTABLE):
        raise EvaluationError(f"{where}: defaults: expected a mapping with keys from {list(SETTABLE)}")
    configs = []
    for i, item in enumerate(items):
        if not _item_matches(item, only):
            continue
        here = f"{where}: evaluations[{i}]"
        if not isinstance(item, dict) or "checkpoint" not in item:
            raise EvaluationError(f"{here}: expected a mapping with checkpoint (and task, decode, data, max_examples)")
        extra = set(item) - {"checkpoint", "task", *SETTABLE}
        if extra:
            raise EvaluationError(f"{here}: unknown keys {sorted(extra)}")
        item_sets = [f"{section}={json.dumps(item.get(section, defaults.get(section)))}" for section in TOP_LEVEL
                     if section in item or section in defaults]
        item_sets += [f"{section}.{k}={json.dumps(val)}" for section in SETTABLE if section not in TOP_LEVEL
                      for k, val in {**(defaults.get(section) or {}), **(item.get(section) or {})}.items()]
        try:
            configs.append(build_config(str(item["checkpoint"]), item.get("task"), item_sets + list(sets)))
        except EvaluationError as err:
            raise EvaluationError(f"{here}: {err}") from None
    return doc, configs


# -- command line ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.recipes.evaluate",
        description="Decode a task's test sets with a released or trained checkpoint, score them and log an MLflow "
                    "run, without training. Re-running the same evaluation is skipped (--force decodes again).")
    parser.add_argument("checkpoint", nargs="?", help="HF-layout encoder-decoder (directory or hub id) or a trained "
                                                      "cell's directory (outputs/cells/<task>/<scheme>/<id>)")
    parser.add_argument("--task", help=f"one of {', '.join(sorted(TASKS))} (default: a released model's own; a "
                                       "trained cell's own)")
    parser.add_argument("--grid", type=Path, help="a YAML file of evaluations (grids/released.yaml) instead of one "
                                                  "checkpoint")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="sets",
                        help="override decode.*, data.<test set> or max_examples.* (repeatable)")
    parser.add_argument("--max-examples", type=int, metavar="N", help="decode at most N test examples")
    parser.add_argument("--select", choices=CHECKPOINT_NAMES, help="a trained cell's checkpoints/<name> (default: "
                                                                   "the one it was tested with, train.select)")
    parser.add_argument("--revision", help="hub revision of an HF-layout checkpoint")
    add_tracking_uri(parser, "MLflow tracking URI (default: the grid's, else $MLFLOW_TRACKING_URI, else sqlite under "
                             "the output root)")
    parser.add_argument("--experiment", help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    parser.add_argument("--output-root", default=None, help=f"where outputs go (default: {DEFAULT_OUTPUT_ROOT})")
    parser.add_argument("--output-dir", type=Path, help="this evaluation's folder (one checkpoint only)")
    parser.add_argument("--executor", choices=("debug", "local", "slurm"), default="debug",
                        help="debug: in this process (default); local: a local process each; slurm: a job array")
    parser.add_argument("--only", metavar="TEXT", help="with --grid: evaluations whose checkpoint contains this text "
                                                       "or whose task is it (comma-separated alternatives)")
    add_device(parser)
    parser.add_argument("--force", action="store_true", help="decode again even if this evaluation finished")
    return parser


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], list[EvaluationConfig]]:
    if (args.checkpoint is None) == (args.grid is None):
        raise EvaluationError("pass a CHECKPOINT or --grid FILE (one of them)")
    if args.max_examples is not None and args.max_examples < 1:
        raise EvaluationError(f"--max-examples: expected a positive count, got {args.max_examples}")
    if args.grid is not None:
        sets = list(args.sets) + ([f"max_examples.test={args.max_examples}"] if args.max_examples else [])
        doc, configs = load_evaluation_grid(args.grid, sets, args.only)
        if not configs:
            raise EvaluationError(f"--only {args.only}: no evaluation of {args.grid} matches")
        return doc, configs
    return {}, [build_config(args.checkpoint, args.task, args.sets, args.max_examples, args.select, args.revision)]


def _executor(kind: str, doc: dict[str, Any], folder: Path):
    if kind == "local":
        return submitit.LocalExecutor(folder=folder)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    slurm = dict((doc.get("executor") or {}).get("slurm") or {})
    params = {"timeout_min": slurm.pop("timeout_min", 240), "cpus_per_task": slurm.pop("cpus_per_task", 8),
              "gpus_per_node": slurm.pop("gpus_per_node", 1), "mem_gb": slurm.pop("mem_gb", 64)}
    for key in ("partition", "account", "qos", "constraint"):
        if slurm.get(key):
            params[f"slurm_{key}"] = slurm[key]
    executor.update_parameters(name="bertgen-eval", **params)
    return executor


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    doc, configs = _settings(args)
    if args.output_dir is not None and len(configs) > 1:
        raise EvaluationError("--output-dir: one checkpoint only (a grid writes each under the output root)")
    output_root = Path(args.output_root or doc.get("output_root") or DEFAULT_OUTPUT_ROOT)
    uri = tracking_uri(args.tracking_uri or (doc.get("mlflow") or {}).get("tracking_uri"), output_root)
    experiment = args.experiment or (doc.get("mlflow") or {}).get("experiment") or DEFAULT_EXPERIMENT
    # Everything is checked before anything is written: no folder, experiment or run for a refused evaluation.
    device_name = cli.device(args.device) if args.executor == "debug" else args.device  # a job's own machine decides
    check_tracking(uri)
    out_dirs = [args.output_dir or default_output_dir(config, output_root) for config in configs]
    check_writable(output_root, "--output-root")
    for config, out_dir in zip(configs, out_dirs):
        check_writable(out_dir, "--output-dir")
        check_test_data(config)
        check_checkpoint(config)
    output_root.mkdir(parents=True, exist_ok=True)
    jobs = [EvaluationJob(config, str(out_dir), uri, experiment, args.force, device_name)
            for config, out_dir in zip(configs, out_dirs)]
    if args.executor != "debug":
        executor = _executor(args.executor, doc, output_root / "submitit" / "evaluate")
        submitted = [executor.submit(job) for job in jobs]
        if args.executor == "slurm":
            print("submitted " + ", ".join(str(s.job_id) for s in submitted) + f"; watch with squeue, results in "
                  f"MLflow experiment {experiment} at {uri}")
            return EXIT_OK
        results = []
        for job, handle in zip(jobs, submitted):
            try:
                results.append(handle.result())
            except Exception as err:  # noqa: BLE001 - reported per evaluation, the others go on
                results.append({"status": "FAILED", "reason": v.one_line(err), "metrics": {}})
    else:
        results = []
        for job in jobs:
            try:
                results.append(job())
            except (EvaluationError, CheckpointError, v.Invalid, ValueError, OSError) as err:
                results.append({"status": "FAILED", "reason": v.one_line(err), "metrics": {}})
    failed = False
    for job, result in zip(jobs, results):
        shown = ", ".join(f"{k[len(TEST_PREFIX):]} {val:.2f}" for k, val in sorted(result["metrics"].items())
                          if k.startswith(TEST_PREFIX) and k.count("_") == 1)
        print(f"{label_of(job.config)}: {result['status']}"
              + (f" ({result['reason']})" if result.get("reason") else "")
              + (f": {shown}" if shown else "") + f"  [{job.out_dir}]")
        failed |= result["status"] == "FAILED"
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
