"""The paper's ten warm-start schemes (Rothe et al. 2020, §3 and Table 1) as one table, and the builder.

``build(name, bert=…, roberta=…, gpt2=…)`` returns the model and a ``SchemeSpec`` naming the tokenizer that
encodes the inputs and the one that decodes the outputs, so a harness needs no knowledge of the scheme. Each
checkpoint argument is a checkpoint directory (or hub id), or an HF ``config.json`` dict to build without weights
(``parameter_counts`` does that on the meta device to reproduce Table 1).

Sharing, as in the paper's parameter counts: every encoder-decoder whose two sides use one vocabulary (rnd2rnd,
bert2rnd, rnd2bert, bert2bert, rnd2gpt) has ONE word-embedding matrix, shared by the encoder, the decoder and the
decoder's output projection (``share_word_embeddings``); Table 1's 221M for bert2bert is only reached that way
(two matrices would be 243.8M). When one side is random and the other warm, the shared matrix is the warm one.
bertShare and robertaShare share every encoder parameter with the decoder (``tie_encoder_decoder``); bert2gpt and
roberta2gpt keep two matrices (two vocabularies; for roberta2gpt the same BPE merges, but RoBERTa's own ids).

Random in every scheme: the decoder's cross-attention (GPT-2: with its ``ln_cross_attn``), the BERT decoder's
output bias (29k parameters, BERT checkpoints have none that fits), ``enc_to_dec_proj`` when the two widths
differ, and the whole random side except a shared embedding matrix.

§5's ablation knob is ``WarmStart``: warm-start only the embeddings, only the first k layers, or a listed subset
of a checkpoint's layers (the model then has as many layers as were listed).
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    LoadingReport,
    _log_report,
    assign_weights,
    build_config,
    family_for,
    finish_report,
    read_config_dict,
    read_state_dict,
    resolve_checkpoint_dir,
)
from .configuration import BertGenerationConfig, ConfigError, EncoderDecoderConfig, GPT2Config, PretrainedConfig
from .modeling_encoder_decoder import EncoderDecoderModel
from .modeling_gpt2 import GPT2PrefixLM, keep_first_positions

VOCABULARIES = ("bert", "roberta", "gpt2")
log = logging.getLogger(__name__)


# -- the table ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheme:
    """One row of the paper's Table 1.

    ``encoder`` / ``decoder``: the checkpoint a side is warm-started from ("bert", "roberta", "gpt2"), "rnd" for
    a random BERT-compatible stack, None for no encoder (the decoder-only ``gpt``). ``share``: "none",
    "embeddings" (one word-embedding matrix) or "all" (the decoder reuses every encoder parameter).
    """

    name: str
    encoder: str | None
    decoder: str
    share: str
    input_vocab: str
    output_vocab: str
    description: str

    @property
    def checkpoints(self) -> tuple[str, ...]:
        """The ``build`` arguments this scheme needs: warm sides and vocabularies (a random side takes its
        architecture from the checkpoint of its vocabulary)."""
        needed = {self.input_vocab, self.output_vocab} | {s for s in (self.encoder, self.decoder) if s in VOCABULARIES}
        return tuple(v for v in VOCABULARIES if v in needed)


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    #      name            encoder    decoder    share         input      output     description
    Scheme("rnd2rnd",      "rnd",     "rnd",     "embeddings", "bert",    "bert",    "all random, BERT vocabulary"),
    Scheme("bert2rnd",     "bert",    "rnd",     "embeddings", "bert",    "bert",    "BERT encoder, random decoder"),
    Scheme("rnd2bert",     "rnd",     "bert",    "embeddings", "bert",    "bert",    "random encoder, BERT decoder"),
    Scheme("bert2bert",    "bert",    "bert",    "embeddings", "bert",    "bert",    "only cross-attention random"),
    Scheme("bertShare",    "bert",    "bert",    "all",        "bert",    "bert",    "bert2bert, all shared"),
    Scheme("robertaShare", "roberta", "roberta", "all",        "roberta", "roberta", "RoBERTa both sides, all shared"),
    Scheme("gpt",          None,      "gpt2",    "none",       "gpt2",    "gpt2",    "GPT-2 alone, input as prefix"),
    Scheme("rnd2gpt",      "rnd",     "gpt2",    "embeddings", "gpt2",    "gpt2",    "random encoder, GPT-2 decoder"),
    Scheme("bert2gpt",     "bert",    "gpt2",    "none",       "bert",    "gpt2",    "BERT in, GPT-2 out"),
    Scheme("roberta2gpt",  "roberta", "gpt2",    "none",       "roberta", "gpt2",    "one BPE, two embedding matrices"),
)}

# Table 1 of the paper, total parameters in millions (also in ../shared/paper/table1_parameters.csv).
TABLE1_TOTAL_PARAMS_M: dict[str, int] = {
    "rnd2rnd": 221, "bert2rnd": 221, "rnd2bert": 221, "bert2bert": 221, "bertShare": 136,
    "robertaShare": 152, "gpt": 125, "rnd2gpt": 238, "bert2gpt": 260, "roberta2gpt": 276,
}

# The configs of the public checkpoints the paper starts from (values of their config.json on the hub):
# BERT cased, RoBERTa, GPT-2 (small / medium). Used to count parameters without downloading weights.
PAPER_CHECKPOINT_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "base": {
        "bert": dict(model_type="bert", vocab_size=28996, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0),
        "roberta": dict(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                        type_vocab_size=1, hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2),
        "gpt2": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                     bos_token_id=50256, eos_token_id=50256),
    },
    "large": {
        "bert": dict(model_type="bert", vocab_size=28996, hidden_size=1024, num_hidden_layers=24,
                     num_attention_heads=16, intermediate_size=4096, max_position_embeddings=512, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0),
        "roberta": dict(model_type="roberta", vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                        num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514,
                        type_vocab_size=1, hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2),
        "gpt2": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=1024, n_layer=24, n_head=16,
                     bos_token_id=50256, eos_token_id=50256),
    },
}


# -- §5 ablation knob -----------------------------------------------------------------------------------------------
CROSS_ATTENTION_INITS = ("random", "self_attention")


@dataclass(frozen=True)
class WarmStart:
    """Which parts of a checkpoint seed the warm-started sides (the paper's §5 ablations).

    ``embeddings``: word and position embeddings with their LayerNorm (BERT, RoBERTa) or ``wte``/``wpe`` (GPT-2).
    ``layers``: "all" (layer i from layer i), "none" (same depth, every layer random), an int k (the model has k
    layers, the checkpoint's first k) or a tuple of 0-based checkpoint layers (the model has that many, layer i
    from ``layers[i]``). GPT-2's final ``ln_f`` is warm when any layer is. Depth applies to every stack of the
    model, warm or random. Use ``paper_layers("9,10,13-18,23,24")`` for the paper's 1-based notation.
    """

    embeddings: bool = True
    layers: str | int | tuple[int, ...] = "all"
    # "random" (the paper: cross-attention is always new) or "self_attention": each warm decoder layer's
    # cross-attention starts as a copy of its own self-attention, so it attends by content from the first update
    # instead of uniformly (see the README's "Why the decoder ignored the encoder").
    cross_attention: str = "random"

    def __post_init__(self) -> None:
        if self.cross_attention not in CROSS_ATTENTION_INITS:
            raise ValueError(f"WarmStart.cross_attention: expected one of {CROSS_ATTENTION_INITS}, got "
                             f"{self.cross_attention!r}")
        layers = self.layers
        if isinstance(layers, list):
            object.__setattr__(self, "layers", layers := tuple(layers))
        ok = (layers in ("all", "none") or (isinstance(layers, int) and not isinstance(layers, bool) and layers > 0)
              or (isinstance(layers, tuple) and layers
                  and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)))
        if not ok:
            raise ValueError(f"WarmStart.layers: expected 'all', 'none', a positive int or a non-empty tuple of "
                             f"0-based layer indices, got {layers!r}")

    def depth(self, checkpoint_layers: int) -> int:
        if self.layers in ("all", "none"):
            return checkpoint_layers
        return self.layers if isinstance(self.layers, int) else len(self.layers)

    def source_layers(self, depth: int) -> tuple[int, ...]:
        """Checkpoint layer for each warm model layer, in model order."""
        if self.layers == "none":
            return ()
        if self.layers == "all":
            return tuple(range(depth))
        return tuple(range(self.layers)) if isinstance(self.layers, int) else self.layers


def paper_layers(text: str) -> tuple[int, ...]:
    """The paper's 1-based layer lists ("9,10,13-18,23,24") as 0-based indices for ``WarmStart.layers``."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match or int(match.group(1)) < 1:
            raise ValueError(f"paper_layers: {part!r} in {text!r} is not a 1-based layer or range like 13-18")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        out.extend(range(first - 1, last))
    return tuple(out)


# -- what build returns ---------------------------------------------------------------------------------------------
TOKENIZER_KINDS = {"bert": "bert-wordpiece", "roberta": "roberta-bpe", "gpt2": "gpt2-bpe"}
# (start, end, pad) token strings of each vocabulary; GPT-2 has one special token and pads with it.
SPECIAL_TOKENS = {"bert": ("[CLS]", "[SEP]", "[PAD]"), "roberta": ("<s>", "</s>", "<pad>"),
                  "gpt2": ("<|endoftext|>", "<|endoftext|>", "<|endoftext|>")}


@dataclass(frozen=True)
class TokenizerSpec:
    """The tokenizer of one side: its kind, where its files are, and the ids the model was configured with.

    When ``pad_token_id == eos_token_id`` (GPT-2) the label mask must come from the attention mask, not from
    comparing ids with the pad id, or every end token would be dropped from the loss.
    """

    kind: str
    vocabulary: str
    source: str | None
    vocab_file: str | None
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int


@dataclass
class SchemeSpec:
    scheme: Scheme
    inputs: TokenizerSpec
    outputs: TokenizerSpec
    warm_start: WarmStart
    report: LoadingReport | None = field(default=None, repr=False)


class Built(NamedTuple):
    model: nn.Module
    spec: SchemeSpec


# -- checkpoint sources ---------------------------------------------------------------------------------------------
FAMILY_MODEL_TYPES = {"bert": ("bert", "bert-generation"), "roberta": ("roberta",), "gpt2": ("gpt2",)}


@dataclass
class _Source:
    role: str
    raw: dict[str, Any]
    directory: Path | None
    name: str
    config: PretrainedConfig


def _resolve_source(role: str, value: Any, scheme: str) -> _Source:
    if value is None:
        raise ValueError(f"{scheme} needs {role}= (a checkpoint directory, a hub id or a config.json dict)")
    if isinstance(value, dict):
        raw, directory, name = dict(value), None, f"{role}= config"
    elif isinstance(value, (str, Path)):
        directory = resolve_checkpoint_dir(value)
        raw, name = read_config_dict(directory), str(value)
    else:
        raise ValueError(f"{role}=: expected a checkpoint directory, a hub id or a config.json dict, "
                         f"got {type(value).__name__}")
    model_type = raw.get("model_type")
    if model_type not in FAMILY_MODEL_TYPES[role]:
        where = directory / "config.json" if directory is not None else name
        raise CheckpointError(f"{where}: model_type {model_type!r}, but {scheme} needs a {role} checkpoint for "
                              f"{role}= (model_type {' or '.join(map(repr, FAMILY_MODEL_TYPES[role]))})")
    config = build_config(raw, name)
    return _Source(role, raw, directory, name, config)


def _read_vocabulary(path: Path) -> tuple[dict[str, int], int, Path] | None:
    """token → id, the vocabulary size (largest id + 1) and the file, from vocab.txt / vocab.json /
    tokenizer.json (a directory is searched for them, a file is read as is); None when there is none."""
    if path.is_file():
        files = [path]
    else:
        files = [path / n for n in ("vocab.txt", "vocab.json", "tokenizer.json")]
        files += sorted(path.glob("*vocab.txt")) + sorted(path.glob("*vocab.json"))
    for file in files:
        if not file.is_file():
            continue
        try:
            if file.suffix == ".txt":
                lines = file.read_text(encoding="utf-8").split("\n")
                if lines and lines[-1] == "":
                    lines.pop()
                return {tok: i for i, tok in enumerate(lines)}, len(lines), file
            data = json.loads(file.read_text(encoding="utf-8"))
            if "model" in data:  # tokenizers' tokenizer.json
                vocab = dict(data["model"]["vocab"])
                vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
            else:
                vocab = data
            return vocab, max(vocab.values()) + 1, file
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{file}: not a readable vocabulary ({type(err).__name__}: {err})") from None
    return None


def _tokenizer_spec(source: _Source, override: str | Path | None) -> TokenizerSpec:
    """Ids of the start / end / pad tokens, from the vocabulary file when there is one (it must fit the
    checkpoint's embedding matrix exactly), else from the checkpoint's config."""
    role, raw = source.role, source.raw
    vocab_size = source.config.vocab_size
    location = Path(override) if override is not None else source.directory
    found = _read_vocabulary(location) if location is not None else None
    if override is not None and found is None:
        raise CheckpointError(f"{override}: no vocab.txt, vocab.json or tokenizer.json for the {role} vocabulary")
    start, end, pad = SPECIAL_TOKENS[role]
    if found is not None:
        vocab, size, file = found
        if size != vocab_size:
            weights = source.directory / "config.json" if source.directory is not None else source.name
            raise CheckpointError(f"{file}: the {role} vocabulary has {size} token ids, but {weights} has "
                                  f"vocab_size={vocab_size}; the tokenizer does not match the checkpoint")
        missing = [t for t in (start, end, pad) if t not in vocab]
        if missing:
            raise CheckpointError(f"{file}: the {role} vocabulary lacks {', '.join(missing)}")
        ids = (vocab[start], vocab[end], vocab[pad])
    else:
        file = None
        if role == "bert":  # BERT's config.json does not name [CLS] / [SEP]; every released vocab has 101 / 102
            ids = (101, 102, raw.get("pad_token_id", 0))
        elif role == "roberta":
            ids = (raw.get("bos_token_id", 0), raw.get("eos_token_id", 2), raw.get("pad_token_id", 1))
        else:
            eos = raw.get("eos_token_id", 50256)
            ids = (raw.get("bos_token_id", eos), eos, eos)
        if not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids):
            raise CheckpointError(f"{source.name}: no vocabulary file beside the checkpoint and the default "
                                  f"{role} ids (start, end, pad) = {ids} do not fit vocab_size={vocab_size}; "
                                  f"pass tokenizers={{'{role}': <vocab file or directory>}}")
    return TokenizerSpec(
        kind=TOKENIZER_KINDS[role], vocabulary=role,
        source=str(override) if override is not None else (str(source.directory) if source.directory else None),
        vocab_file=str(file) if file is not None else None, vocab_size=vocab_size,
        bos_token_id=ids[0], eos_token_id=ids[1], pad_token_id=ids[2],
    )


# -- configs --------------------------------------------------------------------------------------------------------
# Names callers may override on every stack, with GPT-2's own names for them.
GPT2_OVERRIDE_NAMES = {
    "hidden_size": ("n_embd",), "num_hidden_layers": ("n_layer",), "num_attention_heads": ("n_head",),
    "intermediate_size": ("n_inner",), "max_position_embeddings": ("n_positions",),
    "hidden_dropout_prob": ("resid_pdrop", "embd_pdrop"), "attention_probs_dropout_prob": ("attn_pdrop",),
    "hidden_act": ("activation_function",), "layer_norm_eps": ("layer_norm_epsilon",),
    "initializer_range": ("initializer_range",),
}


def _apply_overrides(config: PretrainedConfig, overrides: dict[str, Any]) -> PretrainedConfig:
    changes = overrides
    if isinstance(config, GPT2Config):
        changes = {}
        for name, value in overrides.items():
            if name not in GPT2_OVERRIDE_NAMES:
                raise ValueError(f"size override {name}: not one of {sorted(GPT2_OVERRIDE_NAMES)}")
            changes.update({target: value for target in GPT2_OVERRIDE_NAMES[name]})
    try:
        return config.replace(**changes)
    except TypeError as err:
        raise ValueError(f"size overrides {sorted(overrides)}: {err}") from None
    except ConfigError as err:
        raise ValueError(f"size overrides: {err}") from None


def _bert_stack_for(vocab_source: _Source, spec: TokenizerSpec) -> BertGenerationConfig:
    """A random BERT-compatible stack in ``vocab_source``'s vocabulary; for GPT-2 with GPT-2's dimensions."""
    config = vocab_source.config
    if isinstance(config, BertGenerationConfig):
        return config.replace(pad_token_id=spec.pad_token_id)
    return BertGenerationConfig(
        vocab_size=config.vocab_size, hidden_size=config.n_embd, num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head, intermediate_size=config.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=config.resid_pdrop, attention_probs_dropout_prob=config.attn_pdrop,
        max_position_embeddings=min(512, config.n_positions), initializer_range=config.initializer_range,
        pad_token_id=spec.pad_token_id, bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id,
    )


def _with_depth(config: PretrainedConfig, depth: int | None) -> PretrainedConfig:
    if depth is None or depth == config.num_hidden_layers:
        return config
    return config.replace(num_hidden_layers=depth)


# -- weights --------------------------------------------------------------------------------------------------------
LAYER_KEY = {"bert": re.compile(r"^encoder\.layer\.(\d+)\.(.*)$"), "gpt2": re.compile(r"^h\.(\d+)\.(.*)$")}
LAYER_NAME = {"bert": "encoder.layer.{}.{}", "gpt2": "h.{}.{}"}
EMBEDDING_PREFIXES = {"bert": ("embeddings.",), "gpt2": ("wte.", "wpe.")}


def _warm_weights(source: _Source, warm: WarmStart, depth: int, positions: int | None,
                  report: LoadingReport) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The checkpoint's stack (and LM-head) tensors that ``warm`` selects, renamed to the model's layer numbers;
    what it leaves out is reported as unused."""
    family = family_for(source.raw["model_type"], source.name)
    stack, head, unused, folded = family.map_state(read_state_dict(source.directory), family.prefix)
    kind = "gpt2" if source.role == "gpt2" else "bert"
    if kind == "gpt2" and positions is not None:
        unused = keep_first_positions(stack, positions) + unused
    report.unused.extend(f"{source.role}:{k}" for k in unused)
    report.folded.extend(f"{source.role}:{k}" for k in folded)
    chosen = warm.source_layers(depth)
    model_layer = {ckpt: i for i, ckpt in enumerate(chosen)}
    selected: dict[str, torch.Tensor] = {}
    for key, tensor in stack.items():
        match = LAYER_KEY[kind].match(key)
        if match:
            layer = int(match.group(1))
            if layer in model_layer:
                selected[LAYER_NAME[kind].format(model_layer[layer], match.group(2))] = tensor
                continue
        elif key.startswith(EMBEDDING_PREFIXES[kind]):
            if warm.embeddings:
                selected[key] = tensor
                continue
        elif key.startswith("ln_f.") and chosen:
            selected[key] = tensor
            continue
        report.unused.append(f"{source.role}:{key}")
    if not warm.embeddings:  # an LM head tied to the embeddings would bring them back
        report.unused.extend(f"{source.role}:{k}" for k in head)
        head = {}
    return selected, head


def _base_prefix(decoder: nn.Module) -> str:
    base = decoder.base_model
    return next(n for n, m in decoder.named_children() if m is base) + "."


def _check_layers(warm: WarmStart, source: _Source, depth: int) -> None:
    available = source.config.num_hidden_layers
    wanted = warm.source_layers(depth)
    bad = [i for i in wanted if i >= available]
    if bad:
        raise ValueError(f"warm_start.layers: layer {bad[0]} does not exist in {source.name} ({available} layers, "
                         f"numbered 0-{available - 1})")


# -- build ----------------------------------------------------------------------------------------------------------
def build(
    name: str,
    *,
    bert: str | Path | dict | None = None,
    roberta: str | Path | dict | None = None,
    gpt2: str | Path | dict | None = None,
    warm_start: WarmStart | None = None,
    gpt2_positions: int | None = 512,
    tokenizers: dict[str, str | Path] | None = None,
    device: str | torch.device | None = None,
    **size_overrides: Any,
) -> Built:
    """Build scheme ``name`` of the paper, warm-started from the given checkpoints.

    ``bert`` / ``roberta`` / ``gpt2``: checkpoint directories or hub ids (arguments the scheme does not use are
    ignored), or HF config.json dicts to build without weights. ``gpt2_positions``: GPT-2 keeps its first 512
    positions, as in the paper (None: all). ``tokenizers``: vocabulary files or directories per vocabulary when
    they are not beside the checkpoint. ``size_overrides`` (BERT names: ``num_hidden_layers``, ``hidden_size``,
    ``hidden_dropout_prob`` …) change every stack's config; a warm side must still match its checkpoint's shapes.
    ``device="meta"`` builds the modules without memory (configs only).

    Returns ``Built(model, spec)``: an ``EncoderDecoderModel`` (a ``GPT2PrefixLM`` for ``gpt``), and which
    tokenizers encode the inputs and decode the outputs, with the loading report (``spec.report``).
    """
    if name not in SCHEMES:
        raise ValueError(f"scheme {name!r}: expected one of {list(SCHEMES)}")
    scheme = SCHEMES[name]
    warm = warm_start if warm_start is not None else WarmStart()
    given = {"bert": bert, "roberta": roberta, "gpt2": gpt2}
    sources = {role: _resolve_source(role, given[role], name) for role in scheme.checkpoints}
    tokenizers = dict(tokenizers or {})
    unknown = set(tokenizers) - set(VOCABULARIES)
    if unknown:
        raise ValueError(f"tokenizers: unknown vocabulary {sorted(unknown)}; expected keys among {VOCABULARIES}")
    specs = {role: _tokenizer_spec(src, tokenizers.get(role)) for role, src in sources.items()}
    with_weights = any(src.directory is not None for src in sources.values())
    if with_weights and not all(src.directory is not None for src in sources.values()):
        raise ValueError(f"{name}: pass either checkpoints or config dicts for all of {list(sources)}, not a mix")
    if with_weights and device is not None and torch.device(device).type == "meta":
        raise ValueError("device='meta' builds without weights: pass config dicts, not checkpoints")

    # Depth: the knob's (an int or a list of layers), else the checkpoint's or the size override's.
    warm_sources = [sources[s] for s in (scheme.encoder, scheme.decoder) if s in VOCABULARIES]
    knob_depth = None
    if warm.layers not in ("all", "none"):
        knob_depth = warm.depth(0)
        if size_overrides.get("num_hidden_layers", knob_depth) != knob_depth:
            raise ValueError(f"num_hidden_layers={size_overrides['num_hidden_layers']} contradicts "
                             f"warm_start.layers={warm.layers!r} ({knob_depth} layers)")

    def stack_config(config: PretrainedConfig) -> PretrainedConfig:
        config = _apply_overrides(config, size_overrides)
        return _with_depth(config, knob_depth)

    inputs, outputs = specs[scheme.input_vocab], specs[scheme.output_vocab]
    dec_ids = dict(bos_token_id=outputs.bos_token_id, eos_token_id=outputs.eos_token_id,
                   pad_token_id=outputs.pad_token_id)

    def gpt2_config(cross: bool) -> GPT2Config:
        config = sources["gpt2"].config
        if gpt2_positions is not None:
            config = config.replace(n_positions=min(gpt2_positions, config.n_positions))
        return stack_config(config).replace(add_cross_attention=cross, decoder_start_token_id=outputs.bos_token_id,
                                            **dec_ids)

    target = torch.device(device) if device is not None else None
    with torch.device("meta") if target is not None and target.type == "meta" else nullcontext():
        if scheme.encoder is None:
            model: nn.Module = GPT2PrefixLM(gpt2_config(cross=False))
        else:
            if scheme.encoder == "rnd":
                enc_config = _bert_stack_for(sources[scheme.input_vocab], inputs)
            else:
                enc_config = sources[scheme.encoder].config.replace(pad_token_id=inputs.pad_token_id)
            enc_config = stack_config(enc_config).replace(is_decoder=False, add_cross_attention=False)
            if scheme.decoder == "gpt2":
                dec_config = gpt2_config(cross=True)
            else:
                base = (_bert_stack_for(sources[scheme.output_vocab], outputs) if scheme.decoder == "rnd"
                        else sources[scheme.decoder].config)
                dec_config = stack_config(base).replace(is_decoder=True, add_cross_attention=True, **dec_ids)
            config = EncoderDecoderConfig(
                encoder=enc_config, decoder=dec_config, tie_encoder_decoder=scheme.share == "all",
                share_word_embeddings=scheme.share == "embeddings",
                decoder_start_token_id=outputs.bos_token_id, eos_token_id=outputs.eos_token_id,
                pad_token_id=outputs.pad_token_id,
            )
            model = EncoderDecoderModel(config)

    for src in warm_sources:
        _check_layers(warm, src, _stack_depth(model, src.role, scheme))
    report = None
    if with_weights:
        report = _load_warm_sides(model, scheme, sources, warm)
        if warm.cross_attention == "self_attention":
            _cross_attention_from_self_attention(model, scheme, warm, report)
    if target is not None and target.type != "meta":
        model = model.to(target)
    spec = SchemeSpec(scheme=scheme, inputs=inputs, outputs=outputs, warm_start=warm, report=report)
    return Built(model, spec)


def _stack_depth(model: nn.Module, role: str, scheme: Scheme) -> int:
    if scheme.encoder == role:
        return model.encoder.config.num_hidden_layers
    return model.config.n_layer if isinstance(model, GPT2PrefixLM) else model.decoder.config.num_hidden_layers


def _load_warm_sides(model: nn.Module, scheme: Scheme, sources: dict[str, _Source], warm: WarmStart) -> LoadingReport:
    """Assign each warm side's selected tensors into the assembled model (shared tensors are written through any
    of their names) and report what stayed newly initialised across the whole model."""
    names = " + ".join(f"{src.role}={src.name}" for src in sources.values())
    report = LoadingReport(names, scheme.name)
    sides: list[tuple[str, str]] = []  # (checkpoint role, prefix of its stack in the model)
    if isinstance(model, GPT2PrefixLM):
        sides.append(("gpt2", "transformer."))
    else:
        if scheme.encoder in VOCABULARIES:
            sides.append((scheme.encoder, "encoder."))
        if scheme.decoder in VOCABULARIES and scheme.share != "all":
            sides.append((scheme.decoder, "decoder." + _base_prefix(model.decoder)))
    for role, prefix in sides:
        src = sources[role]
        positions = model.config.n_positions if isinstance(model, GPT2PrefixLM) else (
            model.decoder.config.max_position_embeddings if role == "gpt2" else None)
        depth = _stack_depth(model, role, scheme)
        stack, head = _warm_weights(src, warm, depth, positions, report)
        weights = {prefix + k: v for k, v in stack.items()}
        head_prefix = "" if isinstance(model, GPT2PrefixLM) else "decoder."
        if prefix.startswith(("decoder.", "transformer.")):
            weights.update({head_prefix + k: v for k, v in head.items()})
        else:
            report.unused.extend(f"{role}:{k}" for k in head)
        assign_weights(model, weights, report)
    finish_report(model, report)
    model.tie_weights()
    model.loading_report = report
    _log_report(report)
    return report


def _cross_attention_from_self_attention(model: nn.Module, scheme: Scheme, warm: WarmStart,
                                         report: LoadingReport) -> None:
    """``WarmStart(cross_attention="self_attention")``: every warm decoder layer's cross-attention copies its own
    (warm) self-attention; a random decoder keeps its random cross-attention. The copied tensors leave the report's
    newly-initialised list."""
    if scheme.decoder not in VOCABULARIES or isinstance(model, GPT2PrefixLM):
        return
    base = model.decoder.base_model
    stack, prefix = (base.h, "h") if scheme.decoder == "gpt2" else (base.encoder.layer, "encoder.layer")
    prefix = f"decoder.{_base_prefix(model.decoder)}{prefix}"
    warm_layers = len(warm.source_layers(len(stack)))
    copied = set()
    for index in range(warm_layers):
        copied.update(f"{prefix}.{index}.{name}" for name in stack[index].init_cross_attention_from_self_attention())
    report.newly_initialized[:] = [name for name in report.newly_initialized if name not in copied]
    log.info("cross-attention of %d decoder layers initialised from their self-attention", warm_layers)


# -- Table 1 --------------------------------------------------------------------------------------------------------
def parameter_counts(size: str = "base") -> dict[str, int]:
    """Total parameters of every scheme built from the public checkpoints' configs on the meta device, each shared
    tensor counted once (Table 1: the base-size totals, in millions, are ``TABLE1_TOTAL_PARAMS_M``)."""
    if size not in PAPER_CHECKPOINT_CONFIGS:
        raise ValueError(f"size {size!r}: expected one of {sorted(PAPER_CHECKPOINT_CONFIGS)}")
    configs = PAPER_CHECKPOINT_CONFIGS[size]
    return {name: build(name, **configs, device="meta").model.num_parameters() for name in SCHEMES}
