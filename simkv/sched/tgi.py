"""Text Generation Inference (v3 router, 3.3.7) batching.

Models (text-generation-inference `backends/v3/src/backend.rs` batching_task, `queue.rs`
next_batch, `server/.../flash_causal_lm.py`): requests wait in a FIFO queue; a new batch is taken
from its head, in order, while the prefill tokens stay within the prefill budget and the block
allocator can reserve prompt + max_new_tokens - 1 for each (the first that does not fit blocks
the rest: head-of-line). Memory is reserved at admission and never preempted; arrivals beyond
`max_concurrent_requests` in the system are refused.

With prefill chunking (the v3 default, `support_chunking`): every step runs the whole batch
together, one token per decoding request plus the next chunk of each prompt still prefilling
(oldest first), and new requests join it within what is left of `max_batch_prefill_tokens`
(the budget minus the current batch's tokens); the request that overflows the budget is
admitted with a chunk of exactly the rest, and the batch ends there. A prompt longer than the
budget is therefore prefilled over several steps, never rejected; waiting_served_ratio and
max_waiting_tokens are not used (backend.rs: "chunking allow us to consistently run at the
compute bound, making min_size useless").
Without chunking: prefill steps run alone: the running batch pauses while new requests prefill
(the paused requests still count in the batch size), then all decode together. With a batch
running, a prefill is only attempted once the queue holds at least `waiting_served_ratio` x
running requests, or after `max_waiting_tokens` decode steps without one.
With prefix caching (the radix allocator, `radix.rs`): a new request reuses the cached full
blocks of its prompt's longest cached prefix, computes only the rest (the whole prompt cached:
its last token is recomputed), and reserves new blocks for the rest of prompt + max_new_tokens.
Simplifications: blocks of 16 tokens (TGI uses 1 under flashinfer), no speculative decoding,
no max_batch_total_tokens cap beyond the cache itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import dataclasses

import numpy as np

from simkv.request import RequestTable
from simkv.sched.base import StepOutcome, StepPlan
from simkv.sched.chunked import ChunkedPrefillScheduler
from simkv.sched.queue import QueuedScheduler

if TYPE_CHECKING:
    from simkv.build import EngineLimits
    from simkv.kv.base import KVAllocator
    from simkv.kv.memory import MemoryPlan
    from simkv.scenario import Engine


class TgiScheduler(QueuedScheduler):
    """TGI's batching loop over a reserving paged allocator."""

    name = "tgi"
    needs = "paged"
    supports_prefix_caching = True

    @classmethod
    def from_engine(cls, e: Engine, table: RequestTable, allocator: KVAllocator, limits: EngineLimits, mem: MemoryPlan,
                    warmup_s: float, kv_bytes_per_token: int) -> TgiScheduler:
        kw = cls.engine_kwargs(e, limits, mem, warmup_s)
        return cls(table, allocator, max_num_seqs=kw["max_num_seqs"], warmup_s=warmup_s, max_batch_prefill_tokens=e.max_batch_prefill_tokens,
                   waiting_served_ratio=e.waiting_served_ratio, max_waiting_tokens=e.max_waiting_tokens,
                   max_concurrent_requests=e.max_concurrent_requests, chunking=e.prefill_chunking,
                   prefix_caching=e.prefix_caching)

    def __init__(self, table: RequestTable, allocator, *, max_batch_prefill_tokens: int = 4096,
                 waiting_served_ratio: float = 0.3, max_waiting_tokens: int = 20,
                 max_concurrent_requests: int = 128, max_num_seqs: int = 1024, chunking: bool = False,
                 prefix_caching: bool = False, **limits) -> None:
        if not allocator.reserve_upfront:
            raise ValueError("TGI reserves prompt + max_new_tokens at admission: use a reserving allocator")
        if prefix_caching and not allocator.prefix_caching:
            raise ValueError("prefix caching needs a PrefixCachingAllocator")
        super().__init__(table, allocator, max_num_seqs=max_num_seqs, reservation="prompt_plus_max_new", **limits)
        self.max_batch_prefill_tokens = max_batch_prefill_tokens
        self.waiting_served_ratio = waiting_served_ratio
        self.max_waiting_tokens = max_waiting_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.chunking = chunking
        self.prefix_caching = prefix_caching
        self.decode_steps_since_prefill = 0
        self._hashes: dict[int, list] = {}

    # ------------------------------------------------------------ protocol
    def add_request(self, req_id: int) -> bool:
        if len(self.waiting) + len(self.batch) >= self.max_concurrent_requests:
            return False
        return super().add_request(req_id)

    def next_reservation(self) -> int | None:
        return None

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        if len(plan.prefill_ids):
            self.decode_steps_since_prefill = 0
        else:
            self.decode_steps_since_prefill += len(durations_s)
        if self.prefix_caching:
            for rid, ctx in zip(plan.prefill_ids.tolist(), plan.prefill_ctx.tolist()):
                if ctx == self.batch.prefilling[rid].target:
                    self._hashes.pop(rid, None)
        in_batch = len(self.batch)  # decoders paused by a prefill-only step are still in TGI's batch
        out = super().commit(plan, start_s, durations_s)
        if out.num_running != in_batch:
            out = dataclasses.replace(out, num_running=in_batch)
        return out

    def schedule(self) -> StepPlan | None:
        if not self.has_work():
            return None
        return self._schedule_chunked() if self.chunking else self._schedule_whole()

    # ------------------------------------------------------------ without chunking
    def _schedule_whole(self) -> StepPlan | None:
        b = self.batch
        admitted = self._next_prefill_batch() if self.waiting else []
        if admitted:
            return self._prefill_plan(admitted)
        if not b.num_decoding:
            if self.waiting:
                raise self.stuck()
            return None
        due = None
        if self.waiting:  # the next prefill may become due after some decode steps
            due = max(1, self.max_waiting_tokens - self.decode_steps_since_prefill)
        return self.repeated_decodes(arrival_sensitive=True, limit=due)

    def _next_prefill_batch(self) -> list[tuple[int, int]]:
        running = len(self.batch)
        min_size = 0
        if running and self.decode_steps_since_prefill < self.max_waiting_tokens:
            min_size = int(np.floor(running * self.waiting_served_ratio))
        # dry run: how many from the head fit (FIFO, head-of-line)
        count, tokens, blocks = 0, 0, 0
        for rid in self.waiting:
            hashes, hits = self._lookup(rid)
            new = self.prompt_tokens(rid) - hits * self.kv.block_size
            need = self.kv.blocks_for(self.reservation_for(rid)) - hits + self._free_hits(hashes, hits)
            if (tokens + new > self.max_batch_prefill_tokens or blocks + need > self.kv.num_free_blocks
                    or running + count >= self.max_num_seqs):
                break
            count, tokens, blocks = count + 1, tokens + new, blocks + need
        if not count or count < min_size:
            return []
        admitted = []
        for _ in range(count):
            got = self._admit_head(self.max_batch_prefill_tokens)
            if got is None:
                break
            admitted.append(got)
        return admitted

    def _prefill_plan(self, admitted: list[tuple[int, int]]) -> StepPlan:
        b = self.batch
        ids = np.array([rid for rid, _ in admitted], dtype=np.int64)
        new = np.array([n for _, n in admitted], dtype=np.int64)
        states = [b.prefilling[rid] for rid, _ in admitted]
        ctx = np.array([s.computed for s in states], dtype=np.int64) + new
        done = np.array([s.remaining == n for s, (_, n) in zip(states, admitted)])
        return StepPlan(prefill_ids=ids, prefill_new=new, prefill_ctx=ctx, prefill_done=done)

    # ------------------------------------------------------------ with chunking
    def _schedule_chunked(self) -> StepPlan | None:
        b = self.batch
        budget = self.max_batch_prefill_tokens - b.num_decoding
        chunks: list[tuple[int, int]] = []
        for state in sorted(b.prefilling.values(), key=lambda s: s.order):  # the batch's next chunks
            n = max(1, min(state.remaining, budget))
            self._grow_prefill(state.rid, state.computed + n)
            chunks.append((state.rid, n))
            budget -= n
        while self.waiting and budget > 0 and len(b) < self.max_num_seqs:  # next_batch, concatenated
            got = self._admit_head(budget)
            if got is None:
                break
            chunks.append(got)
            budget -= got[1]
            if not b.prefilling[got[0]].remaining == got[1]:
                break  # the request that overflows takes the rest of the budget and ends the batch
        if not chunks:
            if not b.num_decoding:
                if self.waiting:
                    raise self.stuck()
                return None
            return self.repeated_decodes(arrival_sensitive=True)
        return ChunkedPrefillScheduler._plan_with_chunks(self, b.ids.copy(), b.next_ctx(), chunks, ())

    # ------------------------------------------------------------ admission
    def _lookup(self, rid: int) -> tuple[list, int]:
        """(content names of the prompt's full blocks, cached leading blocks to reuse)."""
        if not self.prefix_caching:
            return [], 0
        target = self.prompt_tokens(rid)
        hashes = ChunkedPrefillScheduler.block_hashes(self, rid, target)
        hits = self.kv.match_prefix(hashes)
        if hits * self.kv.block_size >= target:  # the whole prompt cached: recompute its last token
            hits -= 1
        return hashes, hits

    def _free_hits(self, hashes: Sequence[int], hits: int) -> int:
        return self.kv._free_hits(hashes, hits) if self.prefix_caching else 0

    def _admit_head(self, budget: int) -> tuple[int, int] | None:
        """Reserve the head's blocks and start its prefill with at most `budget` tokens this
        step; None (nothing changed) if its reservation does not fit."""
        rid = self.waiting[0]
        reserve = self.reservation_for(rid)
        target = self.prompt_tokens(rid)
        if not self.prefix_caching:
            if not self.kv.can_allocate(target, reserve):
                return None
            n = min(target, budget)
            self.admit_head(n, reserve)
            return rid, n
        hashes, hits = self._lookup(rid)
        if not self.kv.can_allocate_cached(hashes, hits, reserve):
            return None
        cached = hits * self.kv.block_size
        n = min(target - cached, budget)
        self.kv.allocate_cached(rid, hashes, hits, cached + n, int(self.t.final_kv_tokens[rid]), reserve_tokens=reserve)
        self.batch.start_prefill(rid, cached, self.kv.held_tokens(rid))
        t = self.t
        t.prefix_hit_tokens[rid] += cached
        t.prefix_query_tokens[rid] += target
        t.prefix_hit_blocks[rid] += hits
        t.prefix_query_blocks[rid] += len(hashes)
        self._hashes[rid] = hashes
        self.kv.register(rid, hashes, cached + n)
        self.waiting.popleft()
        return rid, n

    def _grow_prefill(self, rid: int, tokens: int) -> None:
        self.kv.grow_to(rid, tokens)   # within the reservation: no new blocks
        if self.prefix_caching:
            self.kv.register(rid, self._hashes[rid], tokens)
