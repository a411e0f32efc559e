"""Training checkpoints that a killed job resumes from exactly.

A checkpoint is a directory:

    model.safetensors      every weight (tied tensors once; ``safetensors.torch.save_model``)
    optimizer.pt           ``optimizer.state_dict()`` (Adam moments), read back with ``weights_only=True``
    rng.pt                 python / numpy / torch / CUDA generator states, one entry per distributed rank
    trainer_state.json     step, data-loader position (epoch, batches consumed), schedule state, best dev score

``trainer_state.json`` is written last, so a directory without it is incomplete. The whole directory is built under a
temporary name and swapped in with ``os.replace``; a POSIX rename cannot replace a non-empty directory, so the old one
is first renamed aside (``.old-<name>``) and deleted after the swap. A crash between the two renames leaves the
previous checkpoint under ``.old-<name>``, which :func:`find_checkpoint` falls back to — at no moment is there no
complete checkpoint on disk. A save that does not fit on the disk (however torch or safetensors report it) removes
its temporary copy and raises :class:`experiments.system.disk.DiskFullError`: one line with the path, the space the
checkpoint needs and what is free; the previous checkpoint stays, and a relaunch once there is room resumes from it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from ..system import disk as disk_space

# A trained cell keeps its checkpoints in <cell dir>/checkpoints/<name>: the last (resumable) and, with
# train.select: best_dev, the best on the dev loss.
CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"


class CheckpointCorruptError(ValueError):
    """A training checkpoint that cannot be resumed from (missing file, wrong shapes)."""


# -- random number generators ----------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Every generator the training loop draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    py_version, py_internal, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- writing ---------------------------------------------------------------------------------------------------
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _tensor_bytes(tensors: Any) -> int:
    """Bytes of the distinct tensors in a (nested) state dict: what a checkpoint of them occupies, near enough."""
    seen, total = set(), 0
    stack = [tensors]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            key = (item.data_ptr(), item.numel())  # tied weights are one tensor twice
            if key not in seen:
                seen.add(key)
                total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """The space :func:`save_checkpoint` needs for a new checkpoint beside the previous one (which it keeps until
    the new one is complete): weights, optimizer state, and 64 KB for the RNG and trainer state files."""
    optimizer_state = optimizer.state_dict()["state"] if optimizer is not None else {}
    return _tensor_bytes(model.state_dict()) + _tensor_bytes(optimizer_state) + 64 * 2**10


def _kept_checkpoint(directory: Path) -> str:
    """What a failed save leaves to resume from, for its error message."""
    found = find_checkpoint(directory)
    if found is None:
        return "no earlier checkpoint: once there is room, relaunching with --retry-failed starts the cell again"
    try:
        step = read_trainer_state(found)["step"]
    except CheckpointCorruptError:
        step = "?"
    return (f"the previous checkpoint (step {step}) is kept: once there is room, relaunching with --retry-failed "
            "resumes from it")


def save_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    trainer_state: dict[str, Any], rng_states: list[dict[str, Any]] | None = None) -> Path:
    """Write a complete checkpoint to ``directory`` atomically (see the module docstring); returns ``directory``.

    ``rng_states`` holds one :func:`capture_rng_state` per rank (rank 0 first); ``None`` captures this process's.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Half-written copies of a save that was killed (kill -9, OOM, node loss) are never read; each is as large as
    # a checkpoint, so they are removed before they pile up over many preemptions. Only one process saves a given
    # directory (rank 0; the preemption hook skips while a save runs), so none of them can still be in progress.
    for stale in directory.parent.glob(f".tmp-{directory.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    kept = _kept_checkpoint(directory)  # said when this save does not fit
    with disk_space.writing(directory, checkpoint_bytes(model, optimizer), "a checkpoint", hint=kept):
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
        _write_and_swap(tmp, directory, model, optimizer, trainer_state, rng_states)
    return directory


def _write_and_swap(tmp: Path, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    trainer_state: dict[str, Any], rng_states: list[dict[str, Any]] | None) -> None:
    """Write every file into ``tmp``, fsync them, swap ``tmp`` in as ``directory``; on any error ``tmp`` is gone."""
    try:
        save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(rng_states if rng_states is not None else [capture_rng_state()], tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE):
            if (tmp / name).exists():
                _fsync_file(tmp / name)
        aside = directory.parent / f".old-{directory.name}"
        if aside.exists():
            shutil.rmtree(aside)
        if directory.exists():
            os.replace(directory, aside)
        os.replace(tmp, directory)
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- reading ---------------------------------------------------------------------------------------------------
def _complete(directory: Path) -> bool:
    return (directory / STATE_FILE).is_file() and (directory / MODEL_FILE).is_file()


def find_checkpoint(directory: Path) -> Path | None:
    """``directory`` when it holds a complete checkpoint, else the copy set aside by an interrupted swap, else None."""
    directory = Path(directory)
    if _complete(directory):
        return directory
    aside = directory.parent / f".old-{directory.name}"
    if _complete(aside):
        return aside
    return None


def read_trainer_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointCorruptError(f"{path}: unreadable trainer state ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointCorruptError(f"{path}: expected a JSON object with an integer 'step'")
    return state


def load_model_weights(directory: Path, model: torch.nn.Module) -> None:
    path = Path(directory) / MODEL_FILE
    try:
        load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
    except (RuntimeError, OSError, SafetensorError) as err:  # SafetensorError: a truncated or corrupt file
        raise CheckpointCorruptError(f"{path}: does not fit this model ({str(err).splitlines()[0]} …)") from None


def load_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    rank: int = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load weights and optimizer state in place; returns (trainer_state, this rank's RNG state or None).

    The RNG state is returned rather than restored so the caller can restore it at the exact point the saving run
    captured it (after building the model and data loaders, which draw random numbers of their own).
    """
    directory = Path(directory)
    state = read_trainer_state(directory)
    load_model_weights(directory, model)
    if optimizer is not None:
        path = directory / OPTIMIZER_FILE
        if not path.is_file():
            raise CheckpointCorruptError(f"{path}: missing (needed to resume training)")
        # Optimizer.load_state_dict moves the moments onto each parameter's device itself.
        optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    rng = None
    if (directory / RNG_FILE).is_file():
        states = torch.load(directory / RNG_FILE, map_location="cpu", weights_only=True)
        rng = states[rank] if rank < len(states) else None
    return state, rng
