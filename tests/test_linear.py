"""bertgen.linear: the products on oneDNN equal PyTorch's own up to summation order, forward and backward, and
the backend is chosen by a fixed rule (never by timing) that a variable can override."""

import pytest
import torch
import torch.nn.functional as F

import bertgen.linear as L
from bertgen.linear import Linear, cpu_backend, linear, matmul_nt, use_cpu_backend

needs_onednn = pytest.mark.skipif(not L.has_onednn(), reason="this PyTorch build has no oneDNN")


def reference(x, weight, bias):
    """float64 F.linear and its gradients against a fixed upstream gradient."""
    xs = [t.detach().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = F.linear(*xs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(upstream)
    return out, [t.grad for t in xs if t is not None], upstream


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (2, 3, 4, 48)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_matches_float64_forward_and_backward(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, requires_grad=True)
    weight = torch.randn(24, 48, generator=g, requires_grad=True)
    bias = torch.randn(24, generator=g, requires_grad=True) if with_bias else None
    ref, ref_grads, upstream = reference(x, weight, bias)
    with use_cpu_backend("onednn"):
        out = linear(x, weight, bias)
        assert out.grad_fn is not None and "OneDNN" in type(out.grad_fn).__name__
        out.backward(upstream.float())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip([t.grad for t in (x, weight, bias) if t is not None], ref_grads):
        torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_products_read_strided_views():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 32, generator=g).t()  # [32, 40], column-major
    b = torch.randn(24, 40, generator=g)
    with use_cpu_backend("onednn"):
        for left, right in [(a, b), (a.contiguous(), b.t().contiguous().t()), (a, b[:, :].t().contiguous().t())]:
            torch.testing.assert_close(matmul_nt(left, right).double(), left.double() @ right.double().t(),
                                       rtol=1e-5, atol=1e-5)


@needs_onednn
def test_frozen_weight_gives_input_grads_only_and_inference_needs_no_graph():
    x = torch.randn(4, 16, requires_grad=True)
    weight, bias = torch.randn(8, 16), torch.randn(8)
    with use_cpu_backend("onednn"):
        linear(x, weight, bias).sum().backward()
        with torch.no_grad():
            assert linear(x, weight, bias).grad_fn is None
    torch.testing.assert_close(x.grad, weight.sum(0).expand(4, -1), rtol=1e-5, atol=1e-5)


def test_blas_backend_is_exactly_f_linear():
    x, weight, bias = torch.randn(5, 16), torch.randn(8, 16), torch.randn(8)
    with use_cpu_backend("blas"):
        assert torch.equal(linear(x, weight, bias), F.linear(x, weight, bias))
        assert torch.equal(matmul_nt(x, weight), F.linear(x, weight))


def test_bf16_and_autocast_take_pytorchs_path():
    """bf16 products are already on oneDNN in PyTorch: no custom function, the dtype autocast asks for."""
    x, weight = torch.randn(5, 16), torch.randn(8, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Linear(16, 8)(x)
    assert out.dtype == torch.bfloat16 and "OneDNN" not in type(out.grad_fn).__name__
    out = linear(x.bfloat16(), weight.bfloat16())
    assert out.dtype == torch.bfloat16


def test_linear_module_keeps_nn_linear_names_and_init():
    layer = Linear(16, 8)
    assert isinstance(layer, torch.nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)


@pytest.fixture
def fresh_backend(monkeypatch):
    """The configured backend re-read from the environment (it is cached per process)."""
    L._configured_backend.cache_clear()
    yield monkeypatch
    L._configured_backend.cache_clear()


@pytest.mark.parametrize("vendor, expected", [("AuthenticAMD", "onednn"), ("GenuineIntel", "blas"), ("", "blas")])
def test_auto_rule_is_by_cpu_vendor(fresh_backend, vendor, expected):
    fresh_backend.delenv(L.BACKEND_VARIABLE, raising=False)
    fresh_backend.setattr(L, "_cpu_vendor", lambda: vendor)
    fresh_backend.setattr(L.platform, "machine", lambda: "x86_64")
    fresh_backend.setattr(L, "has_onednn", lambda: True)
    assert cpu_backend() == expected


def test_auto_without_onednn_or_off_x86_is_blas(fresh_backend):
    fresh_backend.delenv(L.BACKEND_VARIABLE, raising=False)
    fresh_backend.setattr(L, "_cpu_vendor", lambda: "AuthenticAMD")
    fresh_backend.setattr(L.platform, "machine", lambda: "aarch64")
    assert cpu_backend() == "blas"


@pytest.mark.parametrize("value, vendor, expected", [
    ("blas", "AuthenticAMD", "blas"), (" BLAS ", "AuthenticAMD", "blas"), ("onednn", "GenuineIntel", "onednn")])
def test_variable_overrides_the_rule(fresh_backend, value, vendor, expected):
    fresh_backend.setenv(L.BACKEND_VARIABLE, value)
    fresh_backend.setattr(L, "_cpu_vendor", lambda: vendor)
    fresh_backend.setattr(L, "has_onednn", lambda: True)
    assert cpu_backend() == expected


def test_bad_variable_is_one_clear_error(fresh_backend):
    fresh_backend.setenv(L.BACKEND_VARIABLE, "mkl")
    with pytest.raises(ValueError, match=r"BERTGEN_CPU_MATMUL='mkl': expected one of auto, onednn, blas"):
        cpu_backend()


def test_onednn_requested_without_onednn_is_refused(fresh_backend):
    fresh_backend.setenv(L.BACKEND_VARIABLE, "onednn")
    fresh_backend.setattr(L, "has_onednn", lambda: False)
    with pytest.raises(ValueError, match="has no oneDNN"):
        cpu_backend()
    with pytest.raises(ValueError, match="has no oneDNN"):
        with use_cpu_backend("onednn"):
            pass
    with pytest.raises(ValueError, match="expected 'onednn' or 'blas'"):
        with use_cpu_backend("mkl"):
            pass
