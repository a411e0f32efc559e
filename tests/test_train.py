"""Training one cell: schedules, atomic checkpoints, exact resumption, DDP, decoding and failure reporting.

Cells run on the reduced smoke assets (experiments.smoke.pretrain, built once per session): hidden 64, 2 layers,
40 training examples, a handful of steps.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from experiments.recipes import checkpointing
from experiments.data.metrics import compute_metrics
from experiments.recipes.optim import LRSchedule, build_optimizer, paper_peak_lr
from experiments.config.cell import TrainConfig, from_dict
from experiments.recipes.build import warm_start_from
from experiments.recipes.train import NonFiniteLossError, train_cell
from integration_helpers import quick_assets


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    return quick_assets(tmp_path_factory)


def make_cell(assets: dict, output_root: Path, scheme: str = "bert2bert", task: str = "discofuse",
              model: dict | None = None, checkpoints: dict | None = None, **train) -> dict:
    kind = "fusion" if task == "discofuse" else "split"
    files = assets["tasks"][kind]
    settings = {"steps": 8, "batch_size": 8, "grad_accum": 1, "lr": 3e-3, "warmup_steps": 2, "schedule": "linear",
                "max_grad_norm": 1.0, "bf16": False, "eval_every": 4, "checkpoint_every": 4, "eval_examples": 8,
                "num_workers": 0, "log_every": 1}
    settings.update(train)
    return {
        "cell_id": f"test-{scheme}", "grid": "test", "task": task, "scheme": scheme, "seed": 3,
        "checkpoints": checkpoints or dict(assets["checkpoints"]),
        "data": {split: {"path": path, "columns": {"input": "source", "target": "target", "id": "id"}}
                 for split, path in files.items()},
        "data_fraction": 1.0, "max_examples": {"train": None, "validation": None, "test": None},
        "model": model or {}, "init_layers": None, "train": settings,
        "decode": {"num_beams": 2, "length_penalty": 0.6, "length_penalty_style": "gnmt", "max_new_tokens": 12},
        "output_root": str(output_root),
    }


class RecordingLogger:
    def __init__(self):
        self.metrics: list[tuple[int, dict]] = []
        self.tags: dict = {}
        self.artifacts: list[Path] = []
        self.preempt_hooks = []

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path):
        self.artifacts.append(Path(path))

    def set_tags(self, tags):
        self.tags.update(tags)

    def on_preempt(self, fn):
        self.preempt_hooks.append(fn)

    def train_steps(self) -> list[int]:
        return [step for step, m in self.metrics if "loss" in m]


class SimulatedCrash(RuntimeError):
    pass


class CrashingLogger(RecordingLogger):
    """Kills the run (as a node failure would) when training reports ``at_step``."""

    def __init__(self, at_step: int):
        super().__init__()
        self.at_step = at_step

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if "loss" in metrics and step >= self.at_step:
            raise SimulatedCrash(f"crash at step {step}")


def _weights(cell_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(cell_dir / "checkpoints" / name / checkpointing.MODEL_FILE)


# -- optimiser and schedules ------------------------------------------------------------------------------------------
def _optimizer():
    return build_optimizer([torch.nn.Parameter(torch.zeros(2))])


def test_noam_schedule_is_the_papers():
    schedule = LRSchedule(_optimizer(), "noam", lr=0.05, warmup_steps=40_000, hidden_size=768)
    base = 0.05 / math.sqrt(768)
    for t in (1, 100, 39_999, 40_000, 160_000):
        expected = base * min(1.0, t / 40_000) / math.sqrt(max(t, 40_000))
        assert schedule.lr_at(t) == pytest.approx(expected, rel=1e-12)
    assert max(schedule.lr_at(t) for t in range(1, 100_000, 997)) <= paper_peak_lr(768) * (1 + 1e-12)
    assert schedule.lr_at(40_000) == pytest.approx(paper_peak_lr(768))
    assert schedule.lr_at(160_000) == pytest.approx(paper_peak_lr(768) / 2)  # inverse square root decay


def test_short_run_schedules_and_their_state():
    optimizer = _optimizer()
    linear = LRSchedule(optimizer, "linear", lr=1e-3, warmup_steps=10, total_steps=110)
    assert [linear.lr_at(t) for t in (5, 10, 60, 110)] == pytest.approx([5e-4, 1e-3, 5e-4, 0.0])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # ready for update 1
    for _ in range(59):
        linear.step()
    again = LRSchedule(_optimizer(), "linear", lr=1e-3, warmup_steps=10, total_steps=110)
    again.load_state_dict(linear.state_dict())
    assert again.current_lr() == linear.current_lr() == pytest.approx(5e-4)
    constant = LRSchedule(_optimizer(), "constant", lr=2e-3, warmup_steps=4)
    assert [constant.lr_at(t) for t in (1, 4, 1000)] == pytest.approx([5e-4, 2e-3, 2e-3])
    with pytest.raises(ValueError, match="train.schedule"):
        LRSchedule(_optimizer(), "cosine")
    with pytest.raises(ValueError, match="scheduler state"):
        constant.load_state_dict(linear.state_dict())


def test_optimizer_counts_tied_parameters_once():
    shared = torch.nn.Parameter(torch.zeros(3))
    optimizer = build_optimizer([shared, shared, torch.nn.Parameter(torch.ones(2))])
    assert len(optimizer.param_groups[0]["params"]) == 2
    assert optimizer.defaults["betas"] == (0.9, 0.997) and optimizer.defaults["eps"] == 1e-9


def test_adafactor_is_torchs_with_the_t2t_settings_and_adam_stays_the_default():
    """Section 5's alternative optimiser: torch.optim.Adafactor with Tensor2Tensor's / T5's defaults (decay 1 - t^-0.8,
    no momentum, update clipping at 1.0, parameter-scale floor 1e-3, no weight decay); its lr comes from the schedule."""
    matrix, vector = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))
    optimizer = build_optimizer([matrix, vector, matrix], optimizer="adafactor")
    assert isinstance(optimizer, torch.optim.Adafactor) and len(optimizer.param_groups[0]["params"]) == 2
    d = optimizer.defaults
    assert (d["beta2_decay"], d["eps"], d["d"], d["weight_decay"]) == (-0.8, (None, 1e-3), 1.0, 0.0)
    schedule = LRSchedule(optimizer, "constant", lr=1e-2, warmup_steps=0)
    (matrix.sum() + vector.sum()).backward()
    before = matrix.detach().clone()
    optimizer.step()
    schedule.step()
    assert not torch.equal(before, matrix.detach())
    assert set(optimizer.state[matrix]) == {"step", "row_var", "col_var"}  # factored second moments
    assert isinstance(_optimizer(), torch.optim.Adam) and TrainConfig.optimizer == "adam"
    with pytest.raises(ValueError, match=r"train\.optimizer"):
        build_optimizer([matrix], optimizer="sgd")
    with pytest.raises(ValueError, match=r"train\.optimizer"):
        from_dict(TrainConfig, {"steps": 5, "batch_size": 8, "optimizer": "adamw"}, "train")
    assert from_dict(TrainConfig, {"steps": 5, "batch_size": 8, "optimizer": "adafactor"}, "train").optimizer == "adafactor"


# -- checkpoint files -------------------------------------------------------------------------------------------------
def test_rng_state_round_trip_reproduces_every_generator():
    checkpointing.restore_rng_state(checkpointing.capture_rng_state())  # the state survives its own round trip
    state = checkpointing.capture_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpointing.restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


def test_checkpoint_swap_is_atomic_and_falls_back_to_the_set_aside_copy(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model.parameters())
    target = tmp_path / "last"
    checkpointing.save_checkpoint(target, model, optimizer, {"step": 1})
    with torch.no_grad():
        model.weight.add_(1.0)
    checkpointing.save_checkpoint(target, model, optimizer, {"step": 2})
    assert checkpointing.read_trainer_state(target)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary or set-aside directory left
    # A crash between "rename the old one aside" and "rename the new one in" leaves only .old-last.
    os.replace(target, tmp_path / ".old-last")
    assert checkpointing.find_checkpoint(target) == tmp_path / ".old-last"
    fresh = torch.nn.Linear(3, 2)
    state, rng = checkpointing.load_checkpoint(checkpointing.find_checkpoint(target), fresh, None)
    assert state["step"] == 2 and rng is not None and torch.equal(fresh.weight, model.weight)
    # A half-written directory (no trainer_state.json) is never taken for a checkpoint.
    (tmp_path / "other").mkdir()
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other" / checkpointing.MODEL_FILE))
    assert checkpointing.find_checkpoint(tmp_path / "other") is None
    with pytest.raises(checkpointing.CheckpointCorruptError, match="does not fit"):
        checkpointing.load_model_weights(checkpointing.find_checkpoint(target), torch.nn.Linear(4, 2))


# -- cell settings ----------------------------------------------------------------------------------------------------
def test_bad_train_settings_name_the_field():
    with pytest.raises(ValueError, match=r"train\.steps"):
        from_dict(TrainConfig, {"steps": 0, "batch_size": 8}, "train")
    with pytest.raises(ValueError, match=r"train\.batch_size"):
        from_dict(TrainConfig, {"steps": 5, "batch_size": 2, "grad_accum": 4}, "train")
    with pytest.raises(ValueError, match=r"train\.max_grad_norm"):
        from_dict(TrainConfig, {"steps": 5, "batch_size": 8, "max_grad_norm": -1}, "train")


def test_init_layers_map_to_warm_start():
    assert warm_start_from(None).layers == "all"
    assert warm_start_from({"embeddings_only": True}).layers == "none"
    assert warm_start_from({"first_k": 3}).layers == 3
    assert warm_start_from({"layers": [1, 3]}).layers == (0, 2)  # the paper's 1-based numbers
    with pytest.raises(ValueError, match="init_layers"):
        warm_start_from({"layers": [0]})


def assert_resumed_equals_straight(assets, tmp_path, straight, resumed, resumed_logger) -> None:
    """The resumed cell continued at step 5 (it did not start over) and ended bit-identical to the uninterrupted
    one: metrics, weights, predictions; and it really trained (the weights moved away from the warm start)."""
    assert resumed_logger.train_steps() == [5, 6, 7, 8]
    assert resumed == straight
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "predictions.jsonl").read_text() == \
        (tmp_path / "resumed" / "predictions.jsonl").read_text()
    start = load_file(Path(assets["checkpoints"]["bert"]) / "model.safetensors")
    assert not torch.equal(a["encoder.embeddings.LayerNorm.weight"], start["bert.embeddings.LayerNorm.weight"])


# -- whole cells ------------------------------------------------------------------------------------------------------
def test_resumed_cell_ends_bit_identical_to_an_uninterrupted_one(assets, tmp_path):
    """8 steps over 5 batches per epoch with dropout on; the crash comes after the step-4 checkpoint, so the resumed
    run restores weights, Adam moments, lr, RNG states and the sampler position, and crosses an epoch boundary."""
    cell = make_cell(assets, tmp_path / "root")
    assert json.loads((Path(assets["checkpoints"]["bert"]) / "config.json").read_text())["hidden_dropout_prob"] > 0
    straight_logger = RecordingLogger()
    straight = train_cell(cell, tmp_path / "straight", straight_logger)

    with pytest.raises(SimulatedCrash):
        train_cell(cell, tmp_path / "resumed", CrashingLogger(at_step=6))
    assert checkpointing.read_trainer_state(tmp_path / "resumed" / "checkpoints" / "last")["step"] == 4
    resumed_logger = RecordingLogger()
    resumed = train_cell(cell, tmp_path / "resumed", resumed_logger)

    assert_resumed_equals_straight(assets, tmp_path, straight, resumed, resumed_logger)

    # What the cell writes: predictions in test-file order, metrics that the predictions reproduce.
    rows = [json.loads(line) for line in (tmp_path / "straight" / "predictions.jsonl").read_text().splitlines()]
    test_rows = [json.loads(line) for line in Path(assets["tasks"]["fusion"]["test"]).read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in test_rows]
    assert [r["reference"] for r in rows] == [r["target"] for r in test_rows]
    assert all(set(r) == {"id", "source", "reference", "prediction"} for r in rows)
    recomputed = compute_metrics(("exact", "sari"), [r["source"] for r in rows], [r["prediction"] for r in rows],
                                 [[r["reference"]] for r in rows])
    assert straight == pytest.approx(recomputed) and set(straight) == {"exact", "sari"}
    summary = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert summary["test"] == straight and summary["steps"] == 8 and summary["best_step"] in (4, 8)
    # the task metric's dev curve at each evaluation, from the latest dev predictions (kept to be read)
    dev = [(step, m) for step, m in straight_logger.metrics if "dev_sari" in m]
    assert [step for step, _ in dev] == sorted({step for step, m in straight_logger.metrics if "dev_loss" in m})
    assert all(0.0 <= m["dev_sari"] <= 100.0 and "dev_exact" in m for _, m in dev)
    dev_rows = (tmp_path / "straight" / "dev_predictions.jsonl").read_text().splitlines()
    assert len(dev_rows) == min(cell["train"].get("dev_decode_examples", 64), len(Path(
        assets["tasks"]["fusion"]["validation"]).read_text().splitlines()))
    losses = [m["loss"] for _, m in straight_logger.metrics if "loss" in m]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert {p.name for p in straight_logger.artifacts} == {"predictions.jsonl", "metrics.json"}
    assert straight_logger.preempt_hooks, "train_cell should register a save hook for preemption"


def test_the_logger_hears_of_each_checkpoint_once_it_is_written(assets, tmp_path):
    """After each checkpoint of ``checkpoints/last`` the logger's ``checkpointed`` is called (CellLogger sends what
    was logged, which a resume from that checkpoint would not log again); the checkpoint is on disk by then."""
    told = []

    class CheckpointedLogger(RecordingLogger):
        def checkpointed(self):
            state = checkpointing.read_trainer_state(tmp_path / "cell" / "checkpoints" / "last")
            told.append((state["step"], self.train_steps()[-1]))

    train_cell(make_cell(assets, tmp_path / "root"), tmp_path / "cell", CheckpointedLogger())
    assert told == [(4, 4), (8, 8)]


def test_resumed_adafactor_cell_ends_bit_identical_to_an_uninterrupted_one(assets, tmp_path):
    """The same crash and resume with train.optimizer=adafactor: its factored moments and per-tensor step counts go
    through optimizer.pt like Adam's, so the resumed cell ends on the uninterrupted one's weights and predictions."""
    cell = make_cell(assets, tmp_path / "root", optimizer="adafactor", lr=1e-2)
    straight = train_cell(cell, tmp_path / "straight", RecordingLogger())
    with pytest.raises(SimulatedCrash):
        train_cell(cell, tmp_path / "resumed", CrashingLogger(at_step=6))
    saved = torch.load(tmp_path / "resumed" / "checkpoints" / "last" / checkpointing.OPTIMIZER_FILE, weights_only=True)
    assert any("row_var" in state for state in saved["state"].values())  # Adafactor's state, not Adam's
    assert all(float(state["step"]) == 4 for state in saved["state"].values())
    resumed_logger = RecordingLogger()
    resumed = train_cell(cell, tmp_path / "resumed", resumed_logger)
    assert_resumed_equals_straight(assets, tmp_path, straight, resumed, resumed_logger)


def test_frozen_warm_started_parameters_hold_still_until_the_step_and_resume_across_it(assets, tmp_path):
    """train.freeze_warm_started_steps=5 (Table 6's "pre-training SentencePieces", scaled down): at the step-4
    checkpoint every tensor bert2bert took from BERT is bit-identical to the checkpoint's and has no Adam state, the
    new ones (cross-attention, output bias) have moved; after step 5 the warm ones train too. A run that crashes at
    step 6 and resumes from step 4 crosses the boundary and ends bit-identical to an uninterrupted run."""
    from experiments.recipes.build import build_model
    from experiments.config.cell import CellConfig
    from experiments.recipes.train import warm_started_parameters

    cell = make_cell(assets, tmp_path / "root", freeze_warm_started_steps=5)
    straight_logger = RecordingLogger()
    straight = train_cell(cell, tmp_path / "straight", straight_logger)
    with pytest.raises(SimulatedCrash):
        train_cell(cell, tmp_path / "resumed", CrashingLogger(at_step=6))
    model, spec, _, _ = build_model(CellConfig.from_dict(cell))
    frozen = warm_started_parameters(model, spec.report)
    at_step4 = _weights(tmp_path / "resumed")
    aliases: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(parameter), []).append(name)
    # a tied tensor is saved once, under one of its names
    frozen_names = {next(n for n in aliases[id(p)] if n in at_step4) for p in frozen}
    start = {k: v.detach() for k, v in model.state_dict().items()}
    assert straight_logger.tags["frozen_warm_started_tensors"] == len(frozen) > 0
    assert any(n.endswith("embeddings.word_embeddings.weight") for n in frozen_names)  # BERT's, shared
    assert not any(".crossattention." in n for n in frozen_names) and "decoder.lm_head.bias" not in frozen_names

    assert checkpointing.read_trainer_state(tmp_path / "resumed" / "checkpoints" / "last")["step"] == 4
    for name in frozen_names:
        assert torch.equal(at_step4[name], start[name]), name
    assert not torch.equal(at_step4["decoder.lm_head.bias"], start["decoder.lm_head.bias"])
    optimizer_state = torch.load(tmp_path / "resumed" / "checkpoints" / "last" / checkpointing.OPTIMIZER_FILE,
                                 weights_only=True)["state"]
    assert len(optimizer_state) == len(aliases) - len(frozen)  # the frozen tensors' moments never started

    resumed_logger = RecordingLogger()
    resumed = train_cell(cell, tmp_path / "resumed", resumed_logger)
    assert_resumed_equals_straight(assets, tmp_path, straight, resumed, resumed_logger)
    final = _weights(tmp_path / "straight")
    assert all(not torch.equal(final[name], start[name]) for name in frozen_names if name.endswith(".weight"))


def test_freezing_a_scheme_without_warm_started_parameters_is_refused(assets, tmp_path):
    with pytest.raises(ValueError, match="freeze_warm_started_steps: 2, but scheme rnd2rnd warm-starts no parameter"):
        train_cell(make_cell(assets, tmp_path / "root", scheme="rnd2rnd", freeze_warm_started_steps=2),
                   tmp_path / "cell", RecordingLogger())
    with pytest.raises(ValueError, match="freeze_warm_started_steps: expected fewer than train.steps=8"):
        train_cell(make_cell(assets, tmp_path / "root", freeze_warm_started_steps=8), tmp_path / "c2",
                   RecordingLogger())


def test_cell_with_a_trained_vocabulary_trains_it_once_and_decodes_with_it(assets, tmp_path):
    """vocab {train: sentencepiece}: the cell trains the vocabulary on its own training texts, builds bertShare with
    it (word embeddings new, layers warm), trains, decodes, keeps a copy for re-decoding; a second cell (another seed)
    on the same data reuses the cached vocabulary without training it again."""
    from experiments.recipes.evaluate import load_cell

    cell = make_cell(assets, tmp_path / "root", scheme="bertShare", steps=4, eval_every=0, checkpoint_every=0)
    cell["vocab"] = {"train": "sentencepiece", "size": 64}
    first = RecordingLogger()
    metrics = train_cell(cell, tmp_path / "first", first)
    assert set(metrics) == {"exact", "sari"} and first.tags["vocabulary_trained"] is True
    cached = list((tmp_path / "root" / "cache" / "vocab").iterdir())
    assert [p.name for p in cached] == [first.tags["vocabulary"]] and cached[0].name.startswith("sentencepiece-64-")
    weights = _weights(tmp_path / "first")
    assert {tuple(w.shape) for k, w in weights.items() if k.endswith("word_embeddings.weight")} == {(64, 64)}
    assert (tmp_path / "first" / "vocabulary" / "spiece.model").read_bytes() == (cached[0] / "spiece.model").read_bytes()
    (tmp_path / "first" / "cell.json").write_text(json.dumps(cell))  # what the job writes beside the run
    loaded = load_cell(tmp_path / "first", "last")  # experiments.recipes.evaluate rebuilds it from the cell's copy
    assert loaded.input_tokenizer.vocab_size == 64
    from experiments.recipes.evaluate_preflight import check_cell_weights

    check_cell_weights(tmp_path / "first", "last")  # the evaluation's pre-flight builds it the same way

    second = RecordingLogger()
    train_cell({**cell, "seed": 4}, tmp_path / "second", second)
    assert second.tags["vocabulary_trained"] is False and second.tags["vocabulary"] == first.tags["vocabulary"]


def test_preemption_save_resumes_from_the_start_of_the_interrupted_step(assets, tmp_path):
    """The hook the job calls on SIGUSR2, fired in the middle of step 3 (its forward pass), writes a checkpoint
    from which the resumed cell redoes step 3 and ends where an uninterrupted cell ends."""
    import experiments.recipes.train as train_module

    cell = make_cell(assets, tmp_path / "root", steps=4, eval_every=0, checkpoint_every=0)
    straight = train_cell(cell, tmp_path / "straight", RecordingLogger())

    logger = RecordingLogger()
    original = train_module.CellTrainer._micro_loss
    calls = {"n": 0}

    def interrupted_loss(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:  # step 3's forward: the job receives its preemption signal here
            for hook in logger.preempt_hooks:
                hook()
            raise SimulatedCrash("preempted")
        return original(self, batch)

    train_module.CellTrainer._micro_loss = interrupted_loss
    try:
        with pytest.raises(SimulatedCrash):
            train_cell(cell, tmp_path / "preempted", logger)
    finally:
        train_module.CellTrainer._micro_loss = original
    assert checkpointing.read_trainer_state(tmp_path / "preempted" / "checkpoints" / "last")["step"] == 2
    resumed = train_cell(cell, tmp_path / "preempted", RecordingLogger())
    assert resumed == straight
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "preempted")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, cell: dict, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        train_cell(cell, Path(out_dir), RecordingLogger())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_ddp_on_two_processes_equals_one_process_on_the_same_global_batch(assets, tmp_path):
    import torch.multiprocessing as mp

    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    cell = make_cell(assets, tmp_path / "root", model=no_dropout, steps=3, eval_every=0, checkpoint_every=0,
                     lr=1e-3)
    accumulated = dict(cell, train=dict(cell["train"], grad_accum=2))
    single = train_cell(accumulated, tmp_path / "single", RecordingLogger())
    mp.spawn(_ddp_worker, args=(2, _free_port(), cell, str(tmp_path / "ddp")), nprocs=2, join=True)

    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    start = load_file(Path(assets["checkpoints"]["bert"]) / "model.safetensors")
    assert not torch.allclose(a["encoder.embeddings.LayerNorm.bias"], start["bert.embeddings.LayerNorm.bias"])
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, f"DDP and single-process weights differ by {worst}"
    ddp_summary = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp_summary["test"] == pytest.approx(single) and ddp_summary["examples"]["test"] == 8


def test_nan_loss_stops_the_cell_with_a_clear_error(assets, tmp_path):
    broken = tmp_path / "broken-bert"
    broken.mkdir()
    source = Path(assets["checkpoints"]["bert"])
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (broken / name).write_bytes((source / name).read_bytes())
    weights = load_file(source / "model.safetensors")
    weights["bert.encoder.layer.0.output.dense.weight"][0, 0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"))
    cell = make_cell(assets, tmp_path / "root", checkpoints={**assets["checkpoints"], "bert": str(broken)})
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(NaN/inf\)"):
        train_cell(cell, tmp_path / "cell", RecordingLogger())


@pytest.mark.parametrize("scheme", ["gpt", "roberta2gpt", "robertaShare"])
def test_other_scheme_families_train_and_decode(assets, tmp_path, scheme):
    """The decoder-only prefix LM, two vocabularies (RoBERTa in, GPT-2 out) and full sharing, with bf16 autocast."""
    cell = make_cell(assets, tmp_path / "root", scheme=scheme, task="wikisplit", steps=2, eval_every=0,
                     checkpoint_every=0, bf16=True)
    logger = RecordingLogger()
    metrics = train_cell(cell, tmp_path / "cell", logger)
    assert set(metrics) == {"exact", "sari", "bleu_nltk", "sacrebleu"}
    assert all(math.isfinite(v) for v in metrics.values())
    rows = [json.loads(line) for line in (tmp_path / "cell" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(r["prediction"], str) for r in rows)
    assert logger.tags["max_source_length"] >= 2 and logger.tags["train_examples"] == 40


# -- extra test sets (WMT's newstest2016) -----------------------------------------------------------------------------
class RecordingClient:
    """What CellLogger sends to MLflow, kept in memory (only the calls send_operations makes)."""

    def __init__(self):
        self.metrics: dict[str, float] = {}
        self.artifacts: list[str] = []

    def log_batch(self, run_id, metrics=(), tags=(), synchronous=True):
        self.metrics.update({m.key: m.value for m in metrics})

    def log_artifact(self, run_id, path, artifact_path=None):
        self.artifacts.append(Path(path).name)

    def update_run(self, run_id, status):
        pass

    def set_terminated(self, run_id, status, end_time=None):
        pass


def _wmt_cell(assets: dict, root: Path) -> dict:
    """wmt14_en_de (which declares newstest2016) on the smoke split task's local files, test capped at 5."""
    cell = make_cell(assets, root, task="wmt14_en_de", steps=2, eval_every=0, checkpoint_every=0)
    cell["max_examples"]["test"] = 5
    return cell


def test_extra_test_set_is_decoded_scored_and_logged_like_the_test_split(assets, tmp_path):
    from analysis import schema
    from experiments.grid.identity import EXTRA_PREDICTIONS_GLOB, METRICS_FILE, PREDICTIONS_FILE
    from experiments.tracking.runs import CellLogger

    cell = _wmt_cell(assets, tmp_path / "root")
    cell["data"]["newstest2016"] = dict(cell["data"]["validation"])  # a different file than the test split's
    logger = RecordingLogger()
    metrics = train_cell(cell, tmp_path / "cell", logger)

    assert set(metrics) == {"sacrebleu", "bleu_uncased", "newstest2016_sacrebleu", "newstest2016_bleu_uncased"}
    assert {p.name for p in logger.artifacts} == {"predictions.jsonl", "predictions_newstest2016.jsonl", "metrics.json"}
    rows = [json.loads(line) for line in (tmp_path / "cell" / "predictions_newstest2016.jsonl").read_text().splitlines()]
    source_rows = [json.loads(line) for line in Path(assets["tasks"]["split"]["validation"]).read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in source_rows[:5]]  # the test split's cap, file order
    assert all(set(r) == {"id", "source", "reference", "prediction"} for r in rows)
    recomputed = compute_metrics(("sacrebleu", "bleu_uncased"), [r["source"] for r in rows],
                                 [r["prediction"] for r in rows], [[r["reference"]] for r in rows])
    assert {k: metrics[f"newstest2016_{k}"] for k in recomputed} == pytest.approx(recomputed)
    summary = json.loads((tmp_path / "cell" / "metrics.json").read_text())
    assert summary["test"] == {k: metrics[k] for k in ("sacrebleu", "bleu_uncased")}
    assert summary["test_newstest2016"] == pytest.approx(recomputed) and summary["skipped_test_splits"] == []
    assert summary["examples"] == {"train": 40, "validation": 8, "test": 5, "newstest2016": 5}

    # What the job sends to MLflow (CellJob.finish_success with the returned metrics), in the names analysis reads.
    client = RecordingClient()
    job_logger = CellLogger("memory://", "run", tmp_path / "cell", client=client, final_retries=0)
    out_dir = tmp_path / "cell"
    job_logger.finish_success(metrics, [out_dir / PREDICTIONS_FILE, *sorted(out_dir.glob(EXTRA_PREDICTIONS_GLOB)),
                                        out_dir / METRICS_FILE])
    assert set(client.metrics) == {"test_sacrebleu", "test_bleu_uncased", "test_newstest2016_sacrebleu",
                                   "test_newstest2016_bleu_uncased"}
    assert schema.split_metric_key("test_newstest2016_bleu_uncased", schema.TEST_METRIC_PREFIXES) == (
        "newstest2016", "bleu_uncased")
    assert "predictions_newstest2016.jsonl" in client.artifacts
    assert "predictions_newstest2016.jsonl" in schema.predictions_artifact_candidates("newstest2016")


def test_local_cell_without_the_extra_test_set_skips_it_with_a_warning(assets, tmp_path, caplog):
    cell = _wmt_cell(assets, tmp_path / "root")  # local data, nothing named for newstest2016: no hub download
    logger = RecordingLogger()
    with caplog.at_level("WARNING", logger="experiments.recipes.train"):
        metrics = train_cell(cell, tmp_path / "cell", logger)
    assert set(metrics) == {"sacrebleu", "bleu_uncased"}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("data.newstest2016" in w and "skipping it" in w for w in warnings), warnings
    assert {p.name for p in logger.artifacts} == {"predictions.jsonl", "metrics.json"}
    assert not (tmp_path / "cell" / "predictions_newstest2016.jsonl").exists()
    assert logger.tags["skipped_test_splits"] == "newstest2016"
    summary = json.loads((tmp_path / "cell" / "metrics.json").read_text())
    assert summary["skipped_test_splits"] == ["newstest2016"] and "test_newstest2016" not in summary


def test_extra_test_sets_come_from_the_hub_only_with_the_test_split():
    from experiments.config.cell import DataSources
    from experiments.config.tasks import TASKS
    from experiments.recipes.build import extra_test_splits, predictions_file

    wmt, hub = TASKS["wmt14_de_en"], {"train": None, "validation": None, "test": None}
    assert extra_test_splits(DataSources(**hub), wmt) == (("newstest2016",), ())
    local = {**hub, "test": {"path": "test.jsonl"}}
    assert extra_test_splits(DataSources(**local), wmt) == ((), ("newstest2016",))
    assert extra_test_splits(DataSources(**local, newstest2016="nt16.jsonl"), wmt) == (("newstest2016",), ())
    assert extra_test_splits(DataSources(**hub), TASKS["discofuse"]) == ((), ())
    assert (predictions_file("test"), predictions_file("newstest2016")) == (
        "predictions.jsonl", "predictions_newstest2016.jsonl")
