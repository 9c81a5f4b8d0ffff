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
from typing import Protocol


class OutOfKVMemory(Exception):
    """An allocation or append that does not fit; the allocator's state is unchanged."""


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


class RegionGrowth:
    """Token growth inside a reservation made at admission (contiguous and buddy allocators):
    a request writes into its region and can never grow past `held_tokens`."""

    _tokens: dict[int, int]

    def held_tokens(self, req_id: int) -> int:  # pragma: no cover - provided by the allocator
        raise NotImplementedError

    def can_append(self, req_id: int, num_tokens: int = 1) -> bool:
        return self._tokens[req_id] + num_tokens <= self.held_tokens(req_id)

    def append(self, req_id: int, num_tokens: int = 1) -> None:
        if not self.can_append(req_id, num_tokens):
            raise OutOfKVMemory(f"request {req_id} outgrew its reservation of {self.held_tokens(req_id)} slots")
        self._tokens[req_id] += num_tokens

    def grow_to(self, req_id: int, new_tokens: int) -> None:
        self.append(req_id, new_tokens - self._tokens[req_id])

    def set_tokens(self, req_ids, new_tokens) -> None:
        """Bulk-set written slots; the scheduler guarantees each fits its region (engine fast path)."""
        self._tokens.update(zip(req_ids.tolist(), new_tokens.tolist()))


class KVAllocator(Protocol):
    """What schedulers need from a KV allocator. Failing calls raise OutOfKVMemory and change nothing."""

    capacity_tokens: int

    def can_allocate(self, num_tokens: int, reserve_tokens: int, watermark_tokens: int = 0) -> bool:
        """Would `allocate` succeed (leaving `watermark_tokens` free)? Pure."""

    def allocate(self, req_id: int, num_tokens: int, reserve_tokens: int, final_tokens: int) -> None:
        """Give `req_id` room for `num_tokens` written slots (contiguous: a region of `reserve_tokens`)."""

    def can_append(self, req_id: int, num_tokens: int = 1) -> bool:
        """Could `req_id` write `num_tokens` more slots? Pure."""

    def append(self, req_id: int, num_tokens: int = 1) -> None:
        """Record `num_tokens` more written slots for `req_id`, taking memory if needed."""

    def free(self, req_id: int) -> None:
        """Release everything `req_id` holds; KeyError if it holds nothing."""

    def usage(self, next_reservation: int | None = None) -> KVUsage:
        """The breakdown now; `next_reservation` is what the next waiting request needs (slots)."""
