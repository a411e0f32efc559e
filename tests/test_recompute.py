"""The memory-saving autograd functions compute what the plain ops compute and keep less for backward."""

import pytest
import torch
import torch.nn.functional as F

from bertgen.attention import ACT_FNS
from bertgen.dropout import dropout
from bertgen.linear import linear
from bertgen.recompute import activation_then_linear, dropout_matmul


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward while ``fn()`` builds its graph (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def grads(out, inputs, seed=0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize("act_name", ["gelu", "gelu_new", "relu", "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_activation_then_linear_matches_plain_ops(act_name, with_bias):
    torch.manual_seed(0)
    act = ACT_FNS[act_name]
    pre = torch.randn(3, 5, 32, requires_grad=True)
    weight = torch.randn(8, 32, requires_grad=True)
    bias = torch.randn(8, requires_grad=True) if with_bias else None
    inputs = [pre, weight] + ([bias] if with_bias else [])
    ours = activation_then_linear(pre, act, weight, bias)
    ref = linear(act(pre), weight, bias)  # the same product backend (bertgen.linear), so the same values
    assert torch.equal(ours, ref)
    for a, b in zip(grads(ours, inputs), grads(ref, inputs)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_activation_then_linear_keeps_only_the_pre_activation():
    pre = torch.randn(64, 256, requires_grad=True)
    weight = torch.randn(16, 256, requires_grad=True)
    ours, _ = saved_bytes(lambda: activation_then_linear(pre, F.gelu, weight, None))
    plain, _ = saved_bytes(lambda: F.linear(F.gelu(pre), weight))
    activation = pre.numel() * 4
    assert plain - ours == activation


def test_activation_then_linear_with_frozen_weight_gives_only_input_grads():
    pre = torch.randn(4, 16, requires_grad=True)
    weight, bias = torch.randn(8, 16), torch.randn(8)
    out = activation_then_linear(pre, F.gelu, weight, bias)
    (g,) = grads(out, [pre])
    (g_ref,) = grads(F.linear(F.gelu(pre), weight, bias), [pre])
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-6)


def test_plain_ops_without_grad_and_under_autocast():
    pre, weight = torch.randn(4, 16), torch.randn(8, 16, requires_grad=True)
    with torch.no_grad():
        assert activation_then_linear(pre, F.gelu, weight, None).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = activation_then_linear(pre, F.gelu, weight, None)
    assert out.dtype == torch.bfloat16 and "ActivationThenLinear" not in type(out.grad_fn).__name__


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_matmul_matches_dropout_then_matmul_with_the_same_draws(p):
    probs = torch.softmax(torch.randn(2, 3, 7, 9), -1).requires_grad_()
    value = torch.randn(2, 3, 9, 4, requires_grad=True)
    torch.manual_seed(5)
    ours = dropout_matmul(probs, value, p)
    torch.manual_seed(5)
    ref = torch.matmul(dropout(probs, p, training=True), value)
    assert torch.equal(ours, ref)
    for a, b in zip(grads(ours, [probs, value]), grads(ref, [probs, value])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_dropout_matmul_does_not_keep_the_dropped_probabilities():
    scores = torch.randn(4, 12, 64, 64, requires_grad=True)
    value = torch.randn(4, 12, 64, 32, requires_grad=True)
    ours, _ = saved_bytes(lambda: dropout_matmul(torch.softmax(scores, -1), value, 0.1))
    plain, _ = saved_bytes(lambda: torch.matmul(dropout(torch.softmax(scores, -1), 0.1, training=True), value))
    assert plain - ours == scores.numel() * 4


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_dropout_matmul_edge_probabilities(p):
    probs = torch.softmax(torch.randn(2, 5, 5), -1).requires_grad_()
    value = torch.randn(2, 5, 3, requires_grad=True)
    out = dropout_matmul(probs, value, p)
    expected = torch.zeros_like(out) if p == 1.0 else probs @ value
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert probs.grad is not None and value.grad is not None
