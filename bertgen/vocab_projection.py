"""The projection to the vocabulary: log-probabilities for decoding, and the fused projection + cross-entropy for
training.

The vocabulary projection is the largest matrix product of both training and decoding (hidden × 30,522 for BERT's
vocabulary), and its output the largest tensor. Two things make it cheaper here than ``F.linear`` + ``log_softmax``:

* **Vocabulary blocks.** The product is computed ``VOCAB_BLOCK`` output columns at a time into contiguous
  [rows, block] buffers, and everything after it (max, exp-sums, softmax, gradient products) works block by block
  while a block is in cache. A 1,024-row slice of the weight stays in cache while it is multiplied; one MKL product
  against the whole 30,522 × 384 weight does not, and on a 2-core CPU it runs ~1.5× slower for a decoding step
  (oneDNN blocks its products itself: where ``bertgen.linear`` uses it, a decoding step is one product).
* **Fewer trips through memory.** The fused loss keeps neither the logits, nor their softmax, nor their gradient
  for the backward pass: each chunk of positions is projected, its loss and all its gradients (hidden states,
  weight, bias) are computed at once, and the chunk's logits are dropped, so peak memory grows with the chunk, not
  the batch. The softmax and the gradient softmax − one-hot are formed in place in each block (the one-hot part
  before any rounding to bf16 under autocast).

``log_probs(h, W, b)`` equals ``F.log_softmax(F.linear(h, W, b).float(), -1)`` and ``linear_cross_entropy`` equals
``F.cross_entropy(F.linear(h, W, b), y)``, both up to summation order (fp32 differences ~1e-7).
"""

from __future__ import annotations

import torch

from .linear import cpu_backend, matmul_nt

# Output columns per matrix product (a 1,024 × 384 fp32 weight block is 1.5 MB).
VOCAB_BLOCK = 1024
# Rows per loss chunk are chosen so that one chunk's fp32 logits stay near this many elements (64 MB).
CHUNK_ELEMENTS = 1 << 24


def _blocks(vocab: int) -> list[slice]:
    return [slice(start, min(start + VOCAB_BLOCK, vocab)) for start in range(0, vocab, VOCAB_BLOCK)]


def project_blocks(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   ) -> list[tuple[slice, torch.Tensor]]:
    """fp32 logits of 2-D ``hidden`` as (vocabulary slice, contiguous [rows, block] logits) pairs.

    Inputs in another dtype (bf16 under autocast) are multiplied in that dtype and each block widened to fp32.
    """
    return [(cols, matmul_nt(hidden, weight[cols], None if bias is None else bias[cols]).float())
            for cols in _blocks(weight.size(0))]


def _row_max(blocks: list[tuple[slice, torch.Tensor]]) -> torch.Tensor:
    return torch.stack([logits.amax(dim=1) for _, logits in blocks], dim=1).amax(dim=1, keepdim=True)


def log_probs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 log-softmax of the projection of ``hidden`` [rows, hidden]: one decoding step's next-token scores.

    For the few rows of a decoding step each block is written straight into its columns of one buffer
    (``addmm(out=)`` with a row stride; on oneDNN, one product) and the log-softmax runs in place on it: the
    row-wise kernel reads a row before it writes it, and a test pins the result to ``F.log_softmax``. Not
    differentiable (decoding runs under no_grad).
    """
    fp32 = hidden.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    on_onednn = hidden.device.type == "cpu" and cpu_backend() == "onednn"
    if fp32 and on_onednn:
        # oneDNN blocks the product itself: one call over the whole vocabulary is ~20% faster than column blocks
        # (each of which would be written to its own tensor and copied into place).
        out = matmul_nt(hidden, weight, bias)
        return torch.log_softmax(out, dim=-1, out=out)
    out = torch.empty(hidden.size(0), weight.size(0), dtype=torch.float32, device=hidden.device)
    for cols in _blocks(weight.size(0)):
        if not fp32:
            out[:, cols] = matmul_nt(hidden, weight[cols], None if bias is None else bias[cols])
        elif bias is None:
            torch.mm(hidden, weight[cols].t(), out=out[:, cols])
        else:
            torch.addmm(bias[cols], hidden, weight[cols].t(), out=out[:, cols])
    return torch.log_softmax(out, dim=-1, out=out)


def _product_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """out = a @ b, or out += a @ b; out is fp32, a and b fp32 (written in place through BLAS) or bf16 (product
    widened); products on oneDNN (bertgen.linear) are written, then added."""
    if a.dtype != out.dtype or (a.device.type == "cpu" and cpu_backend() == "onednn"):
        product = matmul_nt(a, b.t()).to(out.dtype)
        out.add_(product) if accumulate else out.copy_(product)
    elif accumulate:
        out.addmm_(a, b)
    else:
        torch.mm(a, b, out=out)


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss in forward; every gradient is computed there too, kept on ``ctx`` and handed over once in backward
    (scaled in place by the incoming gradient, so no vocabulary-sized copy is made)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows, dtype):
        n = hidden.size(0)
        want_grad = any(ctx.needs_input_grad[:3])
        # The products' operands; the gradients are accumulated in fp32 and returned in the inputs' own dtypes.
        w, b = weight.to(dtype), bias.to(dtype) if bias is not None else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if want_grad:
            grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
            grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
            grad_bias = torch.empty(weight.size(0), dtype=torch.float32, device=weight.device) if bias is not None else None
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows].to(dtype)
            y = labels[start:start + chunk_rows]
            blocks = project_blocks(h, w, b)
            target = (h.float() * w[y].float()).sum(dim=1) + (b[y].float() if b is not None else 0.0)
            top = _row_max(blocks)
            # Each block now holds exp(logit - row max): the unnormalised softmax, in place.
            sums = torch.stack([logits.sub_(top).exp_().sum(dim=1) for _, logits in blocks], dim=1)
            sums = sums.sum(dim=1, keepdim=True)
            total += (top.squeeze(1) + sums.squeeze(1).log() - target).sum()
            if not want_grad:
                continue
            # d(mean loss)/d(logits) = (softmax - onehot) / n, built in each block's fp32 buffer (the one-hot part
            # before any rounding to bf16, which would cancel p - 1 where p is close to 1), then multiplied out.
            # The first chunk writes the weight and bias gradients, later chunks add to them.
            scale = sums.reciprocal_().mul_(1.0 / n)
            accumulate = start > 0
            grad_h = grad_hidden[start:start + chunk_rows]
            rows = torch.arange(y.numel(), device=y.device)
            for i, (cols, unnormalised) in enumerate(blocks):
                d_logits = unnormalised.mul_(scale)
                here = (y >= cols.start) & (y < cols.stop)
                d_logits[rows[here], y[here] - cols.start] -= 1.0 / n
                if grad_bias is not None:
                    column_sums = d_logits.sum(dim=0)
                    grad_bias[cols].add_(column_sums) if accumulate else grad_bias[cols].copy_(column_sums)
                d_logits = d_logits.to(dtype)
                _product_into(grad_h, d_logits, w[cols], accumulate=i > 0)
                _product_into(grad_weight[cols], d_logits.t(), h, accumulate)
        if want_grad:
            ctx.grads = (grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype),
                         grad_bias.to(bias.dtype) if grad_bias is not None else None)
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grads, ctx.grads = getattr(ctx, "grads", None), None
        if grads is None:
            raise RuntimeError("linear_cross_entropy: backward ran twice through the same loss (retain_graph is "
                               "not supported: the gradients are computed once, in forward)")
        grad_hidden, grad_weight, grad_bias = grads
        if not bool(grad_output == 1.0):
            grad_hidden.mul_(grad_output.to(grad_hidden.dtype))
            grad_weight.mul_(grad_output.to(grad_weight.dtype))
            if grad_bias is not None:
                grad_bias.mul_(grad_output.to(grad_bias.dtype))
        return grad_hidden, grad_weight, grad_bias, None, None, None


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
    dtype = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        # Cast inside the function: the fp32 weight's gradient is then accumulated in fp32 and handed back as is,
        # not rounded to bf16 and widened again by the cast's backward (the weight is the vocabulary matrix).
        dtype = torch.get_autocast_dtype(hidden.device.type)
        with torch.autocast(hidden.device.type, enabled=False):
            return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows, dtype)
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows, dtype)
