"""kill -9 in the middle of writing a checkpoint: the previous checkpoint stays loadable and resuming from it ends
exactly where an uninterrupted run ends.

A child process trains, saves a checkpoint, trains on and starts the next save; a hook stops it at a chosen point of
that save (half of a file written, between the two renames of the swap, before the old copy is removed) and tells
the parent, which kills it with SIGKILL — no handler, no cleanup, as the OOM killer or a dead node would. The parent
then finds the checkpoint, loads it, resumes and compares with a run that was never interrupted: equal, not close.

First at the level of experiments.recipes.checkpointing with a small model (dropout on, Adam, the global RNG), then with a
whole cell (experiments.recipes.train.train_cell on the tiny assets) killed while writing its second periodic checkpoint.

Run as a script, this file is the child: ``python tests/test_crash_safety.py {loop,cell} ...``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the child runs this file as a script
from integration_helpers import REPO, quick_assets, subprocess_env, tiny_cell, wait_until  # noqa: E402

from experiments.recipes import checkpointing  # noqa: E402

TOTAL_STEPS = 7
FIRST_SAVE, SECOND_SAVE = 3, 5


# -- a small training loop with every kind of state --------------------------------------------------------------------
def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(1234)
    model = nn.Sequential(nn.Linear(16, 64), nn.Dropout(0.2), nn.GELU(), nn.Linear(64, 16))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, start: int, stop: int) -> None:
    """Steps start+1..stop; inputs and dropout masks come from the global RNG, as in train_cell."""
    model.train()
    for _ in range(start, stop):
        x = torch.randn(8, 16)
        loss = ((model(x) - x.flip(1)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def uninterrupted_weights() -> dict[str, torch.Tensor]:
    model, optimizer = make_model()
    train(model, optimizer, 0, TOTAL_STEPS)
    return {k: v.clone() for k, v in model.state_dict().items()}


# -- the child's hooks: each stops the save at one point and reports it ------------------------------------------------
def _stall(marker: Path, what: str) -> None:
    marker.write_text(what)
    time.sleep(300)  # the parent kills us long before
    os._exit(3)


def _half_written(path: Path) -> None:
    data = Path(path).read_bytes()
    with open(path, "r+b") as fh:
        fh.truncate(len(data) // 2)
        fh.flush()
        os.fsync(fh.fileno())


def install_hook(point: str, marker: Path) -> None:
    if point == "model-file":
        real = checkpointing.save_model

        def save_model(model, filename, metadata=None):
            real(model, filename, metadata=metadata)
            _half_written(Path(filename))
            _stall(marker, point)
        checkpointing.save_model = save_model
    elif point == "optimizer-file":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            if Path(f).name == checkpointing.OPTIMIZER_FILE:
                _half_written(Path(f))
                _stall(marker, point)
        torch.save = save
    elif point in ("between-renames", "before-old-copy-removed"):
        real_replace, real_rmtree = os.replace, checkpointing.shutil.rmtree

        def replace(src, dst):
            real_replace(src, dst)
            if point == "between-renames" and Path(dst).name.startswith(".old-"):
                _stall(marker, point)  # the old checkpoint is set aside, the new one not yet in its place

        def rmtree(path, *args, **kwargs):
            if point == "before-old-copy-removed" and Path(path).name.startswith(".old-"):
                _stall(marker, point)  # the new one is in place, the old one still aside
            return real_rmtree(path, *args, **kwargs)
        checkpointing.os.replace = replace
        checkpointing.shutil.rmtree = rmtree
    else:
        raise ValueError(point)


def child_loop(point: str, directory: Path, marker: Path, kill_first_save: bool) -> None:
    torch.set_num_threads(1)
    model, optimizer = make_model()
    if kill_first_save:
        install_hook(point, marker)
    train(model, optimizer, 0, FIRST_SAVE)
    checkpointing.save_checkpoint(directory, model, optimizer, {"step": FIRST_SAVE})
    install_hook(point, marker)
    train(model, optimizer, FIRST_SAVE, SECOND_SAVE)
    checkpointing.save_checkpoint(directory, model, optimizer, {"step": SECOND_SAVE})
    raise AssertionError("the hook should have stopped the second save")


def child_cell(cell_file: Path, out_dir: Path, marker: Path) -> None:
    """train_cell, stopped half-way through writing ``checkpoints/last`` the second time (its step-8 save)."""
    from experiments.recipes.train import train_cell
    from experiments.tracking.runs import NullLogger

    torch.set_num_threads(1)
    real = checkpointing.save_model
    calls = {"last": 0}

    def save_model(model, filename, metadata=None):
        real(model, filename, metadata=metadata)
        if Path(filename).parent.name.startswith(".tmp-last-"):
            calls["last"] += 1
            if calls["last"] == 2:
                _half_written(Path(filename))
                _stall(marker, "cell")
    checkpointing.save_model = save_model
    train_cell(json.loads(cell_file.read_text()), out_dir, NullLogger())
    raise AssertionError("the hook should have stopped the second save of checkpoints/last")


# -- the parent --------------------------------------------------------------------------------------------------------
def run_and_kill(args: list[str], marker: Path, timeout_s: float = 240) -> str:
    """Start the child, wait until its hook reports, SIGKILL it; returns where it was stopped."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def stopped():
            if proc.poll() is not None:
                raise AssertionError(f"child exited ({proc.returncode}) before its hook: "
                                     f"{proc.stdout.read().decode(errors='replace')[-3000:]}")
            return marker.is_file()

        wait_until(stopped, timeout_s, f"the child to reach its kill point ({marker.name})", interval_s=0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stdout.close()
    return marker.read_text()


def debris(parent: Path) -> list[str]:
    """What interrupted saves left beside the checkpoints (temporary and set-aside copies)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _partial_files(parent: Path) -> list[Path]:
    """Files of an interrupted save that cannot be read back (proof that the kill came mid-write)."""
    from safetensors import safe_open

    broken = []
    for tmp in parent.glob(".tmp-*"):
        for file in tmp.iterdir():
            try:
                if file.suffix == ".safetensors":
                    with safe_open(str(file), "pt"):
                        pass
                elif file.suffix == ".pt":
                    torch.load(file, weights_only=True)
            except Exception:  # noqa: BLE001 - any failure to read is what we look for
                broken.append(file)
    return broken


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


KILL_POINTS = [  # (where the save is stopped, which save, the step a resume starts from)
    ("model-file", "second", FIRST_SAVE),
    ("optimizer-file", "second", FIRST_SAVE),
    ("between-renames", "second", FIRST_SAVE),
    ("before-old-copy-removed", "second", SECOND_SAVE),
    ("model-file", "first", 0),
]


@pytest.mark.parametrize("point,which,resume_step", KILL_POINTS,
                         ids=[f"{p}-of-the-{w}-save" for p, w, _ in KILL_POINTS])
def test_kill_9_while_saving_leaves_a_checkpoint_that_resumes_exactly(tmp_path, point, which, resume_step):
    directory = tmp_path / "ckpt" / "last"
    marker = tmp_path / "stopped"
    where = run_and_kill(["loop", point, str(directory), str(marker), which], marker)
    assert where == point
    if point in ("model-file", "optimizer-file"):
        assert _partial_files(directory.parent), "the kill should have left a half-written file behind"

    found = checkpointing.find_checkpoint(directory)
    model, optimizer = make_model()
    if resume_step == 0:
        assert found is None  # killed in the first save: nothing to resume from, and nothing half-read
    else:
        assert found is not None
        assert found.name == (".old-last" if point == "between-renames" else "last")
        state, rng = checkpointing.load_checkpoint(found, model, optimizer)
        assert state["step"] == resume_step and rng is not None
        checkpointing.restore_rng_state(rng)
    train(model, optimizer, resume_step, TOTAL_STEPS)
    reference = uninterrupted_weights()
    weights = model.state_dict()
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)

    # the resumed run's next save replaces everything the killed one left lying around
    checkpointing.save_checkpoint(directory, model, optimizer, {"step": TOTAL_STEPS})
    assert debris(directory.parent) == []
    assert checkpointing.read_trainer_state(checkpointing.find_checkpoint(directory))["step"] == TOTAL_STEPS


def test_a_cell_killed_while_writing_its_checkpoint_resumes_to_the_uninterrupted_result(tmp_path_factory,
                                                                                      tmp_path):
    from safetensors.torch import load_file

    from experiments.recipes.train import train_cell

    class Steps:
        def __init__(self):
            self.steps = []

        def log_metrics(self, metrics, step):
            if "loss" in metrics:
                self.steps.append(step)

        def log_artifact(self, path):
            pass

        def set_tags(self, tags):
            pass

    assets = quick_assets(tmp_path_factory)
    cell = tiny_cell(assets, tmp_path / "root", steps=12, checkpoint_every=4, eval_every=4)
    cell_file = tmp_path / "cell.json"
    cell_file.write_text(json.dumps(cell))
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    marker = tmp_path / "stopped"
    assert run_and_kill(["cell", str(cell_file), str(killed), str(marker)], marker) == "cell"

    last = killed / "checkpoints" / "last"
    assert _partial_files(last.parent), "the kill should have left a half-written model.safetensors"
    assert checkpointing.read_trainer_state(checkpointing.find_checkpoint(last))["step"] == 4  # the previous one

    resumed_log = Steps()
    resumed = train_cell(cell, killed, resumed_log)
    assert resumed_log.steps == list(range(5, 13))  # from the step-4 checkpoint, not from scratch
    assert debris(last.parent) == []  # the next save removed the half-written copy
    expected = train_cell(cell, straight, Steps())
    assert resumed == expected
    a, b = load_file(last / "model.safetensors"), load_file(straight / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (killed / "predictions.jsonl").read_text() == (straight / "predictions.jsonl").read_text()


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind == "loop":
        point, directory, marker, which = rest
        child_loop(point, Path(directory), Path(marker), kill_first_save=which == "first")
    elif kind == "cell":
        cell_file, out_dir, marker = rest
        child_cell(Path(cell_file), Path(out_dir), Path(marker))
    else:
        raise SystemExit(f"unknown child {kind!r}")
