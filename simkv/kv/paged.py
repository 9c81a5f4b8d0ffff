"""Paged KV allocator: a pool of fixed-size blocks handed out on demand (vLLM's PagedAttention).

Models: block pool of `num_blocks` blocks of `block_size` token slots; per-request block tables;
a block is taken when a request writes its first slot in it; freed blocks return to the end of
the free queue in reverse order (tail blocks first), so the most recently used are reused last.
Simplifications: no prefix caching or copy-on-write yet (a later issue adds them); external
fragmentation is zero by construction, since any free block serves any request.
"""

from __future__ import annotations

from simkv.kv.base import KVUsage, LazyTokens, OutOfKVMemory, sum_breakdown


class PagedAllocator(LazyTokens):
    """Block pool with per-request block tables."""

    paged = True                 # capabilities (simkv.kv.base.KVAllocator)
    prefix_caching = False
    offloads = False
    shared_excess = 0

    def __init__(self, num_blocks: int, block_size: int, reserve_upfront: bool = False) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.capacity_tokens = num_blocks * block_size
        self.reserve_upfront = reserve_upfront  # take blocks for reserve_tokens at admission (TGI)
        # the free queue, in order: the never-used blocks range(self._fresh, num_blocks), then the
        # freed ones, self._free[self._head:] (freed blocks join the end, so the never-used ones,
        # in block order, stay at the front; taking from the front is a slice, not one pop per
        # block). No list of every block: a tiny model on a large GPU has tens of millions.
        self._fresh = 0
        self._free: list[int] = []
        self._head = 0
        self._tables: dict[int, list[int]] = {}
        self._tok: dict[int, int] = {}
        self._final: dict[int, int] = {}

    # ------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        return self.num_blocks - self._fresh + len(self._free) - self._head

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` slots."""
        return -(-num_tokens // self.block_size)

    def num_blocks_of(self, req_id: int) -> int:
        return len(self._tables[req_id])

    def block_table(self, req_id: int) -> list[int]:
        return list(self._tables[req_id])

    def held_tokens(self, req_id: int) -> int:
        """Slots in the blocks `req_id` holds."""
        return len(self._tables[req_id]) * self.block_size

    def tokens_of(self, req_id: int) -> int:
        return self._tok_of(req_id)

    def owners(self) -> dict[int, list[int]]:
        """req_id -> block ids (a copy), for invariant checks."""
        return {r: list(t) for r, t in self._tables.items()}

    def free_block_ids(self) -> list[int]:
        return [*range(self._fresh, self.num_blocks), *self._free[self._head:]]

    # ------------------------------------------------------------ allocation
    def _admission_tokens(self, num_tokens: int, reserve_tokens: int | None) -> int:
        if self.reserve_upfront and reserve_tokens is not None:
            return max(num_tokens, reserve_tokens)
        return num_tokens

    def can_allocate(self, num_tokens: int, reserve_tokens: int | None = None, watermark_tokens: int = 0) -> bool:
        """Blocks for `num_tokens` (for `reserve_tokens` when reserving up front) plus the watermark."""
        watermark_blocks = self.blocks_for(watermark_tokens)
        need = self.blocks_for(self._admission_tokens(num_tokens, reserve_tokens))
        return need + watermark_blocks <= self.num_free_blocks

    def allocate(self, req_id: int, num_tokens: int, reserve_tokens: int | None = None,
                 final_tokens: int | None = None) -> None:
        if req_id in self._tables:
            raise ValueError(f"request {req_id} already holds KV memory")
        if num_tokens < 0:
            raise ValueError("num_tokens must be >= 0")
        need = self.blocks_for(self._admission_tokens(num_tokens, reserve_tokens))
        if need > self.num_free_blocks:
            raise OutOfKVMemory(f"request {req_id} needs {need} blocks, {self.num_free_blocks} free")
        self._tables[req_id] = self._take_blocks(need)
        self._tok[req_id] = num_tokens
        self._final[req_id] = max(num_tokens, final_tokens if final_tokens is not None else num_tokens)

    def _take_blocks(self, n: int) -> list[int]:
        """`n` free blocks for new content (subclasses decide which, and what they forget)."""
        if n <= 0:   # a negative count would move the queue backwards (blocks counted free twice)
            return []
        f, h = self._fresh, self._head
        if f < self.num_blocks:   # never-used blocks first (they are the front of the queue)
            k = min(n, self.num_blocks - f)
            self._fresh = f + k
            fresh = list(range(f, f + k))
            if k == n:
                return fresh
            self._head = h + n - k
            return fresh + self._free[h:h + n - k]
        self._head = h + n
        return self._free[h:h + n]

    def can_append(self, req_id: int, num_tokens: int = 1) -> bool:
        need = self.blocks_for(self._tok_of(req_id) + num_tokens) - len(self._tables[req_id])
        return need <= self.num_free_blocks

    def append(self, req_id: int, num_tokens: int = 1) -> None:
        table = self._tables[req_id]
        new_tokens = self._tok_of(req_id) + num_tokens
        need = self.blocks_for(new_tokens) - len(table)   # < 0 inside a reservation (TGI): nothing to take
        if need > self.num_free_blocks:
            raise OutOfKVMemory(f"request {req_id} needs {need} more blocks, {self.num_free_blocks} free")
        if need > 0:
            table.extend(self._take_blocks(need))
        self._tok[req_id] = new_tokens

    def grow_to(self, req_id: int, new_tokens: int) -> None:
        """Append up to a total of `new_tokens` written slots (the engine's bulk path)."""
        self.append(req_id, new_tokens - self._tok_of(req_id))

    def take_blocks(self, req_ids: list[int], counts: list[int]) -> None:
        """Append counts[i] free blocks to req_ids[i]'s table (the engine's bulk growth path;
        the caller has checked that enough blocks are free)."""
        tables = self._tables
        total = sum(counts)
        if total > self.num_free_blocks:
            raise OutOfKVMemory(f"bulk growth needs {total} blocks, {self.num_free_blocks} free")
        taken = self._take_blocks(total)
        if total == len(req_ids) and 0 not in counts:  # one block each (a decode step): the same blocks in the same order
            for rid, block in zip(req_ids, taken):
                tables[rid].append(block)
            return
        pos = 0
        for rid, m in zip(req_ids, counts):
            tables[rid].extend(taken[pos:pos + m])
            pos += m

    def set_tokens(self, req_ids, new_tokens) -> None:
        """Bulk-set written slots; each request must already hold the blocks (engine fast path)."""
        self._tok.update(zip(req_ids.tolist(), new_tokens.tolist()))

    def free(self, req_id: int) -> None:
        table = self._tables.pop(req_id)
        del self._tok[req_id], self._final[req_id]
        free = self._free
        if self._head > len(free) // 2 and self._head > 1024:   # drop the taken front now and then
            del free[:self._head]
            self._head = 0
        free.extend(reversed(table))

    # ------------------------------------------------------------ accounting
    def usage(self, next_reservation: int | None = None) -> KVUsage:
        tokens, reserved, internal = sum_breakdown(
            (len(table) * self.block_size, self._tokens[r], self._final[r]) for r, table in self._tables.items())
        free = self.num_free_blocks * self.block_size
        return KVUsage(self.capacity_tokens, tokens, reserved, internal, 0, free)
