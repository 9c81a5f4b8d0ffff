"""The prefix cache's chunked free queue (simkv.kv.prefix_cache, simkv.kv.offload) against the
one-dict-entry-per-block LRU it replaced (tests/reference_prefix_cache.py), operation by
operation: the same block tables, free queue order, cached names, reference counts, breakdown
and, with offload tiers, the same tier contents and counters. Block ids are compared exactly, so
every eviction is the reference's."""

from __future__ import annotations

from typing import Sequence

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, rule

from reference_prefix_cache import ReferenceOffloadingCache, ReferencePrefixCache
from simkv.kv.offload import ON_EVICTION, WRITE_THROUGH, OffloadingPrefixCache, OffloadTiers, Tier
from simkv.kv.name_runs import NameChain
from simkv.kv.prefix_cache import PrefixCachingAllocator
from simkv.sched.chunked import OWN, PREFIX, block_names


def _tiers(policy: str, host: int, ssd: int) -> OffloadTiers:
    return OffloadTiers([Tier("host", host, 1e9, 1e9), Tier("ssd", ssd, 1e8, 1e8)], policy, 4096, 64)


class TwinCaches(RuleBasedStateMachine):
    """Drive the new allocator and the reference with the same calls; compare everything after each."""

    live = Bundle("live")

    @initialize(num_blocks=st.integers(2, 64), block_size=st.sampled_from([1, 4, 16]),
                offload=st.sampled_from([None, WRITE_THROUGH, ON_EVICTION]), host=st.integers(0, 12),
                ssd=st.integers(0, 24), compact=st.booleans())
    def setup(self, num_blocks, block_size, offload, host, ssd, compact):
        if offload is None:
            self.new, self.ref = PrefixCachingAllocator(num_blocks, block_size), ReferencePrefixCache(num_blocks, block_size)
        else:
            self.new = OffloadingPrefixCache(num_blocks, block_size, _tiers(offload, host, ssd))
            self.ref = ReferenceOffloadingCache(num_blocks, block_size, _tiers(offload, host, ssd))
        if compact:   # compact as soon as stale entries outnumber the blocks
            self.new.compact_slack = 0
        self.hashes: dict[int, list] = {}
        self.next_id = 0

    def both(self, name, *args):
        out = getattr(self.new, name)(*args), getattr(self.ref, name)(*args)
        assert out[0] == out[1], f"{name}{args}: {out[0]} != {out[1]}"
        return out[0]

    @rule(target=live, prefix=st.integers(0, 3), shared=st.integers(0, 12), own=st.integers(0, 20),
          extra=st.integers(0, 3), reserve=st.integers(0, 200), register=st.floats(0, 1), repeat=st.integers(0, 3))
    def allocate(self, prefix, shared, own, extra, reserve, register, repeat):
        rid = self.next_id
        self.next_id += 1
        b = self.new.block_size
        hashes: Sequence[int] = [*block_names(PREFIX, prefix, 0, shared), *block_names(OWN, rid, shared, shared + own)]
        if repeat and own > repeat:   # one of its own names twice (first come keeps it; never a hit, so
            hashes[-1] = hashes[-1 - repeat]   # no block is twice in a table)
        elif not shared or not own:   # one content: a range, as the schedulers pass it
            hashes = block_names(PREFIX, prefix, 0, shared) if shared else block_names(OWN, rid, 0, own)
        elif repeat:   # a few contents: a NameChain of ranges, as block_hashes passes them
            hashes = NameChain((block_names(PREFIX, prefix, 0, shared), block_names(OWN, rid, shared, shared + own)))
        tokens = len(hashes) * b + extra
        hits = self.both("match_prefix", hashes)
        if hits * b >= tokens and hits:
            hits -= 1
        if not self.both("can_allocate_cached", hashes, hits, max(tokens, reserve)):
            return multiple()
        self.both("allocate_cached", rid, hashes, hits, tokens, tokens + 5, reserve)
        self.both("register", rid, hashes, int(register * tokens))
        self.hashes[rid] = hashes
        return rid

    @rule(rid=live, n=st.integers(0, 40))
    def register_more(self, rid, n):
        self.both("register", rid, self.hashes[rid], self.new.tokens_of(rid) + n)

    @rule(rid=live, n=st.integers(1, 40))
    def append(self, rid, n):
        if self.both("can_append", rid, n):
            self.both("append", rid, n)

    @rule(rids=st.lists(live, min_size=1, max_size=6), counts=st.lists(st.integers(0, 12), min_size=6, max_size=6))
    def grow(self, rids, counts):
        rids = list(dict.fromkeys(rids))   # distinct, in the order drawn
        counts = counts[:len(rids)]
        if sum(counts) <= self.new.num_free_blocks:
            self.both("take_blocks", list(rids), counts)

    @rule(child=live, parent=live)
    def fork(self, child, parent):
        if child != parent and self.new.tokens_of(child) == self.new.tokens_of(parent):
            self.both("fork_into", child, parent)

    @rule(rid=consumes(live))
    def free(self, rid):
        self.both("free", rid)
        del self.hashes[rid]

    @invariant()
    def same_state(self):
        if not hasattr(self, "new"):
            return
        n, r = self.new, self.ref
        assert n.owners() == r.owners()
        assert n.free_block_ids() == r.free_block_ids(), "free queue order differs"
        assert n.num_free_blocks == r.num_free_blocks == len(n.free_block_ids())
        assert n.cached_blocks() == r.cached_blocks()
        assert [n.ref_count(b) for b in range(n.num_blocks)] == [r.ref_count(b) for b in range(r.num_blocks)]
        assert n.shared_excess == r.shared_excess
        assert n.usage() == r.usage()
        # the block -> name array is the inverse of the name -> block map
        names = {b: n.name_of(b) for b in range(n.num_blocks) if n.name_of(b) is not None}
        assert names == {b: h for h, b in n.cached_blocks().items()}
        if isinstance(n, OffloadingPrefixCache):
            for tn, tr in zip(n.offload.all_tiers, r.offload.all_tiers):
                assert list(tn.blocks) == list(tr.blocks)
                assert (tn.blocks_read, tn.blocks_written, tn.blocks_dropped) == (tr.blocks_read, tr.blocks_written,
                                                                                  tr.blocks_dropped)
            assert {k: v.tolist() for k, v in n.offload.hit_blocks.items()} == {
                k: v.tolist() for k, v in r.offload.hit_blocks.items()}
            assert n.pending_loads == r.pending_loads


TwinCaches.TestCase.settings = settings(max_examples=80, stateful_step_count=50, deadline=None,
                                       suppress_health_check=[HealthCheck.filter_too_much])
TestChunkedQueueEqualsReference = TwinCaches.TestCase


def test_queue_stays_bounded_under_hits():
    """Blocks hit and freed again leave stale entries behind: compaction keeps the queue within
    twice the blocks plus the slack, however long the run."""
    a = PrefixCachingAllocator(40, 4)
    hashes = list(block_names(PREFIX, 0, 0, 10))
    for rid in range(5000):
        hits = a.match_prefix(hashes)
        a.allocate_cached(rid, hashes, min(hits, 9), 40, 40)
        a.register(rid, hashes, 40)
        a.free(rid)
        assert a._queued <= 2 * a.num_blocks + a.compact_slack + 10
    assert sorted(a.free_block_ids()) == list(range(40))


def test_a_copy_keeps_its_counts_and_views_together():
    """The reference counts live in an array.array with a numpy view on it: a copy must remake the view."""
    import copy
    a = PrefixCachingAllocator(16, 4)
    a.allocate_cached(0, [("p", 0, i) for i in range(3)], 0, 12, 12)
    b = copy.deepcopy(a)
    b.free(0)
    assert a.ref_count(a.block_table(0)[0]) == 1 and b.num_free_blocks == 16
    assert b.free_block_ids() and sorted(b.free_block_ids()) == list(range(16))
