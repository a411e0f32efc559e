"""The model base class: weight initialisation, ``from_pretrained`` / ``save_pretrained`` in HF layout."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from .attention import init_weights

logger = logging.getLogger("bertgen")


def residual_dtype(embeddings: torch.Tensor) -> torch.Tensor:
    """The embeddings in the dtype the residual stream is kept in: under autocast its dtype (bf16), else as is.

    Under autocast every matrix product already runs in bf16, but a stream that starts as fp32 embeddings stays
    fp32 (a bf16 product plus an fp32 residual is fp32, and LayerNorm keeps its input's dtype), so every product
    casts its input down and autograd casts every gradient back. Starting the stream in bf16 removes those casts
    (training ~10% faster on a bf16 CPU, activations half the memory); it is Megatron-LM's default
    (``fp32_residual_connection=False``). Parameters, LayerNorm statistics, softmax sums and the loss stay fp32.
    """
    if torch.is_autocast_enabled(embeddings.device.type):
        return embeddings.to(torch.get_autocast_dtype(embeddings.device.type))
    return embeddings


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None) -> torch.Tensor:
    """[l0, l1, …] → [start, l0, l1, …] (dropping the last), with -100 replaced by the pad id."""
    if decoder_start_token_id is None:
        raise ValueError("decoder_start_token_id is not set: set config.decoder_start_token_id (e.g. [CLS] for BERT)")
    if pad_token_id is None:
        raise ValueError("pad_token_id is not set: set config.pad_token_id")
    shifted = labels.new_empty(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill_(shifted == -100, pad_token_id)


def check_input_ids(input_ids: torch.Tensor, vocab_size: int, max_positions: int, past_len: int, where: str) -> None:
    """Catch what would otherwise be an IndexError deep inside an embedding lookup."""
    if input_ids.dim() != 2:
        raise ValueError(f"{where}: input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"{where}: input_ids must be an integer tensor, got {input_ids.dtype}")
    if input_ids.numel():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            bad = high if high >= vocab_size else low
            raise ValueError(f"{where}: token id {bad} is outside the vocabulary [0, {vocab_size})")
    if past_len + input_ids.size(1) > max_positions:
        raise ValueError(f"{where}: sequence of {past_len + input_ids.size(1)} positions is longer than the "
                         f"{max_positions} the model has position embeddings for (max_position_embeddings)")


def check_labels(labels: torch.Tensor, vocab_size: int, where: str) -> None:
    """Labels are vocabulary ids or -100 (ignored); anything else would be an IndexError inside the loss."""
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{where}: labels must be an integer tensor, got {labels.dtype}")
    bad = labels[labels.ne(-100) & (labels.lt(0) | labels.ge(vocab_size))]
    if bad.numel():
        raise ValueError(f"{where}: labels: token id {int(bad[0])} is outside the vocabulary [0, {vocab_size}) "
                         "(use -100 for positions the loss should skip)")


def check_mask_shape(mask: torch.Tensor | None, expected: tuple[int, int], name: str, where: str) -> None:
    if mask is not None and tuple(mask.shape) != expected:
        raise ValueError(f"{where}: {name}: expected shape {expected}, got {tuple(mask.shape)}")


class PreTrainedModel(nn.Module):
    """Shared behaviour of every bertgen model; subclasses set ``config_class`` and build their modules."""

    config_class: type = object

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        # Filled by from_pretrained: which weights came from the checkpoint and which did not.
        self.loading_report = None

    def post_init(self) -> None:
        """Initialise this model's own modules; a nested model (the decoder's ``bert``) initialised itself already,
        so running over its modules again would only double the construction time."""
        if any(p.is_meta for p in self.parameters()):
            return  # built on the meta device (e.g. to count parameters): no storage to initialise
        std = getattr(self.config, "initializer_range", 0.02)
        nested = {id(m) for child in self.modules() if child is not self and isinstance(child, PreTrainedModel)
                  for m in child.modules()}
        for module in self.modules():
            if id(module) not in nested:
                init_weights(module, std)

    def tie_weights(self) -> None:
        """Re-establish parameter sharing the config asks for (after loading or moving weights)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Counts each shared tensor once, as the paper's Table 1 does."""
        seen: set[int] = set()
        total = 0
        for p in self.parameters():  # parameters() already de-duplicates shared Parameters
            if only_trainable and not p.requires_grad:
                continue
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    # -- checkpoints ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None, **config_overrides: Any):
        """Load a checkpoint in HF layout (a local directory, or a hub id when online).

        ``config_overrides`` change the checkpoint's config before the model is built, e.g.
        ``BertGenerationDecoder.from_pretrained(bert_dir, is_decoder=True, add_cross_attention=True)``.
        The report of newly initialised and unused weights is in ``model.loading_report``.
        """
        from .checkpoint import load_pretrained

        return load_pretrained(cls, name_or_path, revision=revision, **config_overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` that transformers' own classes load."""
        from .checkpoint import save_pretrained

        save_pretrained(self, directory)

    def hf_retied_keys(self) -> set[str]:
        """Keys transformers re-ties on load, so a saved checkpoint may leave them out."""
        return set()


class CausalLMHeadMixin:
    """The forward shared by every decoder family: its stack (``base_model``) then its vocabulary projection
    (``compute_logits``); with ``labels``, the next-token loss (position t predicts ``labels[t + 1]``)."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=False,
        output_hidden_states=False,
        return_dict=True,
    ):
        from .outputs import CausalLMOutput

        if labels is not None:
            check_labels(labels, self.config.vocab_size, type(self).__name__)
            use_cache = False
        body = self.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, head_mask=head_mask,
            inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        logits = self.compute_logits(body.last_hidden_state)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        out = CausalLMOutput(loss=loss, logits=logits, past_key_values=body.past_key_values,
                             hidden_states=body.hidden_states, attentions=body.attentions,
                             cross_attentions=body.cross_attentions)
        return out if return_dict else out.to_tuple()
