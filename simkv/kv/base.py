"""The allocator contract and the memory breakdown (the PagedAttention paper's Figure 2 categories).

Every slot of the KV cache is in exactly one category at every instant:

    | token states | reserved | internal frag | external frag | free |
      KV written     will be    held, never      free but in      free and
                     written    written          unusable holes   usable

`final_tokens` given at allocation is the number of KV slots the request will ever write
(prompt + output - 1: the last sampled token is never fed back). Allocators use it only to
split held-but-empty slots into reserved and internal fragmentation; placement never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


class OutOfKVMemory(Exception):
    """An allocation or append that does not fit; the allocator's state is unchanged."""


# The breakdown's rows, named once: row i of every (5, k) breakdown array (simkv.kv.usage, the
# StepOutcome, the Recorder) is the KVUsage field KV_ROWS[i]; the time-series columns carry these names.
TOKEN, RESERVED, INTERNAL, EXTERNAL, FREE = range(5)
KV_ROWS = ("token_tokens", "reserved_tokens", "internal_frag_tokens", "external_frag_tokens", "free_tokens")


@dataclass(frozen=True, slots=True)
class KVUsage:
    """A snapshot of the cache, in token slots; the five categories sum to capacity_tokens."""

    capacity_tokens: int
    token_tokens: int
    reserved_tokens: int
    internal_frag_tokens: int
    external_frag_tokens: int
    free_tokens: int

    @property
    def utilization(self) -> float:
        """Token states / capacity: how much of the cache holds real keys and values."""
        return self.token_tokens / self.capacity_tokens

    @property
    def held_tokens(self) -> int:
        """Slots owned by some request."""
        return self.token_tokens + self.reserved_tokens + self.internal_frag_tokens

    def row(self) -> tuple[int, ...]:
        """The five categories in KV_ROWS order."""
        return tuple(getattr(self, name) for name in KV_ROWS)

    def total(self) -> int:
        return (self.token_tokens + self.reserved_tokens + self.internal_frag_tokens
                + self.external_frag_tokens + self.free_tokens)


def split_held(held: int, tokens: int, final_tokens: int) -> tuple[int, int]:
    """(reserved, internal) for one request: empty slots it will still fill are reserved, the rest
    will never be filled."""
    empty = held - tokens
    reserved = min(empty, max(0, final_tokens - tokens))
    return reserved, empty - reserved


def sum_breakdown(entries) -> tuple[int, int, int]:
    """(token states, reserved, internal) summed over (held, tokens, final) of each request."""
    tokens = reserved = internal = 0
    for held, t, final in entries:
        r, i = split_held(held, t, final)
        tokens, reserved, internal = tokens + t, reserved + r, internal + i
    return tokens, reserved, internal


class LazyTokens:
    """Written slots per request (`_tok`). A running batch with implicit progress
    (simkv.sched.implicit_batch) keeps its decoders' counts itself and writes them here only when
    something reads them: reads that may concern a decoder go through `_tokens`, which asks the
    batch (`_source`) to write its counts first; allocation, prefill growth and freeing use `_tok`."""

    _tok: dict[int, int]
    _source = None   # the batch holding its decoders' counts (simkv.sched.implicit_batch.ImplicitBatch), or None

    @property
    def _tokens(self) -> dict[int, int]:
        src = self._source
        if src is not None and src.tokens_stale:
            src.write_tokens()
        return self._tok

    def _tok_of(self, req_id: int) -> int:
        """`req_id`'s written slots (current even while a batch holds its decoders' counts)."""
        src = self._source
        if src is not None and src.tokens_stale and src.is_decoding(req_id):
            src.write_tokens()
        return self._tok[req_id]


class RegionGrowth(LazyTokens):
    """Token growth inside a reservation made at admission (contiguous and buddy allocators):
    a request writes into its region and can never grow past `held_tokens`."""

    paged = False                # capabilities (KVAllocator): a region is reserved at admission
    prefix_caching = False
    offloads = False
    reserve_upfront = False      # the paged notion (blocks for the reservation up front); regions always hold theirs
    shared_excess = 0

    def held_tokens(self, req_id: int) -> int:  # pragma: no cover - provided by the allocator
        raise NotImplementedError

    def can_append(self, req_id: int, num_tokens: int = 1) -> bool:
        return self._tok_of(req_id) + num_tokens <= self.held_tokens(req_id)

    def append(self, req_id: int, num_tokens: int = 1) -> None:
        if not self.can_append(req_id, num_tokens):
            raise OutOfKVMemory(f"request {req_id} outgrew its reservation of {self.held_tokens(req_id)} slots")
        self._tok[req_id] += num_tokens

    def grow_to(self, req_id: int, new_tokens: int) -> None:
        self.append(req_id, new_tokens - self._tok_of(req_id))

    def set_tokens(self, req_ids, new_tokens) -> None:
        """Bulk-set written slots; the scheduler guarantees each fits its region (engine fast path)."""
        self._tok.update(zip(req_ids.tolist(), new_tokens.tolist()))


class KVAllocator(Protocol):
    """What schedulers need from every KV allocator. Failing calls raise OutOfKVMemory and change nothing.

    Capabilities are declared, not sniffed: a scheduler reads `paged`, `prefix_caching`, `offloads`
    and `reserve_upfront` (and, when `paged`, uses the PagedKV calls; when `prefix_caching`, the
    PrefixKV calls) instead of testing the allocator's class or probing for methods."""

    capacity_tokens: int
    paged: bool               # fixed-size blocks taken as tokens are written (PagedKV)
    prefix_caching: bool      # reference-counted, content-hashed blocks (PrefixKV)
    offloads: bool            # host / SSD tiers below the cache (`take_pending_loads`)
    reserve_upfront: bool     # paged: blocks for reserve_tokens taken at admission (TGI); regions: False
    shared_excess: int        # blocks counted in several block tables, sum of (references - 1); 0 unless prefix_caching

    def can_allocate(self, num_tokens: int, reserve_tokens: int, watermark_tokens: int = 0) -> bool:
        """Would `allocate` succeed (leaving `watermark_tokens` free)? Pure."""

    def allocate(self, req_id: int, num_tokens: int, reserve_tokens: int, final_tokens: int) -> None:
        """Give `req_id` room for `num_tokens` written slots (contiguous: a region of `reserve_tokens`)."""

    def can_append(self, req_id: int, num_tokens: int = 1) -> bool:
        """Could `req_id` write `num_tokens` more slots? Pure."""

    def append(self, req_id: int, num_tokens: int = 1) -> None:
        """Record `num_tokens` more written slots for `req_id`, taking memory if needed."""

    def grow_to(self, req_id: int, new_tokens: int) -> None:
        """`append` up to `new_tokens` written slots."""

    def set_tokens(self, req_ids, new_tokens) -> None:
        """Bulk-set written slots (the engine's fast-forward; the scheduler guarantees they fit)."""

    def held_tokens(self, req_id: int) -> int:
        """Slots `req_id` holds (written or not)."""

    def tokens_of(self, req_id: int) -> int:
        """Slots `req_id` has written."""

    def free(self, req_id: int) -> None:
        """Release everything `req_id` holds; KeyError if it holds nothing."""

    def usage(self, next_reservation: int | None = None) -> KVUsage:
        """The breakdown now; `next_reservation` is what the next waiting request needs (slots)."""


class RegionKV(KVAllocator, Protocol):
    """A region per request, reserved at admission (contiguous, buddy): holes between regions are
    external fragmentation."""

    def external_frag_tokens(self, next_reservation: int | None) -> int:
        """Free slots in holes too small for the next reservation (all free slots if nobody waits)."""

    def largest_free_extent(self) -> int: ...


class PagedKV(KVAllocator, Protocol):
    """Fixed-size blocks (PagedAttention): memory is taken a block at a time."""

    block_size: int

    @property
    def num_free_blocks(self) -> int: ...

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` slots."""

    def num_blocks_of(self, req_id: int) -> int: ...

    def take_blocks(self, req_ids: list[int], counts: list[int]) -> None:
        """Bulk block growth for the fast-forward (the scheduler checked that they fit)."""


class PrefixKV(PagedKV, Protocol):
    """Paged blocks shared between requests by content hash (vLLM's automatic prefix caching,
    SGLang's radix cache)."""

    def match_prefix(self, hashes: Sequence[int]) -> int:
        """Leading blocks of `hashes` already cached."""

    def can_allocate_cached(self, hashes: Sequence[int], hits: int, num_tokens: int, watermark_tokens: int = 0) -> bool: ...

    def allocate_cached(self, req_id: int, hashes: Sequence[int], hits: int, num_tokens: int, final_tokens: int,
                        *args, **kwargs) -> None:
        """Allocate reusing the first `hits` cached blocks of `hashes`."""

    def register(self, req_id: int, hashes: Sequence[int], num_tokens: int) -> None:
        """Name `req_id`'s full blocks by their hashes, so later requests can share them."""

    def fork_into(self, child: int, parent: int) -> bool:
        """Make `child` share `parent`'s blocks (beam reselection); False if it cannot."""


class OffloadKV(PrefixKV, Protocol):
    """A prefix cache with host / SSD tiers below it (simkv.kv.offload)."""

    def take_pending_loads(self) -> dict[str, int]:
        """Blocks loaded from each tier since the last call."""
