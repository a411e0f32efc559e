"""Reading and writing checkpoints in HF layout.

Every public checkpoint the paper warm-starts from is a directory with ``config.json`` and ``model.safetensors``
(or ``pytorch_model.bin``, read with ``torch.load(weights_only=True)``). Its ``model_type`` names its family
(``bertgen.families``), whose key map turns the checkpoint's tensor names into the names of our modules, folds what
our modules do not have (BERT's token-type embedding for segment 0 goes into the position embeddings) and sets aside
what the target does not use (pooler, MLM head). Whatever the target has that the checkpoint does not is reported
as newly initialised.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .configuration import CONFIG_NAME, ConfigError, PretrainedConfig
from .families import MODEL_TYPES, Family, StateDict

logger = logging.getLogger("bertgen")

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
HUB_FILES = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model", "pytorch_model.bin"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: wrong family, bad file, shape mismatch."""


@dataclass
class LoadingReport:
    """What ``from_pretrained`` did with each tensor."""

    source: str
    model_type: str
    loaded: list[str] = field(default_factory=list)
    newly_initialized: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.source} ({self.model_type}): {len(self.loaded)} tensors loaded, "
                f"{len(self.newly_initialized)} newly initialised, {len(self.unused)} unused, "
                f"{len(self.folded)} folded")


# -- locating and reading ---------------------------------------------------------------------------------------
def is_local_reference(name_or_path: str | os.PathLike) -> bool:
    """Whether a checkpoint reference names a local path (the rule everything that reads one follows): it exists,
    starts with ``.``, ``/`` or ``~``, or has more than one ``/``. Anything else is a hub id (``org/name``)."""
    name = str(name_or_path)
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local directory as is; otherwise a hub id, fetched (or found in the HF cache) via huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if is_local_reference(name):
        raise CheckpointError(f"{name}: not a checkpoint directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached; try the network unless told we are offline
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise CheckpointError(f"{name}: not found locally, pass a directory (HF_HUB_OFFLINE is set)")
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=HUB_FILES, etag_timeout=5))
    except Exception as err:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise CheckpointError(f"{name}: not found locally, pass a directory (hub: {type(err).__name__})") from None


def read_config_dict(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise CheckpointError(f"{path}: expected a JSON object with a model_type")
    return data


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """safetensors first (single file or sharded index), then pytorch_model.bin with weights_only=True."""
    try:
        if (directory / SAFE_WEIGHTS).is_file():
            return load_file(directory / SAFE_WEIGHTS)
        if (directory / SAFE_INDEX).is_file():
            index = json.loads((directory / SAFE_INDEX).read_text(encoding="utf-8"))
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index["weight_map"].values())):
                state.update(load_file(directory / shard))
            return state
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory}: corrupt safetensors weights ({err})") from None
    if (directory / TORCH_WEIGHTS).is_file():
        try:
            state = torch.load(directory / TORCH_WEIGHTS, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unpickling refuses anything but tensors
            raise CheckpointError(f"{directory / TORCH_WEIGHTS}: refused or unreadable ({str(err).splitlines()[0]})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{directory / TORCH_WEIGHTS}: expected a state dict, got {type(state).__name__}")
        return state
    raise CheckpointError(f"{directory}: no {SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS}")


def family_for(model_type: str, where: str) -> Family:
    """The family a checkpoint's ``config.json`` model_type belongs to; ``where`` names the file in the error."""
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{where}: unsupported model_type {model_type!r}; expected one of "
                              f"{sorted(MODEL_TYPES) + ['encoder-decoder']}")
    return MODEL_TYPES[model_type]


def build_config(raw: dict[str, Any], where: str, **overrides: Any) -> PretrainedConfig:
    family = family_for(raw.get("model_type"), where)
    try:
        return family.config_class.from_dict(family.config_to_ours(raw), **overrides)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{where}: {err}") from None


# -- loading into a module ---------------------------------------------------------------------------------------
def assign_weights(model: torch.nn.Module, weights: StateDict, report: LoadingReport, prefix: str = "") -> None:
    """Copy ``weights`` into ``model`` (names relative to ``prefix``); shape mismatches are errors."""
    own = model.state_dict()
    for key, tensor in weights.items():
        full = prefix + key
        if full not in own:
            report.unused.append(key)
            continue
        if own[full].shape != tensor.shape:
            raise CheckpointError(f"{report.source}: tensor {key} has shape {tuple(tensor.shape)} in the checkpoint "
                                  f"but {tuple(own[full].shape)} in the model")
        report.loaded.append(full)
    with torch.no_grad():
        params = dict(model.named_parameters(remove_duplicate=False))
        buffers = dict(model.named_buffers(remove_duplicate=False))
        for key, tensor in weights.items():
            target = params.get(prefix + key, buffers.get(prefix + key))
            if target is not None:
                target.copy_(tensor.to(target.dtype))


def finish_report(model: torch.nn.Module, report: LoadingReport, only_prefix: str = "") -> None:
    loaded = set(report.loaded)
    shared = _shared_names(model)
    for key in model.state_dict():
        if key.startswith(only_prefix) and key not in loaded and not (shared.get(key, set()) & loaded):
            report.newly_initialized.append(key)


def _shared_names(model: torch.nn.Module) -> dict[str, set[str]]:
    """For each parameter name, the other names of the same tensor (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {n: set(names) - {n} for names in by_id.values() for n in names}


def without_absolute_positions_if_relative(state: StateDict, raw: dict[str, Any]) -> StateDict:
    """BERT and RoBERTa with relative position embeddings never add their absolute position table (their embedding
    layer adds it only for "absolute"), while BertGeneration always adds it. A zero table gives BERT's sums; the
    token-type folding then fills it with the segment-0 vector."""
    if raw.get("model_type") not in ("bert", "roberta") or raw.get("position_embedding_type", "absolute") == "absolute":
        return state
    key = "embeddings.position_embeddings.weight"
    out = {k: torch.zeros_like(v) if k.endswith(key) else v for k, v in state.items()}
    if not any(k.endswith(key) for k in out):
        out[key] = torch.zeros(int(raw.get("max_position_embeddings", 512)), int(raw.get("hidden_size", 768)))
    return out


def load_stack_checkpoint(model, directory: Path, raw: dict[str, Any], target_prefix: str, report: LoadingReport,
                          with_head: bool) -> None:
    """Load a single-stack checkpoint (BERT, RoBERTa, BertGeneration) into ``model`` under ``target_prefix``."""
    family = family_for(raw["model_type"], str(directory))
    state = without_absolute_positions_if_relative(read_state_dict(directory), raw)
    stack, head, unused, folded = family.map_state(state, family.prefix)
    report.unused.extend(unused)
    report.folded.extend(folded)
    weights = {target_prefix + k: v for k, v in stack.items()}
    if with_head:
        weights.update(head)
    else:
        report.unused.extend(head)
    assign_weights(model, weights, report)


def load_pretrained(cls, name_or_path, revision=None, **overrides):
    directory = resolve_checkpoint_dir(name_or_path, revision)
    raw = read_config_dict(directory)
    loader = getattr(cls, "_load_pretrained", None)
    if loader is not None:
        return loader(directory, raw, **overrides)
    config = build_config(raw, str(directory), **overrides)
    if not isinstance(config, cls.config_class):
        raise CheckpointError(f"{directory}: a {raw['model_type']} checkpoint cannot be loaded as {cls.__name__}")
    model = cls(config)
    report = LoadingReport(str(name_or_path), raw["model_type"])
    prefix = "bert." if hasattr(model, "bert") else ""
    load_stack_checkpoint(model, directory, raw, prefix, report, with_head=hasattr(model, "lm_head"))
    finish_report(model, report)
    model.tie_weights()
    model.loading_report = report
    _log_report(report)
    return model


def _log_report(report: LoadingReport) -> None:
    logger.info(report.summary())
    if report.newly_initialized:
        logger.info("newly initialised: %s", ", ".join(report.newly_initialized))
    if report.unused:
        logger.info("unused: %s", ", ".join(report.unused))


# -- saving ------------------------------------------------------------------------------------------------------
def save_pretrained(model, directory: str | os.PathLike) -> None:
    """config.json + model.safetensors, written to temporary names and renamed, so a crash leaves no half file.

    Tensors that transformers re-ties on load are left out; any other shared tensor is written as its own copy,
    so HF classes that do not know our sharing still load every weight.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skip = model.hf_retied_keys()
    state = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict(keep_vars=False).items():
        if key in skip:
            continue
        ptr = tensor.untyped_storage().data_ptr()
        state[key] = tensor.detach().clone().contiguous() if ptr in seen else tensor.detach().contiguous()
        seen.add(ptr)
    to_hf = getattr(model, "state_dict_to_hf", None)  # e.g. GPT-2's Linear → Conv1D transposes
    if to_hf is not None:
        state = to_hf(state)
    tmp_weights = directory / (SAFE_WEIGHTS + ".tmp")
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    tmp_config = directory / (CONFIG_NAME + ".tmp")
    tmp_config.write_text(model.config.to_json_string(), encoding="utf-8")
    os.replace(tmp_weights, directory / SAFE_WEIGHTS)
    os.replace(tmp_config, directory / CONFIG_NAME)
