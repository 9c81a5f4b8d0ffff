"""Paged KV allocator with automatic prefix caching (vLLM's block pool).

Models (vllm/v1/core/block_pool.py, kv_cache_manager.py): every full block is identified by a
hash of its content chained on the previous block's (simkv names the content: block i of shared
prefix p, or block i of request r's own tokens), registered once its tokens are computed. A new
request reuses the longest run of cached blocks at the start of its prompt (reference counts: a
block may be in several block tables), computing only the rest; if the whole prompt is cached the
last token is recomputed. Freed blocks keep their hash and join the free queue in reverse order
(tail blocks first, so they are evicted first); the queue is in least-recently-used order, and a
cached block is evicted only when it is taken for a new allocation. A cached free block that is
hit leaves the queue in O(1).

Representation (why it is not one dict entry per free block): a request holds up to hundreds of
blocks (TGI reserves prompt + max_new_tokens at admission), and taking, freeing and evicting them
one Python operation at a time was most of a prefix-caching run's time. So the free queue is a
FIFO of chunks, one numpy array per free() in the order its blocks were queued, and a chunk's
entry of block b is live while b is free (reference count 0) and this chunk queued it last
(`_stamp[b]`, stamps only grow). A hit on a free block removes it from the queue by raising its
count (its entry goes stale, skipped when the front reaches it); taking n blocks takes the first n
live entries with a few numpy calls; the queue is compacted when stale entries outnumber the
blocks. Reference counts and "has a name" are numpy arrays, so a request's blocks are pinned,
taken and freed without a loop over them. The order of blocks taken and freed, and so every
eviction, is the one of an LRU dict (kept as the reference in tests/reference_prefix_cache.py and
compared operation by operation in tests/test_prefix_cache_queue.py).
"""

from __future__ import annotations

from array import array
from collections import deque
from typing import Sequence

import numpy as np

from simkv.kv.base import KVUsage, OutOfKVMemory, sum_breakdown
from simkv.kv.name_runs import NameRuns
from simkv.kv.paged import PagedAllocator

_I64 = np.int64
_max_reduce = np.maximum.reduce   # ndarray.max without its Python wrapper
_NONE = np.zeros(0, dtype=_I64)
_SMALL = 8   # takes of at most this many blocks walk the queue in Python (fewer numpy calls)


class PrefixCacheBase(PagedAllocator):
    """What a prefix-caching block pool does whatever its representation: the bookkeeping of block
    tables, written and final slots and registered blocks, the breakdown, and the order of each
    operation's steps. Subclasses keep the counts, the free queue and the names: the pure-Python
    PrefixCachingAllocator below (the reference) and the compiled
    simkv.kv.compiled_prefix_cache.CompiledPrefixCache."""

    prefix_caching = True
    _nfree = 0
    _ref: np.ndarray
    _registered: dict[int, int]

    @property
    def num_free_blocks(self) -> int:
        return self._nfree

    def ref_count(self, block: int) -> int:
        return int(self._ref[block])

    def can_allocate_cached(self, hashes: Sequence[int], hits: int, num_tokens: int, watermark_tokens: int = 0) -> bool:
        """Would `allocate_cached` succeed with `hits` cached leading blocks for `num_tokens` slots?"""
        need = max(0, self.blocks_for(num_tokens) - hits) + self._free_hits(hashes, hits)
        return need + self.blocks_for(watermark_tokens) <= self._nfree

    def allocate_cached(self, req_id: int, hashes: Sequence[int], hits: int, num_tokens: int, final_tokens: int,
                        reserve_tokens: int = 0) -> None:
        """Reuse the first `hits` cached blocks of `hashes`, then take new blocks up to `num_tokens`
        written slots (up to `reserve_tokens` slots when more: TGI reserves at admission)."""
        if req_id in self._tables:
            raise ValueError(f"request {req_id} already holds KV memory")
        held = max(num_tokens, reserve_tokens)
        if not self.can_allocate_cached(hashes, hits, held):
            raise OutOfKVMemory(f"request {req_id} does not fit ({self._nfree} free blocks)")
        table = self._cached_table(hashes, hits)   # pinned first: taking new blocks must not evict them
        self._add_new(table, self.blocks_for(held) - hits)
        self._tables[req_id] = table
        self._tok[req_id] = num_tokens
        self._final[req_id] = max(num_tokens, final_tokens)
        self._registered[req_id] = hits

    def allocate(self, req_id: int, num_tokens: int, reserve_tokens: int | None = None,
                 final_tokens: int | None = None) -> None:
        self.allocate_cached(req_id, [], 0, num_tokens, final_tokens if final_tokens is not None else num_tokens)

    def register(self, req_id: int, hashes: Sequence[int], num_tokens: int) -> None:
        """Name the full blocks among the first `num_tokens` computed slots of `req_id` by `hashes`
        (first come keeps a hash: a block with the same content computed later stays private)."""
        table = self._tables[req_id]
        full = min(num_tokens // self.block_size, len(hashes), len(table))
        done = self._registered.get(req_id, 0)
        if full > done:
            self._name_blocks(table, hashes, done, full)
        self._registered[req_id] = max(full, done)

    def fork_into(self, child: int, parent: int) -> bool:
        """Beam search: `child` drops its blocks and continues `parent`'s hypothesis, sharing its
        full blocks (reference counts) and copying its partial last block (copy-on-write done at
        once, since the child writes into it next). Returns False, changing nothing, if no block
        is free for the copy."""
        tokens = self._tokens[parent]
        if self._tokens[child] != tokens:
            raise ValueError("beams fork only between sequences of the same length")
        if not self._fork(child, parent, tokens // self.block_size, 1 if tokens % self.block_size else 0):
            return False
        self._registered[child] = 0
        return True

    def free(self, req_id: int) -> None:
        table = self._tables.pop(req_id)
        del self._tok[req_id], self._final[req_id]
        self._registered.pop(req_id, None)
        if table:
            self._release_table(table)

    # ------------------------------------------------------------ accounting
    def usage(self, next_reservation: int | None = None) -> KVUsage:
        tokens, reserved, internal = sum_breakdown(
            (len(table) * self.block_size, self._tokens[r], self._final[r]) for r, table in self._tables.items())
        tokens -= self.shared_excess * self.block_size  # a shared (full) block holds its tokens once
        free = self._nfree * self.block_size
        return KVUsage(self.capacity_tokens, tokens, reserved, internal, 0, free)

    # ------------------------------------------------------------ the representation's part
    def _free_hits(self, hashes: Sequence[int], hits: int) -> int:
        """Of the first `hits` (cached) blocks of `hashes`, how many are free."""
        raise NotImplementedError

    def _cached_table(self, hashes: Sequence[int], hits: int):
        """A new block table of the blocks holding the first `hits` names of `hashes`, each with one
        more reference (a free one leaves the queue)."""
        raise NotImplementedError

    def _add_new(self, table, n: int) -> None:
        """`n` blocks for new content (none if n <= 0) appended to `table`."""
        table.extend(self._take_blocks(n))

    def _name_blocks(self, table, hashes: Sequence[int], done: int, full: int) -> None:
        """Block i of `table` takes name i of `hashes`, for done <= i < full, where neither is taken yet."""
        raise NotImplementedError

    def _fork(self, child: int, parent: int, full: int, copy: int) -> bool:
        """fork_into's blocks: the child's released, the parent's `full` shared, `copy` taken; False,
        changing nothing, if no block is free for the copy."""
        raise NotImplementedError

    def _release_table(self, table) -> None:
        """One reference fewer to each block of a (non-empty) `table`; the blocks left free join the
        queue tail blocks first."""
        raise NotImplementedError


class PrefixCachingAllocator(PrefixCacheBase):
    """Block pool with reference counts, content hashes and an LRU free queue."""

    compact_slack = 1024   # stale queue entries allowed beyond the blocks before compacting (tests set 0)

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self._free, self._head = [], 0  # replaced by the chunked queue
        # per-block counts and flags: array.array for fast scalar access in small operations, read and
        # written in bulk through numpy views of the same memory
        self._ref_a = array("q", bytes(8 * num_blocks))
        self._ref = np.frombuffer(self._ref_a, dtype=_I64)
        # the free queue, least recently used first: [stamp, blocks, position of the next entry]
        self._queue: deque[list] = deque([[0, np.arange(num_blocks, dtype=_I64), 0]])
        self._stamp_a = array("q", bytes(8 * num_blocks))   # the chunk that queued each block last
        self._stamp = np.frombuffer(self._stamp_a, dtype=_I64)
        self._next_stamp = 1
        self._queued = num_blocks    # entries not yet passed by the front, live or stale
        self._nfree = num_blocks
        # the content name each block holds (a non-negative int, simkv.sched.chunked.block_name), -1 if none;
        # an array, not a dict, so naming and evicting a request's blocks is one numpy call, not a dict
        # operation per block (with the cache misses of a dict of every block)
        self._name_a = array("q", [-1]) * num_blocks
        self._name = np.frombuffer(self._name_a, dtype=_I64)
        self._blocks = NameRuns()   # name -> block (the inverse of _name), as runs of arrays
        self._registered: dict[int, int] = {}   # req_id -> leading blocks already hashed
        self.shared_excess = 0                   # sum over blocks of (references - 1)

    _VIEWS = {"_ref": ("_ref_a", _I64), "_stamp": ("_stamp_a", _I64), "_name": ("_name_a", _I64)}

    def __getstate__(self) -> dict:   # copies and pickles: the numpy views are remade on the copied arrays
        return {k: v for k, v in self.__dict__.items() if k not in self._VIEWS}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for view, (buf, dtype) in self._VIEWS.items():
            setattr(self, view, np.frombuffer(getattr(self, buf), dtype=dtype))

    # ------------------------------------------------------------ queries
    def free_block_ids(self) -> list[int]:
        return self._live_entries().tolist()

    def cached_blocks(self) -> dict:
        return self._blocks.items()

    def name_of(self, block: int) -> int | None:
        """The content name `block` holds, None if it holds none."""
        h = self._name_a[block]
        return h if h >= 0 else None

    def match_prefix(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of `hashes` are cached (pure)."""
        return self._blocks.leading(hashes)

    def _free_hits(self, hashes: Sequence[int], hits: int) -> int:
        if not hits:
            return 0
        if hits <= _SMALL:
            ref, block = self._ref_a, self._blocks.block
            return sum(1 for h in hashes[:hits] if ref[block(h)] == 0)
        return int(np.count_nonzero(self._ref[self._blocks.blocks(hashes[:hits])] == 0))

    # ------------------------------------------------------------ the free queue
    def _queue_blocks(self, blocks: np.ndarray) -> None:
        """Append `blocks` (free now) to the end of the queue, in this order."""
        if not len(blocks):
            return
        c = self._next_stamp
        self._next_stamp = c + 1
        self._stamp[blocks] = c
        self._queue.append([c, blocks, 0])
        self._queued += len(blocks)
        self._nfree += len(blocks)
        if self._queued > 2 * self.num_blocks + self.compact_slack:   # stale entries outnumber the blocks: compact
            live = self._live_entries()
            c = self._next_stamp
            self._next_stamp = c + 1
            self._stamp[live] = c
            self._queue = deque([[c, live, 0]])
            self._queued = len(live)

    def _live_entries(self) -> np.ndarray:
        """The free blocks in queue order."""
        stamp, ref = self._stamp, self._ref
        parts = []
        for c, arr, pos in self._queue:
            seg = arr[pos:]
            parts.append(seg[(stamp[seg] == c) & (ref[seg] == 0)])
        return np.concatenate(parts) if parts else _NONE

    def _pop_free(self, n: int) -> np.ndarray | list[int]:
        """The first `n` free blocks of the queue, which the front passes (0 < n <= free blocks)."""
        stamp, ref, queue = self._stamp, self._ref, self._queue
        if n <= _SMALL:
            stamp_a, ref_a = self._stamp_a, self._ref_a
            out: list[int] = []
            while len(out) < n:
                chunk = queue[0]
                c, arr, pos = chunk
                size = len(arr)
                while pos < size:
                    for b in arr[pos:pos + n + _SMALL].tolist():
                        pos += 1
                        if stamp_a[b] == c and ref_a[b] == 0:
                            out.append(b)
                            if len(out) == n:
                                break
                    if len(out) == n:
                        break
                self._queued -= pos - chunk[2]
                if pos == size:
                    queue.popleft()
                else:
                    chunk[2] = pos
            return out
        parts = []
        while n:
            chunk = queue[0]
            c, arr, pos = chunk
            seg = arr[pos:pos + n + _SMALL]
            live = ((stamp[seg] == c) & (ref[seg] == 0)).nonzero()[0]   # np.flatnonzero, without its wrapper
            if len(live) > n:
                live = live[:n]
                used = int(live[-1]) + 1
            else:
                used = len(seg)
            parts.append(seg[live])
            n -= len(live)
            self._queued -= used
            if pos + used == len(arr):
                queue.popleft()
            else:
                chunk[2] = pos + used
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # ------------------------------------------------------------ allocation
    def _take_blocks(self, n: int) -> list[int]:
        """`n` blocks for new content: the least recently used free ones, their old names evicted."""
        if n <= 0:
            return []
        if n > self._nfree:
            raise OutOfKVMemory(f"{n} blocks needed, {self._nfree} free")
        taken = self._pop_free(n)
        self._nfree -= n
        if n <= _SMALL:
            ref_a, name_a = self._ref_a, self._name_a
            blocks, names = [], []
            for b in taken:
                ref_a[b] = 1
                h = name_a[b]
                if h >= 0:
                    name_a[b] = -1
                    blocks.append(b)
                    names.append(h)
            if names:
                self._forget(blocks, names)
            return taken
        self._ref[taken] = 1
        names_arr = self._name[taken]
        named = (names_arr >= 0).nonzero()[0]
        if len(named):
            blocks_arr = taken[named]
            self._name[blocks_arr] = -1
            self._forget(blocks_arr, names_arr[named])
        return taken.tolist()

    def _forget(self, blocks, names) -> None:
        """Taken `blocks` have lost their cached `names` (lists or int64 arrays, in the order they
        were taken; `_name` is already cleared): the names leave `_blocks` (`_name` and `_blocks`
        are inverse maps: a name is given only to an unnamed block and taken back with it)."""
        self._blocks.drop_many(names)

    def _give_name(self, block: int, h: int) -> None:
        """Give unnamed `block` the unused name `h` (an offload tier's load)."""
        self._blocks.set(h, block)
        self._name_a[block] = h

    def _pin(self, blocks: list[int]) -> None:
        """One more reference to each of `blocks` (cache hits; distinct blocks): free ones leave the queue."""
        if len(blocks) <= _SMALL:
            ref_a = self._ref_a
            freed = 0
            for b in blocks:
                if ref_a[b] == 0:
                    freed += 1
                ref_a[b] += 1
        else:
            ref = self._ref
            r = ref[blocks]
            freed = int(np.count_nonzero(r == 0))
            ref[blocks] = r + 1
        self._nfree -= freed
        self.shared_excess += len(blocks) - freed

    def _cached_table(self, hashes: Sequence[int], hits: int) -> list[int]:
        if not hits:
            return []
        if hits <= _SMALL:
            table = [self._blocks.block(h) for h in hashes[:hits]]
        else:
            table = self._blocks.blocks(hashes[:hits]).tolist()
        self._pin(table)
        return table

    def _name_blocks(self, table: list[int], hashes: Sequence[int], done: int, full: int) -> None:
        runs, name_a = self._blocks, self._name_a
        names, blocks = hashes[done:full], table[done:full]
        fast = False
        if full - done > _SMALL:
            # the common case in numpy: no block named yet, no name taken, the names distinct (else
            # the loop below gives each repeated name to its first block)
            barr = np.fromiter(blocks, _I64, len(blocks))
            if _max_reduce(self._name[barr]) < 0:
                fast = runs.try_set_many(names, barr)
                if fast:
                    self._name[barr] = (np.arange(names.start, names.stop, names.step, dtype=_I64)
                                        if type(names) is range else np.fromiter(names, _I64, len(names)))
        if not fast:
            for h, block in zip(names, blocks):
                if name_a[block] < 0 and runs.block(h) < 0:
                    runs.set(h, block)
                    name_a[block] = h

    def _fork(self, child: int, parent: int, full: int, copy: int) -> bool:
        ref = self._ref_a
        freed = sum(1 for b in self._tables[child] if ref[b] == 1)
        if copy > self._nfree + freed:
            return False
        released = []
        for block in reversed(self._tables[child]):
            ref[block] -= 1
            if ref[block] == 0:
                released.append(block)
            else:
                self.shared_excess -= 1
        self._queue_blocks(np.array(released, dtype=_I64))
        table = list(self._tables[parent][:full])
        for block in table:
            ref[block] += 1
            self.shared_excess += 1
        table.extend(self._take_blocks(copy))
        self._tables[child] = table
        return True

    def _release_table(self, table: list[int]) -> None:
        if len(table) <= _SMALL:
            ref_a, released_l, shared = self._ref_a, [], 0
            for b in reversed(table):   # tail blocks first
                r = ref_a[b] - 1
                ref_a[b] = r
                if r == 0:
                    released_l.append(b)
                else:
                    shared += 1
            self.shared_excess -= shared
            self._queue_blocks(np.array(released_l, dtype=_I64))
            return
        back = np.array(table[::-1], dtype=_I64)   # tail blocks first
        ref = self._ref
        r = ref[back] - 1
        ref[back] = r
        released = back[r == 0]
        self.shared_excess -= len(back) - len(released)
        self._queue_blocks(released)
