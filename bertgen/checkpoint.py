"""Reading and writing checkpoints in HF layout, with one explicit key map per source family.

Every public checkpoint the paper warm-starts from is a directory with ``config.json`` and ``model.safetensors``
(or ``pytorch_model.bin``, read with ``torch.load(weights_only=True)``). A family's key map turns the checkpoint's
tensor names into the names of our modules, folds what our modules do not have (BERT's token-type embedding for
segment 0 goes into the position embeddings) and sets aside what the target does not use (pooler, MLM head).
Whatever the target has that the checkpoint does not is reported as newly initialised.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .configuration import CONFIG_NAME, BertGenerationConfig, ConfigError, GPT2Config, PretrainedConfig

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


# -- family key maps -------------------------------------------------------------------------------------------
# Each map takes a checkpoint state dict and returns (stack, head, unused, folded): ``stack`` keyed like
# BertGenerationEncoder's own state dict, ``head`` the LM-head tensors a BertGenerationDecoder can use.
StateDict = dict[str, torch.Tensor]


def _strip_prefix(state: StateDict, prefix: str) -> StateDict:
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    return dict(state)


def _fold_token_types(stack: StateDict, folded: list[str]) -> None:
    """BERT and RoBERTa add ``token_type_embeddings[0]`` to every token of a single-segment input; it is a constant
    vector, so adding it to every position embedding gives the same sums without a token-type table."""
    key = "embeddings.token_type_embeddings.weight"
    if key in stack:
        token_types = stack.pop(key)
        stack["embeddings.position_embeddings.weight"] = stack["embeddings.position_embeddings.weight"] + token_types[0]
        folded.append(key)


def map_bert_family(state: StateDict, prefix: str) -> tuple[StateDict, StateDict, list[str], list[str]]:
    """BERT (BertModel, BertForPreTraining, BertForMaskedLM, BertLMHeadModel), RoBERTa and BertGeneration."""
    state = _strip_prefix(state, prefix)
    stack: StateDict = {}
    head: StateDict = {}
    unused: list[str] = []
    folded: list[str] = []
    for key, tensor in state.items():
        if key.startswith(("embeddings.", "encoder.")):
            if key.endswith("position_ids"):
                continue  # a non-persistent buffer in current transformers, persisted by old versions
            stack[key] = tensor
        elif key in ("lm_head.bias", "lm_head.decoder.weight"):
            head.setdefault(key, tensor)
        elif key == "lm_head.decoder.bias":
            # transformers' head computes decoder(h) with decoder.bias; it is tied to lm_head.bias only when the
            # word embeddings are tied, so when both are saved this is the one its forward used.
            head["lm_head.bias"] = tensor
        else:
            unused.append(key)  # pooler, MLM / NSP heads: the paper does not use them
    _fold_token_types(stack, folded)
    return stack, head, unused, folded


def bert_config_to_ours(raw: dict[str, Any]) -> dict[str, Any]:
    data = dict(raw)
    if raw.get("model_type") == "roberta":
        data["position_offset"] = int(raw.get("pad_token_id", 1)) + 1
    for key in ("type_vocab_size", "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers",
                "pooler_size_per_head", "pooler_type", "directionality", "architectures", "classifier_dropout",
                "model_type", "transformers_version", "torch_dtype", "dtype", "gradient_checkpointing"):
        data.pop(key, None)
    return data


def map_roberta_family(state: StateDict, prefix: str) -> tuple[StateDict, StateDict, list[str], list[str]]:
    """RoBERTa (RobertaModel, RobertaForMaskedLM, RobertaForCausalLM): the stack maps as BERT's. The position table
    is kept whole: RoBERTa's offset (real tokens start at padding_idx + 1) is the config's ``position_offset``.
    The LM head (dense → LayerNorm → decoder + bias) is unused, as BERT's MLM head is: the paper's decoders project
    with the tied embedding matrix and a bias of their own."""
    state = _strip_prefix(state, prefix)
    head_keys = sorted(k for k in state if k.startswith("lm_head."))
    stack, _, unused, folded = map_bert_family({k: v for k, v in state.items() if k not in head_keys}, "")
    return stack, {}, unused + head_keys, folded


# GPT-2's Conv1D modules store [in, out]; ours are nn.Linear, [out, in] (nanoGPT's list of the same suffixes).
GPT2_CONV1D_SUFFIXES = (
    "attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight",
    "crossattention.c_attn.weight", "crossattention.q_attn.weight", "crossattention.c_proj.weight",
)
# Causal-mask buffers persisted by old GPT-2 checkpoints: not weights, nothing to load.
GPT2_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias", ".crossattention.bias", ".crossattention.masked_bias")


def map_gpt2_family(state: StateDict, prefix: str) -> tuple[StateDict, StateDict, list[str], list[str]]:
    """GPT-2 (GPT2Model, GPT2LMHeadModel, our saves): ``wte``/``wpe``/``h.N``/``ln_f`` keyed like our GPT2Model,
    every Conv1D weight transposed to nn.Linear's layout; ``lm_head.weight`` (when saved untied) is the head."""
    state = _strip_prefix(state, prefix)
    stack: StateDict = {}
    head: StateDict = {}
    unused: list[str] = []
    for key, tensor in state.items():
        if key.endswith(GPT2_MASK_BUFFERS):
            continue
        if key == "lm_head.weight":
            head[key] = tensor
        elif key.startswith(("wte.", "wpe.", "h.", "ln_f.")):
            stack[key] = tensor.t() if key.endswith(GPT2_CONV1D_SUFFIXES) else tensor
        else:
            unused.append(key)
    return stack, head, unused, []


def gpt2_state_to_hf(state: StateDict) -> StateDict:
    """The inverse of ``map_gpt2_family``'s transposes, so transformers' GPT2LMHeadModel loads our saves."""
    return {k: v.t().contiguous() if k.endswith(GPT2_CONV1D_SUFFIXES) else v for k, v in state.items()}


def gpt2_config_to_ours(raw: dict[str, Any]) -> dict[str, Any]:
    data = dict(raw)
    for key in ("architectures", "model_type", "transformers_version", "torch_dtype", "dtype"):
        data.pop(key, None)
    return data


@dataclass(frozen=True)
class Family:
    """How one checkpoint model_type maps onto our classes."""

    config_to_ours: Callable[[dict[str, Any]], dict[str, Any]]
    map_state: Callable[[StateDict, str], tuple[StateDict, StateDict, list[str], list[str]]]
    prefix: str
    config_class: type[PretrainedConfig]


FAMILIES: dict[str, Family] = {
    "bert": Family(bert_config_to_ours, map_bert_family, "bert.", BertGenerationConfig),
    "roberta": Family(bert_config_to_ours, map_roberta_family, "roberta.", BertGenerationConfig),
    "bert-generation": Family(bert_config_to_ours, map_bert_family, "bert.", BertGenerationConfig),
    "gpt2": Family(gpt2_config_to_ours, map_gpt2_family, "transformer.", GPT2Config),
}


def register_family(model_type: str, family: Family) -> None:
    FAMILIES[model_type] = family


def family_for(model_type: str, where: str) -> Family:
    if model_type not in FAMILIES:
        raise CheckpointError(f"{where}: unsupported model_type {model_type!r}; expected one of "
                              f"{sorted(FAMILIES) + ['encoder-decoder']}")
    return FAMILIES[model_type]


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
