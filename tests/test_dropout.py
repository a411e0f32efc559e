"""bertgen.dropout: the CPU dropout (15-bit lanes of int64 random words, bool mask) and its use in the models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bertgen import BertGenerationConfig, EncoderDecoderConfig, EncoderDecoderModel, GPT2Config
from bertgen.attention import attention, dropout_attention, eager_attention, padding_mask
from bertgen.dropout import Dropout, dropout, dropout_add, keep_mask

N = 1 << 20  # ~1M elements


def effective_p(p: float) -> float:
    return round(p * 32768) / 32768


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_and_expectation(p):
    torch.manual_seed(0)
    out = dropout(torch.ones(N), p)
    kept = out != 0
    rate = 1.0 - kept.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / N)
    assert abs(rate - p) < 5 * sigma + 2e-5, rate
    # every kept element carries exactly the rounded scale …
    assert torch.equal(out[kept], torch.full_like(out[kept], 1.0 / (1.0 - effective_p(p))))
    # … and the mean is preserved: E[out] = 1, within sampling noise.
    assert abs(out.double().mean().item() - 1.0) < 5 * sigma / (1 - p)


def test_expectation_of_a_general_input_is_preserved():
    torch.manual_seed(1)
    x = torch.rand(N) + 0.5
    means = torch.stack([dropout(x, 0.3).double().mean() for _ in range(8)])
    assert abs(means.mean().item() - x.double().mean().item()) < 2e-3


def test_lanes_are_independent_and_uniform():
    """The four 16-bit lanes of a word (one of them with only 15 random bits) must drop at the same rate."""
    torch.manual_seed(2)
    keep = keep_mask((N,), round(0.25 * 32768)).view(-1, 4).double().mean(0)
    assert torch.allclose(keep, torch.full((4,), 0.75, dtype=torch.float64), atol=4e-3), keep


def test_backward_is_mask_times_scale_times_grad():
    torch.manual_seed(3)
    p = 0.3
    mask_probe = dropout(torch.ones(64, 33), p)  # zeros where dropped, the scale elsewhere
    torch.manual_seed(3)
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    out = dropout(x, p)
    grad = torch.randn(64, 33)
    out.backward(grad)
    scale = 1.0 / (1.0 - effective_p(p))
    keep = mask_probe != 0
    assert 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(out, x.detach() * keep * scale, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, grad * keep * scale, rtol=0, atol=0)
    assert torch.equal(mask_probe, keep * scale)


def test_same_seed_same_mask_different_seed_different_mask():
    x = torch.ones(4096)
    torch.manual_seed(5)
    a = dropout(x, 0.2)
    torch.manual_seed(5)
    b = dropout(x, 0.2)
    torch.manual_seed(6)
    c = dropout(x, 0.2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # checkpointed generator state reproduces the next mask, as resuming a run does
    state = torch.get_rng_state()
    d = dropout(x, 0.2)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.2), d)


@pytest.mark.parametrize("p, training", [(0.0, True), (0.5, False), (1.0, False)])
def test_identity_draws_nothing(p, training):
    x = torch.randn(7, 9)
    state = torch.get_rng_state()
    assert dropout(x, p, training) is x
    assert torch.equal(torch.get_rng_state(), state)
    module = Dropout(p)
    module.train(training)
    assert module(x) is x
    assert torch.equal(torch.get_rng_state(), state)


def test_p_one_gives_zeros_and_zero_gradients():
    x = torch.randn(5, 6, requires_grad=True)
    state = torch.get_rng_state()
    out = dropout(x, 1.0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out, torch.zeros(5, 6))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros(5, 6))


def test_bad_p_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(torch.ones(3), -0.1)


def test_bf16_and_autocast():
    torch.manual_seed(7)
    x = torch.randn(128, 40, dtype=torch.bfloat16, requires_grad=True)
    out = dropout(x, 0.25)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    kept = out != 0
    # the scale is applied in float math, not rounded to bf16 first
    expected = (x.detach().float() * (1.0 / (1.0 - effective_p(0.25)))).bfloat16()
    assert torch.equal(out[kept], expected[kept])

    linear = torch.nn.Linear(40, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dropout(linear(torch.randn(16, 40)), 0.1)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert linear.weight.grad is not None and torch.isfinite(linear.weight.grad).all()


def test_a_16_bit_mask_keeps_the_same_elements_as_the_bool_mask():
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(3)
        as_bool = keep_mask((33, 17), round(0.3 * 32768))
        torch.manual_seed(3)
        as_float = keep_mask((33, 17), round(0.3 * 32768), dtype)
        assert as_float.dtype == dtype and set(as_float.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(as_float.bool(), as_bool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_add_is_residual_plus_dropout_with_the_same_draws(dtype):
    x = torch.randn(8, 16, 48).to(dtype).requires_grad_()
    residual = torch.randn(8, 16, 48).to(dtype).requires_grad_()
    torch.manual_seed(11)
    fused = dropout_add(x, residual, 0.1, training=True)
    grad = torch.randn_like(fused)
    fused.backward(grad)
    fused_grads = x.grad.clone(), residual.grad.clone()
    x.grad = residual.grad = None
    torch.manual_seed(11)
    plain = dropout(x, 0.1) + residual
    plain.backward(grad)
    # One rounding fewer in bf16 (scale, product and sum in one op): equal in fp32, within bf16's rounding in bf16.
    if dtype == torch.float32:
        assert torch.equal(fused, plain)
    else:
        # bf16 rounding of the operands' magnitude (a sum that cancels keeps the operands' absolute error)
        bound = 2 ** -7 * (residual.detach().float().abs() + 2 * x.detach().float().abs())
        assert ((fused.float() - plain.float()).abs() <= bound).all()
    assert torch.equal(fused_grads[0], x.grad) and torch.equal(fused_grads[1], residual.grad)
    assert torch.equal(dropout_add(x, residual, 0.1, training=False), x + residual)


def test_non_contiguous_input_and_odd_sizes():
    base = torch.randn(10, 13)
    x = base.t()  # non-contiguous
    torch.manual_seed(8)
    out = dropout(x, 0.4)
    torch.manual_seed(8)
    ref = dropout(x.contiguous(), 0.4)
    assert out.shape == x.shape and torch.equal(out, ref)
    for shape in [(0,), (1,), (3,), (5, 3, 1)]:
        assert dropout(torch.ones(shape), 0.5).shape == shape


def test_module_is_a_parameterless_nn_dropout():
    module = Dropout(0.1)
    assert isinstance(module, torch.nn.Dropout)
    assert dict(module.state_dict()) == {}
    assert "p=0.1" in repr(module)


def test_draws_from_the_default_generator_a_quarter_word_per_element():
    """ceil(n / 4) int64 words: the generator advances exactly as random_() over that many words."""
    torch.manual_seed(9)
    dropout(torch.ones(4 * 1000 + 1), 0.1)
    after = torch.get_rng_state()
    torch.manual_seed(9)
    torch.empty(1001, dtype=torch.int64).random_()
    assert torch.equal(torch.get_rng_state(), after)


# -- attention ----------------------------------------------------------------------------------------------------
def _qkv(batch=3, heads=4, q_len=6, k_len=6, dim=8, seed=10, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, dim, generator=gen, dtype=dtype).requires_grad_()
            for n in (q_len, k_len, k_len)]


@pytest.mark.parametrize("case", ["padding", "causal", "causal+padding", "cross", "long-head"])
def test_dropout_attention_equals_eager_attention_with_the_same_masks(case):
    q_len, k_len, dim = (4, 9, 8) if case == "cross" else (6, 6, 16 if case == "long-head" else 8)
    query, key, value = _qkv(q_len=q_len, k_len=k_len, dim=dim)
    attention_mask = torch.ones(3, k_len)
    attention_mask[1, -2:] = 0
    attention_mask[2, -4:] = 0
    mask = padding_mask(attention_mask) if case != "causal" else None
    is_causal = case.startswith("causal")
    grad = torch.randn(3, 4, q_len, dim)

    torch.manual_seed(11)
    ours = dropout_attention(query, key, value, mask, is_causal, 0.3)
    ours.backward(grad)
    ours_grads = [t.grad.clone() for t in (query, key, value)]
    for t in (query, key, value):
        t.grad = None
    torch.manual_seed(11)
    ref = eager_attention(query, key, value, mask, is_causal, 0.3)[0]
    ref.backward(grad)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    for mine, theirs in zip(ours_grads, (query.grad, key.grad, value.grad)):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)


def test_dropout_attention_without_drops_equals_sdpa():
    query, key, value = _qkv()
    attention_mask = torch.ones(3, 6)
    attention_mask[1, -3:] = 0
    mask = padding_mask(attention_mask)
    # p below 1/65536 rounds to no drop at all
    ours = dropout_attention(query, key, value, mask, False, 1e-6, scale=0.3)
    sdpa = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(ours, sdpa, atol=1e-6, rtol=1e-5)


def test_attention_uses_dropout_attention_when_training_on_cpu():
    query, key, value = _qkv()
    torch.manual_seed(12)
    routed, weights = attention(query, key, value, None, True, 0.2)
    torch.manual_seed(12)
    direct = dropout_attention(query, key, value, None, True, 0.2)
    assert weights is None and torch.equal(routed, direct)
    # without dropout the SDPA path runs and draws nothing
    state = torch.get_rng_state()
    attention(query, key, value, None, True, 0.0)
    assert torch.equal(torch.get_rng_state(), state)


def test_dropout_attention_bf16():
    query, key, value = _qkv(dtype=torch.bfloat16)
    mask = padding_mask(torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]))
    out = dropout_attention(query, key, value, mask, False, 0.1)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (query, key, value))


# -- models -------------------------------------------------------------------------------------------------------
def _encoder_decoder(decoder_family: str, p: float) -> EncoderDecoderModel:
    bert = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, hidden_dropout_prob=p, attention_probs_dropout_prob=p, pad_token_id=0)
    enc = BertGenerationConfig(**bert)
    if decoder_family == "gpt2":
        dec = GPT2Config(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=p,
                         embd_pdrop=p, attn_pdrop=p, bos_token_id=2, eos_token_id=1, add_cross_attention=True)
    else:
        dec = BertGenerationConfig(**bert, is_decoder=True, add_cross_attention=True)
    torch.manual_seed(13)
    return EncoderDecoderModel(EncoderDecoderConfig(encoder=enc, decoder=dec, decoder_start_token_id=2,
                                                    pad_token_id=0, eos_token_id=1))


def _batch():
    gen = torch.Generator().manual_seed(14)
    src = torch.randint(3, 99, (3, 9), generator=gen)
    src_mask = torch.ones_like(src)
    src_mask[1, 6:] = 0
    src[1, 6:] = 0
    labels = torch.randint(3, 99, (3, 7), generator=gen)
    labels[2, 4:] = -100
    return src, src_mask, labels


@pytest.mark.parametrize("decoder_family", ["bert", "gpt2"])
def test_models_train_with_dropout_and_evaluate_without(decoder_family):
    src, src_mask, labels = _batch()
    model = _encoder_decoder(decoder_family, 0.2)
    plain = _encoder_decoder(decoder_family, 0.0)
    plain.load_state_dict(model.state_dict())  # same keys: the dropouts hold no state
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(isinstance(m, Dropout) for m in dropouts)

    def loss_and_grads(seed):
        model.zero_grad()
        torch.manual_seed(seed)
        loss = model(input_ids=src, attention_mask=src_mask, labels=labels).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.train()
    loss_a, grads_a = loss_and_grads(15)
    loss_b, grads_b = loss_and_grads(15)
    loss_c, _ = loss_and_grads(16)
    assert torch.isfinite(loss_a) and all(torch.isfinite(g).all() for g in grads_a)
    assert torch.equal(loss_a, loss_b) and all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))
    assert not torch.equal(loss_a, loss_c)

    model.eval()
    plain.eval()
    with torch.no_grad():
        state = torch.get_rng_state()
        evaluated = model(input_ids=src, attention_mask=src_mask, labels=labels).loss
        assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing
        reference = plain(input_ids=src, attention_mask=src_mask, labels=labels).loss
    torch.testing.assert_close(evaluated, reference, atol=1e-6, rtol=0)
    assert not torch.equal(evaluated, loss_a)


def test_other_devices_use_torch_dropout_and_sdpa():
    """Off the CPU (here the meta device, standing in for CUDA) dropout is F.dropout and attention stays on SDPA."""
    x = torch.ones(3, 4, device="meta")
    assert dropout(x, 0.5).device.type == "meta"
    q = torch.ones(2, 2, 3, 4, device="meta")
    out, weights = attention(q, q, q, None, True, 0.1)
    assert out.device.type == "meta" and out.shape == (2, 2, 3, 4) and weights is None
