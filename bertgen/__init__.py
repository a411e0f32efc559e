"""bertgen: warm-started Transformer encoder-decoders (Rothe, Narayan & Severyn, TACL 2020) in plain PyTorch."""

from .checkpoint import CheckpointError, LoadingReport
from .configuration import BertGenerationConfig, ConfigError, EncoderDecoderConfig, GPT2Config
from .modeling_bert_generation import BertGenerationDecoder, BertGenerationEncoder
from .modeling_encoder_decoder import EncoderDecoderModel, pad_to_ignore, shift_tokens_right
from .modeling_gpt2 import GPT2LMHeadModel, GPT2Model, GPT2PrefixLM
from .tokenization import BertGenerationTokenizer, FastTokenizer, TokenizerError, load_tokenizer

__all__ = [
    "BertGenerationConfig",
    "BertGenerationDecoder",
    "BertGenerationEncoder",
    "BertGenerationTokenizer",
    "CheckpointError",
    "ConfigError",
    "EncoderDecoderConfig",
    "EncoderDecoderModel",
    "FastTokenizer",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GPT2PrefixLM",
    "LoadingReport",
    "TokenizerError",
    "load_tokenizer",
    "pad_to_ignore",
    "shift_tokens_right",
]
