"""Vectorised KV breakdown over a run of identical decode steps (the engine's fast-forward path).

For k steps and n running requests the breakdown of step j uses each request's written slots
after step j; paged requests hold whole blocks of those slots, contiguous ones their region.
Agrees with `allocator.usage()` taken after each step (tested).
"""

from __future__ import annotations

import numpy as np


def held_slots_paged(tokens: np.ndarray, block_size: int) -> np.ndarray:
    """Slots in the blocks that hold `tokens` written slots."""
    return -(-tokens // block_size) * block_size


def split_window(tokens: np.ndarray, held: np.ndarray, final: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step totals (token states, reserved, internal) from k x n arrays of written and held
    slots and the n requests' final KV lengths."""
    empty = held - tokens
    reserved = np.minimum(empty, np.maximum(final - tokens, 0))
    return tokens.sum(axis=-1), reserved.sum(axis=-1), (empty - reserved).sum(axis=-1)
