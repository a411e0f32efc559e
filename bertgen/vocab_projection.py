"""Fused vocabulary projection + cross-entropy, computed in chunks of positions.

The LM head's output is the largest tensor of a training step (positions × vocabulary: 1,024 × 30,522 floats is
125 MB, and autograd keeps it, its softmax and its gradient). Here each chunk of positions is projected, its loss
and its gradients (with respect to the hidden states, the weight and the bias) are computed at once, and the chunk's
logits are dropped: peak memory grows with the chunk, not with the batch, and the logits make fewer trips through
memory. The result equals ``F.cross_entropy(F.linear(h, W, b), y)`` up to summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows per chunk are chosen so that one chunk's fp32 logits stay near this many elements (64 MB).
CHUNK_ELEMENTS = 1 << 24


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows):
        n = hidden.size(0)
        want_grad = any(ctx.needs_input_grad[:3])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if want_grad:
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            grad_bias = torch.zeros(weight.size(0), dtype=torch.float32, device=weight.device) if bias is not None else None
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows]
            y = labels[start:start + chunk_rows]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if want_grad:
                # d(mean loss)/d(logits) = (softmax - onehot) / n, reusing the logits buffer.
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(y.numel(), device=y.device), y] -= 1.0
                probs.div_(n)
                p = probs.to(h.dtype) if h.dtype != torch.float32 else probs
                grad_hidden[start:start + chunk_rows] = (p @ weight.to(p.dtype)).to(hidden.dtype)
                grad_weight.add_(p.t() @ h.to(p.dtype))
                if grad_bias is not None:
                    grad_bias.add_(probs.sum(0))
        if want_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype),
                                  grad_bias.to(bias.dtype) if grad_bias is not None else None)
        ctx.has_bias = bias is not None
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_hidden * grad_output.to(grad_hidden.dtype), grad_weight * grad_output,
                grad_bias * grad_output if ctx.has_bias else None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``labels`` (all positions count).

    ``hidden`` is [positions, hidden]; select the labelled positions before calling. Under autocast the projection
    runs in the autocast dtype, the softmax in fp32, as ``F.cross_entropy`` on autocast logits would.
    """
    if hidden.dim() != 2 or labels.dim() != 1 or hidden.size(0) != labels.size(0):
        raise ValueError(f"linear_cross_entropy: expected hidden [N, H] and labels [N], got "
                         f"{tuple(hidden.shape)} and {tuple(labels.shape)}")
    if hidden.size(0) == 0:
        raise ValueError("linear_cross_entropy: no labelled positions (every label is -100)")
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_ELEMENTS // weight.size(0))
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        with torch.autocast(hidden.device.type, enabled=False):
            return _LinearCrossEntropy.apply(hidden.to(dtype), weight.to(dtype),
                                             bias.to(dtype) if bias is not None else None, labels, chunk_rows)
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows)
