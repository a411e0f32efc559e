"""Linear layers whose fp32 matrix products run on oneDNN on CPUs where PyTorch's BLAS is slow.

On a CPU, ``F.linear``/``addmm``/``mm`` in fp32 call the BLAS PyTorch was built with: MKL for the x86 wheels. MKL
picks its kernels by CPU *vendor*, and on AMD processors it runs its AVX2 code even where the CPU has AVX-512: on
a 2-core Zen 5 EPYC a 2048³ fp32 product reaches ~210 GFLOP/s through MKL and ~475 through oneDNN, the other
library in the same wheel (``torch.ops.mkldnn``, which PyTorch already uses for bf16 products). Every fp32
product of a training step is a candidate: the projections, the feed-forward layers, the vocabulary projection
and all their gradients. :func:`linear` sends them to oneDNN when :func:`cpu_backend` says so and to ``F.linear``
otherwise; both compute IEEE fp32 products with fp32 accumulation (results differ in summation order only,
~1e-7 relative).

The backend is chosen by measurement, once per machine, and then kept, so that one machine always computes the
same numbers (a resumed run must equal an uninterrupted one): ``BERTGEN_CPU_MATMUL=onednn|blas`` chooses; unset or
``auto`` times a training step's fp32 product shapes on both libraries (:func:`measure_products`, ~1 s) the first
time a process on this machine needs an fp32 product, and takes oneDNN only where it is clearly faster (by
``ONEDNN_MARGIN``), BLAS otherwise. The choice and its timings are kept in ``$BERTGEN_CACHE_DIR`` (default
``~/.cache/bertgen``) under ``cpu_matmul.json``, keyed by CPU model, thread count and PyTorch version; every later
process on such a machine reads it. Measured, not by vendor: on a Zen 5 EPYC MKL runs its AVX2 path and oneDNN is
~2x faster, on an Intel Xeon with AMX both reach the same fp32 peak, and a rule by vendor would be wrong for the
next CPU either library treats differently. The clear margin keeps near-ties on BLAS, so two nodes of one kind
measuring separately choose alike. bf16 products (autocast or bf16 weights), CUDA tensors and ``torch.compile``
graphs always take PyTorch's own path: they are already on oneDNN, cuBLAS or Inductor.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

BACKEND_VARIABLE = "BERTGEN_CPU_MATMUL"
BACKENDS = ("auto", "onednn", "blas")
CACHE_VARIABLE = "BERTGEN_CACHE_DIR"
CACHE_FILE = "cpu_matmul.json"
# oneDNN is chosen where a step's products take at most 1 / ONEDNN_MARGIN of BLAS's time.
ONEDNN_MARGIN = 1.15
# A training step's fp32 products at BERT-Base width (tokens x in -> out): projections, feed-forward, and the
# transposed operands of their gradients.
MEASURED_SHAPES = ((1024, 768, 768), (1024, 768, 3072), (1024, 3072, 768))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    if not _onednn_is_a_candidate():
        return "blas"
    return measured_choice()["backend"]


def _onednn_is_a_candidate() -> bool:
    """Whether ``auto`` measures at all: oneDNN's fp32 products are only worth timing on x86 CPUs."""
    return has_onednn() and platform.machine().lower() in ("x86_64", "amd64", "i686")


def measure_products(repeats: int = 2) -> dict[str, float]:
    """Seconds one pass over ``MEASURED_SHAPES`` (each product forward, and both gradient products) takes on each
    library here, the best of ``repeats`` alternating passes."""
    generator = torch.Generator().manual_seed(0)
    operands = [(torch.randn(m, k, generator=generator), torch.randn(n, k, generator=generator),
                 torch.randn(m, n, generator=generator)) for m, k, n in MEASURED_SHAPES]
    passes = {
        "blas": lambda x, w, g: (F.linear(x, w), g @ w, g.t() @ x),
        "onednn": lambda x, w, g: (_onednn_nt(x, w), _onednn_nt(g, w.t()), _onednn_nt(g.t(), x.t())),
    }
    best = {name: float("inf") for name in passes}
    with torch.no_grad():
        for name, products in passes.items():  # warm-up: first calls allocate and (oneDNN) build kernels
            products(*operands[0])
        for _ in range(repeats):
            for name, products in passes.items():
                start = time.perf_counter()
                for x, w, g in operands:
                    products(x, w, g)
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def _cache_path() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "bertgen") / CACHE_FILE


def measured_choice() -> dict:
    """This machine's choice for ``auto``: ``{"backend", "seconds": {library: s}, "machine"}``, read from the cache
    file, or measured now and written there (an unreadable cache is measured again; an unwritable one is skipped,
    and then every process measures)."""
    machine = f"{_cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__}"
    path = _cache_path()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(machine)
    if isinstance(entry, dict) and entry.get("backend") in ("onednn", "blas"):
        return {**entry, "machine": machine}
    seconds = measure_products()
    backend = "onednn" if seconds["blas"] > ONEDNN_MARGIN * seconds["onednn"] else "blas"
    entry = {"backend": backend, "seconds": seconds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            json.dump({**known, machine: entry}, tmp, indent=1)
        os.replace(tmp.name, path)
    except OSError:
        pass
    return {**entry, "machine": machine}


def backend_reason() -> str:
    """Why :func:`cpu_backend` is what it is, in one line (benchmarks print it)."""
    choice = os.environ.get(BACKEND_VARIABLE, "auto").strip().lower() or "auto"
    if _forced:
        return f"{_forced} (forced for this block by use_cpu_backend)"
    if choice != "auto":
        return f"{cpu_backend()} ({BACKEND_VARIABLE}={choice})"
    if not _onednn_is_a_candidate():
        return "blas (no oneDNN, or not an x86 CPU)"
    seconds = measured_choice()["seconds"]
    return (f"{cpu_backend()} (measured here: BLAS {1e3 * seconds['blas']:.1f} ms, oneDNN "
            f"{1e3 * seconds['onednn']:.1f} ms for {len(MEASURED_SHAPES)} training-step product sets; oneDNN "
            f"only if {ONEDNN_MARGIN:.2f}x faster; kept in {_cache_path()})")


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
