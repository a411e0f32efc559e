"""EncoderDecoderModel: any encoder stack plus any decoder with cross-attention, warm-started independently.

As in transformers: ``labels`` become ``decoder_input_ids`` by a shift to the right behind
``decoder_start_token_id``; positions labelled -100 do not count in the loss; when the two widths differ the encoder
states pass through ``enc_to_dec_proj``; ``tie_encoder_decoder`` makes the decoder stack share every parameter
whose name it has in common with the encoder (the paper's bertShare / robertaShare: only cross-attention and the LM
head bias stay the decoder's own). ``share_word_embeddings`` shares only the embedding matrix (the paper's bert2rnd);
``from_encoder_decoder_pretrained`` turns it on by itself when both sides are one vocabulary, as the paper's
parameter counts assume.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import init_weights
from .checkpoint import (
    CheckpointError,
    LoadingReport,
    _log_report,
    assign_weights,
    build_config,
    family_for,
    finish_report,
    read_state_dict,
    resolve_checkpoint_dir,
    read_config_dict,
    without_absolute_positions_if_relative,
)
from . import generation
from .configuration import BertGenerationConfig, EncoderDecoderConfig, GPT2Config, PretrainedConfig
from .linear import Linear
from .vocab_projection import linear_cross_entropy
from .modeling_bert_generation import BertGenerationDecoder, BertGenerationEncoder
from .modeling_gpt2 import GPT2LMHeadModel
from .modeling_utils import PreTrainedModel, check_labels, shift_tokens_right
from .outputs import BaseModelOutput, Seq2SeqLMOutput

# config class → (encoder class, decoder class): the modules that run a side's config (None: cannot be that side).
MODEL_CLASSES: dict[type, tuple[type | None, type | None]] = {
    BertGenerationConfig: (BertGenerationEncoder, BertGenerationDecoder),
    GPT2Config: (None, GPT2LMHeadModel),
}


def model_class_for(config: PretrainedConfig, role: str) -> type:
    encoder_class, decoder_class = MODEL_CLASSES.get(type(config), (None, None))
    cls = encoder_class if role == "encoder" else decoder_class
    if cls is None:
        raise ValueError(f"{type(config).__name__} ({config.model_type}) cannot be used as the {role}")
    return cls


def pad_to_ignore(target_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Labels from padded target ids: pad positions become -100 so the loss skips them."""
    return target_ids.masked_fill(target_ids == pad_token_id, -100)


def _set_parameter(root: nn.Module, dotted: str, param: nn.Parameter) -> None:
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, param)


def tie_parameters(source: nn.Module, target: nn.Module) -> list[str]:
    """Make every parameter of ``target`` that has a same-named, same-shaped one in ``source`` that parameter."""
    source_params = dict(source.named_parameters(remove_duplicate=False))
    tied = []
    for name, param in list(target.named_parameters(remove_duplicate=False)):
        other = source_params.get(name)
        if other is not None and other.shape == param.shape and other is not param:
            _set_parameter(target, name, other)
            tied.append(name)
    return tied


class EncoderDecoderModel(PreTrainedModel):
    config_class = EncoderDecoderConfig

    def __init__(self, config: EncoderDecoderConfig | None = None, encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None):
        if config is None:
            if encoder is None or decoder is None:
                raise ValueError("pass a config, or both an encoder and a decoder")
            config = EncoderDecoderConfig(encoder=encoder.config, decoder=decoder.config)
        super().__init__(config)
        dec_config = config.decoder
        if not (dec_config.is_decoder and getattr(dec_config, "add_cross_attention", True)):
            raise ValueError("decoder config: is_decoder and add_cross_attention must both be true")
        self.encoder = encoder if encoder is not None else model_class_for(config.encoder, "encoder")(config.encoder)
        self.decoder = decoder if decoder is not None else model_class_for(config.decoder, "decoder")(config.decoder)
        enc_width, dec_width = config.encoder.hidden_size, dec_config.hidden_size
        if enc_width != dec_width and getattr(dec_config, "cross_attention_hidden_size", None) is None:
            self.enc_to_dec_proj = Linear(enc_width, dec_width)
            init_weights(self.enc_to_dec_proj, getattr(dec_config, "initializer_range", 0.02))
        self.tie_weights()

    # -- sharing ----------------------------------------------------------------------------------------------
    def tie_weights(self) -> None:
        if self.config.tie_encoder_decoder:
            tie_parameters(self.encoder, self.decoder.base_model)
        elif self.config.share_word_embeddings:
            enc_emb, dec_emb = self.encoder.get_input_embeddings(), self.decoder.get_input_embeddings()
            if enc_emb.weight.shape != dec_emb.weight.shape:
                raise ValueError(f"share_word_embeddings: encoder vocabulary {tuple(enc_emb.weight.shape)} and "
                                 f"decoder vocabulary {tuple(dec_emb.weight.shape)} differ")
            dec_emb.weight = enc_emb.weight
        self.decoder.tie_weights()

    def hf_retied_keys(self) -> set[str]:
        """Only the decoder's own LM-head tie: transformers 5.x no longer has ``tie_encoder_decoder``, so the shared
        decoder-stack tensors must be written out (as copies) or transformers would initialise them at random."""
        return {"decoder." + k for k in self.decoder.hf_retied_keys()}

    def state_dict_to_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each side's own checkpoint-layout conversion (GPT-2's Conv1D transposes), applied under its prefix."""
        for role in ("encoder", "decoder"):
            convert = getattr(getattr(self, role), "state_dict_to_hf", None)
            if convert is None:
                continue
            prefix = role + "."
            part = convert({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            state = {k: v for k, v in state.items() if not k.startswith(prefix)}
            state.update({prefix + k: v for k, v in part.items()})
        return state

    def get_encoder(self) -> nn.Module:
        return self.encoder

    # -- forward ----------------------------------------------------------------------------------------------
    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> torch.Tensor:
        """Encoder states as the decoder's cross-attention reads them (projected when widths differ)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        return self.project_encoder_states(out.last_hidden_state), out

    def project_encoder_states(self, states: torch.Tensor) -> torch.Tensor:
        return self.enc_to_dec_proj(states) if hasattr(self, "enc_to_dec_proj") else states

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        head_mask: torch.Tensor | None = None,
        decoder_head_mask: torch.Tensor | None = None,
        return_logits: bool = True,
    ):
        """As transformers' EncoderDecoderModel.forward. ``return_logits=False`` with ``labels`` is the training
        fast path: the LM head runs only on positions that have a label, and ``logits`` is None."""
        if labels is not None:
            check_labels(labels, self.config.decoder.vocab_size, type(self).__name__)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, head_mask=head_mask,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            )
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        encoder_states = self.project_encoder_states(encoder_outputs.last_hidden_state)

        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
            if decoder_attention_mask is None:
                # From the labels, not from the pad id: GPT-2's vocabulary pads with its start/end token.
                decoder_attention_mask = torch.cat([labels.new_ones(labels.size(0), 1), labels[:, :-1].ne(-100)], 1)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError("pass labels, decoder_input_ids or decoder_inputs_embeds")

        decoder_kwargs: dict[str, Any] = dict(
            input_ids=decoder_input_ids, attention_mask=decoder_attention_mask, inputs_embeds=decoder_inputs_embeds,
            encoder_hidden_states=encoder_states, encoder_attention_mask=attention_mask,
            past_key_values=past_key_values, use_cache=use_cache if labels is None else False,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
        )
        if decoder_head_mask is not None:
            decoder_kwargs["head_mask"] = decoder_head_mask
        loss = logits = None
        if labels is not None and not return_logits:
            body = self.decoder.base_model(**decoder_kwargs)
            loss = self.label_loss(body.last_hidden_state, labels)
            dec_out = body
        else:
            dec_out = self.decoder(**decoder_kwargs)
            logits = dec_out.logits
            if labels is not None:
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        out = Seq2SeqLMOutput(
            loss=loss, logits=logits, past_key_values=dec_out.past_key_values,
            decoder_hidden_states=dec_out.hidden_states, decoder_attentions=dec_out.attentions,
            cross_attentions=dec_out.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions,
        )
        return out if return_dict else out.to_tuple()

    def label_loss(self, hidden_states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over labelled positions: the vocabulary projection runs only where a label is, fused
        with the loss in chunks (bertgen.vocab_projection), so the [positions, vocabulary] logits are never held at once."""
        keep = labels.ne(-100)
        weight, bias = self.decoder.output_projection()
        return linear_cross_entropy(hidden_states[keep], weight, bias, labels[keep])

    # -- generation -------------------------------------------------------------------------------------------
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Beam search or greedy decoding; see ``bertgen.generation.generate`` for the arguments."""
        return generation.generate(self, input_ids, attention_mask, **kwargs)

    # -- the seq2seq interface (bertgen.generation.Seq2SeqModel) ----------------------------------------------------
    def decoding_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      use_cache: bool = True, max_new_tokens: int | None = None) -> generation.EncoderDecoderStep:
        return generation.EncoderDecoderStep(self, input_ids, attention_mask, use_cache, max_new_tokens)

    def decoding_start_id(self) -> int:
        start = self.config.decoder_start_token_id
        if start is None:
            raise ValueError("generate: decoder_start_token_id is not set; pass it or set model.config."
                             "decoder_start_token_id (the paper's BERT models start from [CLS])")
        return start

    def _positions(self, config) -> int:
        return config.max_position_embeddings - getattr(config, "position_offset", 0)

    def output_room(self, input_width: int) -> int:
        """The decoder's positions (the last generated token is never fed back, so it reads at most that many)."""
        decoder = self.config.decoder
        return getattr(decoder, "n_positions", None) or self._positions(decoder)

    def max_new_tokens(self, input_width: int, max_target: int) -> int:
        return min(max_target, self.output_room(input_width))

    def fit_lengths(self, max_source: int, max_target: int) -> tuple[int, int]:
        """A decoder reads ``[start] + labels[:-1]``, so targets may use every decoder position."""
        return min(max_source, self._positions(self.config.encoder)), min(max_target, self.output_room(0))

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.decoder.output_projection()

    @property
    def output_hidden_size(self) -> int:
        return self.config.decoder.hidden_size

    # -- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_pretrained_model_name_or_path: str | None = None,
        decoder_pretrained_model_name_or_path: str | None = None,
        *,
        tie_encoder_decoder: bool = False,
        share_word_embeddings: bool | None = None,
        encoder_config: PretrainedConfig | None = None,
        decoder_config: PretrainedConfig | None = None,
        decoder_start_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | None = None,
        **decoder_overrides: Any,
    ) -> "EncoderDecoderModel":
        """Warm-start each side from a checkpoint (or build it randomly from a config when the path is None).

        The decoder gets ``is_decoder=True, add_cross_attention=True``; its cross-attention is newly initialised.
        ``share_word_embeddings``: one word-embedding matrix for the encoder, the decoder and its output
        projection, as ``bertgen.schemes`` builds the paper's same-vocabulary models (Table 1 counts one matrix).
        None (the default) shares exactly when both sides are checkpoints with one vocabulary (``same_vocabulary``);
        the encoder's matrix is the one kept (two different checkpoints of one vocabulary lose the decoder's; pass
        False to keep both). True with one side random shares the warm side's matrix. The model is returned in
        eval mode, as ``from_pretrained`` returns it; call ``model.train()`` to fine-tune.
        """
        encoder_dir = decoder_dir = None
        if encoder_pretrained_model_name_or_path is not None:
            encoder_dir = resolve_checkpoint_dir(encoder_pretrained_model_name_or_path)
            encoder = model_class_for(_peek_config(encoder_dir), "encoder").from_pretrained(
                encoder_dir, is_decoder=False, add_cross_attention=False)
        elif encoder_config is not None:
            encoder = model_class_for(encoder_config, "encoder")(encoder_config)
        else:
            raise ValueError("pass encoder_pretrained_model_name_or_path or encoder_config")
        dec_kwargs = {"is_decoder": True, "add_cross_attention": True, **decoder_overrides}
        if decoder_pretrained_model_name_or_path is not None:
            decoder_dir = resolve_checkpoint_dir(decoder_pretrained_model_name_or_path)
            decoder = model_class_for(_peek_config(decoder_dir), "decoder").from_pretrained(decoder_dir, **dec_kwargs)
        elif decoder_config is not None:
            decoder_config = decoder_config.replace(**dec_kwargs)
            decoder = model_class_for(decoder_config, "decoder")(decoder_config)
        else:
            raise ValueError("pass decoder_pretrained_model_name_or_path or decoder_config")
        if share_word_embeddings is None:
            share_word_embeddings = (encoder_dir is not None and decoder_dir is not None
                                     and same_vocabulary(encoder_dir, decoder_dir))
        if share_word_embeddings and encoder_dir is None and decoder_dir is not None:
            # tie_weights keeps the encoder's matrix; the warm one is the decoder's here.
            enc_emb, dec_emb = encoder.get_input_embeddings(), decoder.get_input_embeddings()
            if enc_emb.weight.shape == dec_emb.weight.shape:
                with torch.no_grad():
                    enc_emb.weight.copy_(dec_emb.weight)
        config = EncoderDecoderConfig(
            encoder=encoder.config, decoder=decoder.config, tie_encoder_decoder=tie_encoder_decoder,
            share_word_embeddings=share_word_embeddings,
            decoder_start_token_id=decoder_start_token_id,
            pad_token_id=pad_token_id if pad_token_id is not None else decoder.config.pad_token_id,
            eos_token_id=eos_token_id if eos_token_id is not None else decoder.config.eos_token_id,
        )
        model = cls(config, encoder=encoder, decoder=decoder)
        model.loading_report = {"encoder": encoder.loading_report, "decoder": decoder.loading_report}
        return model.eval()

    @classmethod
    def _load_pretrained(cls, directory: Path, raw: dict[str, Any], meta: bool = False,
                         **overrides: Any) -> "EncoderDecoderModel":
        """A saved encoder-decoder: config.json with ``encoder`` / ``decoder`` sub-configs, one weights file.

        ``meta=True`` (``from_pretrained(directory, meta=True)``): built on the meta device from the safetensors
        headers, no tensor data read; every tensor goes through the same checks (name, dtype, shape), so a caller can
        refuse a corrupt or mismatched checkpoint in milliseconds before doing anything else."""
        if raw.get("model_type") != "encoder-decoder":
            raise CheckpointError(f"{directory}: a {raw.get('model_type')!r} checkpoint is not an encoder-decoder; "
                                  "use from_encoder_decoder_pretrained to warm-start from single stacks")
        sub = {}
        for role in ("encoder", "decoder"):
            if not isinstance(raw.get(role), dict):
                raise CheckpointError(f"{directory / 'config.json'}: {role}: expected a config object")
            sub[role] = build_config(raw[role], f"{directory / 'config.json'}: {role}")
        top = {k: v for k, v in raw.items() if k not in ("encoder", "decoder", "model_type")}
        top.update(overrides)
        config = EncoderDecoderConfig.from_dict(top, encoder=sub["encoder"], decoder=sub["decoder"])
        with torch.device("meta") if meta else nullcontext():
            model = cls(config)
        report = LoadingReport(str(directory), "encoder-decoder")
        state = read_state_dict(directory, meta=meta)
        # Decoder first: with tie_encoder_decoder the shared tensors then end up with the encoder's values, as when
        # tying two separately loaded stacks (and as transformers 4.x did).
        for role in ("decoder", "encoder"):
            part = {k[len(role) + 1:]: v for k, v in state.items() if k.startswith(role + ".")}
            part = without_absolute_positions_if_relative(part, raw[role])
            family = family_for(raw[role]["model_type"], f"{directory}: {role}")
            stack, head, unused, folded = family.map_state(part, family.prefix)
            report.unused.extend(f"{role}.{k}" for k in unused)
            report.folded.extend(f"{role}.{k}" for k in folded)
            module = getattr(model, role)
            inner = "" if role == "encoder" else _base_prefix(module)
            weights = {f"{role}.{inner}{k}": v for k, v in stack.items()}
            if role == "decoder":
                weights.update({f"decoder.{k}": v for k, v in head.items()})
            assign_weights(model, weights, report)
        rest = {k: v for k, v in state.items() if not k.startswith(("encoder.", "decoder."))}
        assign_weights(model, rest, report)
        finish_report(model, report)
        model.tie_weights()
        model.loading_report = report
        _log_report(report)
        return model.eval()


def _base_prefix(decoder: nn.Module) -> str:
    base = decoder.base_model
    return next(n for n, m in decoder.named_children() if m is base) + "."


# The files that define a vocabulary, whichever tokenizer kind a checkpoint ships.
VOCABULARY_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.json", "spiece.model")


def same_vocabulary(encoder_dir: Path, decoder_dir: Path) -> bool:
    """Whether two checkpoints read and write one vocabulary, so one word-embedding matrix can serve both: the
    same directory, or the same family and vocabulary size with byte-identical vocabulary files (two copies of
    one checkpoint). Without vocabulary files two directories cannot be told apart, so they are not shared."""
    enc, dec = Path(encoder_dir), Path(decoder_dir)
    if enc.resolve() == dec.resolve():
        return True
    raw = [read_config_dict(d) for d in (enc, dec)]
    families = [family_for(r.get("model_type"), str(d)).name for r, d in zip(raw, (enc, dec))]
    if families[0] != families[1] or raw[0].get("vocab_size") != raw[1].get("vocab_size"):
        return False
    present = [name for name in VOCABULARY_FILES if (enc / name).is_file() or (dec / name).is_file()]
    return bool(present) and all((enc / name).is_file() and (dec / name).is_file()
                                 and (enc / name).read_bytes() == (dec / name).read_bytes() for name in present)


def _peek_config(name_or_path) -> PretrainedConfig:
    directory = resolve_checkpoint_dir(name_or_path)
    raw = read_config_dict(directory)
    return build_config(raw, str(directory))
