"""The paper's ten warm-start schemes (Rothe et al. 2020, §3 and Table 1) as one table, planned and built.

Two steps, so a launcher can check a cell without loading weights and nothing is read twice:

- ``plan(name, bert=…, roberta=…, gpt2=…)`` reads each checkpoint the scheme needs once (``read_checkpoint``:
  ``config.json``, the family, the tokenizer beside it, which must fit the embedding matrix exactly) and decides
  the model's whole config (depth, sharing, start / end / pad ids). No weights are read.
- ``build(plan, device)`` makes the model from the plan's config and loads the warm sides' weights; it returns the
  model and a ``SchemeSpec`` naming the tokenizer that encodes the inputs and the one that decodes the outputs
  (loaded), so a harness needs no knowledge of the scheme. ``build(name, bert=…, …)`` plans and builds in one call.

Each checkpoint argument is a checkpoint directory (or hub id), a ``Checkpoint`` already read, or an HF
``config.json`` dict to build without weights (``parameter_counts`` does that on the meta device to reproduce
Table 1).

Sharing, as in the paper's parameter counts: every encoder-decoder whose two sides use one vocabulary (rnd2rnd,
bert2rnd, rnd2bert, bert2bert, rnd2gpt) has ONE word-embedding matrix, shared by the encoder, the decoder and the
decoder's output projection (``share_word_embeddings``); Table 1's 221M for bert2bert is only reached that way
(two matrices would be 243.8M). When one side is random and the other warm, the shared matrix is the warm one.
bertShare and robertaShare share every encoder parameter with the decoder (``tie_encoder_decoder``); bert2gpt and
roberta2gpt keep two matrices (two vocabularies; for roberta2gpt the same BPE merges, but RoBERTa's own ids).

Random in every scheme: the decoder's cross-attention (GPT-2: with its ``ln_cross_attn``), the BERT decoder's
output bias (29k parameters, BERT checkpoints have none that fits), ``enc_to_dec_proj`` when the two widths
differ, and the whole random side except a shared embedding matrix.

A scheme may also read a vocabulary of its own (``plan(..., vocabulary=<tokenizer or its directory>)``: the paper's
Transformer baseline with a WMT wordpiece vocabulary, Table 6's task-specific SentencePieces): both sides then encode
and decode with it, every stack's ``vocab_size`` is its size, and the tensors indexed by a checkpoint's vocabulary
(``VOCABULARY_TENSORS``: word embeddings, LM head) start random while everything else warm-starts as the knob says.

§5's ablation knob is ``WarmStart``: warm-start only the embeddings, only the first k layers, or a listed subset
of a checkpoint's layers (the model then has as many layers as were listed); ``WarmStart(embeddings=False)`` is
Table 6's "- embeddings from checkpoint" (every layer warm, the word-embedding matrix random; §5).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .checkpoint import LoadingReport, _log_report, assign_weights, finish_report, read_state_dict
from .configuration import BertGenerationConfig, ConfigError, EncoderDecoderConfig, GPT2Config, PretrainedConfig
from .families import FAMILIES
from .modeling_encoder_decoder import EncoderDecoderModel
from .modeling_gpt2 import GPT2PrefixLM, keep_first_positions
from .scheme_checkpoints import Checkpoint, TokenizerSpec, WrongFamily, read_checkpoint  # re-exported: public here
from .tokenization import BaseTokenizer, load_tokenizer

log = logging.getLogger(__name__)


# -- the table ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheme:
    """One row of the paper's Table 1.

    ``encoder`` / ``decoder``: the family a side is warm-started from ("bert", "roberta", "gpt2"), "rnd" for
    a random BERT-compatible stack, None for no encoder (the decoder-only ``gpt``). ``share``: "none",
    "embeddings" (one word-embedding matrix) or "all" (the decoder reuses every encoder parameter).
    ``input_vocab`` / ``output_vocab``: the family whose vocabulary the inputs / outputs are in.
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
        """The families whose checkpoints this scheme reads (``plan``'s arguments): warm sides and vocabularies (a
        random side takes its architecture from the checkpoint of its vocabulary)."""
        needed = {self.input_vocab, self.output_vocab} | {s for s in (self.encoder, self.decoder) if s in FAMILIES}
        return tuple(f for f in FAMILIES if f in needed)


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

    ``embeddings``: whether the word-embedding matrix comes from the checkpoint. The position embeddings (with
    BERT's token-type row folded in) and the embedding LayerNorm (BERT, RoBERTa; GPT-2's ``wpe``) belong to the
    embeddings too: ``layers="none"`` keeps all of them warm and nothing else (§5's embeddings-only runs). False
    (with ``layers="all"``: Table 6's "- embeddings from checkpoint", §5: only the word-embedding matrix is not
    taken from the checkpoint) leaves the word embeddings random, and with them every matrix tied to them: the
    decoder's output projection and, where the scheme shares one matrix, the other side's word embeddings (a
    checkpoint's LM head is not loaded either: tied, it would bring them back); positions and LayerNorm stay warm.
    ``layers``: "all" (layer i from layer i), "none" (same depth, every layer random), an int k (the model has k
    layers, the checkpoint's first k) or a tuple of 0-based checkpoint layers (the model has that many, layer i
    from ``layers[i]``). GPT-2's final ``ln_f`` is warm when any layer is. Depth applies to every stack of the
    model, warm or random. Use ``paper_layers("9,10,13-18,23,24")`` for the paper's 1-based notation.
    """

    embeddings: bool = True
    layers: str | int | tuple[int, ...] = "all"
    # "random" (the paper: cross-attention is always new) or "self_attention": each warm decoder layer's
    # cross-attention starts as a copy of its own self-attention, so it attends by content from the first update
    # instead of uniformly (see docs/investigations.md, "Why the decoder ignored the encoder").
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


# -- plan -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchemeSpec:
    """What a built scheme reads and writes: which tokenizer encodes the inputs and which decodes the outputs (the
    same object when the two sides share a vocabulary), the warm-start knob, and the loading report."""

    scheme: Scheme
    inputs: TokenizerSpec
    outputs: TokenizerSpec
    warm_start: WarmStart
    report: LoadingReport | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Plan:
    """Everything ``build`` needs but the weights: the checkpoints read (by family), the tokenizers of the two
    sides, the knob, and the model's whole config (``EncoderDecoderConfig``, or ``GPT2Config`` for ``gpt``)."""

    scheme: Scheme
    checkpoints: dict[str, Checkpoint]
    inputs: TokenizerSpec
    outputs: TokenizerSpec
    warm_start: WarmStart
    config: EncoderDecoderConfig | GPT2Config
    own_vocabulary: bool = False  # plan(vocabulary=...): the checkpoints' vocabulary-indexed tensors stay random

    @property
    def with_weights(self) -> bool:
        return all(checkpoint.directory is not None for checkpoint in self.checkpoints.values())

    def depth(self, family: str) -> int:
        """Layers of the model's stack that ``family``'s checkpoint warm-starts."""
        config = self.config
        if isinstance(config, GPT2Config):
            return config.n_layer
        return (config.encoder if self.scheme.encoder == family else config.decoder).num_hidden_layers


def plan(
    name: str,
    *,
    bert: str | Path | dict | Checkpoint | None = None,
    roberta: str | Path | dict | Checkpoint | None = None,
    gpt2: str | Path | dict | Checkpoint | None = None,
    warm_start: WarmStart | None = None,
    gpt2_positions: int | None = 512,
    tokenizers: dict[str, str | Path] | None = None,
    vocabulary: BaseTokenizer | str | Path | None = None,
    **size_overrides: Any,
) -> Plan:
    """Plan scheme ``name`` of the paper: read its checkpoints and decide its config, without weights.

    ``bert`` / ``roberta`` / ``gpt2``: checkpoint directories or hub ids (arguments the scheme does not use are
    ignored), ``Checkpoint``s from ``read_checkpoint``, or HF config.json dicts to build without weights.
    ``gpt2_positions``: GPT-2 keeps its first 512 positions, as in the paper (None: all). ``tokenizers``: vocabulary
    files or directories per family when they are not beside the checkpoint. ``vocabulary``: a vocabulary of the
    model's own for both sides (a loaded tokenizer or its files), in place of the checkpoints' (module docstring).
    ``size_overrides`` (BERT names:
    ``num_hidden_layers``, ``hidden_size``, ``hidden_dropout_prob`` …) change every stack's config; a warm side must
    still match its checkpoint's shapes.
    """
    if name not in SCHEMES:
        raise ValueError(f"scheme {name!r}: expected one of {list(SCHEMES)}")
    scheme = SCHEMES[name]
    warm = warm_start if warm_start is not None else WarmStart()
    tokenizers = dict(tokenizers or {})
    unknown = set(tokenizers) - set(FAMILIES)
    if unknown:
        raise ValueError(f"tokenizers: unknown family {sorted(unknown)}; expected keys among {tuple(FAMILIES)}")
    given = {"bert": bert, "roberta": roberta, "gpt2": gpt2}
    checkpoints = {}
    for family in scheme.checkpoints:
        value = given[family]
        if value is None:
            raise ValueError(f"{name} needs {family}= (a checkpoint directory, a hub id or a config.json dict)")
        if isinstance(value, Checkpoint):
            if value.family.name != family:
                raise WrongFamily(value.name, value.raw.get("model_type"), FAMILIES[family], name)
            if family in tokenizers:
                raise ValueError(f"tokenizers['{family}']: {family}= is a Checkpoint already read with its "
                                 "tokenizer; pass the tokenizer to read_checkpoint")
            checkpoints[family] = value
        else:
            checkpoints[family] = read_checkpoint(family, value, scheme=name, tokenizer=tokenizers.get(family))
    with_weights = [c.directory is not None for c in checkpoints.values()]
    if any(with_weights) and not all(with_weights):
        raise ValueError(f"{name}: pass either checkpoints or config dicts for all of {list(checkpoints)}, not a mix")
    if vocabulary is not None:
        checkpoints = _with_own_vocabulary(scheme, checkpoints, vocabulary)

    # Depth: the knob's (an int or a list of layers), else the checkpoint's or the size override's.
    knob_depth = None
    if warm.layers not in ("all", "none"):
        knob_depth = warm.depth(0)
        if size_overrides.get("num_hidden_layers", knob_depth) != knob_depth:
            raise ValueError(f"num_hidden_layers={size_overrides['num_hidden_layers']} contradicts "
                             f"warm_start.layers={warm.layers!r} ({knob_depth} layers)")

    def stack_config(config: PretrainedConfig) -> PretrainedConfig:
        config = _apply_overrides(config, size_overrides)
        return _with_depth(config, knob_depth)

    inputs, outputs = checkpoints[scheme.input_vocab].tokens, checkpoints[scheme.output_vocab].tokens
    dec_ids = dict(bos_token_id=outputs.bos_token_id, eos_token_id=outputs.eos_token_id,
                   pad_token_id=outputs.pad_token_id)

    def gpt2_config(cross: bool) -> GPT2Config:
        config = checkpoints["gpt2"].config
        if gpt2_positions is not None:
            config = config.replace(n_positions=min(gpt2_positions, config.n_positions))
        return stack_config(config).replace(add_cross_attention=cross, decoder_start_token_id=outputs.bos_token_id,
                                            **dec_ids)

    if scheme.encoder is None:
        config: EncoderDecoderConfig | GPT2Config = gpt2_config(cross=False)
    else:
        if scheme.encoder == "rnd":
            enc_config = _bert_stack_for(checkpoints[scheme.input_vocab])
        else:
            enc_config = checkpoints[scheme.encoder].config.replace(pad_token_id=inputs.pad_token_id)
        enc_config = stack_config(enc_config).replace(is_decoder=False, add_cross_attention=False)
        if scheme.decoder == "gpt2":
            dec_config = gpt2_config(cross=True)
        else:
            base = (_bert_stack_for(checkpoints[scheme.output_vocab]) if scheme.decoder == "rnd"
                    else checkpoints[scheme.decoder].config)
            dec_config = stack_config(base).replace(is_decoder=True, add_cross_attention=True, **dec_ids)
        config = EncoderDecoderConfig(
            encoder=enc_config, decoder=dec_config, tie_encoder_decoder=scheme.share == "all",
            share_word_embeddings=scheme.share == "embeddings",
            decoder_start_token_id=outputs.bos_token_id, eos_token_id=outputs.eos_token_id,
            pad_token_id=outputs.pad_token_id,
        )
    planned = Plan(scheme, checkpoints, inputs, outputs, warm, config, own_vocabulary=vocabulary is not None)
    for family in (scheme.encoder, scheme.decoder):
        if family in FAMILIES:
            _check_layers(warm, checkpoints[family], planned.depth(family))
    return planned


# The tensors of a checkpoint stack whose rows are its vocabulary's ids (the LM heads are vocabulary-sized too, and
# are never loaded with a vocabulary of the model's own).
VOCABULARY_TENSORS = {"bert": ("embeddings.word_embeddings.weight",), "roberta": ("embeddings.word_embeddings.weight",),
                      "gpt2": ("wte.weight",)}


def _with_own_vocabulary(scheme: Scheme, checkpoints: dict[str, Checkpoint],
                         vocabulary: BaseTokenizer | str | Path) -> dict[str, Checkpoint]:
    """The checkpoints as the model reads them with a vocabulary of its own: every config sized to it, every side's
    tokenizer it."""
    if scheme.input_vocab != scheme.output_vocab:
        raise ValueError(f"vocabulary: {scheme.name} reads two vocabularies ({scheme.input_vocab} in, "
                         f"{scheme.output_vocab} out); a vocabulary of its own needs a scheme with one")
    tokenizer = vocabulary if isinstance(vocabulary, BaseTokenizer) else load_tokenizer(vocabulary)
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    if any(i is None for i in ids):
        raise ValueError(f"vocabulary {tokenizer.vocab_file}: expected start, end and pad tokens, got ids {ids}")
    spec = TokenizerSpec(kind=f"own-{tokenizer.kind}", family=scheme.input_vocab,
                         source=str(tokenizer.vocab_file) if tokenizer.vocab_file else None,
                         vocab_file=str(tokenizer.vocab_file) if tokenizer.vocab_file else None,
                         vocab_size=tokenizer.vocab_size, bos_token_id=ids[0], eos_token_id=ids[1],
                         pad_token_id=ids[2], tokenizer=tokenizer)
    return {family: dataclasses.replace(checkpoint, tokens=spec,
                                        config=checkpoint.config.replace(vocab_size=tokenizer.vocab_size,
                                                                         bos_token_id=ids[0], eos_token_id=ids[1],
                                                                         pad_token_id=ids[2]))
            for family, checkpoint in checkpoints.items()}


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


def _bert_stack_for(vocab_source: Checkpoint) -> BertGenerationConfig:
    """A random BERT-compatible stack in ``vocab_source``'s vocabulary; for GPT-2 with GPT-2's dimensions."""
    config, spec = vocab_source.config, vocab_source.tokens
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


# -- build ----------------------------------------------------------------------------------------------------------
class Built(NamedTuple):
    model: nn.Module
    spec: SchemeSpec


def build(scheme: Plan | str, device: str | torch.device | None = None, **arguments: Any) -> Built:
    """Build a planned scheme: the model from the plan's config, its warm sides loaded from their checkpoints.

    ``scheme``: a ``Plan``, or a scheme name to plan first with ``arguments`` (``plan``'s keywords: ``bert=``,
    ``warm_start=``, size overrides …). ``device="meta"`` builds the modules without memory and reads no tensor
    data: the warm sides' tensors come from the safetensors headers and go through the same checks as real
    weights (dtype, shape, which tensor fills what), so a launch pre-flight refuses a corrupt or mismatched
    checkpoint before anything runs.

    Returns ``Built(model, spec)``: an ``EncoderDecoderModel`` (a ``GPT2PrefixLM`` for ``gpt``), and which loaded
    tokenizers encode the inputs and decode the outputs, with the loading report (``spec.report``).
    """
    if isinstance(scheme, str):
        scheme = plan(scheme, **arguments)
    elif arguments:
        raise TypeError(f"build(plan): the plan already holds its settings; got {sorted(arguments)}")
    target = torch.device(device) if device is not None else None
    meta = target is not None and target.type == "meta"
    with torch.device("meta") if meta else nullcontext():
        config = scheme.config
        model: nn.Module = GPT2PrefixLM(config) if isinstance(config, GPT2Config) else EncoderDecoderModel(config)
    report = None
    if scheme.with_weights:
        report = _load_warm_sides(model, scheme, meta)
        if scheme.warm_start.cross_attention == "self_attention":
            _cross_attention_from_self_attention(model, scheme.scheme, scheme.warm_start, report)
    if target is not None and not meta:
        model = model.to(target)
    return Built(model, SchemeSpec(scheme.scheme, scheme.inputs, scheme.outputs, scheme.warm_start, report))


# -- weights --------------------------------------------------------------------------------------------------------
def _warm_weights(source: Checkpoint, warm: WarmStart, depth: int, positions: int | None,
                  report: LoadingReport, meta: bool, own_vocabulary: bool = False
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The checkpoint's stack (and LM-head) tensors that ``warm`` selects, renamed to the model's layer numbers;
    what it leaves out is reported as unused. ``positions``: rows of a GPT-2 position table the model keeps.
    ``meta``: header-only tensors on the meta device (``read_state_dict``). ``own_vocabulary``: the model reads
    another vocabulary, so the tensors indexed by the checkpoint's (``VOCABULARY_TENSORS``, the head) are left out."""
    family = source.family
    stack, head, unused, folded = family.map_state(read_state_dict(source.directory, meta), family.prefix)
    if own_vocabulary:
        dropped = [k for k in stack if k in VOCABULARY_TENSORS[family.name]] + list(head)
        report.unused.extend(f"{family.name}:{k}" for k in dropped)
        stack = {k: v for k, v in stack.items() if k not in VOCABULARY_TENSORS[family.name]}
        head = {}
    if positions is not None:
        unused = keep_first_positions(stack, positions) + unused
    report.unused.extend(f"{family.name}:{k}" for k in unused)
    report.folded.extend(f"{family.name}:{k}" for k in folded)
    chosen = warm.source_layers(depth)
    model_layer = {ckpt: i for i, ckpt in enumerate(chosen)}
    layer_key = re.compile(rf"^{re.escape(family.layers)}\.(\d+)\.(.*)$")
    selected: dict[str, torch.Tensor] = {}
    for key, tensor in stack.items():
        match = layer_key.match(key)
        if match:
            layer = int(match.group(1))
            if layer in model_layer:
                selected[f"{family.layers}.{model_layer[layer]}.{match.group(2)}"] = tensor
                continue
        elif key.startswith(family.embeddings):
            if warm.embeddings or not key.startswith(family.word_embeddings):
                selected[key] = tensor
                continue
        elif key.startswith("ln_f.") and chosen:
            selected[key] = tensor
            continue
        report.unused.append(f"{family.name}:{key}")
    if not warm.embeddings:  # an LM head tied to the embeddings would bring them back
        report.unused.extend(f"{family.name}:{k}" for k in head)
        head = {}
    return selected, head


def _base_prefix(decoder: nn.Module) -> str:
    base = decoder.base_model
    return next(n for n, m in decoder.named_children() if m is base) + "."


def _check_layers(warm: WarmStart, source: Checkpoint, depth: int) -> None:
    available = source.config.num_hidden_layers
    wanted = warm.source_layers(depth)
    bad = [i for i in wanted if i >= available]
    if bad:
        raise ValueError(f"warm_start.layers: layer {bad[0]} does not exist in {source.name} ({available} layers, "
                         f"numbered 0-{available - 1})")


def _load_warm_sides(model: nn.Module, planned: Plan, meta: bool) -> LoadingReport:
    """Assign each warm side's selected tensors into the assembled model (shared tensors are written through any
    of their names) and report what stayed newly initialised across the whole model. ``meta``: the model and
    the tensors are on the meta device; only the checks run (nothing is logged, there is nothing to use yet)."""
    scheme = planned.scheme
    names = " + ".join(f"{family}={c.name}" for family, c in planned.checkpoints.items())
    report = LoadingReport(names, scheme.name)
    sides: list[tuple[str, str]] = []  # (checkpoint family, prefix of its stack in the model)
    if isinstance(model, GPT2PrefixLM):
        sides.append(("gpt2", "transformer."))
    else:
        if scheme.encoder in FAMILIES:
            sides.append((scheme.encoder, "encoder."))
        if scheme.decoder in FAMILIES and scheme.share != "all":
            sides.append((scheme.decoder, "decoder." + _base_prefix(model.decoder)))
    for family, prefix in sides:
        positions = model.config.n_positions if isinstance(model, GPT2PrefixLM) else (
            model.decoder.config.max_position_embeddings if family == "gpt2" else None)
        stack, head = _warm_weights(planned.checkpoints[family], planned.warm_start, planned.depth(family),
                                    positions, report, meta, planned.own_vocabulary)
        weights = {prefix + k: v for k, v in stack.items()}
        head_prefix = "" if isinstance(model, GPT2PrefixLM) else "decoder."
        if prefix.startswith(("decoder.", "transformer.")):
            weights.update({head_prefix + k: v for k, v in head.items()})
        else:
            report.unused.extend(f"{family}:{k}" for k in head)
        assign_weights(model, weights, report)
    finish_report(model, report)
    model.tie_weights()
    model.loading_report = report
    if not meta:
        _log_report(report)
    return report


def _cross_attention_from_self_attention(model: nn.Module, scheme: Scheme, warm: WarmStart,
                                         report: LoadingReport) -> None:
    """``WarmStart(cross_attention="self_attention")``: every warm decoder layer's cross-attention copies its own
    (warm) self-attention; a random decoder keeps its random cross-attention. The copied tensors leave the report's
    newly-initialised list."""
    if scheme.decoder not in FAMILIES or isinstance(model, GPT2PrefixLM):
        return
    layers = FAMILIES[scheme.decoder].layers
    stack = model.decoder.base_model.get_submodule(layers)
    prefix = f"decoder.{_base_prefix(model.decoder)}{layers}"
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
