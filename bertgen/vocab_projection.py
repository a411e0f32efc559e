"""The projection to the vocabulary: log-probabilities for decoding, and the fused projection + cross-entropy for
training.

The vocabulary projection is the largest matrix product of both training and decoding (hidden × 30,522 for BERT's
vocabulary), and its output the largest tensor. Two things make it cheaper here than ``F.linear`` + ``log_softmax``:

* **Vocabulary blocks (training).** The loss's product is computed ``VOCAB_BLOCK`` output columns at a time into
  contiguous [rows, block] buffers, and everything after it (max, exp-sums, softmax, gradient products) works
  block by block while a block is in cache. A decoding step, a few rows, is one product (``log_probs``).
* **Fewer trips through memory.** The fused loss keeps neither the logits, nor their softmax, nor their gradient
  for the backward pass: each chunk of positions is projected, its loss and all its gradients (hidden states,
  weight, bias) are computed at once, and the chunk's logits are dropped, so peak memory grows with the chunk, not
  the batch. The logits stay in the products' dtype (bf16 under autocast), are exponentiated in place and are
  never rescaled: the per-row softmax normaliser is applied to the small operands of the gradient products
  instead (see ``_LinearCrossEntropy``). The chunk's buffer is kept between calls on a CPU (``_workspace``).

``log_probs(h, W, b)`` equals ``F.log_softmax(F.linear(h, W, b).float(), -1)`` and ``linear_cross_entropy`` equals
``F.cross_entropy(F.linear(h, W, b), y)``, both up to summation order (fp32 differences ~1e-7).
"""

from __future__ import annotations

import torch

from .linear import cpu_backend, matmul_nt

# Output columns per matrix product (a 1,024 × 384 fp32 weight block is 1.5 MB).
VOCAB_BLOCK = 1024
# Rows per loss chunk are chosen so that one chunk's logits (in the products' dtype) stay within this many bytes.
CHUNK_BYTES = 1 << 26


def _blocks(vocab: int) -> list[slice]:
    return [slice(start, min(start + VOCAB_BLOCK, vocab)) for start in range(0, vocab, VOCAB_BLOCK)]


def _fp32_on_onednn(tensor: torch.Tensor) -> bool:
    """Whether an fp32 product of ``tensor`` runs on oneDNN (bertgen.linear), which has no ``out=``."""
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu" and cpu_backend() == "onednn"


def _write(out: torch.Tensor, value: torch.Tensor, accumulate: bool) -> None:
    """out += value, or out = value (widened to ``out``'s dtype in the same pass)."""
    out.add_(value) if accumulate else out.copy_(value)


def _project_into(out: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """out = hidden @ weight.T + bias, written into ``out`` (a strided block of a logits buffer, same dtype)."""
    if _fp32_on_onednn(hidden):
        out.copy_(matmul_nt(hidden, weight, bias))
    elif bias is None:
        torch.mm(hidden, weight.t(), out=out)
    else:
        torch.addmm(bias, hidden, weight.t(), out=out)


def _product_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool = False) -> None:
    """out = a @ b, or out += a @ b, for 2-D ``a`` [m, k] and ``b`` [k, n] of one dtype; ``out`` may be wider (fp32
    for bf16 products: the product is rounded once to its own dtype, then widened) and strided."""
    if a.dtype == out.dtype and not _fp32_on_onednn(a):
        out.addmm_(a, b) if accumulate else torch.mm(a, b, out=out)
    else:
        _write(out, matmul_nt(a, b.t()), accumulate)


def log_probs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 log-softmax of the projection of ``hidden`` [rows, hidden]: one decoding step's next-token scores.

    One product over the whole vocabulary, then the log-softmax in place (the row-wise kernel reads a row before
    it writes it; a test pins the result to ``F.log_softmax``). For the few rows of a decoding step one product is
    faster than column blocks on both libraries (Intel Xeon, MKL, 64 rows: 6.8 against 9.0 ms; oneDNN blocks the
    product itself). On MKL the bias is added after the product: ``addmm`` first copies the bias into every row of
    the output; adding it afterwards is a few percent faster (2-6% in isolation here) and the same to the bit. Not
    differentiable (decoding runs under no_grad).
    """
    fp32 = hidden.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    if fp32 and not _fp32_on_onednn(hidden):
        out = torch.mm(hidden, weight.t())
        if bias is not None:
            out += bias
    else:
        out = matmul_nt(hidden, weight, bias).float()
    return torch.log_softmax(out, dim=-1, out=out)


_workspaces: dict[torch.device, torch.Tensor] = {}


def _workspace(device: torch.device, *shapes_and_dtypes: tuple[tuple[int, ...], torch.dtype]) -> list[torch.Tensor]:
    """Tensors of these shapes and dtypes, carved from one buffer kept between calls on a CPU.

    A step's logits chunk is tens of MB; an allocation that size comes from a fresh ``mmap`` every time on glibc
    (its threshold stops growing at 32 MB), and touching fresh pages costs ~15 ms per 64 MB: more than the loss's
    elementwise work. The fused loss uses the buffer only inside one call (it returns new tensors), so it is reused
    by the next; it grows to the largest request and lives as long as the process (``release_workspace`` frees
    it). On other devices, whose allocators cache already, every call allocates.
    """
    sizes = [torch.Size(shape).numel() * dtype.itemsize for shape, dtype in shapes_and_dtypes]
    offsets = [sum(-(-size // 64) * 64 for size in sizes[:i]) for i in range(len(sizes) + 1)]
    if device.type == "cpu":
        buffer = _workspaces.get(device)
        if buffer is None or buffer.numel() < offsets[-1]:
            _workspaces.pop(device, None)
            buffer = _workspaces[device] = torch.empty(offsets[-1], dtype=torch.uint8, device=device)
    else:
        buffer = torch.empty(offsets[-1], dtype=torch.uint8, device=device)
    return [buffer[offsets[i]:offsets[i] + sizes[i]].view(dtype).view(shape)
            for i, (shape, dtype) in enumerate(shapes_and_dtypes)]


def release_workspace() -> None:
    """Free the loss's CPU buffer (it is allocated again by the next training step)."""
    _workspaces.clear()


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss in forward; every gradient is computed there too, kept on ``ctx`` and handed over once in backward
    (scaled in place by the incoming gradient, so no vocabulary-sized copy is made).

    Per chunk of rows the logits are computed block by block, each block contiguous in one buffer and in the
    products' dtype, with its row maxima taken while it is in cache. With the row maximum ``M`` over all blocks,
    a pass widens each block to fp32 in a block-sized scratch, leaves ``E = exp(logit - M)`` in the buffer and
    sums it: ``lse = M + log(sum E)``. The gradient of the mean loss with respect to the logits is then
    ``s * E`` with one factor per row, ``s = exp(M - lse) / n``, except at the labels, where ``E`` is overwritten
    by ``(p - 1) / (n s)`` computed from the label's logit in fp32 (``expm1``): never a difference of rounded
    numbers, which would cancel where p is close to 1. ``s`` is applied where it is cheap, never to the buffer:
    to the rows of the hidden-state gradient ``(E @ W) * s``, to the hidden states in the weight gradient
    ``E.T @ (s * h)`` and the bias gradient ``E.T @ s``. Because ``M <= lse <= M + log(vocabulary)``, ``E`` and the
    label entries stay within [-vocabulary, 1] and ``s`` within [1 / (n vocabulary), 1 / n]: nothing overflows.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows, dtype):
        n, vocab = hidden.size(0), weight.size(0)
        want_grad = any(ctx.needs_input_grad[:3])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if want_grad:
            grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
            grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
            grad_bias = torch.empty(vocab, dtype=torch.float32, device=weight.device) if bias is not None else None
        blocks = _blocks(vocab)
        widen = dtype != torch.float32
        chunk_rows = min(chunk_rows, n)
        cast_weight = weight.dtype != dtype
        buffer, scratch_buffer, weight_buffer = _workspace(
            hidden.device, ((chunk_rows * vocab,), dtype), ((chunk_rows * VOCAB_BLOCK if widen else 0,), torch.float32),
            (weight.shape if cast_weight else (0,), dtype))
        # The products' operands (the weight cast into the kept buffer, not into fresh pages); the gradients are
        # accumulated in fp32 and returned in the inputs' own dtypes.
        w = weight_buffer.copy_(weight) if cast_weight else weight
        b = bias.to(dtype) if bias is not None else None
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows].to(dtype)
            y = labels[start:start + chunk_rows]
            r = h.size(0)
            # Block i of this chunk: buffer[r * cols.start : r * cols.stop] as a contiguous [r, width] tensor.
            logits = [buffer[r * cols.start:r * cols.stop].view(r, cols.stop - cols.start) for cols in blocks]
            maxes = torch.empty(r, len(blocks), dtype=dtype, device=h.device)
            for i, cols in enumerate(blocks):
                _project_into(logits[i], h, w[cols], None if b is None else b[cols])
                torch.amax(logits[i], dim=1, out=maxes[:, i])
            # Label logits (before the buffer is overwritten): flat positions of (row, label) in the block layout.
            flat = buffer[:r * vocab]
            block_start = torch.div(y, VOCAB_BLOCK, rounding_mode="floor") * VOCAB_BLOCK
            block_width = (vocab - block_start).clamp(max=VOCAB_BLOCK)
            flat_label = r * block_start + torch.arange(r, device=y.device) * block_width + (y - block_start)
            label_logits = flat.take(flat_label).float()
            top = maxes.amax(dim=1, keepdim=True).float()
            sums = torch.empty(r, len(blocks), dtype=torch.float32, device=h.device)
            for i, block in enumerate(logits):
                work = scratch_buffer[:block.numel()].view(block.shape).copy_(block) if widen else block
                torch.sum(work.sub_(top).exp_(), dim=1, out=sums[:, i])
                if widen:
                    block.copy_(work)
            # lse = M + log(sum E), kept apart: adding a small log-sum to a large M would round it away.
            sum_e = sums.sum(dim=1)
            log_sum = sum_e.log()
            label_shift = label_logits - top.squeeze(1)  # label logit - M
            total += (log_sum - label_shift).sum()
            if not want_grad:
                continue
            scale = sum_e.reciprocal().mul_(1.0 / n)  # s = exp(M - lse) / n, one per row
            # E at the labels becomes (p - 1) / (n s) = expm1(label logit - lse) * exp(lse - M).
            flat[flat_label] = (torch.expm1(label_shift - log_sum) * sum_e).to(dtype)
            scaled_h = (h.float() * scale[:, None]).to(dtype)
            scale_vector = scale.to(dtype)
            accumulate = start > 0
            unscaled_grad_h = torch.empty(r, h.size(1), dtype=torch.float32, device=h.device)
            for i, (cols, block) in enumerate(zip(blocks, logits)):
                _product_into(unscaled_grad_h, block, w[cols], accumulate=i > 0)
                _product_into(grad_weight[cols], block.t(), scaled_h, accumulate)
                if grad_bias is not None:
                    _write(grad_bias[cols], torch.mv(block.t(), scale_vector), accumulate)
            torch.mul(unscaled_grad_h, scale[:, None], out=grad_hidden[start:start + r])
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

    ``hidden`` is [positions, hidden]; select the labelled positions before calling. Under bf16 autocast the
    projection runs in bf16, the softmax in fp32, as ``F.cross_entropy`` on autocast logits would; under fp16
    autocast it runs in fp32.
    """
    if hidden.dim() != 2 or labels.dim() != 1 or hidden.size(0) != labels.size(0):
        raise ValueError(f"linear_cross_entropy: expected hidden [N, H] and labels [N], got "
                         f"{tuple(hidden.shape)} and {tuple(labels.shape)}")
    if hidden.size(0) == 0:
        raise ValueError("linear_cross_entropy: no labelled positions (every label is -100)")
    autocast = torch.is_autocast_enabled(hidden.device.type)
    dtype = torch.get_autocast_dtype(hidden.device.type) if autocast else hidden.dtype
    if dtype == torch.float16:
        # The gradients are computed in forward, before a loss scale could apply, and the gradient of a mean over
        # many positions and a large vocabulary (~1 / (positions * vocabulary) at initialisation) is below fp16's
        # range: fp16 products would return zeros. fp32 products return the gradient.
        dtype = torch.float32
    if chunk_rows is None:
        chunk_rows = max(1, CHUNK_BYTES // (weight.size(0) * dtype.itemsize))
    if autocast:
        # Cast inside the function: the fp32 weight's gradient is then accumulated in fp32 and handed back as is,
        # not rounded to bf16 and widened again by the cast's backward (the weight is the vocabulary matrix).
        with torch.autocast(hidden.device.type, enabled=False):
            return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows, dtype)
    return _LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows, dtype)
