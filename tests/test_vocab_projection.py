"""The blocked vocabulary projection equals the plain one: the fused chunked LM-head loss (values and gradients)
against projection + cross-entropy, the decoding log-probabilities against projection + log-softmax."""

import pytest
import torch
import torch.nn.functional as F

from bertgen import vocab_projection
from bertgen.linear import has_onednn, use_cpu_backend
from bertgen.vocab_projection import linear_cross_entropy, log_probs


def _reference(hidden, weight, bias, labels):
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), labels)


@pytest.fixture(params=[1024, 16, 7], ids=lambda b: f"block{b}")
def vocab_block(request, monkeypatch):
    """The default block (one block for these vocabularies) and small ones (many blocks, a ragged last block)."""
    monkeypatch.setattr(vocab_projection, "VOCAB_BLOCK", request.param)
    return request.param


@pytest.fixture(autouse=True, params=["blas", "onednn"])
def product_backend(request):
    """Every test on both CPU product libraries (bertgen.linear): their code paths differ here."""
    if request.param == "onednn" and not has_onednn():
        pytest.skip("this PyTorch build has no oneDNN")
    with use_cpu_backend(request.param):
        yield request.param


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, None])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_loss_matches_reference_fp32(chunk_rows, with_bias, vocab_block):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(101, 16, requires_grad=True)
    bias = torch.randn(101, requires_grad=True) if with_bias else None
    labels = torch.randint(0, 101, (37,))
    ours = linear_cross_entropy(hidden, weight, bias, labels, chunk_rows)
    grads_ours = torch.autograd.grad(ours * 3.0, [hidden, weight] + ([bias] if with_bias else []))
    ref = _reference(hidden, weight, bias, labels)
    grads_ref = torch.autograd.grad(ref * 3.0, [hidden, weight] + ([bias] if with_bias else []))
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_ours, grads_ref):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_fused_loss_with_repeated_labels_accumulates_one_hot_terms(vocab_block):
    """Several positions with the same label: the one-hot part of the weight/bias gradient must add up."""
    torch.manual_seed(2)
    hidden = torch.randn(12, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    labels = torch.tensor([3, 3, 3, 39, 0, 0, 17, 3, 39, 16, 15, 3])
    ours = torch.autograd.grad(linear_cross_entropy(hidden, weight, bias, labels, 5), [hidden, weight, bias])
    ref = torch.autograd.grad(_reference(hidden, weight, bias, labels), [hidden, weight, bias])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_bias", [True, False])
def test_decoding_log_probs_match_log_softmax_of_linear(with_bias, vocab_block):
    torch.manual_seed(3)
    hidden = torch.randn(9, 16)
    weight = torch.randn(101, 16)
    bias = torch.randn(101) if with_bias else None
    with torch.inference_mode():
        ours = log_probs(hidden, weight, bias)
    ref = F.log_softmax(F.linear(hidden, weight, bias), dim=-1)
    assert ours.dtype == torch.float32 and ours.shape == (9, 101)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_decoding_log_probs_of_bf16_weights_are_fp32(vocab_block):
    torch.manual_seed(4)
    hidden, weight, bias = torch.randn(4, 16).bfloat16(), torch.randn(50, 16).bfloat16(), torch.randn(50).bfloat16()
    ours = log_probs(hidden, weight, bias)
    ref = F.log_softmax(F.linear(hidden, weight, bias).float(), dim=-1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_fused_loss_under_bf16_autocast_is_close_and_differentiable():
    torch.manual_seed(1)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(211, 32, requires_grad=True)
    bias = torch.zeros(211, requires_grad=True)
    labels = torch.randint(0, 211, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, bias, labels, 16)
        ref = _reference(hidden, weight, bias, labels)
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) < 2e-2 * ref.item()
    ours.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    g_ours = weight.grad.clone()
    weight.grad = None
    ref_fp32 = _reference(hidden, weight, bias, labels)
    ref_fp32.backward()
    assert torch.allclose(g_ours, weight.grad, atol=5e-3, rtol=5e-2)


def test_fused_loss_under_bf16_autocast_keeps_small_gradients_of_confident_predictions():
    """Where the model is confident (p of the label near 1) the gradient softmax - one-hot is small; it must be formed
    before rounding to bf16, not as bf16(sum_v p_v W_v) - W_y, which cancels to a few bf16 steps of W_y. What is left
    is the bf16 rounding of the logits themselves (~1%; autocast's, transformers' too); the cancellation doubled it."""
    torch.manual_seed(5)
    weight = torch.randn(211, 32, requires_grad=True)
    labels = torch.randint(0, 211, (64,))
    hidden = (0.5 * weight.detach()[labels]).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        linear_cross_entropy(hidden, weight, None, labels, 16).backward()
    # The same loss on the bf16-rounded operands in float64: what a bf16 product with exact accumulation gives.
    h64, w64 = (t.detach().bfloat16().double().requires_grad_() for t in (hidden, weight))
    F.cross_entropy(F.linear(h64, w64), labels).backward()
    assert F.softmax(F.linear(h64, w64), -1).gather(1, labels[:, None]).mean() > 0.95  # confident, as meant
    for ours, ref in ((hidden.grad, h64.grad), (weight.grad, w64.grad)):
        assert ((ours.double() - ref).norm() / ref.norm()).item() < 1.2e-2


def test_fused_loss_rejects_empty_and_misshaped():
    w = torch.randn(5, 3)
    with pytest.raises(ValueError, match="no labelled positions"):
        linear_cross_entropy(torch.randn(0, 3), w, None, torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="expected hidden"):
        linear_cross_entropy(torch.randn(2, 3), w, None, torch.zeros(3, dtype=torch.long))


def test_fused_loss_refuses_a_second_backward_through_the_same_graph():
    hidden = torch.randn(6, 4, requires_grad=True)
    weight = torch.randn(9, 4, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, None, torch.randint(0, 9, (6,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_fused_loss_with_labels_far_below_the_row_maximum(vocab_block):
    """Large logits: most labels sit tens of nats below their row's maximum (p ~ 1e-30 and less), so the label
    entries of the gradient are ~-1/n while the softmax elsewhere is concentrated: nothing may overflow or cancel.
    Logits of ~±300 carry fp32 rounding of ~1e-5 themselves, so the measure is fp32 F.cross_entropy's own error
    against float64: ours may not be more than twice as far off."""
    torch.manual_seed(6)
    hidden = (8 * torch.randn(29, 16)).requires_grad_()
    weight = (8 * torch.randn(101, 16)).requires_grad_()
    bias = torch.randn(101, requires_grad=True)
    labels = torch.randint(0, 101, (29,))
    ours = linear_cross_entropy(hidden, weight, bias, labels, 10)
    grads_ours = torch.autograd.grad(ours, [hidden, weight, bias])
    fp32 = _reference(hidden, weight, bias, labels)
    grads_fp32 = torch.autograd.grad(fp32, [hidden, weight, bias])
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (hidden, weight, bias))
    ref = F.cross_entropy(F.linear(h64, w64, b64), labels)
    grads_ref = torch.autograd.grad(ref, [h64, w64, b64])
    assert ref.item() > 100  # far from the maximum, as meant
    assert abs(ours.item() - ref.item()) <= 2 * abs(fp32.item() - ref.item()) + 1e-6 * ref.item()
    for a, a32, b in zip(grads_ours, grads_fp32, grads_ref):
        assert torch.isfinite(a).all()
        assert (a.double() - b).norm() <= 2 * (a32.double() - b).norm() + 1e-7 * b.norm()


def test_fused_loss_reuses_its_cpu_buffer_across_calls_of_any_size():
    """Calls of different sizes in a row (the buffer grows, then serves smaller calls) each equal the reference;
    release_workspace frees it."""
    torch.manual_seed(7)
    pointers = []
    for rows, vocab in ((30, 50), (10, 20), (40, 70), (40, 70)):
        hidden = torch.randn(rows, 8, requires_grad=True)
        weight = torch.randn(vocab, 8, requires_grad=True)
        labels = torch.randint(0, vocab, (rows,))
        ours = linear_cross_entropy(hidden, weight, None, labels)
        torch.testing.assert_close(ours, _reference(hidden, weight, None, labels), atol=1e-6, rtol=1e-6)
        grads = torch.autograd.grad(ours, [hidden, weight])
        refs = torch.autograd.grad(_reference(hidden, weight, None, labels), [hidden, weight])
        for a, b in zip(grads, refs):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        pointers.append(vocab_projection._workspaces[torch.device("cpu")].data_ptr())
    assert pointers[0] == pointers[1] and pointers[2] == pointers[3]
    vocab_projection.release_workspace()
    assert not vocab_projection._workspaces


def test_fused_loss_of_fp16_inputs_computes_in_fp32():
    """fp16 gradients of a mean over many positions and a large vocabulary underflow; the products run in fp32 and
    the gradients come back in fp16."""
    torch.manual_seed(8)
    hidden = (0.01 * torch.randn(300, 16)).half().requires_grad_()
    weight = (0.01 * torch.randn(5000, 16)).half().requires_grad_()
    labels = torch.randint(0, 5000, (300,))
    ours = linear_cross_entropy(hidden, weight, None, labels)
    grad_hidden, grad_weight = torch.autograd.grad(ours, [hidden, weight])
    assert grad_hidden.dtype == grad_weight.dtype == torch.float16
    h32, w32 = (t.detach().float().requires_grad_() for t in (hidden, weight))
    ref_h, ref_w = torch.autograd.grad(_reference(h32, w32, None, labels), [h32, w32])
    torch.testing.assert_close(ours.float(), _reference(h32, w32, None, labels), atol=1e-5, rtol=1e-5)
    assert (grad_weight != 0).float().mean() > 0.5  # not flushed to zero
    torch.testing.assert_close(grad_hidden.float(), ref_h, atol=1e-6, rtol=2e-3)
