"""Buddy allocator over a linear address space of token slots (Orca's allocator, as the
PagedAttention paper models it).

Models: a request's reservation is placed in a power-of-two block aligned to its size, taken by
splitting the smallest free block that is large enough; on free a block merges with its buddy
whenever the buddy is free too. An address space that is not a power of two is split into
power-of-two top blocks (its binary digits), which never merge with each other.
External fragmentation = the slack of each block beyond its reservation (no other request can
use it), plus free slots in blocks too small for the next waiting request's reservation (with
nobody waiting, free slots outside the largest free block). So an exact (oracle) reservation
shows its rounding as external fragmentation, as in the PagedAttention paper's Figure 2.
"""

from __future__ import annotations

from simkv.kv.base import KVUsage, OutOfKVMemory, RegionGrowth, sum_breakdown


def round_up_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class BuddyAllocator(RegionGrowth):
    """Power-of-two blocks with split and merge."""

    placement = "buddy"

    def __init__(self, capacity_tokens: int) -> None:
        if capacity_tokens <= 0:
            raise ValueError("capacity_tokens must be positive")
        self.capacity_tokens = capacity_tokens
        self._free: dict[int, set[int]] = {}      # size -> starts of free blocks of that size
        self._top: set[tuple[int, int]] = set()   # (start, size) of the top blocks (no buddy beyond)
        start = 0
        for bit in reversed(range(capacity_tokens.bit_length())):
            size = 1 << bit
            if capacity_tokens & size:
                self._free.setdefault(size, set()).add(start)
                self._top.add((start, size))
                start += size
        self._regions: dict[int, tuple[int, int]] = {}   # req_id -> (start, block size)
        self._reserved: dict[int, int] = {}               # req_id -> slots reserved (<= block size)
        self._slack = 0                                   # sum of block size - reservation
        self._tok: dict[int, int] = {}
        self._final: dict[int, int] = {}
        self._num_free = capacity_tokens

    # ------------------------------------------------------------ queries
    def free_extents(self) -> list[tuple[int, int]]:
        return sorted((s, size) for size, starts in self._free.items() for s in starts)

    def regions(self) -> dict[int, tuple[int, int]]:
        return dict(self._regions)

    def tokens_of(self, req_id: int) -> int:
        return self._tok_of(req_id)

    def held_tokens(self, req_id: int) -> int:
        return self._reserved[req_id]

    def largest_free_extent(self) -> int:
        return max((size for size, starts in self._free.items() if starts), default=0)

    @property
    def num_free_tokens(self) -> int:
        return self._num_free

    def _smallest_fit(self, size: int) -> int | None:
        fits = [s for s, starts in self._free.items() if s >= size and starts]
        return min(fits) if fits else None

    # ------------------------------------------------------------ allocation
    def can_allocate(self, num_tokens: int, reserve_tokens: int, watermark_tokens: int = 0) -> bool:
        size = round_up_pow2(max(num_tokens, reserve_tokens, 1))
        return self._num_free - size >= watermark_tokens and self._smallest_fit(size) is not None

    def allocate(self, req_id: int, num_tokens: int, reserve_tokens: int, final_tokens: int | None = None) -> None:
        if req_id in self._regions:
            raise ValueError(f"request {req_id} already holds KV memory")
        size = round_up_pow2(max(num_tokens, reserve_tokens, 1))
        block = self._smallest_fit(size)
        if block is None:
            raise OutOfKVMemory(f"no free buddy block of {size} slots (largest {self.largest_free_extent()})")
        start = min(self._free[block])
        self._free[block].discard(start)
        while block > size:  # split, keeping the lower half
            block //= 2
            self._free.setdefault(block, set()).add(start + block)
        reserved = max(num_tokens, reserve_tokens, 1)
        self._regions[req_id] = (start, size)
        self._reserved[req_id] = reserved
        self._slack += size - reserved
        self._tok[req_id] = num_tokens
        self._final[req_id] = max(num_tokens, final_tokens if final_tokens is not None else num_tokens)
        self._num_free -= size

    def free(self, req_id: int) -> None:
        start, size = self._regions.pop(req_id)
        self._slack -= size - self._reserved.pop(req_id)
        del self._tok[req_id], self._final[req_id]
        self._num_free += size
        base, top_size = self._top_of(start)
        while size < top_size:  # merge with the buddy while it is free
            buddy = base + ((start - base) ^ size)
            if buddy not in self._free.get(size, ()):
                break
            self._free[size].discard(buddy)
            start, size = min(start, buddy), size * 2
        self._free.setdefault(size, set()).add(start)

    def _top_of(self, start: int) -> tuple[int, int]:
        return next((t, ts) for t, ts in self._top if t <= start < t + ts)

    # ------------------------------------------------------------ accounting
    def external_frag_tokens(self, next_reservation: int | None) -> int:
        """Block slack beyond reservations plus free slots unusable by the next request."""
        if next_reservation is None:
            return self._slack + self._num_free - self.largest_free_extent()
        need = round_up_pow2(next_reservation)
        return self._slack + sum(size * len(starts) for size, starts in self._free.items() if size < need)

    def usage(self, next_reservation: int | None = None) -> KVUsage:
        tokens, reserved, internal = sum_breakdown(
            (held, self._tokens[r], self._final[r]) for r, held in self._reserved.items())
        external = self.external_frag_tokens(next_reservation)
        free = self.capacity_tokens - tokens - reserved - internal - external
        return KVUsage(self.capacity_tokens, tokens, reserved, internal, external, free)
