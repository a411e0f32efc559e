"""GPT-2 as a decoder family: pre-LN blocks, final ``ln_f``, learned positions, optional cross-attention.

Module and tensor names are transformers' (``transformer.wte``, ``transformer.h.N.attn.c_attn``,
``crossattention.q_attn``, ``ln_cross_attn``, ``lm_head`` …). GPT-2's ``Conv1D`` stores its weight as
[in, out]; here every projection is an ``nn.Linear`` ([out, in]), and the transposes happen in one place, the
gpt2 key map of ``checkpoint.py`` (on load) and its inverse (on save), so transformers loads what we save.

``GPT2LMHeadModel`` has ``BertGenerationDecoder``'s interface (``base_model``, ``compute_logits``,
``tie_weights``, ``get_input_embeddings``, ``hf_retied_keys``, the forward signature and the per-layer
``(self_k, self_v, cross_k, cross_v)`` cache), so ``EncoderDecoderModel`` and ``generation`` use it unchanged.
``GPT2PrefixLM`` is the paper's decoder-only ``gpt`` scheme: the input is a conditioning prefix, the target follows
a separator, and only target tokens count in the loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import (
    ACT_FNS,
    attention,
    fold_beams_into_queries,
    merge_heads,
    padding_mask,
    self_attention_mask,
    split_heads,
    unfold_beams,
)
from .checkpoint import (
    CheckpointError,
    LoadingReport,
    _log_report,
    assign_weights,
    build_config,
    family_for,
    finish_report,
    read_state_dict,
)
from .configuration import GPT2Config
from .families import gpt2_state_to_hf
from . import generation, kv_cache, vocab_projection
from .dropout import Dropout
from .linear import Linear
from .modeling_bert_generation import _expand_head_mask
from .modeling_utils import CausalLMHeadMixin, PreTrainedModel, check_input_ids, residual_dtype, shift_tokens_right
from .outputs import BaseModelOutput, Seq2SeqLMOutput
from .recompute import activation_then_linear


class GPT2Attention(nn.Module):
    """Fused QKV self-attention (``c_attn``), or cross-attention with ``q_attn`` on the decoder and a fused KV
    projection ``c_attn`` on the encoder states; ``c_proj`` maps heads back to the residual stream."""

    def __init__(self, config: GPT2Config, is_cross_attention: bool = False, layer_idx: int = 0):
        super().__init__()
        width = config.n_embd
        self.num_heads = config.n_head
        self.width = width
        self.is_cross_attention = is_cross_attention
        if is_cross_attention:
            self.c_attn = Linear(width, 2 * width)
            self.q_attn = Linear(width, width)
        else:
            self.c_attn = Linear(width, 3 * width)
        self.c_proj = Linear(width, width)
        self.dropout_p = config.attn_pdrop
        self.resid_dropout = Dropout(config.resid_pdrop)
        self.scale = config.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer_idx + 1)

    def forward(self, hidden_states, mask, is_causal, kv_states=None, past=None, head_mask=None,
                output_attentions=False):
        beams = 1
        if self.is_cross_attention:
            query = split_heads(self.q_attn(hidden_states), self.num_heads)
            if past is not None:
                key, value = past
            else:
                key, value = (split_heads(t, self.num_heads) for t in self.c_attn(kv_states).split(self.width, dim=2))
            query, beams = fold_beams_into_queries(query, key.size(0))
        else:
            query, key, value = (split_heads(t, self.num_heads)
                                 for t in self.c_attn(hidden_states).split(self.width, dim=2))
            if past is not None:
                key = kv_cache.append_positions(past[0], key)
                value = kv_cache.append_positions(past[1], value)
        out, weights = attention(
            query, key, value, mask, is_causal, self.dropout_p if self.training else 0.0,
            need_weights=output_attentions, head_mask=head_mask, scale=self.scale,
        )
        out = unfold_beams(out, beams)
        if weights is not None and beams > 1:
            weights = unfold_beams(weights, beams)
        return self.resid_dropout(self.c_proj(merge_heads(out))), (key, value), weights


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.intermediate_size)
        self.c_proj = Linear(config.intermediate_size, config.n_embd)
        self.act = ACT_FNS[config.activation_function]
        self.dropout = Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        # act + c_proj fused so that only c_fc's output is kept for backward (bertgen.recompute).
        return self.dropout(activation_then_linear(self.c_fc(hidden_states), self.act, self.c_proj.weight,
                                                  self.c_proj.bias))


class GPT2Block(nn.Module):
    """Pre-LN: x + attn(ln_1(x)) → (+ crossattention(ln_cross_attn(x))) → x + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.attn = GPT2Attention(config, layer_idx=layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
        if config.add_cross_attention:
            self.crossattention = GPT2Attention(config, is_cross_attention=True, layer_idx=layer_idx)
            self.ln_cross_attn = nn.LayerNorm(config.n_embd, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(self, hidden_states, self_mask, is_causal, encoder_hidden_states=None, cross_mask=None,
                past=None, head_mask=None, output_attentions=False):
        attn_out, (k, v), self_weights = self.attn(
            self.ln_1(hidden_states), self_mask, is_causal, past=past[:2] if past is not None else None,
            head_mask=head_mask, output_attentions=output_attentions,
        )
        hidden_states = hidden_states + attn_out
        cross_k = cross_v = cross_weights = None
        if encoder_hidden_states is not None or (past is not None and past[2] is not None):
            if not hasattr(self, "crossattention"):
                raise ValueError("encoder_hidden_states given, but this GPT-2 was built without add_cross_attention")
            cross_past = past[2:] if past is not None and past[2] is not None else None
            cross_out, (cross_k, cross_v), cross_weights = self.crossattention(
                self.ln_cross_attn(hidden_states), cross_mask, False, kv_states=encoder_hidden_states,
                past=cross_past, output_attentions=output_attentions,
            )
            hidden_states = hidden_states + cross_out
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, (k, v, cross_k, cross_v), self_weights, cross_weights

    @torch.no_grad()
    def init_cross_attention_from_self_attention(self) -> list[str]:
        """Copy this block's self-attention into its new cross-attention: the fused QKV splits into ``q_attn`` (Q)
        and the cross ``c_attn`` (KV), ``c_proj`` and ``ln_1`` → ``ln_cross_attn`` copy; returns the names written."""
        width = self.attn.width
        qkv_weight, qkv_bias = self.attn.c_attn.weight, self.attn.c_attn.bias
        pairs = [
            (self.crossattention.q_attn.weight, qkv_weight[:width], "crossattention.q_attn.weight"),
            (self.crossattention.q_attn.bias, qkv_bias[:width], "crossattention.q_attn.bias"),
            (self.crossattention.c_attn.weight, qkv_weight[width:], "crossattention.c_attn.weight"),
            (self.crossattention.c_attn.bias, qkv_bias[width:], "crossattention.c_attn.bias"),
            (self.crossattention.c_proj.weight, self.attn.c_proj.weight, "crossattention.c_proj.weight"),
            (self.crossattention.c_proj.bias, self.attn.c_proj.bias, "crossattention.c_proj.bias"),
            (self.ln_cross_attn.weight, self.ln_1.weight, "ln_cross_attn.weight"),
            (self.ln_cross_attn.bias, self.ln_1.bias, "ln_cross_attn.bias"),
        ]
        for target, source, name in pairs:
            target.copy_(source)
        return [name for _, _, name in pairs]


class GPT2PreTrainedModel(PreTrainedModel):
    """GPT-2's initialisation: N(0, 0.02) weights, and the residual projections (``c_proj``) scaled down by
    sqrt(2 · n_layer) so the residual stream's variance does not grow with depth (Radford et al. 2019)."""

    config_class = GPT2Config

    def post_init(self) -> None:
        if any(p.is_meta for p in self.parameters()):
            return  # built on the meta device: no storage to initialise
        std = self.config.initializer_range
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        # A nested model (the LM head model's ``transformer``) initialised itself already.
        nested = {id(m) for child in self.modules() if child is not self and isinstance(child, PreTrainedModel)
                  for m in child.modules()}
        for name, module in self.named_modules():
            if id(module) in nested:
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=residual_std if name.endswith("c_proj") else std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def state_dict_to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our [out, in] Linear weights → GPT-2's [in, out] Conv1D layout, for ``save_pretrained``."""
        return gpt2_state_to_hf(state)

    @classmethod
    def _load_pretrained(cls, directory: Path, raw: dict[str, Any], **overrides: Any):
        """A gpt2 checkpoint (GPT2Model, GPT2LMHeadModel or our save) → this class, with a loading report.

        ``n_positions`` may be overridden below the checkpoint's: the position table keeps its first rows (the
        paper uses GPT-2's first 512 positions).
        """
        if raw.get("model_type") != "gpt2":
            raise CheckpointError(f"{directory}: a {raw.get('model_type')!r} checkpoint cannot be loaded as "
                                  f"{cls.__name__}, which needs model_type 'gpt2'")
        config = build_config(raw, str(directory), **overrides)
        model = cls(config)
        report = LoadingReport(str(directory), "gpt2")
        family = family_for("gpt2", str(directory))
        stack, head, unused, folded = family.map_state(read_state_dict(directory), family.prefix)
        report.unused.extend(keep_first_positions(stack, config.n_positions))
        report.unused.extend(unused)
        report.folded.extend(folded)
        weights = {"transformer." + k: v for k, v in stack.items()}
        weights.update(head)
        assign_weights(model, weights, report)
        finish_report(model, report)
        model.tie_weights()
        model.loading_report = report
        _log_report(report)
        return model.eval()  # as from_pretrained returns every model


def keep_first_positions(stack: dict[str, torch.Tensor], positions: int, key: str = "wpe.weight") -> list[str]:
    """Truncate a checkpoint's position table to the model's ``positions`` rows; returns what was left out, for
    the loading report's ``unused``."""
    table = stack.get(key)
    if table is None or table.size(0) <= positions:
        return []
    stack[key] = table[:positions]
    return [f"{key}[{positions}:{table.size(0)}]"]


class GPT2Model(GPT2PreTrainedModel):
    """The GPT-2 body (``transformer`` in checkpoints): embeddings, blocks and the final LayerNorm."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ):
        """As ``BertGenerationEncoder.forward`` with ``is_decoder``: causal self-attention over the cache plus the
        new tokens; ``attention_mask`` covers both. ``position_ids`` default to the column index (a prefix LM
        passes its own so that padding inside the sequence does not shift positions)."""
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        if input_ids is not None:
            check_input_ids(input_ids, config.vocab_size, config.n_positions, past_len, type(self).__name__)
            inputs_embeds = self.wte(input_ids)
        elif past_len + inputs_embeds.size(1) > config.n_positions:
            raise ValueError(f"{type(self).__name__}: sequence of {past_len + inputs_embeds.size(1)} positions is "
                             f"longer than n_positions={config.n_positions}")
        length = inputs_embeds.size(1)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + length, device=inputs_embeds.device)[None]
        use_cache = config.use_cache if use_cache is None else use_cache

        hidden = self.drop(residual_dtype(inputs_embeds + self.wpe(position_ids)))
        self_mask, is_causal = self_attention_mask(attention_mask, length, past_len, True, hidden.device)
        cross_mask = padding_mask(encoder_attention_mask)
        head_masks = _expand_head_mask(head_mask, config.n_layer, hidden.dtype)

        all_hidden = (hidden,) if output_hidden_states else None
        all_self, all_cross, presents = [], [], []
        for i, block in enumerate(self.h):
            hidden, present, self_w, cross_w = block(
                hidden, self_mask, is_causal, encoder_hidden_states, cross_mask,
                past_key_values[i] if past_key_values is not None else None, head_masks[i], output_attentions,
            )
            if use_cache:
                presents.append(present)
            if output_attentions:
                all_self.append(self_w)
                if cross_w is not None:
                    all_cross.append(cross_w)
            if output_hidden_states and i < len(self.h) - 1:
                all_hidden = all_hidden + (hidden,)
        hidden = self.ln_f(hidden)
        if output_hidden_states:
            all_hidden = all_hidden + (hidden,)  # as transformers: the last entry is after ln_f
        out = BaseModelOutput(
            last_hidden_state=hidden,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=all_hidden,
            attentions=tuple(all_self) if output_attentions else None,
            cross_attentions=tuple(all_cross) if output_attentions and all_cross else None,
        )
        return out if return_dict else out.to_tuple()


class GPT2LMHeadModel(CausalLMHeadMixin, GPT2PreTrainedModel):
    """GPT-2 with its LM head (tied to ``wte``); with ``add_cross_attention`` the decoder of an encoder-decoder."""

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def hf_retied_keys(self) -> set[str]:
        return {"lm_head.weight"} if self.config.tie_word_embeddings else set()

    @property
    def base_model(self) -> GPT2Model:
        return self.transformer

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the vocabulary projection, for the fused loss; GPT-2's head has no bias."""
        return self.lm_head.weight, None


def positions_from_mask(mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """Position of each column counted over real (mask 1) tokens only: padding inside a row does not shift what
    follows it. Pad columns get the position of the real token before them (they are never attended to)."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0) + start


class GPT2PrefixLM(GPT2LMHeadModel):
    """The paper's ``gpt`` scheme: GPT-2 alone reads ``input ⟨sep⟩ target`` and learns only the target.

    The batch is laid out as ``[source (right-padded) | sep, t0, t1, … (right-padded)]``; padding inside the row is
    masked out of attention and skipped by the positions, so every row sees exactly ``source ⟨sep⟩ target`` at
    positions 0, 1, 2, …. ``sep`` is ``config.decoder_start_token_id`` (default ``bos_token_id``, GPT-2's
    ``<|endoftext|>``). The interface is ``EncoderDecoderModel``'s: ``forward(input_ids, attention_mask, labels)``
    with the loss over target tokens only, ``logits`` over the target columns, and ``generate`` returning
    ``[sep, generated …]`` rows.
    """

    @property
    def separator_id(self) -> int:
        config = self.config
        sep = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
        if sep is None:
            raise ValueError("GPT2PrefixLM: set config.decoder_start_token_id (or bos_token_id): the token "
                             "between input and target")
        return sep

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        return_logits: bool = True,
        use_cache: bool | None = None,
        **unused: Any,
    ):
        """``labels`` [batch, T] (-100 where there is no target) become ``decoder_input_ids`` = [sep, l0, …,
        l_{T-2}] as in ``EncoderDecoderModel``; logits and loss cover the T target columns only.
        ``return_logits=False`` with labels runs the LM head only where a label counts (the training fast path).
        ``use_cache`` is accepted for interface parity and ignored: a training forward keeps no cache."""
        if unused:
            raise TypeError(f"GPT2PrefixLM.forward: unexpected arguments {sorted(unused)}")
        if input_ids is None:
            raise ValueError("GPT2PrefixLM: input_ids (the conditioning input) are required")
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else self.config.eos_token_id
        if labels is not None:
            bad = labels[labels.ne(-100) & (labels.lt(0) | labels.ge(self.config.vocab_size))]
            if bad.numel():
                raise ValueError(f"GPT2PrefixLM: labels: token id {int(bad[0])} is outside the vocabulary "
                                 f"[0, {self.config.vocab_size}) (use -100 for positions the loss should skip)")
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(labels, pad, self.separator_id)
            if decoder_attention_mask is None:
                # From the labels, not from the pad id: GPT-2 pads with its separator/end token.
                decoder_attention_mask = torch.cat([labels.new_ones(labels.size(0), 1), labels[:, :-1].ne(-100)], 1)
        if decoder_input_ids is None:
            raise ValueError("GPT2PrefixLM: pass labels or decoder_input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if decoder_attention_mask is None:
            decoder_attention_mask = torch.ones_like(decoder_input_ids)
        mask = torch.cat([attention_mask, decoder_attention_mask], dim=1).long()
        body = self.transformer(
            input_ids=torch.cat([input_ids, decoder_input_ids], dim=1), attention_mask=mask,
            position_ids=positions_from_mask(mask), use_cache=False,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        target_states = body.last_hidden_state[:, input_ids.size(1):]
        loss = logits = None
        if labels is not None and not return_logits:
            keep = labels.ne(-100)
            weight, bias = self.output_projection()
            loss = vocab_projection.linear_cross_entropy(target_states[keep], weight, bias, labels[keep])
        else:
            logits = self.compute_logits(target_states)
            if labels is not None:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        out = Seq2SeqLMOutput(loss=loss, logits=logits, decoder_hidden_states=body.hidden_states,
                              decoder_attentions=body.attentions)
        return out if return_dict else out.to_tuple()

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """``bertgen.generation.generate`` on this model: rows start with the separator and the input is not
        repeated; ``no_repeat_ngram_size`` looks at the generated part only."""
        return generation.generate(self, input_ids, attention_mask, **kwargs)

    # -- the seq2seq interface (bertgen.generation.Seq2SeqModel) ----------------------------------------------------
    def decoding_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      use_cache: bool = True, max_new_tokens: int | None = None) -> PrefixLMStep:
        return PrefixLMStep(self, input_ids, attention_mask, use_cache, max_new_tokens)

    def decoding_start_id(self) -> int:
        return self.separator_id

    def output_room(self, input_width: int) -> int:
        """The positions the input leaves: input and output share GPT-2's ``n_positions``."""
        return self.config.n_positions - input_width

    def max_new_tokens(self, input_width: int, max_target: int) -> int:
        """Every position the input leaves (the target limit only shares the sequence out for training)."""
        return max(1, self.output_room(input_width))

    def fit_lengths(self, max_source: int, max_target: int) -> tuple[int, int]:
        """Source and target share one sequence; when both limits do not fit they share it in proportion."""
        room = self.config.n_positions
        if max_source + max_target > room:
            max_source = max(2, room * max_source // (max_source + max_target))
            max_target = room - max_source
        return max_source, max_target

    @property
    def output_hidden_size(self) -> int:
        return self.config.hidden_size


class PrefixLMStep:
    """``generation.DecodingStep`` for ``GPT2PrefixLM``: the input prefix goes through GPT-2 with the first call
    and stays in the self-attention cache; later calls feed one token. The prefix' padding mask and each row's
    count of real prefix tokens follow the rows through beam reordering (``rows``)."""

    def __init__(self, model: GPT2PrefixLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 use_cache: bool = True, max_new_tokens: int | None = None):
        self.body = model.transformer
        self.model = model
        self.use_cache = use_cache
        self.max_new_tokens = max_new_tokens
        self.source = input_ids
        self.source_mask = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).long()
        self.cache = None

    def __call__(self, sequences: torch.Tensor, rows: torch.Tensor | None = None,
                 sources: torch.Tensor | None = None) -> torch.Tensor:
        if rows is not None:
            self.source, self.source_mask = self.source.index_select(0, rows), self.source_mask.index_select(0, rows)
        mask = torch.cat([self.source_mask, torch.ones_like(sequences)], dim=1)
        positions = positions_from_mask(mask)
        if self.cache is not None:
            self.cache = generation.select_cache_rows(self.cache, rows, None)
            tokens, positions = sequences[:, -1:], positions[:, -1:]
        else:
            tokens = torch.cat([self.source, sequences], dim=1)
        body = self.body(input_ids=tokens, attention_mask=mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=self.use_cache)
        if self.use_cache and self.cache is None:
            # Later calls append to these in place.
            self.cache = kv_cache.appendable(body.past_key_values, self.max_new_tokens)
        weight, bias = self.model.output_projection()
        return vocab_projection.log_probs(body.last_hidden_state[:, -1], weight, bias)

