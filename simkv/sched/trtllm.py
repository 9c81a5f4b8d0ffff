"""TensorRT-LLM batching: the capacity scheduler's two policies over in-flight batching.

Models (TensorRT-LLM 1.1: cpp/tensorrt_llm/batch_manager/capacityScheduler.cpp, microBatchScheduler.cpp;
defaults from tensorrt_llm/llmapi/llm_args.py):
- in-flight batching: every step runs one token of every generating request plus context (prompt)
  requests, within `max_num_tokens` tokens and `max_batch_size` requests (the micro-batch scheduler);
  without chunked context (enable_chunked_prefill False, the default) a prompt is computed whole in one
  step, so a request waits until its whole prompt fits what is left of the step's token budget
  (first come first served: the first that does not fit ends the step's admissions).
- GUARANTEED_NO_EVICT (the default): a request is admitted only if the blocks for its whole
  lifetime (prompt + max_new_tokens, `getRemainingBlocksToCompletion`) fit beside what the running
  requests still need to complete; admitted requests are never paused, so no request is ever preempted.
  simkv takes those blocks at admission (the KV breakdown shows them as reserved).
- MAX_UTILIZATION: a request is admitted if the blocks for its next step fit; when a running request
  cannot get a block, the most recently started requests are paused (their KV freed; they restart
  from their prompt, reusing blocks still cached) until it fits.
- KV block reuse (enable_block_reuse True): full blocks of a cached prefix are reused, as vLLM's
  prefix cache (simkv.kv.prefix_cache).
Simplifications: chunked context, when enabled, is FCFS chunking within the token budget (the
default context_chunking_policy FIRST_COME_FIRST_SERVED); no speculative decoding, no
max_attention_window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simkv.request import RequestTable
from simkv.sched.chunked import ChunkedPrefillScheduler

if TYPE_CHECKING:
    from simkv.build import EngineLimits
    from simkv.kv.base import KVAllocator
    from simkv.kv.memory import MemoryPlan
    from simkv.scenario import Engine

GUARANTEED_NO_EVICT = "guaranteed_no_evict"
MAX_UTILIZATION = "max_utilization"


class TrtllmScheduler(ChunkedPrefillScheduler):
    """The capacity scheduler (GUARANTEED_NO_EVICT or MAX_UTILIZATION) and the micro-batch scheduler."""

    name = "trtllm"
    needs = "paged"
    supports_prefix_caching = True

    @classmethod
    def from_engine(cls, e: Engine, table: RequestTable, allocator: KVAllocator, limits: EngineLimits, mem: MemoryPlan,
                    warmup_s: float, kv_bytes_per_token: int) -> TrtllmScheduler:
        kw = cls.engine_kwargs(e, limits, mem, warmup_s)
        return cls(table, allocator, **kw, capacity_policy=e.capacity_scheduler_policy, chunking=e.prefill_chunking,
                   prefix_caching=e.prefix_caching)

    def __init__(self, table: RequestTable, allocator, *, capacity_policy: str = GUARANTEED_NO_EVICT,
                 chunking: bool = False, prefix_caching: bool = False, **limits) -> None:
        if capacity_policy not in (GUARANTEED_NO_EVICT, MAX_UTILIZATION):
            raise ValueError(f"unknown capacity scheduler policy {capacity_policy!r}")
        no_evict = capacity_policy == GUARANTEED_NO_EVICT
        if no_evict != allocator.reserve_upfront:
            raise ValueError("GUARANTEED_NO_EVICT needs a reserving allocator, MAX_UTILIZATION an on-demand one")
        limits.setdefault("reservation", "prompt_plus_max_new")
        super().__init__(table, allocator, prefix_caching=prefix_caching, **limits)
        self.capacity_policy = capacity_policy
        self.no_evict = no_evict
        self.chunking = chunking

    def _admit(self, budget: int, chunks: list) -> None:
        """Context requests from the head of the queue while the step's tokens, seats and blocks allow."""
        b, kv = self.batch, self.kv
        keep = (self.watermark_blocks + b.decode_blocks_needed(1)) * kv.block_size
        while self.waiting and budget > 0 and len(b) < self.max_num_seqs:
            rid = self.waiting[0]
            target = self.prompt_tokens(rid)
            hashes, hits = self._lookup(rid, target)
            cached = hits * kv.block_size
            todo = target - cached
            if todo > budget and not self.chunking:
                break   # the whole context must fit this step
            n = min(todo, budget)
            reserve = self.reservation_for(rid) if self.no_evict else 0
            if self.prefix_caching:
                if not kv.can_allocate_cached(hashes, hits, max(cached + n, reserve), keep):
                    break
                kv.allocate_cached(rid, hashes, hits, cached + n, int(self.t.final_kv_tokens[rid]),
                                   reserve_tokens=reserve)
                t = self.t
                t.prefix_hit_tokens[rid] += cached
                t.prefix_query_tokens[rid] += target
                t.prefix_hit_blocks[rid] += hits
                t.prefix_query_blocks[rid] += len(hashes)
                self._hashes[rid] = hashes
                self.batch.start_prefill(rid, cached, kv.held_tokens(rid))
                self._cache_scheduled(rid, cached + n)
                self.waiting.popleft()
                chunks.append((rid, n))
            else:
                if not kv.can_allocate(n, reserve if self.no_evict else None, keep):
                    break
                chunks.append(self.admit_head(n, reserve if self.no_evict else None))
            budget -= n

    def _lookup(self, rid: int, target: int) -> tuple[list, int]:
        if not self.prefix_caching:
            return [], 0
        hashes = self.block_hashes(rid, target)
        hits = self.kv.match_prefix(hashes)
        if hits * self.kv.block_size >= target:  # the whole prompt cached: recompute its last token
            hits -= 1
        return hashes, hits

    def _preempt_newest(self) -> int:
        if self.no_evict:  # pragma: no cover - the reservation makes every step fit
            raise AssertionError("GUARANTEED_NO_EVICT never pauses a request")
        return super()._preempt_newest()
