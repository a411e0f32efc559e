"""Model configuration: one dataclass per family, read from and written to HF ``config.json``.

The field names and defaults are those of transformers' ``BertGenerationConfig`` (the seed of the paper's
released checkpoints), so a ``config.json`` written by either library reads in the other. Keys this class does
not know are kept in ``extra`` and written back unchanged, so a round trip never loses information.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh", "tanh")
POSITION_EMBEDDING_TYPES = ("absolute", "relative_key", "relative_key_query")
CONFIG_NAME = "config.json"


class ConfigError(ValueError):
    """A configuration value of the wrong type or outside its allowed set."""


def _check_type(cls_name: str, name: str, value: Any, annotation: str) -> Any:
    """Coerce and check one field; the error names the field, the expected type and the value."""
    base = annotation.replace("Optional[", "").rstrip("]").replace(" | None", "")
    if value is None and ("Optional" in annotation or "None" in annotation):
        return None
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base == "str":
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{cls_name}.{name}: expected {base}, got {type(value).__name__} {value!r}")


@dataclass
class PretrainedConfig:
    """Shared machinery: JSON round trip, unknown-key preservation and field validation."""

    model_type: ClassVar[str] = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            setattr(self, f.name, _check_type(type(self).__name__, f.name, getattr(self, f.name), str(f.type)))
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    # -- dict / JSON -----------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} - {"extra"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "PretrainedConfig":
        data = {**data, **overrides}
        known = cls.field_names()
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "model_type"}
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.extra.items()}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        out["model_type"] = self.model_type
        return dict(sorted(out.items()))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "PretrainedConfig":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data, **overrides)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            fh.write(self.to_json_string())

    def replace(self, **changes: Any) -> "PretrainedConfig":
        return dataclasses.replace(self, **changes)

    def _require(self, condition: bool, name: str, expected: str) -> None:
        if not condition:
            raise ConfigError(f"{type(self).__name__}.{name}: expected {expected}, got {getattr(self, name)!r}")


@dataclass
class BertGenerationConfig(PretrainedConfig):
    """A BERT-compatible Transformer stack (post-LN), usable as encoder or as decoder.

    ``position_offset`` and ``type_vocab_size`` exist so that RoBERTa (positions start at ``padding_idx + 1``) and
    BERT checkpoints (token-type embeddings) map onto the same module: both are folded away at load time.
    """

    model_type: ClassVar[str] = "bert-generation"

    vocab_size: int = 50358
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 1
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    # RoBERTa-style positions: ids are padding_idx + 1 + index of the non-pad token (0 for BERT).
    position_offset: int = 0
    # Width of the encoder states the cross-attention reads (None: hidden_size).
    cross_attention_hidden_size: int | None = None

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            self._require(getattr(self, name) > 0, name, "a positive integer")
        self._require(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                      f"a multiple of num_attention_heads={self.num_attention_heads}")
        self._require(self.hidden_act in ACTIVATIONS, "hidden_act", f"one of {ACTIVATIONS}")
        self._require(self.position_embedding_type in POSITION_EMBEDDING_TYPES, "position_embedding_type",
                      f"one of {POSITION_EMBEDDING_TYPES}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            self._require(0.0 <= getattr(self, name) < 1.0, name, "a probability in [0, 1)")
        self._require(self.layer_norm_eps > 0, "layer_norm_eps", "a positive float")
        self._require(self.initializer_range > 0, "initializer_range", "a positive float")
        self._require(self.position_offset >= 0, "position_offset", "a non-negative integer")
        if self.pad_token_id is not None:
            self._require(0 <= self.pad_token_id < self.vocab_size, "pad_token_id", f"an id below vocab_size={self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# HF's GPT2Config.attribute_map: the generic names other code (EncoderDecoderModel, generation) reads.
GPT2_ALIASES = {
    "hidden_size": "n_embd",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "max_position_embeddings": "n_positions",
    "intermediate_size": "n_inner",
}


@dataclass
class GPT2Config(PretrainedConfig):
    """GPT-2 (pre-LN, final ``ln_f``, learned positions), with HF's field names so ``config.json`` reads both ways.

    The generic names (``hidden_size``, ``num_hidden_layers`` …) are read-only properties, as HF's
    ``attribute_map``; ``from_dict`` and ``replace`` accept them as aliases. GPT-2 is always causal, so
    ``is_decoder`` defaults to True. ``decoder_start_token_id`` is the separator the prefix LM (the paper's ``gpt``
    scheme) puts between input and target; None means ``bos_token_id``.
    """

    model_type: ClassVar[str] = "gpt2"

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    is_decoder: bool = True
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    def validate(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            self._require(getattr(self, name) > 0, name, "a positive integer")
        self._require(self.n_embd % self.n_head == 0, "n_embd", f"a multiple of n_head={self.n_head}")
        self._require(self.n_inner is None or self.n_inner > 0, "n_inner", "None or a positive integer")
        self._require(self.activation_function in ACTIVATIONS, "activation_function", f"one of {ACTIVATIONS}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            self._require(0.0 <= getattr(self, name) < 1.0, name, "a probability in [0, 1)")
        self._require(self.layer_norm_epsilon > 0, "layer_norm_epsilon", "a positive float")
        self._require(self.initializer_range > 0, "initializer_range", "a positive float")
        self._require(self.is_decoder, "is_decoder", "True (GPT-2 is a causal decoder)")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            self._require(value is None or 0 <= value < self.vocab_size, name,
                          f"None or an id below vocab_size={self.vocab_size}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "GPT2Config":
        merged = {GPT2_ALIASES.get(k, k): v for k, v in {**data, **overrides}.items()}
        return super().from_dict(merged)

    def replace(self, **changes: Any) -> "GPT2Config":
        return dataclasses.replace(self, **{GPT2_ALIASES.get(k, k): v for k, v in changes.items()})

    hidden_size = property(lambda self: self.n_embd)
    num_hidden_layers = property(lambda self: self.n_layer)
    num_attention_heads = property(lambda self: self.n_head)
    max_position_embeddings = property(lambda self: self.n_positions)
    intermediate_size = property(lambda self: self.n_inner if self.n_inner is not None else 4 * self.n_embd)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class EncoderDecoderConfig(PretrainedConfig):
    """Pairs an encoder and a decoder config, as HF's ``EncoderDecoderConfig`` does in ``config.json``."""

    model_type: ClassVar[str] = "encoder-decoder"

    encoder: Any = None
    decoder: Any = None
    decoder_start_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    tie_encoder_decoder: bool = False
    is_encoder_decoder: bool = True
    # bertShare-style sharing always ties the word embeddings of both sides; bert2rnd shares only those.
    share_word_embeddings: bool = False

    def validate(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = config_from_dict(self.encoder)
        if isinstance(self.decoder, dict):
            self.decoder = config_from_dict(self.decoder)
        self._require(self.encoder is not None, "encoder", "an encoder config")
        self._require(self.decoder is not None, "decoder", "a decoder config")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["encoder"] = self.encoder.to_dict()
        out["decoder"] = self.decoder.to_dict()
        return out


# Our own config.json model types (what save_pretrained writes): each config class names its own. Checkpoints of the
# families we warm-start from are read through bertgen.families, which maps their model types onto these classes.
CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    cls.model_type: cls for cls in (BertGenerationConfig, GPT2Config, EncoderDecoderConfig)
}


def config_from_dict(data: dict[str, Any]) -> PretrainedConfig:
    model_type = data.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ConfigError(f"config model_type: expected one of {sorted(CONFIG_CLASSES)}, got {model_type!r}")
    return CONFIG_CLASSES[model_type].from_dict(data)
