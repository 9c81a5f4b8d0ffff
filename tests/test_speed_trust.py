"""Issue 17 (speed): the fast paths give exactly what the general paths give.

Each shortcut added to the per-step loop is checked here against the computation it replaces
(integer results: exact equality, not approximate)."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from simkv.engine import MAX_STEP_S, _check_step_times
from simkv.errors import SimkvError
from simkv.kv import ContiguousAllocator, PagedAllocator
from simkv.kv.usage import EXTERNAL, FREE, INTERNAL, RESERVED, TOKEN, held_slots_paged, split_window, window_breakdown
from simkv.request import RequestTable
from simkv.sched.batch import RunningBatch
from simkv.sched.continuous import ContinuousBatchingScheduler
from simkv.sched.implicit_batch import ImplicitBatch
from simkv.sched.queue import reference_engine


def _table(prompts, outputs) -> RequestTable:
    n = len(prompts)
    return RequestTable(np.zeros(n), np.array(prompts, dtype=np.int64), np.array(outputs, dtype=np.int64),
                        np.array(outputs, dtype=np.int64), np.zeros(n, dtype=np.int8))


@pytest.mark.parametrize("reference", [True, False])
def test_block_boundary_count_is_exact(reference):
    """The one-step block count (the reference's cached boundary mask; the implicit batch's
    bucket of decoders at a block boundary) equals the general block count for one step."""
    t = _table([15, 16, 17, 31, 32, 1], [40] * 6)
    with reference_engine(reference):
        s = ContinuousBatchingScheduler(t, PagedAllocator(64, 16), max_num_seqs=8, max_num_batched_tokens=512,
                                        max_model_len=200)
    assert isinstance(s.batch, RunningBatch if reference else ImplicitBatch)
    for rid in range(6):
        s.add_request(rid)
    seen = 0
    for step in range(200):
        plan = s.schedule()
        if plan is None:
            break
        b = s.batch
        if len(b.ids):
            if reference:
                first = b._at_boundary()
                assert b._at_boundary() is first                     # cached for this kv array
            kv, bs = b.kv, b.block_size
            general = (kv + bs) // bs - (kv + bs - 1) // bs      # blocks each needs for one more token
            if reference:
                np.testing.assert_array_equal(first, np.flatnonzero(general))
            assert b.decode_blocks_needed(1) == int(general.sum())
            for steps in (2, 5, 17):
                assert b.decode_blocks_needed(steps) == int(((kv + steps + bs - 1) // bs - (kv + bs - 1) // bs).sum())
            seen += int(general.sum())
        s.commit(plan, step * 0.01, np.array([0.01] * plan.max_steps))
    assert plan is None and seen > 0


def test_take_blocks_one_each_equals_the_general_path():
    fast, slow = PagedAllocator(20, 4), PagedAllocator(20, 4)
    for a in (fast, slow):
        for rid in range(3):
            a.allocate(rid, 4)
    fast.take_blocks([0, 1, 2], [1, 1, 1])
    for rid in range(3):
        slow.take_blocks([rid], [1])
    assert fast.owners() == slow.owners() and fast.free_block_ids() == slow.free_block_ids()
    # counts with a zero are not "one each" even when they add up to the number of requests
    fast.take_blocks([0, 1], [0, 2])
    assert fast.num_blocks_of(0) == 2 and fast.num_blocks_of(1) == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-9, MAX_STEP_S * 2])
def test_single_step_time_check_still_rejects(bad):
    with pytest.raises(SimkvError, match="step time"):
        _check_step_times(np.array([bad]))


@pytest.mark.parametrize("ok", [0.0, 0.02, MAX_STEP_S])
def test_single_step_time_check_accepts(ok):
    _check_step_times(np.array([ok]))


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 5), n=st.integers(0, 12), seed=st.integers(0, 10_000), paged=st.booleans())
def test_window_breakdown_equals_split_window(k, n, seed, paged):
    """The breakdown's totals (computed with fewer passes) equal split_window's, exactly."""
    rng = np.random.default_rng(seed)
    kv = rng.integers(k, 300, n)
    final = kv + rng.integers(0, 50, n)
    tokens = kv if k == 1 else kv[None, :] - np.arange(k - 1, -1, -1)[:, None]
    alloc = PagedAllocator(4096, 16) if paged else ContiguousAllocator(400_000)
    if paged:
        held = held_slots_paged(tokens, 16)
    else:
        held = np.broadcast_to(final + rng.integers(0, 30, n), tokens.shape)
    out = window_breakdown(alloc, tokens, held, final, None, k)
    tok, res, internal = split_window(tokens, held, final)
    np.testing.assert_array_equal(out[TOKEN], np.broadcast_to(tok, (k,)))
    np.testing.assert_array_equal(out[RESERVED], np.broadcast_to(res, (k,)))
    np.testing.assert_array_equal(out[INTERNAL], np.broadcast_to(internal, (k,)))
    ext = 0 if paged else alloc.external_frag_tokens(None)
    np.testing.assert_array_equal(out[EXTERNAL], ext)
    np.testing.assert_array_equal(out[FREE], alloc.capacity_tokens - held.sum(axis=-1) - ext)
