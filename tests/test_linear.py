"""bertgen.linear: the products on oneDNN equal PyTorch's own up to summation order, forward and backward, and
the backend is chosen by measurement once per machine and kept (never re-timed per process), and a variable can
override it."""

import json

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
def fresh_backend(monkeypatch, tmp_path):
    """The configured backend re-read from the environment (it is cached per process), with its own cache dir."""
    L._configured_backend.cache_clear()
    monkeypatch.setenv(L.CACHE_VARIABLE, str(tmp_path))
    yield monkeypatch
    L._configured_backend.cache_clear()


@pytest.mark.parametrize("blas, onednn, expected", [(2.0, 1.0, "onednn"), (1.0, 1.0, "blas"), (1.1, 1.0, "blas"),
                                                     (1.0, 2.0, "blas")])
def test_auto_rule_is_by_measurement_with_a_clear_margin(fresh_backend, blas, onednn, expected):
    fresh_backend.delenv(L.BACKEND_VARIABLE, raising=False)
    fresh_backend.setattr(L.platform, "machine", lambda: "x86_64")
    fresh_backend.setattr(L, "has_onednn", lambda: True)
    fresh_backend.setattr(L, "measure_products", lambda: {"blas": blas, "onednn": onednn})
    assert cpu_backend() == expected
    assert expected in L.backend_reason() and "measured here" in L.backend_reason()


def test_the_measured_choice_is_kept_per_machine_and_read_back(fresh_backend):
    fresh_backend.delenv(L.BACKEND_VARIABLE, raising=False)
    fresh_backend.setattr(L.platform, "machine", lambda: "x86_64")
    fresh_backend.setattr(L, "has_onednn", lambda: True)
    calls = []
    fresh_backend.setattr(L, "measure_products", lambda: calls.append(1) or {"blas": 3.0, "onednn": 1.0})
    assert cpu_backend() == "onednn" and len(calls) == 1
    L._configured_backend.cache_clear()  # a new process on the same machine: the file answers, nothing is timed
    fresh_backend.setattr(L, "measure_products", lambda: calls.append(1) or {"blas": 1.0, "onednn": 3.0})
    assert cpu_backend() == "onednn" and len(calls) == 1
    # another machine (here: another thread count) measures for itself and keeps both entries
    L._configured_backend.cache_clear()
    fresh_backend.setattr(L.torch, "get_num_threads", lambda: 97)
    assert cpu_backend() == "blas" and len(calls) == 2
    assert len(json.loads(L._cache_path().read_text())) == 2


def test_an_unreadable_cache_is_measured_again(fresh_backend):
    fresh_backend.delenv(L.BACKEND_VARIABLE, raising=False)
    fresh_backend.setattr(L.platform, "machine", lambda: "x86_64")
    fresh_backend.setattr(L, "has_onednn", lambda: True)
    L._cache_path().write_text("{not json")
    fresh_backend.setattr(L, "measure_products", lambda: {"blas": 3.0, "onednn": 1.0})
    assert cpu_backend() == "onednn"
    assert json.loads(L._cache_path().read_text())  # rewritten whole


def test_measure_products_times_both_libraries():
    if not L.has_onednn():
        pytest.skip("this PyTorch build has no oneDNN")
    seconds = L.measure_products(repeats=1)
    assert set(seconds) == {"blas", "onednn"} and all(0 < s < 60 for s in seconds.values())


def test_auto_without_onednn_or_off_x86_is_blas(fresh_backend):
    fresh_backend.delenv(L.BACKEND_VARIABLE, raising=False)
    fresh_backend.setattr(L, "measure_products", lambda: {"blas": 3.0, "onednn": 1.0})
    fresh_backend.setattr(L.platform, "machine", lambda: "aarch64")
    assert cpu_backend() == "blas"


@pytest.mark.parametrize("value, measured_faster, expected", [
    ("blas", "onednn", "blas"), (" BLAS ", "onednn", "blas"), ("onednn", "blas", "onednn")])
def test_variable_overrides_the_rule(fresh_backend, value, measured_faster, expected):
    fresh_backend.setenv(L.BACKEND_VARIABLE, value)
    fresh_backend.setattr(L, "measure_products", lambda: {"blas": 1.0, "onednn": 3.0} if measured_faster == "blas"
                          else {"blas": 3.0, "onednn": 1.0})
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
