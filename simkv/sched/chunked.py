"""Token-budget scheduling with chunked prefill: vLLM v1 and Sarathi-Serve.

Models: each step hands out a budget of `max_num_batched_tokens` tokens: first one token to every
running decode, then the next chunk of requests already prefilling (in admission order), then
new requests from the head of the queue, each taking as much of the remaining budget as its
prompt needs (a partial chunk when the budget runs out). When a running request cannot get the
blocks it needs, the newest running request is preempted by recompute (vLLM v1: the last of the
running list) until it fits, and nothing new is admitted in that step. Sarathi-Serve's
stall-free batching is the same algorithm with a small budget (chunk size 512), so decodes are
never stalled by a long prompt.
With prefix caching (vLLM v1's default) a new request starts from the longest run of cached full
blocks of its prompt (see simkv.kv.prefix_cache) and computes only the rest; a preempted
request's computed blocks stay cached until evicted, so its recompute may be shortened too.
With `full_prompt_must_fit` (vLLM's `scheduler_reserve_full_isl`, on by default in vLLM
releases from 2026 on: PR #37307, not in the v0.11 the vllm-v1 preset models) a waiting request is
admitted only if the blocks for its whole prompt (plus any tokens it recomputes) are free, not just
those of its first chunk; only the chunk is allocated. Off unless asked for (the parity harness
turns it on to compare with vLLM 0.33.0).
Simplifications: prefill chunks of different requests are costed per sequence (their attention
kernels) and together for the linear layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from simkv.kv.name_runs import NameChain
from simkv.request import RequestTable

from simkv.sched.base import StepOutcome, StepPlan
from simkv.sched.queue import QueuedScheduler

if TYPE_CHECKING:
    from simkv.build import EngineLimits
    from simkv.kv.base import KVAllocator
    from simkv.kv.memory import MemoryPlan
    from simkv.scenario import Engine


# Block content names: block i of (kind, id) is the int id * 2^35 + 8 i + kind, distinct for every
# (kind, id, i) with 0 <= i < 2^32, and below 2^63 for ids below 2^28, so the prefix cache keeps them in
# int64 arrays (simkv.kv.prefix_cache; ints hash and compare faster than tuples, and it names and evicts
# hundreds of blocks per request). Request, session, prefix and group ids are row numbers; trace block
# ids may be any whole number below 2^63, so `dense_block_ids` renumbers them when they are larger.
SESSION, TRACE, PREFIX, GROUP, OWN = range(5)
MAX_NAME_ID = 2 ** 28


def dense_block_ids(block_ids: list | None) -> list | None:
    """A trace's per-request block ids, renumbered 0, 1, ... in order of first appearance when any
    is too large for a block name (only equality matters: two requests share a block iff they
    share its id); unchanged otherwise."""
    if block_ids is None or all(max(ids) < MAX_NAME_ID for ids in block_ids if ids):
        return block_ids
    dense: dict[int, int] = {}
    return [[dense.setdefault(b, len(dense)) for b in ids] for ids in block_ids]


def block_name(kind: int, ident: int, i: int) -> int:
    return (ident << 35) + 8 * i + kind


def block_names(kind: int, ident: int, start: int, stop: int) -> range:
    """The names of blocks start..stop-1 of (kind, ident)."""
    base = (ident << 35) + kind
    return range(base + 8 * start, base + 8 * stop, 8)


class ChunkedPrefillScheduler(QueuedScheduler):
    """vLLM v1 (budget 8192) and Sarathi-Serve (budget 512) behind the Scheduler protocol."""

    name = "chunked"
    needs = "paged"
    supports_prefix_caching = True

    @classmethod
    def from_engine(cls, e: Engine, table: RequestTable, allocator: KVAllocator, limits: EngineLimits, mem: MemoryPlan,
                    warmup_s: float, kv_bytes_per_token: int) -> ChunkedPrefillScheduler:
        kw = cls.engine_kwargs(e, limits, mem, warmup_s)
        return cls(table, allocator, **kw, prefix_caching=e.prefix_caching)

    def __init__(self, table: RequestTable, allocator, *, prefix_caching: bool = False,
                 full_prompt_must_fit: bool = False, **limits) -> None:
        super().__init__(table, allocator, **limits)
        self.prefix_caching = prefix_caching
        self.full_prompt_must_fit = full_prompt_must_fit
        if prefix_caching and not allocator.prefix_caching:
            raise ValueError("prefix caching needs a PrefixCachingAllocator")
        self._hashes: dict[int, list] = {}   # prefilling request -> content names of its full blocks

    def next_reservation(self) -> int | None:
        return None  # paged: no external fragmentation

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        if self.prefix_caching:  # prompts whose last chunk ran no longer need their block names
            for rid, ctx in zip(plan.prefill_ids.tolist(), plan.prefill_ctx.tolist()):
                if ctx == self.batch.prefilling[rid].target:
                    del self._hashes[rid]
        return super().commit(plan, start_s, durations_s)

    def _cache_scheduled(self, rid: int, tokens: int) -> None:
        """Name the full blocks this step will have computed, at scheduling time (as vLLM V1's
        allocate_slots does): a request scheduled later in the same step can already reuse them,
        since each layer writes the step's keys and values before its attention reads them."""
        if self.prefix_caching:
            self.kv.register(rid, self._hashes[rid], tokens)

    def block_hashes(self, rid: int, num_tokens: int) -> Sequence[int]:
        """Content names of the full blocks of `rid`'s first `num_tokens` tokens: block i of a
        shared prefix is the same content for every request using it; the rest of the prompt is
        the same for the sequences of one request (parallel sampling); generated tokens are the
        sequence's own. A name is an int (see `block_names`); names of consecutive blocks of one
        content come as a range (the prefix cache names and finds them as one slice)."""
        b, t = self.kv.block_size, self.t
        group, prompt, n = int(t.group[rid]), int(t.prompt_tokens[rid]) // b, num_tokens // b
        if t.session is not None:  # a conversation's history is the same content turn after turn
            return block_names(SESSION, int(t.session[rid]), 0, n)
        if t.trace_blocks is not None:  # a trace names its prompt's blocks, chained
            ids, per = t.trace_blocks[rid], t.trace_block_tokens
            return [block_name(TRACE, int(ids[min(i * b // per, len(ids) - 1)]), i) if i < prompt and b <= per
                    else block_name(OWN, rid, i) for i in range(n)]
        pid, shared = int(t.prefix_id[rid]), int(t.prefix_tokens[rid]) // b
        p_end = min(shared, n)   # blocks [0, shared) of the prefix, [shared, prompt) of the group, then its own
        g_end = max(p_end, min(prompt, n))
        if not p_end and g_end == n:   # one content: no shared prefix, no own blocks yet
            return block_names(GROUP, group, 0, n)
        return NameChain((block_names(PREFIX, pid, 0, p_end), block_names(GROUP, group, p_end, g_end),
                          block_names(OWN, rid, g_end, n)))

    # ------------------------------------------------------------ schedule
    def schedule(self) -> StepPlan | None:
        if not self.has_work():
            return None
        b = self.batch
        preempted = self._make_room_for_decodes()
        budget = self.max_num_batched_tokens - b.num_decoding
        chunks: list[tuple[int, int]] = []  # (rid, tokens this step)
        budget, more = self._continue_prefills(budget, chunks, preempted)
        if not preempted and not more:
            self._admit(budget, chunks)
        decode_ids, decode_ctx = b.ids.copy(), b.next_ctx()
        if not len(decode_ids) and not chunks:
            if self.waiting and not len(b):
                raise self.stuck()
            return None
        if chunks:
            return self._plan_with_chunks(decode_ids, decode_ctx, chunks, tuple(preempted))
        if preempted:
            return StepPlan(decode_ids, decode_ctx, preempted_ids=tuple(preempted))
        return self.repeated_decodes(arrival_sensitive=not self.waiting, decodes=(decode_ids, decode_ctx))

    def _plan_with_chunks(self, decode_ids, decode_ctx, chunks, preempted) -> StepPlan:
        b = self.batch
        ids = np.array([rid for rid, _ in chunks], dtype=np.int64)
        new = np.array([n for _, n in chunks], dtype=np.int64)
        states = [b.prefilling[rid] for rid, _ in chunks]
        ctx = np.array([s.computed for s in states], dtype=np.int64) + new
        done = np.array([s.remaining == n for s, (_, n) in zip(states, chunks)])
        loads = self.kv.take_pending_loads() if self.kv.offloads else None
        if loads:   # prefix blocks loaded from offload tiers for this step's admissions (simkv.kv.offload)
            bs = self.kv.block_size
            return StepPlan(decode_ids, decode_ctx, ids, new, ctx, done, preempted_ids=preempted,
                            kv_load_host_tokens=loads.get("host", 0) * bs, kv_load_ssd_tokens=loads.get("ssd", 0) * bs)
        return StepPlan(decode_ids, decode_ctx, ids, new, ctx, done, preempted_ids=preempted)

    def _make_room_for_decodes(self) -> list[int]:
        """Preempt the newest running requests until every decode can write its next slot."""
        b, victims = self.batch, []
        while b.num_decoding and b.decode_blocks_needed(1) > self.kv.num_free_blocks:
            victims.append(self._preempt_newest())
        return victims

    def _preempt_newest(self) -> int:
        b = self.batch
        rid = b.newest()
        if self.prefix_caching:  # its computed blocks stay cached (until evicted) for the recompute
            tokens = b.prefilling[rid].computed if rid in b.prefilling else self.kv.tokens_of(rid)
            self.kv.register(rid, self.block_hashes(rid, tokens), tokens)
            self._hashes.pop(rid, None)
        b.preempt(rid)
        self.waiting.appendleft(rid)
        return rid

    def _continue_prefills(self, budget: int, chunks: list, preempted: list) -> tuple[int, bool]:
        """Next chunks of requests already prefilling; returns the budget left and whether one of
        them was left waiting for memory (then nothing new is admitted either)."""
        b = self.batch
        decode_blocks = b.decode_blocks_needed(1)
        for state in sorted(b.prefilling.values(), key=lambda s: s.order):
            if state.rid not in b.prefilling:  # preempted for an earlier chunk
                continue
            if budget <= 0:
                return budget, True
            n = min(state.remaining, budget)
            while state.rid in b.prefilling and not self._can_grow(state.rid, state.computed + n, decode_blocks):
                victim = self._preempt_newest()
                preempted.append(victim)
                decode_blocks = b.decode_blocks_needed(1)
            if state.rid not in b.prefilling:
                return budget, True
            self.kv.grow_to(state.rid, state.computed + n)
            self._cache_scheduled(state.rid, state.computed + n)
            chunks.append((state.rid, n))
            budget -= n
        return budget, False

    def _can_grow(self, rid: int, tokens: int, keep_blocks: int) -> bool:
        need = self.kv.blocks_for(tokens) - self.kv.num_blocks_of(rid)
        return need + keep_blocks <= self.kv.num_free_blocks

    def _admit(self, budget: int, chunks: list) -> None:
        """New requests from the head of the queue while budget, seats and blocks allow."""
        b = self.batch
        keep = (self.watermark_blocks + b.decode_blocks_needed(1)) * self.kv.block_size
        while self.waiting and budget > 0 and len(b) < self.max_num_seqs:
            rid = self.waiting[0]
            target = self.prompt_tokens(rid)
            if self.prefix_caching:
                if not self._admit_cached(rid, target, budget, keep, chunks):
                    break
                budget -= chunks[-1][1]
                continue
            n = min(target, budget)
            if not self.kv.can_allocate(target if self.full_prompt_must_fit else n, None, keep):
                break
            chunks.append(self.admit_head(n))
            budget -= n

    def _admit_cached(self, rid: int, target: int, budget: int, keep: int, chunks: list) -> bool:
        """Admit `rid` reusing its cached prefix blocks; False if it does not fit."""
        hashes = self.block_hashes(rid, target)
        hits = self.kv.match_prefix(hashes)
        if hits * self.kv.block_size >= target:  # fully cached: recompute the last token (vLLM does)
            hits -= 1
        cached = hits * self.kv.block_size
        n = min(target - cached, budget)
        if not self.kv.can_allocate_cached(hashes, hits, target if self.full_prompt_must_fit else cached + n, keep):
            return False
        self.kv.allocate_cached(rid, hashes, hits, cached + n, int(self.t.final_kv_tokens[rid]))
        self.batch.start_prefill(rid, cached, 0)
        self.t.prefix_hit_tokens[rid] += cached
        self.t.prefix_query_tokens[rid] += target
        self.t.prefix_hit_blocks[rid] += hits
        self.t.prefix_query_blocks[rid] += len(hashes)
        self._hashes[rid] = hashes
        self._cache_scheduled(rid, cached + n)
        self.waiting.popleft()
        chunks.append((rid, n))
        return True
