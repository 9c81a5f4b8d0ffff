"""Stateful property tests of both KV allocators against a simple model of who holds what."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, precondition, rule

from simkv.kv import ContiguousAllocator, OutOfKVMemory, PagedAllocator
from simkv.kv.buddy import BuddyAllocator, round_up_pow2
from simkv.kv.prefix_cache import PrefixCachingAllocator
from simkv.sched.chunked import OWN, PREFIX, block_names


class PagedMachine(RuleBasedStateMachine):
    """Allocate / append / bulk-grow / free on a small block pool. `queue` is the free queue as a
    plain list (every block in order at first; takes from the front, frees append the table
    reversed): the allocator's blocks and free order must be exactly these."""

    live = Bundle("live")

    @initialize(num_blocks=st.integers(1, 40), block_size=st.sampled_from([1, 2, 16]))
    def setup(self, num_blocks, block_size):
        self.a = PagedAllocator(num_blocks, block_size)
        self.queue = list(range(num_blocks))
        self.tokens: dict[int, int] = {}
        self.final: dict[int, int] = {}
        self.next_id = 0

    @rule(target=live, num_tokens=st.integers(0, 100), extra=st.integers(0, 60))
    def allocate(self, num_tokens, extra):
        rid = self.next_id
        self.next_id += 1
        before = self.a.usage()
        if self.a.can_allocate(num_tokens):
            self.a.allocate(rid, num_tokens, None, num_tokens + extra)
            self.tokens[rid], self.final[rid] = num_tokens, num_tokens + extra
            self._took([rid], {rid: 0})
            return rid
        try:
            self.a.allocate(rid, num_tokens, None, num_tokens + extra)
        except OutOfKVMemory:
            pass
        else:
            raise AssertionError("allocate succeeded although can_allocate said no")
        assert self.a.usage() == before, "a failed allocate changed the state"
        return multiple()

    @rule(rid=live, n=st.integers(1, 40))
    def append(self, rid, n):
        before = self.a.usage()
        if self.a.can_append(rid, n):
            held = {rid: self.a.num_blocks_of(rid)}
            self.a.append(rid, n)
            self.tokens[rid] += n
            self._took([rid], held)
        else:
            try:
                self.a.append(rid, n)
            except OutOfKVMemory:
                assert self.a.usage() == before
            else:
                raise AssertionError("append succeeded although can_append said no")

    @precondition(lambda self: bool(self.tokens))
    @rule(data=st.data())
    def bulk_grow(self, data):
        rids = sorted(self.tokens)
        steps = data.draw(st.integers(1, 20))
        b = self.a.block_size
        need = [-(-(self.tokens[r] + steps) // b) - -(-self.tokens[r] // b) for r in rids]
        if sum(need) > self.a.num_free_blocks:
            return
        held = {r: self.a.num_blocks_of(r) for r in rids}
        self.a.take_blocks(rids, need)
        self._took(rids, held)
        import numpy as np
        self.a.set_tokens(np.array(rids), np.array([self.tokens[r] + steps for r in rids]))
        for r in rids:
            self.tokens[r] += steps

    @rule(rid=consumes(live))
    def free(self, rid):
        self.queue.extend(reversed(self.a.block_table(rid)))
        self.a.free(rid)
        del self.tokens[rid], self.final[rid]

    def _took(self, rids, held):
        """The blocks `rids` gained (beyond `held`), in request order, are the front of the queue."""
        new = [b for r in rids for b in self.a.block_table(r)[held[r]:]]
        assert new == self.queue[:len(new)], "blocks taken out of the free queue's order"
        del self.queue[:len(new)]

    @invariant()
    def free_queue_in_order(self):
        assert self.a.free_block_ids() == self.queue
        assert self.a.num_free_blocks == len(self.queue)

    @invariant()
    def no_block_owned_twice(self):
        owners = self.a.owners()
        owned = [b for table in owners.values() for b in table]
        free = self.a.free_block_ids()
        assert len(owned) == len(set(owned)), "a block is in two block tables"
        assert not set(owned) & set(free), "a block is both owned and free"
        assert sorted(owned + free) == list(range(self.a.num_blocks)), "a block leaked or was invented"

    @invariant()
    def tables_match_tokens(self):
        for rid, table in self.a.owners().items():
            assert len(table) == -(-self.tokens[rid] // self.a.block_size), "blocks not taken on demand"
            assert self.a.tokens_of(rid) == self.tokens[rid]

    @invariant()
    def breakdown_sums_to_capacity(self):
        u = self.a.usage()
        assert u.total() == u.capacity_tokens == self.a.num_blocks * self.a.block_size
        assert u.held_tokens + u.free_tokens == u.capacity_tokens  # used + free = capacity
        assert u.token_tokens == sum(self.tokens.values())
        assert u.external_frag_tokens == 0
        assert min(u.token_tokens, u.reserved_tokens, u.internal_frag_tokens, u.free_tokens) >= 0

    def teardown(self):
        if hasattr(self, "a"):
            for rid in list(self.tokens):
                self.a.free(rid)
            assert self.a.num_free_blocks == self.a.num_blocks, "blocks leaked after every request finished"


class ReservingPagedMachine(RuleBasedStateMachine):
    """TGI's use of the block pool: blocks for the whole reservation taken at admission, prompts
    then written into them chunk by chunk (grow_to inside what is held takes nothing, and must
    not hand blocks back to the free queue: it once moved the queue backwards, so blocks were
    counted free twice and later tables came up short)."""

    live = Bundle("live")

    @initialize(num_blocks=st.integers(1, 40), block_size=st.sampled_from([1, 2, 16]))
    def setup(self, num_blocks, block_size):
        self.a = PagedAllocator(num_blocks, block_size, reserve_upfront=True)
        self.held: dict[int, int] = {}   # blocks each request holds
        self.tokens: dict[int, int] = {}
        self.next_id = 0

    @rule(target=live, num_tokens=st.integers(0, 60), extra=st.integers(0, 100))
    def allocate(self, num_tokens, extra):
        rid, reserve = self.next_id, num_tokens + extra
        self.next_id += 1
        if not self.a.can_allocate(num_tokens, reserve):
            return multiple()
        self.a.allocate(rid, num_tokens, reserve, reserve)
        self.held[rid], self.tokens[rid] = self.a.blocks_for(reserve), num_tokens
        return rid

    @rule(rid=live, n=st.integers(0, 100))
    def grow_inside(self, rid, n):
        tokens = min(self.tokens[rid] + n, self.held[rid] * self.a.block_size)
        self.a.grow_to(rid, tokens)
        self.tokens[rid] = tokens

    @rule(rid=consumes(live))
    def free(self, rid):
        self.a.free(rid)
        del self.held[rid], self.tokens[rid]

    @invariant()
    def every_block_counted_once(self):
        owned = [b for table in self.a.owners().values() for b in table]
        free = self.a.free_block_ids()
        assert {r: len(t) for r, t in self.a.owners().items()} == self.held, "a table changed size inside its reservation"
        assert len(owned) == len(set(owned)) and not set(owned) & set(free), "a block owned twice, or owned and free"
        assert sorted(owned + free) == list(range(self.a.num_blocks)), "a block leaked or was invented"
        assert self.a.num_free_blocks == len(free) == self.a.num_blocks - sum(self.held.values())

    def teardown(self):
        if hasattr(self, "a"):
            for rid in list(self.held):
                self.a.free(rid)
            assert self.a.num_free_blocks == self.a.num_blocks, "blocks leaked after every request finished"


class ContiguousMachine(RuleBasedStateMachine):
    """Reserve / append / free regions in a small linear address space."""

    live = Bundle("live")

    @initialize(capacity=st.integers(1, 300), placement=st.sampled_from(["first_fit", "best_fit", "buddy"]))
    def setup(self, capacity, placement):
        self.a = BuddyAllocator(capacity) if placement == "buddy" else ContiguousAllocator(capacity, placement)
        self.size: dict[int, int] = {}
        self.tokens: dict[int, int] = {}
        self.next_id = 0

    @rule(target=live, reserve=st.integers(1, 120), fill=st.floats(0, 1))
    def allocate(self, reserve, fill):
        rid = self.next_id
        self.next_id += 1
        num = int(reserve * fill)
        before = (self.a.usage(), self.a.free_extents())
        largest = self.a.largest_free_extent()
        if self.a.can_allocate(num, reserve):
            self.a.allocate(rid, num, reserve, reserve)
            self.size[rid], self.tokens[rid] = self.a.held_tokens(rid), num
            if isinstance(self.a, BuddyAllocator):
                start, size = self.a.regions()[rid]
                assert size == round_up_pow2(reserve) and (start - self._top_base(start)) % size == 0, "unaligned buddy block"
                assert self.a.held_tokens(rid) == reserve
            return rid
        need = round_up_pow2(reserve) if isinstance(self.a, BuddyAllocator) else reserve
        assert largest < need, "allocation refused although an extent fits"
        try:
            self.a.allocate(rid, num, reserve, reserve)
        except OutOfKVMemory:
            pass
        else:
            raise AssertionError("allocate succeeded although can_allocate said no")
        assert (self.a.usage(), self.a.free_extents()) == before, "a failed allocate changed the state"
        return multiple()

    def _top_base(self, start):
        return next(t for t, ts in self.a._top if t <= start < t + ts)

    @rule(rid=live, n=st.integers(1, 30))
    def append(self, rid, n):
        if self.tokens[rid] + n <= self.size[rid]:
            self.a.append(rid, n)
            self.tokens[rid] += n
        else:
            try:
                self.a.append(rid, n)
            except OutOfKVMemory:
                pass
            else:
                raise AssertionError("a request outgrew its region")

    @rule(rid=consumes(live))
    def free(self, rid):
        self.a.free(rid)
        del self.size[rid], self.tokens[rid]

    @invariant()
    def address_space_is_partitioned(self):
        spans = sorted([(s, n, "free") for s, n in self.a.free_extents()]
                       + [(s, n, "held") for s, n in self.a.regions().values()])
        pos = 0
        for start, n, _ in spans:
            assert start == pos, f"gap or overlap at slot {pos}: {spans}"
            assert n > 0
            pos += n
        assert pos == self.a.capacity_tokens, "slots outside the address space"
        frees = self.a.free_extents()
        if isinstance(self.a, BuddyAllocator):
            free = {(s, n) for s, n in frees}
            for s, n in frees:  # no free block may have a free buddy of its size (they must merge)
                base, top = next((t, ts) for t, ts in self.a._top if t <= s < t + ts)
                if n < top:
                    assert (base + ((s - base) ^ n), n) not in free, "free buddies were not merged"
        else:
            for (s1, n1), (s2, _) in zip(frees, frees[1:]):
                assert s1 + n1 < s2, "adjacent free extents were not coalesced"

    @invariant()
    def breakdown_sums_to_capacity(self):
        u = self.a.usage()
        assert u.total() == u.capacity_tokens
        assert u.held_tokens == sum(self.size.values())
        assert u.held_tokens + u.external_frag_tokens + u.free_tokens == u.capacity_tokens
        assert u.token_tokens == sum(self.tokens.values())
        largest = self.a.largest_free_extent()
        slack = self.a._slack if isinstance(self.a, BuddyAllocator) else 0
        assert u.external_frag_tokens == slack + self.a.num_free_tokens - largest

    @invariant()
    def external_fragmentation_against_a_request(self):
        for need in (1, 17, 64):
            ext = self.a.external_frag_tokens(need)
            unit = round_up_pow2(need) if isinstance(self.a, BuddyAllocator) else need
            slack = self.a._slack if isinstance(self.a, BuddyAllocator) else 0
            assert ext == slack + sum(n for _, n in self.a.free_extents() if n < unit)

    def teardown(self):
        if hasattr(self, "a"):
            for rid in list(self.size):
                self.a.free(rid)
            expected = sorted(self.a._top) if isinstance(self.a, BuddyAllocator) else [(0, self.a.capacity_tokens)]
            assert self.a.free_extents() == expected, "freeing everything did not coalesce"


class PrefixCacheMachine(RuleBasedStateMachine):
    """Requests sharing cached prefix blocks: reference counts, LRU free queue, lazy eviction."""

    live = Bundle("live")

    @initialize(num_blocks=st.integers(2, 30), block_size=st.sampled_from([1, 4]))
    def setup(self, num_blocks, block_size):
        self.a = PrefixCachingAllocator(num_blocks, block_size)
        self.hashes: dict[int, list] = {}
        self.next_id = 0

    @rule(target=live, prefix=st.integers(0, 2), shared=st.integers(0, 6), own=st.integers(0, 6), extra=st.integers(0, 3))
    def allocate(self, prefix, shared, own, extra):
        rid = self.next_id
        self.next_id += 1
        b = self.a.block_size
        hashes = [*block_names(PREFIX, prefix, 0, shared), *block_names(OWN, rid, shared, shared + own)]
        tokens = len(hashes) * b + extra
        hits = self.a.match_prefix(hashes)
        before = (self.a.usage(), self.a.free_block_ids(), self.a.cached_blocks())
        if not self.a.can_allocate_cached(hashes, hits, tokens):
            assert (self.a.usage(), self.a.free_block_ids(), self.a.cached_blocks()) == before
            return multiple()
        self.a.allocate_cached(rid, hashes, hits, tokens, tokens)
        table = self.a.block_table(rid)
        for i in range(hits):
            assert table[i] == before[2][hashes[i]], "a cache hit did not reuse the cached block"
        self.a.register(rid, hashes, tokens)
        self.hashes[rid] = hashes
        return rid

    @rule(rid=live, n=st.integers(1, 8))
    def append(self, rid, n):
        if self.a.can_append(rid, n):
            self.a.append(rid, n)

    @rule(target=live, rid=live)
    def twin(self, rid):
        """A beam of the same length as `rid` (its own blocks)."""
        tokens = self.a.tokens_of(rid)
        new = self.next_id
        self.next_id += 1
        if not self.a.can_allocate(tokens):
            return multiple()
        self.a.allocate(new, tokens, None, tokens)
        self.hashes[new] = []
        return new

    @rule(child=live, parent=live)
    def fork(self, child, parent):
        """Beam search re-selection: child continues parent's hypothesis."""
        if child == parent or self.a.tokens_of(child) != self.a.tokens_of(parent):
            return
        before = (self.a.usage(), self.a.free_block_ids())
        parent_table = self.a.block_table(parent)
        if self.a.fork_into(child, parent):
            b, tokens = self.a.block_size, self.a.tokens_of(parent)
            table = self.a.block_table(child)
            assert table[:tokens // b] == parent_table[:tokens // b], "full blocks not shared"
            if tokens % b:
                assert table[-1] != parent_table[-1], "the partial block was not copied"
        else:
            assert (self.a.usage(), self.a.free_block_ids()) == before

    @rule(rid=consumes(live))
    def free(self, rid):
        self.a.free(rid)
        del self.hashes[rid]

    @invariant()
    def references_match_block_tables(self):
        if not hasattr(self, "a"):
            return
        owners = self.a.owners()
        counts = {}
        for table in owners.values():
            assert len(table) == len(set(table)), "a block twice in one table"
            for blk in table:
                counts[blk] = counts.get(blk, 0) + 1
        free = self.a.free_block_ids()
        assert not set(free) & set(counts), "a referenced block is in the free queue"
        assert sorted(free + list(counts)) == list(range(self.a.num_blocks)), "a block leaked"
        for blk in range(self.a.num_blocks):
            assert self.a.ref_count(blk) == counts.get(blk, 0)
        assert self.a.shared_excess == sum(c - 1 for c in counts.values())

    @invariant()
    def cache_map_is_consistent(self):
        if not hasattr(self, "a"):
            return
        for h, blk in self.a.cached_blocks().items():
            assert self.a.name_of(blk) == h

    @invariant()
    def breakdown_sums_to_capacity(self):
        if not hasattr(self, "a"):
            return
        u = self.a.usage()
        assert u.total() == u.capacity_tokens
        used_blocks = self.a.num_blocks - self.a.num_free_blocks
        assert u.held_tokens == used_blocks * self.a.block_size  # shared blocks counted once

    def teardown(self):
        if hasattr(self, "a"):
            for rid in list(self.hashes):
                self.a.free(rid)
            assert self.a.num_free_blocks == self.a.num_blocks


PrefixCacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestPrefixCachingAllocator = PrefixCacheMachine.TestCase
PagedMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
ContiguousMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestPagedAllocator = PagedMachine.TestCase
TestContiguousAllocator = ContiguousMachine.TestCase


def test_paged_free_queue_order_over_a_large_pool():
    """Past the never-used blocks and the queue's compaction (its front dropped after 1,024
    takes): blocks come in the order of a plain list queue."""
    import random
    rng = random.Random(7)
    a, queue, held = PagedAllocator(3000, 4), list(range(3000)), {}
    for rid in range(4000):
        if held and (rng.random() < 0.5 or a.num_free_blocks < 40):
            victim = rng.choice(sorted(held))
            queue.extend(reversed(a.block_table(victim)))
            a.free(victim)
            del held[victim]
        tokens = rng.randint(1, 150)
        if a.can_allocate(tokens):
            a.allocate(rid, tokens)
            held[rid] = tokens
            table = a.block_table(rid)
            assert table == queue[:len(table)]
            del queue[:len(table)]
        assert a.free_block_ids() == queue
    assert a._head < 3000   # tens of thousands of blocks were taken from the freed list: its front was dropped


def test_a_pool_of_tens_of_millions_of_blocks_starts_at_once():
    """A tiny model on a large GPU (simkv validate on the CPU): no list of every block."""
    import tracemalloc
    tracemalloc.start()
    try:
        a = PagedAllocator(50_000_000, 16)
        a.allocate(0, 100)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20   # under 1 MiB (a list of them: ~1.8 GB)
    finally:
        tracemalloc.stop()
    assert a.block_table(0) == list(range(7)) and a.num_free_blocks == 50_000_000 - 7
    a.free(0)
    assert a.free_block_ids()[-7:] == list(reversed(range(7))) and a.num_free_blocks == 50_000_000


def test_paged_frees_tail_first():
    a = PagedAllocator(8, 4)
    a.allocate(0, 12, None, 12)
    table = a.block_table(0)
    a.free(0)
    assert a.free_block_ids()[-3:] == list(reversed(table))


def test_contiguous_first_fit_reuses_lowest_hole_and_coalesces():
    a = ContiguousAllocator(100)
    for rid, size in enumerate([10, 20, 30]):
        a.allocate(rid, 0, size, size)
    a.free(0)
    a.free(2)
    assert a.free_extents() == [(0, 10), (30, 70)]
    a.allocate(9, 0, 5, 5)
    assert a.regions()[9] == (0, 5)
    a.free(1)
    a.free(9)
    assert a.free_extents() == [(0, 100)]


def test_best_fit_picks_smallest_hole():
    a = ContiguousAllocator(100, "best_fit")
    for rid, size in enumerate([30, 5, 10, 5]):
        a.allocate(rid, 0, size, size)
    a.free(0)   # hole of 30 at 0
    a.free(2)   # hole of 10 at 35
    a.allocate(7, 0, 8, 8)
    assert a.regions()[7] == (35, 8)
ReservingPagedMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestReservingPagedAllocator = ReservingPagedMachine.TestCase
