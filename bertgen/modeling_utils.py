"""The model base class: weight initialisation, ``from_pretrained`` / ``save_pretrained`` in HF layout."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from .attention import init_weights

logger = logging.getLogger("bertgen")


def check_input_ids(input_ids: torch.Tensor, vocab_size: int, max_positions: int, past_len: int, where: str) -> None:
    """Catch what would otherwise be an IndexError deep inside an embedding lookup."""
    if input_ids.dim() != 2:
        raise ValueError(f"{where}: input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if input_ids.numel():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            bad = high if high >= vocab_size else low
            raise ValueError(f"{where}: token id {bad} is outside the vocabulary [0, {vocab_size})")
    if past_len + input_ids.size(1) > max_positions:
        raise ValueError(f"{where}: sequence of {past_len + input_ids.size(1)} positions is longer than the "
                         f"{max_positions} the model has position embeddings for (max_position_embeddings)")


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
        std = getattr(self.config, "initializer_range", 0.02)
        for module in self.modules():
            if module is self or not isinstance(module, PreTrainedModel):
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
