"""bertgen.kv_cache: the in-place self-attention cache holds exactly what concatenation and index_select would."""

from __future__ import annotations

import torch

from bertgen import kv_cache
from bertgen.kv_cache import KVBuffer


def _positions(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, 2, length, 3, generator=torch.Generator().manual_seed(seed))


def test_append_equals_concatenation_also_past_the_initial_room():
    first = _positions(5, 2, 0)
    buffer, plain = KVBuffer(first), first
    for step in range(kv_cache.INITIAL_ROOM * 3):  # grows the buffer at least twice
        new = _positions(5, 1, step + 1)
        plain = torch.cat([plain, new], dim=2)
        assert torch.equal(buffer.append(new), plain)
    assert buffer.size(2) == plain.size(2) and buffer.size() == plain.size()
    assert buffer.buffer.size(2) < 2 * plain.size(2) + kv_cache.INITIAL_ROOM


def test_reorder_copies_only_moved_rows_and_equals_index_select():
    keys, values = _positions(6, 4, 1), _positions(6, 4, 2)
    cache = kv_cache.appendable(((keys, values, None, None),))
    cache[0][0].buffer[:, :, 4:] = 7.0  # the room after the filled positions
    before, address = cache[0][0].buffer.clone(), cache[0][0].buffer.data_ptr()
    rows = torch.tensor([0, 0, 3, 2, 4, 1])  # rows 0 and 4 keep their parent; 1, 2, 3 and 5 move (2 <-> 3 swap)
    kv_cache.reorder_rows(cache, rows)
    assert torch.equal(cache[0][0].tensor, keys.index_select(0, rows))
    assert torch.equal(cache[0][1].tensor, values.index_select(0, rows))
    # Reordered in place; the room after the filled positions is untouched.
    after = cache[0][0].buffer
    assert after.data_ptr() == address
    assert torch.equal(after[:, :, 4:], before[:, :, 4:])


def test_fewer_rows_when_sources_leave():
    keys, values = _positions(6, 3, 3), _positions(6, 3, 4)
    cache = kv_cache.appendable(((keys, values, None, None),))
    rows = torch.tensor([5, 1, 1])
    kv_cache.reorder_rows(cache, rows)
    assert torch.equal(cache[0][0].tensor, keys.index_select(0, rows))
    new = _positions(3, 1, 5)
    assert torch.equal(cache[0][1].append(new), torch.cat([values.index_select(0, rows), new], dim=2))


def test_plain_tensors_still_concatenate():
    past, new = _positions(2, 3, 6), _positions(2, 1, 7)
    assert torch.equal(kv_cache.append_positions(past, new), torch.cat([past, new], dim=2))


def test_known_room_never_grows():
    buffer = KVBuffer(_positions(3, 1, 8), room=5)
    start = buffer.buffer
    for step in range(5):
        buffer.append(_positions(3, 1, 9 + step))
    assert buffer.buffer is start and buffer.size(2) == 6
