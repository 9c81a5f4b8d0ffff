"""Vectorised KV breakdown over a run of identical decode steps (the engine's fast-forward path).

For k steps and n running requests the breakdown of step j uses each request's written slots
after step j; paged requests hold whole blocks of those slots, contiguous ones their region.
Agrees with `allocator.usage()` taken after each step (tested).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from simkv.kv.base import EXTERNAL, FREE, INTERNAL, KV_ROWS, RESERVED, TOKEN, KVAllocator, sum_breakdown

__all__ = ["TOKEN", "RESERVED", "INTERNAL", "EXTERNAL", "FREE", "KV_ROWS", "held_slots_paged", "split_window",
           "window_breakdown", "breakdown_from_sums", "prefilling_breakdown", "held_by"]
_I64 = np.int64


def held_slots_paged(tokens: np.ndarray, block_size: int) -> np.ndarray:
    """Slots in the blocks that hold `tokens` written slots."""
    return -(-tokens // block_size) * block_size


def split_window(tokens: np.ndarray, held: np.ndarray, final: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step totals (token states, reserved, internal) from k x n arrays of written and held
    slots and the n requests' final KV lengths."""
    empty = held - tokens
    reserved = np.minimum(empty, np.maximum(final - tokens, 0))
    return tokens.sum(axis=-1), reserved.sum(axis=-1), (empty - reserved).sum(axis=-1)


def prefilling_breakdown(allocator: KVAllocator, prefills: Iterable[tuple[int, int, int]]) -> np.ndarray:
    """(token states, reserved, internal) of the requests still prefilling, from (req_id, computed
    slots, final KV length) each: they hold `allocator.held_tokens(req_id)` slots."""
    return np.array(sum_breakdown((allocator.held_tokens(rid), computed, final) for rid, computed, final in prefills), _I64)


def held_by(allocator: KVAllocator, req_ids: Iterable[int]) -> int:
    """Slots the requests hold (a static batch's finished requests that keep their memory)."""
    return sum(allocator.held_tokens(rid) for rid in req_ids)


def window_breakdown(allocator: KVAllocator, tokens: np.ndarray, held: np.ndarray, final: np.ndarray,
                     next_reservation: int | None, k: int, prefilling: np.ndarray | None = None,
                     dead: int = 0) -> np.ndarray:
    """The (5, k) breakdown (rows KV_ROWS) of k identical decode steps: `tokens` and `held` are the
    decoders' written and held slots after each step (k x n, or n when k is 1), `final` their final
    KV lengths; `prefilling` adds the prefilling requests' (token, reserved, internal) slots, `dead`
    the slots finished requests still hold (internal fragmentation: they serve nobody). Agrees
    with `allocator.usage(next_reservation)` after each step (tests/test_scheduler_invariants.py)."""
    # split_window's totals with fewer array passes (integer sums: exact, so the same numbers)
    token_sum, held_sum = tokens.sum(axis=-1), held.sum(axis=-1)
    reserved_sum = np.minimum(held - tokens, np.maximum(final - tokens, 0)).sum(axis=-1)
    return breakdown_from_sums(allocator, token_sum, reserved_sum, held_sum, next_reservation, k, prefilling, dead)


def breakdown_from_sums(allocator: KVAllocator, token_sum, reserved_sum, held_sum, next_reservation: int | None,
                        k: int, prefilling: np.ndarray | None = None, dead: int = 0) -> np.ndarray:
    """The (5, k) breakdown from the decoders' written, reserved and held slots summed per step
    (numbers, or arrays of k), plus the prefilling requests, the dead slots and the shared blocks;
    internal fragmentation is held - tokens - reserved."""
    external = 0 if allocator.paged else allocator.external_frag_tokens(next_reservation)
    shared = allocator.shared_excess
    if k == 1 and prefilling is None and not shared and not dead:   # the common step, in one call
        return np.array([[token_sum], [reserved_sum], [held_sum - token_sum - reserved_sum], [external],
                         [allocator.capacity_tokens - held_sum - external]], _I64).reshape(5, 1)
    out = np.empty((5, k), _I64)
    out[TOKEN], out[RESERVED], out[INTERNAL] = token_sum, reserved_sum, held_sum - token_sum - reserved_sum
    out[EXTERNAL] = external
    out[FREE] = allocator.capacity_tokens - held_sum - external
    if prefilling is not None:
        out[TOKEN:INTERNAL + 1] += prefilling[:, None]
        out[FREE] -= int(prefilling.sum())
    if shared:  # a block in several block tables (prefix cache) holds its tokens once
        out[TOKEN] -= shared * allocator.block_size
        out[FREE] += shared * allocator.block_size
    if dead:
        out[INTERNAL] += dead
        out[FREE] -= dead
    return out
