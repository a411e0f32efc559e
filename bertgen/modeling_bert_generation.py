"""BertGeneration: the BERT-compatible Transformer stack of Rothe et al. (2020), as encoder or decoder.

Module and tensor names follow transformers' ``modeling_bert_generation.py`` exactly (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query``, ``crossattention``, ``lm_head.decoder`` …), so ``state_dict`` keys are
the checkpoint keys. The layer is post-LN BERT; the decoder adds cross-attention between self-attention and the FFN.
"""

from __future__ import annotations

import torch
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
from .configuration import BertGenerationConfig
from .dropout import Dropout, dropout_add
from .kv_cache import append_positions
from .linear import Linear, linear
from .modeling_utils import CausalLMHeadMixin, PreTrainedModel, check_input_ids, check_mask_shape, residual_dtype
from .outputs import BaseModelOutput
from .recompute import activation_then_linear


class BertGenerationEmbeddings(nn.Module):
    """Word + absolute position embeddings → LayerNorm → dropout (no token types: they are folded at load)."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.position_offset = config.position_offset
        self.pad_token_id = config.pad_token_id

    def position_ids_for(self, input_ids: torch.Tensor | None, length: int, past_len: int, device) -> torch.Tensor:
        if self.position_offset and input_ids is not None:
            # RoBERTa: pads sit at padding_idx, real tokens count up from padding_idx + 1.
            not_pad = input_ids.ne(self.pad_token_id).long()
            return (torch.cumsum(not_pad, dim=1) + past_len) * not_pad + (self.position_offset - 1)
        return torch.arange(past_len + self.position_offset, past_len + self.position_offset + length, device=device)[None]

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None, past_len: int = 0) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if position_ids is None:
            position_ids = self.position_ids_for(input_ids, inputs_embeds.size(1), past_len, inputs_embeds.device)
        embeddings = residual_dtype(inputs_embeds + self.position_embeddings(position_ids))
        return self.dropout(self.LayerNorm(embeddings))


class BertGenerationSelfAttention(nn.Module):
    """Q/K/V projections; keys and values come from ``kv_states`` for cross-attention."""

    def __init__(self, config: BertGenerationConfig, is_cross_attention: bool = False):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        kv_width = (config.cross_attention_hidden_size or config.hidden_size) if is_cross_attention else config.hidden_size
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(kv_width, config.hidden_size)
        self.value = Linear(kv_width, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.is_cross_attention = is_cross_attention
        self.position_embedding_type = "absolute" if is_cross_attention else config.position_embedding_type
        if self.position_embedding_type != "absolute":
            self.max_position_embeddings = config.max_position_embeddings
            self.distance_embedding = nn.Embedding(2 * config.max_position_embeddings - 1, self.head_dim)

    def relative_scores(self, query: torch.Tensor, key: torch.Tensor, past_len: int) -> torch.Tensor:
        """Shaw et al. relative position scores as BERT adds them (before the 1/sqrt(d) scaling)."""
        q_len, k_len = query.size(2), key.size(2)
        rows = torch.arange(past_len, past_len + q_len, device=query.device)[:, None]
        cols = torch.arange(k_len, device=query.device)[None, :]
        distance = self.distance_embedding(rows - cols + self.max_position_embeddings - 1).to(query.dtype)
        scores = torch.einsum("bhld,lrd->bhlr", query, distance)
        if self.position_embedding_type == "relative_key_query":
            scores = scores + torch.einsum("bhrd,lrd->bhlr", key, distance)
        return scores

    def forward(self, hidden_states, mask, is_causal, kv_states=None, past=None, head_mask=None,
                output_attentions=False):
        query = split_heads(self.query(hidden_states), self.num_heads)
        beams = 1
        if self.is_cross_attention:
            if past is not None:
                key, value = past
            else:
                key = split_heads(self.key(kv_states), self.num_heads)
                value = split_heads(self.value(kv_states), self.num_heads)
            query, beams = fold_beams_into_queries(query, key.size(0))
            past_len = 0
        else:
            key = split_heads(self.key(hidden_states), self.num_heads)
            value = split_heads(self.value(hidden_states), self.num_heads)
            past_len = 0
            if past is not None:
                past_len = past[0].size(2)
                key = append_positions(past[0], key)
                value = append_positions(past[1], value)
        extra = self.relative_scores(query, key, past_len) if self.position_embedding_type != "absolute" else None
        out, weights = attention(
            query, key, value, mask, is_causal, self.dropout_p if self.training else 0.0,
            need_weights=output_attentions, extra_scores=extra, head_mask=head_mask,
        )
        out = unfold_beams(out, beams)
        if weights is not None and beams > 1:
            weights = unfold_beams(weights, beams)
        return merge_heads(out), (key, value), weights


class BertGenerationSelfOutput(nn.Module):
    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(dropout_add(self.dense(hidden_states), input_tensor, self.dropout.p, self.training))


class BertGenerationAttention(nn.Module):
    def __init__(self, config: BertGenerationConfig, is_cross_attention: bool = False):
        super().__init__()
        self.self = BertGenerationSelfAttention(config, is_cross_attention)
        self.output = BertGenerationSelfOutput(config)

    def forward(self, hidden_states, mask, is_causal, kv_states=None, past=None, head_mask=None,
                output_attentions=False):
        context, present, weights = self.self(hidden_states, mask, is_causal, kv_states, past, head_mask,
                                              output_attentions)
        return self.output(context, hidden_states), present, weights


class BertGenerationIntermediate(nn.Module):
    """The feed-forward block's first half; ``BertGenerationOutput`` applies ``act`` fused with its own ``dense``."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT_FNS[config.hidden_act]


class BertGenerationOutput(BertGenerationSelfOutput):
    def __init__(self, config: BertGenerationConfig):
        super().__init__(config)
        self.dense = Linear(config.intermediate_size, config.hidden_size)

    def forward(self, pre_activation, input_tensor, act):
        """``LayerNorm(dropout(dense(act(pre_activation))) + input_tensor)``; the activation is fused with ``dense``
        so that only the intermediate layer's pre-activation output is kept for backward (bertgen.recompute)."""
        hidden = activation_then_linear(pre_activation, act, self.dense.weight, self.dense.bias)
        return self.LayerNorm(dropout_add(hidden, input_tensor, self.dropout.p, self.training))


class BertGenerationLayer(nn.Module):
    """Post-LN BERT layer: self-attention → (cross-attention) → feed-forward, each with residual + LayerNorm."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.attention = BertGenerationAttention(config)
        if config.add_cross_attention:
            self.crossattention = BertGenerationAttention(config, is_cross_attention=True)
        self.intermediate = BertGenerationIntermediate(config)
        self.output = BertGenerationOutput(config)

    def forward(self, hidden_states, self_mask, is_causal, encoder_hidden_states=None, cross_mask=None,
                past=None, head_mask=None, output_attentions=False):
        self_past = past[:2] if past is not None else None
        hidden_states, (k, v), self_weights = self.attention(
            hidden_states, self_mask, is_causal, past=self_past, head_mask=head_mask,
            output_attentions=output_attentions,
        )
        cross_k = cross_v = cross_weights = None
        if encoder_hidden_states is not None or (past is not None and past[2] is not None):
            if not hasattr(self, "crossattention"):
                raise ValueError("encoder_hidden_states given, but this stack was built without add_cross_attention")
            cross_past = past[2:] if past is not None and past[2] is not None else None
            hidden_states, (cross_k, cross_v), cross_weights = self.crossattention(
                hidden_states, cross_mask, False, kv_states=encoder_hidden_states, past=cross_past,
                output_attentions=output_attentions,
            )
        hidden_states = self.output(self.intermediate.dense(hidden_states), hidden_states, self.intermediate.act)
        return hidden_states, (k, v, cross_k, cross_v), self_weights, cross_weights

    @torch.no_grad()
    def init_cross_attention_from_self_attention(self) -> list[str]:
        """Copy this layer's self-attention (Q/K/V, output dense, LayerNorm) into its new cross-attention; returns
        the cross-attention tensor names written. Relative-position tables stay out: cross-attention has none."""
        source = self.attention.state_dict()
        target = self.crossattention.state_dict()
        written = []
        for name, tensor in target.items():
            if source[name].shape != tensor.shape:
                raise ValueError(f"crossattention.{name}: shape {tuple(tensor.shape)} differs from the self-attention's "
                                 f"{tuple(source[name].shape)} (encoder and decoder widths differ)")
            tensor.copy_(source[name])
            written.append(f"crossattention.{name}")
        return written


class BertGenerationStack(nn.Module):
    """HF's ``BertEncoder``: the list of layers (named ``encoder.layer`` in checkpoints)."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertGenerationLayer(config) for _ in range(config.num_hidden_layers))


class BertGenerationEncoder(PreTrainedModel):
    """The bare stack: an encoder, or (``is_decoder``) a causal decoder body with optional cross-attention."""

    config_class = BertGenerationConfig

    def __init__(self, config: BertGenerationConfig):
        super().__init__(config)
        self.embeddings = BertGenerationEmbeddings(config)
        self.encoder = BertGenerationStack(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

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
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        if input_ids is not None:
            check_input_ids(input_ids, config.vocab_size, config.max_position_embeddings - config.position_offset,
                            past_len, type(self).__name__)
            length = input_ids.size(1)
        else:
            length = inputs_embeds.size(1)
            if past_len + length > config.max_position_embeddings - config.position_offset:
                raise ValueError(f"{type(self).__name__}: sequence of {past_len + length} positions is longer than "
                                 f"max_position_embeddings={config.max_position_embeddings}")
        use_cache = config.is_decoder and (config.use_cache if use_cache is None else use_cache)
        self._check_masks(input_ids if input_ids is not None else inputs_embeds, past_len, attention_mask,
                          encoder_hidden_states, encoder_attention_mask, past_key_values)

        hidden = self.embeddings(input_ids, position_ids, inputs_embeds, past_len)
        self_mask, is_causal = self_attention_mask(attention_mask, length, past_len, config.is_decoder, hidden.device)
        cross_mask = padding_mask(encoder_attention_mask)
        head_masks = _expand_head_mask(head_mask, config.num_hidden_layers, hidden.dtype)

        all_hidden = (hidden,) if output_hidden_states else None
        all_self, all_cross, presents = ([], [], [])
        for i, layer in enumerate(self.encoder.layer):
            hidden, present, self_w, cross_w = layer(
                hidden, self_mask, is_causal, encoder_hidden_states, cross_mask,
                past_key_values[i] if past_key_values is not None else None,
                head_masks[i], output_attentions,
            )
            if use_cache:
                presents.append(present)
            if output_attentions:
                all_self.append(self_w)
                if cross_w is not None:
                    all_cross.append(cross_w)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
        out = BaseModelOutput(
            last_hidden_state=hidden,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=all_hidden,
            attentions=tuple(all_self) if output_attentions else None,
            cross_attentions=tuple(all_cross) if output_attentions and all_cross else None,
        )
        return out if return_dict else out.to_tuple()

    def _check_masks(self, inputs, past_len, attention_mask, encoder_hidden_states, encoder_attention_mask,
                     past_key_values) -> None:
        """A mask of the wrong length would otherwise surface as a broadcasting error inside the attention kernel."""
        where = type(self).__name__
        check_mask_shape(attention_mask, (inputs.size(0), past_len + inputs.size(1)), "attention_mask", where)
        if encoder_attention_mask is None:
            return
        cross_past = past_key_values[0][2] if past_key_values is not None else None
        if cross_past is not None:  # the cached cross keys are [batch, heads, source_len, head_dim]
            expected = (cross_past.size(0), cross_past.size(2))
        elif encoder_hidden_states is not None:
            expected = tuple(encoder_hidden_states.shape[:2])
        else:
            return
        check_mask_shape(encoder_attention_mask, expected, "encoder_attention_mask", where)


def _expand_head_mask(head_mask: torch.Tensor | None, num_layers: int, dtype) -> list:
    """HF's head_mask: [heads] or [layers, heads], 1 keeps a head, 0 silences it → per-layer [1, H, 1, 1]."""
    if head_mask is None:
        return [None] * num_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None].expand(num_layers, -1)
    if head_mask.dim() != 2 or head_mask.size(0) != num_layers:
        raise ValueError(f"head_mask: expected shape [heads] or [{num_layers}, heads], got {tuple(head_mask.shape)}")
    return [m.to(dtype)[None, :, None, None] for m in head_mask]


class BertGenerationOnlyLMHead(nn.Module):
    """One Linear to the vocabulary; its weight is tied to the word embeddings, its bias is ``lm_head.bias``."""

    def __init__(self, config: BertGenerationConfig):
        super().__init__()
        self.decoder = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states):
        return linear(hidden_states, self.decoder.weight, self.bias)


class BertGenerationDecoder(CausalLMHeadMixin, PreTrainedModel):
    """Causal decoder: the stack (``bert``) plus the LM head; cross-attends to an encoder when configured to."""

    config_class = BertGenerationConfig

    def __init__(self, config: BertGenerationConfig):
        super().__init__(config)
        self.bert = BertGenerationEncoder(config)
        self.lm_head = BertGenerationOnlyLMHead(config)
        self.post_init()
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def hf_retied_keys(self) -> set[str]:
        return {"lm_head.decoder.weight"} if self.config.tie_word_embeddings else set()

    @property
    def base_model(self) -> BertGenerationEncoder:
        return self.bert

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the vocabulary projection, for the fused loss."""
        return self.lm_head.decoder.weight, self.lm_head.bias
