"""The self-attention cache of a decoding run, appended in place and reordered only where beams moved.

A decoder's self-attention cache holds each layer's keys and values, [rows, heads, positions, head_dim]. The
plain way to keep it (transformers' ``DynamicCache``, and ``torch.cat`` in our attention when the cache is a
tuple of tensors) copies the whole cache twice per step and layer: beam search reorders the rows with
``index_select`` (a copy), and appending the step's key concatenates (another copy). On a 2-core CPU those
copies were ~27% of beam search's time (MiniLM size, beam 4, 48 tokens).

``KVBuffer`` keeps the positions in a buffer with room for more: a step writes its key into the next free
position and attention reads a view of the filled part. A beam reorder copies only the rows whose parent is not
the row itself; in beam search most hypotheses continue their own row (in ``benchmarks/bench_model.py``'s beam
search ~15% of rows move per step). The values attention sees are the same as with concatenation, so decoding
returns the same tokens and scores.
"""

from __future__ import annotations

import torch

# Room allocated beyond the positions present when the number still to come is not known; the buffer doubles
# when it is full. A small buffer also reads faster: attention's reads of the filled part stay close together.
INITIAL_ROOM = 16


class KVBuffer:
    """One layer's self-attention keys (or values) while decoding: a [rows, heads, capacity, head_dim] buffer of
    which the first ``length`` positions are filled. ``tensor`` is the filled part (a view)."""

    def __init__(self, tensor: torch.Tensor, room: int | None = None):
        rows, heads, length, dim = tensor.shape
        self.buffer = tensor.new_empty(rows, heads, length + (INITIAL_ROOM if room is None else room), dim)
        self.buffer[:, :, :length] = tensor
        self.length = length

    @property
    def tensor(self) -> torch.Tensor:
        return self.buffer[:, :, :self.length]

    def size(self, dim: int | None = None):
        """The filled part's size, as ``Tensor.size`` (the model reads the past length as ``past[0].size(2)``)."""
        return self.tensor.size() if dim is None else self.tensor.size(dim)

    def append(self, new: torch.Tensor) -> torch.Tensor:
        """Write ``new`` [rows, heads, n, head_dim] after the filled positions; returns the filled part."""
        end = self.length + new.size(2)
        if end > self.buffer.size(2):
            grown = self.buffer.new_empty(*self.buffer.shape[:2], max(2 * self.buffer.size(2), end),
                                          self.buffer.size(3))
            grown[:, :, :self.length] = self.tensor
            self.buffer = grown
        self.buffer[:, :, self.length:end] = new
        self.length = end
        return self.tensor

    def move_rows(self, moved: torch.Tensor, parents: torch.Tensor) -> None:
        """Row ``moved[i]`` takes the filled positions of row ``parents[i]`` (all sources read before any write)."""
        if moved.numel():
            filled = self.tensor
            filled.index_copy_(0, moved, filled.index_select(0, parents))

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Row i becomes old row ``rows[i]``, in a new buffer (the row count changes: sources left the batch)."""
        kept = self.buffer.new_empty(rows.numel(), *self.buffer.shape[1:])
        kept[:, :, :self.length] = self.tensor.index_select(0, rows)
        self.buffer = kept


def append_positions(past: torch.Tensor | KVBuffer, new: torch.Tensor) -> torch.Tensor:
    """The cached keys (or values) followed by ``new`` along the position axis: in place for a ``KVBuffer``."""
    if isinstance(past, KVBuffer):
        return past.append(new)
    return torch.cat([past, new], dim=2)


def appendable(cache, room: int | None = None):
    """A model's returned ``past_key_values`` (per layer: self_k, self_v, cross_k, cross_v) with the self-attention
    keys and values moved into ``KVBuffer``s with room for ``room`` more positions (the tokens still to generate:
    then the buffers never grow, and a long decode holds no doubled buffers); entries already in buffers stay."""
    return tuple(
        (k if isinstance(k, KVBuffer) else KVBuffer(k, room), v if isinstance(v, KVBuffer) else KVBuffer(v, room),
         *cross)
        for k, v, *cross in cache
    )


def reorder_rows(cache, rows: torch.Tensor) -> None:
    """Reorder every layer's ``KVBuffer``s in place so that row i holds old row ``rows[i]``."""
    first = cache[0][0]
    if rows.numel() == first.size(0):
        moved = (rows != torch.arange(rows.numel(), device=rows.device)).nonzero().squeeze(1)
        parents = rows.index_select(0, moved)
        for k, v, *_ in cache:
            k.move_rows(moved, parents)
            v.move_rows(moved, parents)
    else:
        for k, v, *_ in cache:
            k.keep_rows(rows)
            v.keep_rows(rows)
