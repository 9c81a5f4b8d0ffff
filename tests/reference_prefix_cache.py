"""The prefix-caching block pool as it was before the chunked free queue (an OrderedDict LRU,
one Python operation per block): the reference tests/test_prefix_cache_queue.py compares
simkv.kv.prefix_cache and simkv.kv.offload against, operation by operation. Not used by simkv."""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

from simkv.kv.base import KVUsage, OutOfKVMemory, sum_breakdown
from simkv.kv.offload import WRITE_THROUGH, OffloadTiers
from simkv.kv.paged import PagedAllocator


class ReferencePrefixCache(PagedAllocator):
    """Block pool with reference counts, content hashes and an LRU free queue."""

    prefix_caching = True

    def __init__(self, num_blocks: int, block_size: int) -> None:
        super().__init__(num_blocks, block_size)
        self._free_lru: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._free, self._head = [], 0  # replaced by the LRU queue
        self._ref = [0] * num_blocks
        self._hash_of: dict[int, Hashable] = {}
        self._block_of: dict[Hashable, int] = {}
        self._registered: dict[int, int] = {}   # req_id -> leading blocks already hashed
        self.shared_excess = 0                   # sum over blocks of (references - 1)

    # ------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        return len(self._free_lru)

    def free_block_ids(self) -> list[int]:
        return list(self._free_lru)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    def cached_blocks(self) -> dict:
        return dict(self._block_of)

    def match_prefix(self, hashes: list) -> int:
        """How many leading blocks of `hashes` are cached (pure)."""
        n = 0
        for h in hashes:
            if h not in self._block_of:
                break
            n += 1
        return n

    def _free_hits(self, hashes: list, hits: int) -> int:
        return sum(1 for h in hashes[:hits] if self._ref[self._block_of[h]] == 0)

    def can_allocate_cached(self, hashes: list, hits: int, num_tokens: int, watermark_tokens: int = 0) -> bool:
        """Would `allocate_cached` succeed with `hits` cached leading blocks for `num_tokens` slots?"""
        need = max(0, self.blocks_for(num_tokens) - hits) + self._free_hits(hashes, hits)
        return need + self.blocks_for(watermark_tokens) <= len(self._free_lru)

    # ------------------------------------------------------------ allocation
    def _take(self) -> int:
        """A free block for new content: the least recently used, its old hash evicted."""
        block, _ = self._free_lru.popitem(last=False)
        old = self._hash_of.pop(block, None)
        if old is not None and self._block_of.get(old) == block:
            del self._block_of[old]
        self._ref[block] = 1
        return block

    def _take_blocks(self, n: int) -> list[int]:
        """`n` blocks taken as `_take` takes each, in one loop (the hot path of long prompts)."""
        pop, hash_of, block_of, ref = self._free_lru.popitem, self._hash_of, self._block_of, self._ref
        out = []
        for _ in range(n):
            block = pop(last=False)[0]
            old = hash_of.pop(block, None)
            if old is not None and block_of.get(old) == block:
                del block_of[old]
            ref[block] = 1
            out.append(block)
        return out

    def allocate_cached(self, req_id: int, hashes: list, hits: int, num_tokens: int, final_tokens: int,
                        reserve_tokens: int = 0) -> None:
        """Reuse the first `hits` cached blocks of `hashes`, then take new blocks up to `num_tokens`
        written slots (up to `reserve_tokens` slots when more: TGI reserves at admission)."""
        if req_id in self._tables:
            raise ValueError(f"request {req_id} already holds KV memory")
        held = max(num_tokens, reserve_tokens)
        if not self.can_allocate_cached(hashes, hits, held):
            raise OutOfKVMemory(f"request {req_id} does not fit ({len(self._free_lru)} free blocks)")
        table = []
        ref, block_of, free_lru = self._ref, self._block_of, self._free_lru
        shared = 0
        for h in hashes[:hits]:
            block = block_of[h]
            if ref[block] == 0:
                del free_lru[block]
            else:
                shared += 1
            ref[block] += 1
            table.append(block)
        self.shared_excess += shared
        table.extend(self._take_blocks(self.blocks_for(held) - len(table)))
        self._tables[req_id] = table
        self._tok[req_id] = num_tokens
        self._final[req_id] = max(num_tokens, final_tokens)
        self._registered[req_id] = hits

    def allocate(self, req_id: int, num_tokens: int, reserve_tokens: int | None = None,
                 final_tokens: int | None = None) -> None:
        self.allocate_cached(req_id, [], 0, num_tokens, final_tokens if final_tokens is not None else num_tokens)

    def take_blocks(self, req_ids: list[int], counts: list[int]) -> None:
        if sum(counts) > len(self._free_lru):
            raise OutOfKVMemory(f"bulk growth needs {sum(counts)} blocks, {len(self._free_lru)} free")
        for rid, m in zip(req_ids, counts):
            self._tables[rid].extend(self._take_blocks(m))

    def register(self, req_id: int, hashes: list, num_tokens: int) -> None:
        """Name the full blocks among the first `num_tokens` computed slots of `req_id` by `hashes`
        (first come keeps a hash: a block with the same content computed later stays private)."""
        table = self._tables[req_id]
        full = min(num_tokens // self.block_size, len(hashes), len(table))
        done = self._registered.get(req_id, 0)
        block_of, hash_of = self._block_of, self._hash_of
        for i in range(done, full):
            h = hashes[i]
            if h not in block_of:
                block = table[i]
                if block not in hash_of:
                    block_of[h] = block
                    hash_of[block] = h
        self._registered[req_id] = max(full, done)

    def fork_into(self, child: int, parent: int) -> bool:
        """Beam search: `child` drops its blocks and continues `parent`'s hypothesis, sharing its
        full blocks (reference counts) and copying its partial last block (copy-on-write done at
        once, since the child writes into it next). Returns False, changing nothing, if no block
        is free for the copy."""
        tokens = self._tokens[parent]
        if self._tokens[child] != tokens:
            raise ValueError("beams fork only between sequences of the same length")
        full = tokens // self.block_size
        copy = 1 if tokens % self.block_size else 0
        freed = sum(1 for b in self._tables[child] if self._ref[b] == 1)
        if copy > len(self._free_lru) + freed:
            return False
        for block in reversed(self._tables[child]):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free_lru[block] = None
            else:
                self.shared_excess -= 1
        table = list(self._tables[parent][:full])
        for block in table:
            self._ref[block] += 1
            self.shared_excess += 1
        table.extend(self._take() for _ in range(copy))
        self._tables[child] = table
        self._registered[child] = 0
        return True

    def free(self, req_id: int) -> None:
        table = self._tables.pop(req_id)
        del self._tok[req_id], self._final[req_id]
        self._registered.pop(req_id, None)
        ref, free_lru = self._ref, self._free_lru
        shared = 0
        for block in reversed(table):
            r = ref[block] - 1
            ref[block] = r
            if r == 0:
                free_lru[block] = None
            else:
                shared += 1
        self.shared_excess -= shared

    # ------------------------------------------------------------ accounting
    def usage(self, next_reservation: int | None = None) -> KVUsage:
        tokens, reserved, internal = sum_breakdown(
            (len(table) * self.block_size, self._tokens[r], self._final[r]) for r, table in self._tables.items())
        tokens -= self.shared_excess * self.block_size  # a shared (full) block holds its tokens once
        free = len(self._free_lru) * self.block_size
        return KVUsage(self.capacity_tokens, tokens, reserved, internal, 0, free)


class ReferenceOffloadingCache(ReferencePrefixCache):
    """The GPU prefix cache with host / SSD tiers below it (see the module docstring)."""

    offloads = True

    def __init__(self, num_blocks: int, block_size: int, tiers: OffloadTiers) -> None:
        super().__init__(num_blocks, block_size)
        self.offload = tiers
        self.pending_loads: dict[str, int] = {}   # tier -> blocks loaded since the last plan

    # ------------------------------------------------------------ lookups
    def _held(self, h: Hashable) -> bool:
        return h in self._block_of or self.offload.locate(h) is not None

    def match_prefix(self, hashes: list) -> int:
        """Leading blocks of `hashes` held on the GPU or in a tier below (pure)."""
        n = 0
        for h in hashes:
            if not self._held(h):
                break
            n += 1
        return n

    def _need(self, hashes: list, hits: int) -> int:
        """Free GPU blocks the first `hits` blocks take: cached free ones, and one per block loaded."""
        need = 0
        for h in hashes[:hits]:
            block = self._block_of.get(h)
            if block is None or self._ref[block] == 0:
                need += 1
        return need

    def can_allocate_cached(self, hashes: list, hits: int, num_tokens: int, watermark_tokens: int = 0) -> bool:
        need = max(0, self.blocks_for(num_tokens) - hits) + self._need(hashes, hits)
        return need + self.blocks_for(watermark_tokens) <= len(self._free_lru)

    # ------------------------------------------------------------ allocation
    def _take(self) -> int:
        block = next(iter(self._free_lru))
        old = self._hash_of.get(block)
        evicted = old if old is not None and self._block_of.get(old) == block else None
        taken = super()._take()
        if evicted is not None:
            self.offload.on_gpu_evict(evicted)
        return taken

    def _take_blocks(self, n: int) -> list[int]:
        return [self._take() for _ in range(n)]   # each eviction goes to the tiers

    def allocate_cached(self, req_id: int, hashes: list, hits: int, num_tokens: int, final_tokens: int,
                        reserve_tokens: int = 0) -> None:
        if req_id in self._tables:
            raise ValueError(f"request {req_id} already holds KV memory")
        held = max(num_tokens, reserve_tokens)
        if not self.can_allocate_cached(hashes, hits, held):
            raise OutOfKVMemory(f"request {req_id} does not fit ({len(self._free_lru)} free blocks)")
        table: list = [None] * hits
        loads = []
        for i, h in enumerate(hashes[:hits]):   # pin the GPU hits first: taking blocks must not evict them
            block = self._block_of.get(h)
            if block is None:
                tier = self.offload.locate(h)
                tier.touch(h)
                tier.blocks_read += 1
                loads.append((i, h, tier))
                continue
            if self._ref[block] == 0:
                del self._free_lru[block]
            else:
                self.shared_excess += 1
            self._ref[block] += 1
            table[i] = block
        hit_blocks = self.offload.hit_blocks
        if req_id < len(hit_blocks["gpu"]):
            hit_blocks["gpu"][req_id] += hits - len(loads)
        for i, h, tier in loads:
            block = self._take()
            if h not in self._block_of:
                self._block_of[h] = block
                self._hash_of[block] = h
                self.offload.on_named(h)
            table[i] = block
            self.pending_loads[tier.name] = self.pending_loads.get(tier.name, 0) + 1
            if req_id < len(hit_blocks[tier.name]):
                hit_blocks[tier.name][req_id] += 1
        table.extend(self._take() for _ in range(self.blocks_for(held) - len(table)))
        self._tables[req_id] = table
        self._tok[req_id] = num_tokens
        self._final[req_id] = max(num_tokens, final_tokens)
        self._registered[req_id] = hits

    def register(self, req_id: int, hashes: list, num_tokens: int) -> None:
        start = self._registered.get(req_id, 0)
        super().register(req_id, hashes, num_tokens)
        if self.offload.policy == WRITE_THROUGH:
            table = self._tables[req_id]
            for i in range(start, self._registered[req_id]):
                if self._block_of.get(hashes[i]) == table[i]:
                    self.offload.on_named(hashes[i])

    def take_pending_loads(self) -> dict[str, int]:
        """Blocks loaded per tier since the last call (the scheduler puts them on its next plan)."""
        out, self.pending_loads = self.pending_loads, {}
        return out

