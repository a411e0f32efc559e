"""Two autograd functions that keep less for the backward pass by redoing cheap elementwise work there.

A training step's memory is mostly what autograd saves for backward. Two of those tensors are cheap to rebuild:

* ``activation_then_linear``: ``linear(act(pre))`` in the feed-forward block. Autograd would keep both ``pre``
  (for the activation's backward) and ``act(pre)`` (for the weight gradient): two [tokens, 4 × hidden] tensors per
  layer. Here only ``pre`` is kept and ``act(pre)`` is recomputed in backward (one GELU, ~1% of the layer's time).
* ``dropout_matmul``: ``dropout(probs) @ value`` in attention. Autograd would keep the dropped probabilities next to
  the softmax output that softmax's own backward keeps anyway. Here the softmax output (already saved, so no extra
  memory) and the bool keep-mask are kept, and the dropped probabilities are rebuilt in backward.

Both compute the same forward values as the plain ops, and the same gradients up to summation order. Under autocast,
under ``torch.compile`` or without autograd they fall back to the plain ops.
"""

from __future__ import annotations

from typing import Callable

import torch

from .dropout import LANES, dropout, dropout_threshold, keep_mask, keep_scale, mask_dtype, masked_scale
from .linear import linear, matmul_nt


def _plain(tensor: torch.Tensor, *more: torch.Tensor | None) -> bool:
    """True where the memory-saving functions should not be used."""
    return (not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (tensor, *more))
            or torch.is_autocast_enabled(tensor.device.type) or torch.compiler.is_compiling())


class _ActivationThenLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, act, weight, bias):
        ctx.save_for_backward(pre, weight)
        ctx.act, ctx.has_bias = act, bias is not None
        return matmul_nt(act(pre).reshape(-1, pre.size(-1)), weight, bias).view(*pre.shape[:-1], weight.size(0))

    @staticmethod
    def backward(ctx, grad):
        pre, weight = ctx.saved_tensors
        needs_pre, _, needs_weight, needs_bias = ctx.needs_input_grad
        with torch.enable_grad():
            x = pre.detach().requires_grad_(needs_pre)
            activated = ctx.act(x)
        grad_2d = grad.reshape(-1, grad.size(-1))
        grad_pre = grad_weight = grad_bias = None
        if needs_weight:
            grad_weight = matmul_nt(grad_2d.t(), activated.detach().reshape(-1, activated.size(-1)).t())
        if needs_bias and ctx.has_bias:
            grad_bias = grad_2d.sum(0)
        if needs_pre:
            grad_activated = matmul_nt(grad_2d, weight.t()).view(activated.shape)
            (grad_pre,) = torch.autograd.grad(activated, x, grad_activated)
        return grad_pre, None, grad_weight, grad_bias


def activation_then_linear(pre: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor,
                           bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(act(pre), weight, bias)``, keeping only ``pre`` for backward."""
    if _plain(pre, weight, bias):
        return linear(act(pre), weight, bias)
    return _ActivationThenLinear.apply(pre, act, weight, bias)


class _DropoutMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, probs, keep, scale, value):
        ctx.save_for_backward(probs, keep, value)
        ctx.scale = scale
        return torch.matmul(masked_scale(probs, keep, scale), value)

    @staticmethod
    def backward(ctx, grad):
        probs, keep, value = ctx.saved_tensors
        needs_probs, _, _, needs_value = ctx.needs_input_grad
        grad_probs = grad_value = None
        if needs_value:
            grad_value = torch.matmul(masked_scale(probs, keep, ctx.scale).transpose(-1, -2), grad)
        if needs_probs:
            grad_probs = masked_scale(torch.matmul(grad, value.transpose(-1, -2)), keep, ctx.scale)
        return grad_probs, None, None, grad_value


def dropout_matmul(probs: torch.Tensor, value: torch.Tensor, p: float) -> torch.Tensor:
    """``dropout(probs, p) @ value`` (training), keeping ``probs`` and the bool mask rather than the dropped copy.

    Same random draws and mask as ``bertgen.dropout.dropout(probs, p)``; off the CPU it is exactly that.
    """
    threshold = dropout_threshold(p)
    if probs.device.type != "cpu" or threshold in (0, LANES) or _plain(probs, value):
        return torch.matmul(dropout(probs, p, training=True), value)
    return _DropoutMatmul.apply(probs, keep_mask(probs.shape, threshold, mask_dtype(probs)), keep_scale(threshold), value)
