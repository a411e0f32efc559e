"""What machine this is and what it can do: the one-line description, the GEMM peak that MFU is read against, the
key a measured rate is filed under, and the process's peak memory.

Used by :mod:`experiments.launch.rehearse` (measured rates for the compute plan) and ``benchmarks/bench_model.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bertgen.linear import has_onednn, matmul_nt, use_cpu_backend


CPU_KEY = "cpu"  # the device key of every CPU: the compute plan's GPUs never match it
# Name fragments of torch.cuda.get_device_name -> the compute plan's GPU key (experiments.launch.compute_plan.GPUS).
_GPU_NAMES = (("H200", "h200-141gb"), ("H100", "h100-80gb"), ("L40S", "l40s-48gb"))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matrix products natively: a CUDA GPU that supports bf16, or a CPU with AMX
    or AVX512-BF16 (elsewhere CPU bf16 is emulated and many times slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def describe(device: str) -> str:
    """One line: the CPU (model, bf16 instructions, threads) or the GPU, and torch."""
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA "
                f"{torch.version.cuda}, bf16 {'native' if native_bf16(torch.device('cuda')) else 'no'}")
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = [flag for flag in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f" {flag}" in text]
    return (f"CPU {model}, flags {' '.join(flags) or 'none of amx_bf16/avx512_bf16/avx512f/avx2'}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")


def device_key(device: str) -> str:
    """The compute plan's GPU key of this CUDA device (``h100-80gb`` ...), ``cuda:<name>`` for a GPU the plan does
    not list, ``cpu`` on a CPU: measured rates are filed under it."""
    if device != "cuda":
        return CPU_KEY
    props = torch.cuda.get_device_properties(0)
    for fragment, key in _GPU_NAMES:
        if fragment in props.name:
            return key
    if "A100" in props.name:
        return "a100-80gb" if props.total_memory > 60 * 2**30 else "a100-40gb"
    return f"cuda:{props.name}"


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def gemm_peak(device: str, dtype: torch.dtype, backend: str | None = None, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a ``size``³ matmul in ``dtype`` on ``device`` (best of ``repeats``): the ceiling MFU is read against.

    On a CPU in fp32, ``backend`` picks the library (``bertgen.linear``): "blas" is ``torch.mm`` (MKL in the x86
    wheels), "onednn" the oneDNN product bertgen uses where MKL is slow.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    with use_cpu_backend(backend or "blas"):
        for _ in range(repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            matmul_nt(a, b)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def peak_gemm_flops(device: str, dtype: str) -> float:
    """The higher GEMM peak this machine reaches in ``dtype`` ("fp32" | "bf16"): on a CPU in fp32 the better of
    its BLAS and oneDNN (bertgen.linear may use either)."""
    if dtype == "bf16":
        return gemm_peak(device, torch.bfloat16)
    backends = ("blas", "onednn") if device == "cpu" and has_onednn() else ("blas",)
    return max(gemm_peak(device, torch.float32, backend) for backend in backends)


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def rss_bytes() -> int:
    """This process's resident memory now (Linux ``VmRSS``)."""
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """This process's peak resident memory (``VmHWM``; not ru_maxrss, which Linux carries over fork + exec)."""
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Start a new ``VmHWM`` window from the current RSS (Linux ≥ 4.0: ``5`` into ``/proc/self/clear_refs``);
    False where the kernel does not allow it (the peak then covers the whole process)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
