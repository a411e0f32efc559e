"""Attention kernels and masks shared by every model family.

Masks are boolean, ``True`` where a query may attend, shaped ``[batch, 1, query_len or 1, key_len]``; ``None``
means "attend everywhere" (plus ``is_causal``). Building them once per stack, not once per layer, keeps the hot path
to one ``scaled_dot_product_attention`` call per layer. Training with attention dropout on the CPU is the exception:
SDPA would fall back to its math path and ``F.dropout``; ``dropout_attention`` does the same work faster.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import dropout as _dropout
from .recompute import dropout_matmul

ACT_FNS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "tanh": torch.tanh,
}


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[batch, key_len] of 1/0 → [batch, 1, 1, key_len] bool, or None when nothing is masked."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask: expected shape [batch, length], got {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    if bool(mask.all()):
        return None
    return mask[:, None, None, :]


def self_attention_mask(
    attention_mask: torch.Tensor | None, query_len: int, past_len: int, causal: bool, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """Returns (mask, is_causal) for self-attention over ``past_len + query_len`` keys.

    ``is_causal`` is only set when the mask can be left to the kernel (no padding, no past).
    """
    pad = padding_mask(attention_mask)
    if not causal:
        return pad, False
    if pad is None and past_len == 0 and query_len > 1:
        return None, True
    if query_len == 1:
        return pad, False
    key_len = past_len + query_len
    rows = torch.arange(past_len, key_len, device=device)[:, None]
    cols = torch.arange(key_len, device=device)[None, :]
    causal_mask = (cols <= rows)[None, None]
    return (causal_mask if pad is None else causal_mask & pad), False


def with_causal_mask(mask: torch.Tensor | None, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """``mask`` and the causal mask (the last ``q_len`` of ``k_len`` positions), as SDPA's ``is_causal`` means it."""
    causal = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    return causal if mask is None else mask & causal


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    extra_scores: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, for what SDPA cannot do: returned weights, relative-position scores, head masks.

    ``extra_scores`` are added before scaling, as BERT's relative position embeddings are.
    """
    scores = torch.matmul(query, key.transpose(-1, -2))
    if extra_scores is not None:
        scores = scores + extra_scores
    scores = scores * (scale if scale is not None else 1.0 / math.sqrt(query.size(-1)))
    if is_causal:
        mask = with_causal_mask(mask, *scores.shape[-2:], scores.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = _dropout(probs, dropout_p, training=dropout_p > 0)
    if head_mask is not None:
        probs = probs * head_mask
    return torch.matmul(probs, value), probs


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    need_weights: bool = False,
    extra_scores: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA when it can compute the result, the exact eager path otherwise (``dropout_attention`` when training with
    attention dropout on the CPU)."""
    if need_weights or extra_scores is not None or head_mask is not None:
        return eager_attention(query, key, value, mask, is_causal, dropout_p, extra_scores, head_mask, scale)
    if dropout_p > 0 and query.device.type == "cpu" and not torch.compiler.is_compiling():
        return dropout_attention(query, key, value, mask, is_causal, dropout_p, scale), None
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )
    return out, None


def dropout_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float | None = None,
) -> torch.Tensor:
    """Training attention with dropout on the attention probabilities, for the CPU.

    With ``dropout_p > 0`` CPU SDPA runs its math path with ``F.dropout`` (a float mask drawn by ``bernoulli_``).
    This is the same computation with :func:`bertgen.dropout.dropout` (bool mask, several times cheaper) fused
    with the product by ``value`` (the dropped probabilities are rebuilt in backward, see bertgen.recompute), the scale
    applied to whichever of query and scores is smaller, and the mask added as a bias in place (its backward is
    free, unlike ``masked_fill``'s): fwd+bwd about 1.5x faster than SDPA for MiniLM-sized heads.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(query.size(-1))
    if query.size(-1) < key.size(-2):
        scores = torch.matmul(query * scale, key.transpose(-1, -2))
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if is_causal:
        mask = with_causal_mask(mask, *scores.shape[-2:], scores.device)
    if mask is not None:
        # Half the dtype's lowest value: exp() of it is 0 as with masked_fill(min), but adding a score cannot overflow
        # to -inf (for float16), which would turn a fully masked row into NaN.
        bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
        scores = scores.add_(bias.masked_fill_(~mask, torch.finfo(scores.dtype).min / 2))
    # bf16 scores: the kernel sums in fp32 and rounds once, as the fp32 softmax cast to bf16 would, without the copy.
    probs = (torch.softmax(scores, dim=-1) if scores.dtype != torch.float16
             else torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype))
    return dropout_matmul(probs, value, dropout_p)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[batch, length, hidden] → [batch, heads, length, head_dim]."""
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, length, head_dim] → [batch, length, hidden]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def fold_beams_into_queries(query: torch.Tensor, kv_batch: int) -> tuple[torch.Tensor, int]:
    """Cross-attention during beam search: the encoder states are kept once per source, not once per beam.

    Queries of the ``beams`` hypotheses of one source attend to the same keys without a causal mask, so they can be
    laid side by side as extra query positions: [batch*beams, H, L, D] → [batch, H, beams*L, D].
    """
    beams = query.size(0) // kv_batch
    if beams == 1:
        return query, 1
    _, h, length, d = query.shape
    folded = query.view(kv_batch, beams, h, length, d).transpose(1, 2).reshape(kv_batch, h, beams * length, d)
    return folded, beams


def unfold_beams(out: torch.Tensor, beams: int) -> torch.Tensor:
    if beams == 1:
        return out
    b, h, bl, d = out.shape
    length = bl // beams
    return out.view(b, h, beams, length, d).transpose(1, 2).reshape(b * beams, h, length, d)


def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Normal(0, std²) truncated to ±2σ, by inverse-CDF sampling in one pass.

    ``nn.init.trunc_normal_`` rejection-samples the whole tensor again until no value is out of range, which takes
    seconds for one BERT vocabulary matrix on a CPU; building a bert2bert took over half a minute that way.
    """
    with torch.no_grad():
        low = 0.5 * (1.0 + math.erf(-2.0 / math.sqrt(2.0)))  # Φ(−2)
        tensor.uniform_(2.0 * low - 1.0, 1.0 - 2.0 * low)  # 2Φ(x) − 1 for x uniform in Φ-space over [−2, 2]
        tensor.erfinv_().mul_(std * math.sqrt(2.0))
        return tensor.clamp_(-2.0 * std, 2.0 * std)


def init_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: truncated normal (±2σ) for weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        truncated_normal_(module.weight, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
