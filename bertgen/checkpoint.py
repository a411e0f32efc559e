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
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .configuration import CONFIG_NAME, ConfigError, PretrainedConfig
from .families import MODEL_TYPES, NON_WEIGHT_SUFFIXES, Family, StateDict

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
    # "name: float16 -> float32" for each tensor stored in another float dtype than the parameter it fills.
    converted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.source} ({self.model_type}): {len(self.loaded)} tensors loaded, "
                f"{len(self.newly_initialized)} newly initialised, {len(self.unused)} unused, "
                f"{len(self.folded)} folded, {len(self.converted)} converted")


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
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to read; expected a checkpoint's config.json") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise CheckpointError(f"{path}: expected a JSON object with a model_type")
    return data


# safetensors' dtype names (the header's "dtype"), as torch dtypes.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
# The safetensors format's own bound on its JSON header: a larger length prefix is a corrupt file, not a header.
MAX_SAFETENSORS_HEADER = 100_000_000


class _DuplicateKey(Exception):
    """A JSON object with a key twice: which value a reader keeps is up to the reader, so neither is trusted."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as a safetensors header lists it: enough to check it against a model without reading it."""

    dtype: torch.dtype
    shape: tuple[int, ...]


def read_safetensors_header(file: str | os.PathLike) -> dict[str, TensorHeader]:
    """Every tensor's dtype and shape from a safetensors file's header, reading no tensor data (a launch
    pre-flight can check a checkpoint against the model it will fill in milliseconds). The header must describe
    the file exactly: known dtypes, non-negative integer shapes, byte ranges that match dtype × shape and lie
    inside the file; anything else is a ``CheckpointError`` naming the file and the tensor."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
            if not 2 <= length <= min(MAX_SAFETENSORS_HEADER, size - 8):
                raise CheckpointError(f"{file}: corrupt safetensors header (length {length} for a file of "
                                      f"{size} bytes)")
            header = json.loads(handle.read(length).decode("utf-8"), object_pairs_hook=_unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{file}: corrupt safetensors header ({type(err).__name__})") from None
    except _DuplicateKey as err:
        raise CheckpointError(f"{file}: corrupt safetensors header: {str(err)[:100]!r} appears twice; expected each "
                              "tensor once") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header: expected a JSON object, got "
                              f"{type(header).__name__}")
    data_size = size - 8 - length
    out: dict[str, TensorHeader] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{file}: corrupt safetensors header: tensor {name[:100]}"
        if not isinstance(entry, dict) or entry.get("dtype") not in SAFETENSORS_DTYPES:
            dtype = entry.get("dtype") if isinstance(entry, dict) else entry
            raise CheckpointError(f"{where}: dtype {str(dtype)[:40]!r}; expected a safetensors dtype such as F32, "
                                  "F16 or BF16")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"{where}: shape {str(shape)[:60]}; expected a list of non-negative integers")
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        nbytes = math.prod(shape) * dtype.itemsize
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] and offsets[1] - offsets[0] == nbytes and offsets[1] <= data_size):
            raise CheckpointError(f"{where}: data_offsets {str(offsets)[:60]}; expected {nbytes} bytes "
                                  f"({entry['dtype']} {tuple(shape)}) inside the file's {data_size} data bytes")
        out[name] = TensorHeader(dtype, tuple(shape))
    return out


def check_weight_dtypes(dtypes: dict[str, torch.dtype], file: str | os.PathLike) -> None:
    """Every weight of a checkpoint is a float tensor; integer or bool data under a weight's name is a corrupt
    or edited file (an F32 header changed to I32 keeps the byte count and would load as integers cast to
    floats). Index and mask buffers some checkpoints persist (``NON_WEIGHT_SUFFIXES``) are not weights."""
    for name, dtype in dtypes.items():
        if not dtype.is_floating_point and not name.endswith(NON_WEIGHT_SUFFIXES):
            raise CheckpointError(f"{file}: tensor {name[:100]} has dtype {dtype}; expected a floating-point "
                                  "dtype (integer data must not be cast into float weights)")


def weights_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (one file or the shards of an index); [] when it has
    only ``pytorch_model.bin`` or no weights."""
    if (directory / SAFE_WEIGHTS).is_file():
        return [directory / SAFE_WEIGHTS]
    if (directory / SAFE_INDEX).is_file():
        try:
            index = json.loads((directory / SAFE_INDEX).read_text(encoding="utf-8"))
            return [directory / shard for shard in sorted(set(index["weight_map"].values()))]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{directory / SAFE_INDEX}: expected a safetensors index with a weight_map "
                                  f"({type(err).__name__})") from None
    return []


def read_weight_headers(directory: Path) -> dict[str, TensorHeader]:
    """Every safetensors tensor's dtype and shape in a checkpoint directory, weights checked as
    ``check_weight_dtypes`` does, no tensor data read. Empty for a ``pytorch_model.bin`` checkpoint (a pickle
    has no header to read without unpickling it)."""
    headers: dict[str, TensorHeader] = {}
    for file in weights_files(directory):
        part = read_safetensors_header(file)
        check_weight_dtypes({name: h.dtype for name, h in part.items()}, file)
        headers.update(part)
    return headers


def read_state_dict(directory: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """safetensors first (single file or sharded index), then pytorch_model.bin with weights_only=True. Every
    file's weights are checked to be floats (``check_weight_dtypes``) before anything is converted.

    ``meta=True``: tensors on the meta device with the checkpoint's dtypes and shapes, from the safetensors headers
    alone, so a meta-device build can check every tensor against the model it fills without reading the weights
    (a pickle has no header: ``pytorch_model.bin`` is read, then moved to the meta device)."""
    files = weights_files(directory)
    if files and meta:
        return {name: torch.empty(h.shape, dtype=h.dtype, device="meta")
                for name, h in read_weight_headers(directory).items()}
    if files:
        state: dict[str, torch.Tensor] = {}
        for file in files:
            check_weight_dtypes({name: h.dtype for name, h in read_safetensors_header(file).items()}, file)
            try:
                state.update(load_file(file))
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{directory}: corrupt safetensors weights ({err})") from None
        return state
    if (directory / TORCH_WEIGHTS).is_file():
        try:
            state = torch.load(directory / TORCH_WEIGHTS, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unpickling refuses anything but tensors
            raise CheckpointError(f"{directory / TORCH_WEIGHTS}: refused or unreadable ({str(err).splitlines()[0]})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{directory / TORCH_WEIGHTS}: expected a state dict of tensors, got "
                                  f"{type(state).__name__}")
        check_weight_dtypes({name: t.dtype for name, t in state.items()}, directory / TORCH_WEIGHTS)
        return {name: t.to("meta") for name, t in state.items()} if meta else state
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
    """Copy ``weights`` into ``model`` (names relative to ``prefix``). Each tensor is checked against the
    parameter it fills before any is copied: a different shape or a non-float tensor for a float parameter is an
    error; a different float dtype (an fp16 checkpoint into an fp32 model) is converted and recorded in
    ``report.converted``."""
    own = model.state_dict(keep_vars=True)
    for key, tensor in weights.items():
        full = prefix + key
        if full not in own:
            report.unused.append(key)
            continue
        target = own[full]
        if target.shape != tensor.shape:
            raise CheckpointError(f"{report.source}: tensor {key} has shape {tuple(tensor.shape)} in the checkpoint "
                                  f"but {tuple(target.shape)} in the model")
        if target.is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(f"{report.source}: tensor {key} has dtype {tensor.dtype} in the checkpoint but "
                                  f"the model's is {target.dtype}; expected floating-point data")
        if tensor.dtype != target.dtype:
            report.converted.append(f"{full}: {tensor.dtype} -> {target.dtype}")
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
    # transformers' convention: a loaded model is ready to use (dropout off); training calls model.train().
    return model.eval()


def _log_report(report: LoadingReport) -> None:
    logger.info(report.summary())
    if report.newly_initialized:
        logger.info("newly initialised: %s", ", ".join(report.newly_initialized))
    if report.unused:
        logger.info("unused: %s", ", ".join(report.unused))
    if report.converted:
        logger.info("converted: %s", ", ".join(report.converted))


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
