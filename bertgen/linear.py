"""Linear layers whose fp32 matrix products run on oneDNN on CPUs where PyTorch's BLAS is slow.

On a CPU, ``F.linear``/``addmm``/``mm`` in fp32 call the BLAS PyTorch was built with: MKL for the x86 wheels. MKL
picks its kernels by CPU *vendor*, and on AMD processors it runs its AVX2 code even where the CPU has AVX-512: on
a 2-core Zen 5 EPYC a 2048³ fp32 product reaches ~210 GFLOP/s through MKL and ~475 through oneDNN, the other
library in the same wheel (``torch.ops.mkldnn``, which PyTorch already uses for bf16 products). Every fp32
product of a training step is a candidate: the projections, the feed-forward layers, the vocabulary projection
and all their gradients. :func:`linear` sends them to oneDNN when :func:`cpu_backend` says so and to ``F.linear``
otherwise; both compute IEEE fp32 products with fp32 accumulation (results differ in summation order only,
~1e-7 relative).

The backend is a fixed rule per machine, not a timing, so that one machine always computes the same numbers (a
resumed run must equal an uninterrupted one): ``BERTGEN_CPU_MATMUL=onednn|blas`` chooses; unset or ``auto``
means oneDNN on x86 CPUs that are not Intel's (where MKL is at home) when PyTorch has oneDNN, BLAS elsewhere.
bf16 products (autocast or bf16 weights), CUDA tensors and ``torch.compile`` graphs always take PyTorch's own
path: they are already on oneDNN, cuBLAS or Inductor.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

BACKEND_VARIABLE = "BERTGEN_CPU_MATMUL"
BACKENDS = ("auto", "onednn", "blas")


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def has_onednn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_forced: str | None = None


def cpu_backend() -> str:
    """"onednn" or "blas": which library computes CPU fp32 products (``BERTGEN_CPU_MATMUL`` is read once per
    process; :func:`use_cpu_backend` overrides it for a block)."""
    return _forced or _configured_backend()


@contextlib.contextmanager
def use_cpu_backend(name: str) -> Iterator[None]:
    """Compute CPU fp32 products with ``name`` ("onednn" or "blas") inside the block: for benchmarks and tests that
    compare the two, or count FLOPs with torch's counter (which sees BLAS products only)."""
    global _forced
    if name not in ("onednn", "blas"):
        raise ValueError(f"use_cpu_backend: expected 'onednn' or 'blas', got {name!r}")
    if name == "onednn" and not has_onednn():
        raise ValueError("use_cpu_backend('onednn'): this PyTorch build has no oneDNN (torch.backends.mkldnn)")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


@functools.cache
def _configured_backend() -> str:
    choice = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{BACKEND_VARIABLE}={choice!r}: expected one of {', '.join(BACKENDS)}")
    if choice == "onednn":
        if not has_onednn():
            raise ValueError(f"{BACKEND_VARIABLE}=onednn: this PyTorch build has no oneDNN (torch.backends.mkldnn)")
        return "onednn"
    if choice == "blas":
        return "blas"
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return "onednn" if has_onednn() and x86 and _cpu_vendor() not in ("", "GenuineIntel") else "blas"


def _on_onednn(*tensors: torch.Tensor | None) -> bool:
    """Whether a product of these tensors should run on oneDNN: fp32 CPU tensors, no autocast, not compiling."""
    first = tensors[0]
    if first.device.type != "cpu" or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return False
    if any(t is not None and t.dtype != torch.float32 for t in tensors):
        return False
    return cpu_backend() == "onednn"


def _onednn_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T + bias`` for 2-D fp32 CPU tensors (any strides) through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` for 2-D ``a`` [m, k] and ``b`` [n, k], on the backend ``cpu_backend`` chose; not
    differentiable through oneDNN (use :func:`linear` where gradients are needed)."""
    if _on_onednn(a, b, bias):
        return _onednn_nt(a, b, bias)
    return F.linear(a, b, bias)


class _OneDNNLinear(torch.autograd.Function):
    """``x @ W.T + b`` and its three gradients, every product on oneDNN (strided views, no copies)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.size(-1))
        ctx.save_for_backward(x2, weight)
        ctx.input_shape, ctx.has_bias = x.shape, bias is not None
        return _onednn_nt(x2, weight, bias).view(*x.shape[:-1], weight.size(0))

    @staticmethod
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad2 = grad.reshape(-1, grad.size(-1))
        grad_x = grad_weight = grad_bias = None
        if needs_x:
            grad_x = _onednn_nt(grad2, weight.t()).view(ctx.input_shape)
        if needs_weight:
            grad_weight = _onednn_nt(grad2.t(), x2.t())
        if needs_bias and ctx.has_bias:
            grad_bias = grad2.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, its products on oneDNN where :func:`cpu_backend` chose it."""
    if not _on_onednn(x, weight, bias) or x.dim() < 2 or x.numel() == 0:
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _OneDNNLinear.apply(x, weight, bias)
    return _onednn_nt(x.reshape(-1, x.size(-1)), weight, bias).view(*x.shape[:-1], weight.size(0))


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, names and initialisation) computing :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
