"""bertgen: warm-started Transformer encoder-decoders (Rothe, Narayan & Severyn, TACL 2020) in plain PyTorch."""

from .checkpoint import CheckpointError, LoadingReport
from .configuration import BertGenerationConfig, ConfigError, EncoderDecoderConfig
from .modeling_bert_generation import BertGenerationDecoder, BertGenerationEncoder
from .modeling_encoder_decoder import EncoderDecoderModel, pad_to_ignore, shift_tokens_right

__all__ = [
    "BertGenerationConfig",
    "BertGenerationDecoder",
    "BertGenerationEncoder",
    "CheckpointError",
    "ConfigError",
    "EncoderDecoderConfig",
    "EncoderDecoderModel",
    "LoadingReport",
    "pad_to_ignore",
    "shift_tokens_right",
]
