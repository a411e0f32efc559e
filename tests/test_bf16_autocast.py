"""The bf16 autocast training path: the residual stream runs in bf16 from the embeddings on (no per-product casts),
parameters and their gradients stay fp32, and the loss and gradients stay close to fp32 training."""

import pytest
import torch

from bertgen import EncoderDecoderModel
from bertgen.configuration import BertGenerationConfig, EncoderDecoderConfig, GPT2Config


def _model(kind: str, tiny: dict) -> EncoderDecoderModel:
    torch.manual_seed(0)
    encoder = BertGenerationConfig(**tiny)
    if kind == "bert":
        decoder = BertGenerationConfig(**tiny, is_decoder=True, add_cross_attention=True)
    else:
        decoder = GPT2Config(vocab_size=tiny["vocab_size"], n_embd=32, n_layer=2, n_head=4, n_positions=64,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=1,
                             is_decoder=True, add_cross_attention=True)
    return EncoderDecoderModel(EncoderDecoderConfig(encoder=encoder, decoder=decoder, decoder_start_token_id=2,
                                                    pad_token_id=0)).train()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (4, 10), generator=g)
    labels = torch.randint(3, 99, (4, 7), generator=g)
    labels[0, 5:] = -100
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids, mask, labels


@pytest.mark.parametrize("decoder", ["bert", "gpt2"])
def test_autocast_residual_stream_is_bf16_parameters_and_grads_fp32(decoder, tiny):
    model = _model(decoder, tiny)
    ids, mask, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
    assert all(h.dtype == torch.bfloat16 for h in out.encoder_hidden_states)
    assert all(h.dtype == torch.bfloat16 for h in out.decoder_hidden_states)
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
               for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("decoder", ["bert", "gpt2"])
@pytest.mark.parametrize("return_logits", [True, False])
def test_autocast_loss_and_gradients_close_to_fp32(decoder, return_logits, tiny):
    ids, mask, labels = _batch()
    losses, grads = [], []
    for bf16 in (False, True):
        model = _model(decoder, tiny)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, return_logits=return_logits).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert abs(losses[1] - losses[0]) < 2e-2 * losses[0]
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 5e-2
