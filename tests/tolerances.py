"""The suite's one fp32 parity tolerance, scaled by the magnitude of what is compared.

Two correct fp32 computations of one value differ by rounding that grows with the value: a beam score of ~35 summed in
another order (MKL on Intel, oneDNN on AMD, AMX tiles) differs by ~1e-5 while a logit of ~1 differs by ~1e-7. A pure
absolute bound of 1e-5 then fails on one x86 machine and passes on another. The bound here is the brief's 1e-5 near
zero plus 2e-6 of the expected value's magnitude (about 16 fp32 ulps): tight enough that a real error (a wrong
mask, a missing bias, a bf16 rounding at ~4e-3 relative) still fails everywhere.
"""

from __future__ import annotations

import torch

FP32_ATOL = 1e-5
FP32_RTOL = 2e-6


def assert_fp32_close(ours: torch.Tensor, theirs: torch.Tensor, what: str = "") -> None:
    """|ours - theirs| <= FP32_ATOL + FP32_RTOL * |theirs| elementwise, shapes equal; the message names the worst."""
    ours, theirs = torch.as_tensor(ours).detach(), torch.as_tensor(theirs).detach()
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(theirs.shape)}"
    if not ours.numel():
        return
    diff = (ours.double() - theirs.double()).abs()
    bound = FP32_ATOL + FP32_RTOL * theirs.double().abs()
    worst = int((diff - bound).argmax())
    assert bool((diff <= bound).all()), (
        f"{what}: difference {diff.flatten()[worst].item():.3g} at flat index {worst} > "
        f"{bound.flatten()[worst].item():.3g} allowed ({FP32_ATOL:g} + {FP32_RTOL:g} x |{theirs.flatten()[worst].item():.6g}|)")
