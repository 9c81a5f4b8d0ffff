"""Contiguous KV allocator: a simulated linear address space of token slots (Orca, FasterTransformer,
and engines that reserve a request's whole KV region up front).

Models: each request reserves one contiguous region at admission; placement is first-fit
(lowest address that fits) or best-fit (smallest extent that fits); freeing a region merges it
with free neighbours, so holes appear and disappear exactly as in a real address space.
External fragmentation = free slots in extents too small for the next waiting request's
reservation; with nobody waiting, free slots outside the largest free extent.
"""

from __future__ import annotations

import bisect

from simkv.kv.base import KVUsage, OutOfKVMemory, RegionGrowth, sum_breakdown


class ContiguousAllocator(RegionGrowth):
    """First-fit / best-fit placement over a sorted list of free extents."""

    def __init__(self, capacity_tokens: int, placement: str = "first_fit") -> None:
        if capacity_tokens <= 0:
            raise ValueError("capacity_tokens must be positive")
        if placement not in ("first_fit", "best_fit"):
            raise ValueError(f"unknown placement {placement!r}")
        self.capacity_tokens = capacity_tokens
        self.placement = placement
        self._starts: list[int] = [0]              # free extents, sorted by start
        self._sizes: dict[int, int] = {0: capacity_tokens}
        self._regions: dict[int, tuple[int, int]] = {}  # req_id -> (start, size)
        self._tok: dict[int, int] = {}
        self._final: dict[int, int] = {}
        self._num_free = capacity_tokens

    # ------------------------------------------------------------ queries
    def free_extents(self) -> list[tuple[int, int]]:
        return [(s, self._sizes[s]) for s in self._starts]

    def regions(self) -> dict[int, tuple[int, int]]:
        return dict(self._regions)

    def held_tokens(self, req_id: int) -> int:
        """Slots in `req_id`'s region."""
        return self._regions[req_id][1]

    def tokens_of(self, req_id: int) -> int:
        return self._tok_of(req_id)

    def largest_free_extent(self) -> int:
        return max(self._sizes.values(), default=0)

    @property
    def num_free_tokens(self) -> int:
        return self._num_free

    def _find(self, size: int) -> int | None:
        if self.placement == "first_fit":
            return next((s for s in self._starts if self._sizes[s] >= size), None)
        fits = [(self._sizes[s], s) for s in self._starts if self._sizes[s] >= size]
        return min(fits)[1] if fits else None

    # ------------------------------------------------------------ allocation
    def can_allocate(self, num_tokens: int, reserve_tokens: int, watermark_tokens: int = 0) -> bool:
        size = max(num_tokens, reserve_tokens)
        return self._num_free - size >= watermark_tokens and self._find(size) is not None

    def allocate(self, req_id: int, num_tokens: int, reserve_tokens: int, final_tokens: int | None = None) -> None:
        if req_id in self._regions:
            raise ValueError(f"request {req_id} already holds KV memory")
        size = max(num_tokens, reserve_tokens)
        if size <= 0:
            raise ValueError("a region must have at least one slot")
        start = self._find(size)
        if start is None:
            raise OutOfKVMemory(f"no free extent of {size} slots (largest {self.largest_free_extent()})")
        extent = self._sizes.pop(start)
        i = bisect.bisect_left(self._starts, start)
        if extent > size:
            self._starts[i] = start + size
            self._sizes[start + size] = extent - size
        else:
            del self._starts[i]
        self._regions[req_id] = (start, size)
        self._tok[req_id] = num_tokens
        self._final[req_id] = max(num_tokens, final_tokens if final_tokens is not None else num_tokens)
        self._num_free -= size

    def free(self, req_id: int) -> None:
        start, size = self._regions.pop(req_id)
        del self._tok[req_id], self._final[req_id]
        self._num_free += size
        i = bisect.bisect_left(self._starts, start)
        # merge with the following extent
        if i < len(self._starts) and self._starts[i] == start + size:
            size += self._sizes.pop(self._starts[i])
            del self._starts[i]
        # merge with the preceding extent
        if i > 0:
            prev = self._starts[i - 1]
            if prev + self._sizes[prev] == start:
                self._sizes[prev] += size
                return
        self._starts.insert(i, start)
        self._sizes[start] = size

    # ------------------------------------------------------------ accounting
    def external_frag_tokens(self, next_reservation: int | None) -> int:
        if next_reservation is None:
            return self._num_free - self.largest_free_extent()
        return sum(s for s in self._sizes.values() if s < next_reservation)

    def usage(self, next_reservation: int | None = None) -> KVUsage:
        tokens, reserved, internal = sum_breakdown(
            (size, self._tokens[r], self._final[r]) for r, (_, size) in self._regions.items())
        external = self.external_frag_tokens(next_reservation)
        return KVUsage(self.capacity_tokens, tokens, reserved, internal, external, self._num_free - external)
