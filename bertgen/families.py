"""The three checkpoint families the paper warm-starts from, as one table: ``FAMILIES``.

A family is one axis everywhere: the keyword of ``bertgen.schemes.build`` (``bert=``, ``roberta=``, ``gpt2=``), the
vocabulary a scheme's side reads and writes, the grid's ``checkpoints.<family>``. Its record says everything the
rest of the library needs to know about it, so that adding a family is one row here:

- which ``config.json`` model types it reads and the config class they become (``bertgen.checkpoint``),
- the key map from the checkpoint's tensor names to our modules', and where a stack's layers and embeddings live
  (``bertgen.checkpoint``, ``bertgen.schemes``),
- its tokenizer: the kind ``bertgen.tokenization.load_tokenizer`` builds, its special tokens, and the start / end /
  pad ids to assume when a checkpoint comes without tokenizer files (``bertgen.tokenization``, ``bertgen.schemes``).

Which model class runs a config is the config class's business (``modeling_encoder_decoder.MODEL_CLASSES``): BERT
and RoBERTa share one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .configuration import BertGenerationConfig, GPT2Config, PretrainedConfig


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
# Tensors that checkpoints of these families may persist and that are not weights: integer index buffers (BERT's
# and RoBERTa's position / token-type ids) and GPT-2's causal masks. Only these may have a non-float dtype.
NON_WEIGHT_SUFFIXES = ("position_ids", "token_type_ids") + GPT2_MASK_BUFFERS


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


def _bert_ids(raw: dict[str, Any]) -> tuple[int, int, int]:
    """BERT's config.json does not name [CLS] / [SEP]; every released vocabulary has them at 101 / 102."""
    return 101, 102, raw.get("pad_token_id", 0)


def _roberta_ids(raw: dict[str, Any]) -> tuple[int, int, int]:
    return raw.get("bos_token_id", 0), raw.get("eos_token_id", 2), raw.get("pad_token_id", 1)


def _gpt2_ids(raw: dict[str, Any]) -> tuple[int, int, int]:
    """GPT-2 has one special token: it starts, ends and pads."""
    eos = raw.get("eos_token_id", 50256)
    return raw.get("bos_token_id", eos), eos, eos


@dataclass(frozen=True)
class Family:
    """One checkpoint family (module docstring)."""

    name: str
    model_types: tuple[str, ...]  # config.json model_type values read as this family
    config_class: type[PretrainedConfig]
    config_to_ours: Callable[[dict[str, Any]], dict[str, Any]]
    map_state: Callable[[StateDict, str], tuple[StateDict, StateDict, list[str], list[str]]]
    prefix: str  # the base model's name inside transformers' task models (BertForMaskedLM.bert …)
    layers: str  # a stack's layer list in our modules: "<layers>.<i>.<rest>"
    embeddings: tuple[str, ...]  # key prefixes of the stack's embeddings
    tokenizer: str  # load_tokenizer's kind
    subwords: str  # "wordpiece" or "bpe": with the name, what a TokenizerSpec calls its kind ("bert-wordpiece")
    special_tokens: dict[str, str]  # role (bos, eos, unk, sep, pad, cls, mask) -> token, transformers' defaults
    default_ids: Callable[[dict[str, Any]], tuple[int, int, int]]  # (start, end, pad) from config.json alone
    word_embeddings: str  # key prefix of the word-embedding matrix among ``embeddings`` (Table 6 randomises it alone)

    @property
    def expected_model_types(self) -> str:
        """"model_type 'bert' or 'bert-generation'", for messages."""
        return "model_type " + " or ".join(map(repr, self.model_types))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("bert", ("bert", "bert-generation"), BertGenerationConfig, bert_config_to_ours, map_bert_family, "bert.",
           "encoder.layer", ("embeddings.",), "bert", "wordpiece",
           {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}, _bert_ids,
           "embeddings.word_embeddings."),
    Family("roberta", ("roberta",), BertGenerationConfig, bert_config_to_ours, map_roberta_family, "roberta.",
           "encoder.layer", ("embeddings.",), "roberta", "bpe",
           {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "sep": "</s>", "pad": "<pad>", "cls": "<s>",
            "mask": "<mask>"}, _roberta_ids, "embeddings.word_embeddings."),
    Family("gpt2", ("gpt2",), GPT2Config, gpt2_config_to_ours, map_gpt2_family, "transformer.",
           "h", ("wte.", "wpe."), "gpt2", "bpe",
           {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>", "pad": "<|endoftext|>"},
           _gpt2_ids, "wte."),
)}

# config.json model_type -> its family.
MODEL_TYPES: dict[str, Family] = {model_type: f for f in FAMILIES.values() for model_type in f.model_types}
