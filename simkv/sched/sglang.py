"""SGLang's scheduler (v0.5: python/sglang/srt/managers/scheduler.py, schedule_policy.py, schedule_batch.py).

Models:
- Each iteration first tries to build a prefill ("extend") batch; if it has any request the step
  runs it alone (enable_mixed_chunk is off by default, so decodes sit the step out), otherwise the
  running requests decode one token each.
- Prefill batch (PrefillAdder): the request being chunked goes first, then the waiting queue in
  policy order: `fcfs` (arrival order; SGLang's default) or `lpm` (longest cached prefix first,
  requests that share a not-yet-cached prefix of >= 32 tokens with an earlier waiting request
  deferred so only one computes it; plain FCFS when more than 128 wait). A request is added while
  the running + admitted requests stay below max_running_requests, its new tokens fit what is left
  of chunked_prefill_size (a longer prompt is cut at the rest and becomes the chunked request, and
  the batch ends) and of max_prefill_tokens, and its new tokens + min(max_new_tokens, 4096) fit
  `rem_total_tokens` = free + evictable cache slots - sum over running requests of
  min(max_new_tokens - generated, 4096) x new_token_ratio - what this batch already admitted.
- new_token_ratio starts at min(0.7 x schedule_conservativeness, 1), decays by
  (init - init x 0.14) / 600 each decode step down to init x 0.14, and is reset when the batch empties.
- Retraction (retract_decode): when the free + evictable slots cannot give every decoding request its
  next token, requests are retracted (KV released into the radix cache, request back to the queue)
  in order fewest output tokens first, longest prompt first among equals, until the rest have room for
  SGLANG_RETRACT_DECODE_STEPS = 20 more tokens each; then new_token_ratio =
  min(1, (decoded tokens + 20 x remaining) / (sum of max_new_tokens + 1)).
- RadixAttention: the prefix cache is a radix tree over token sequences with page size 1 and LRU
  eviction of unreferenced leaves. simkv models it with the reference-counted prefix cache at
  block_size = page_size: each page's content name is chained on its predecessors, so the cached
  pages form exactly the tree's token paths, and a freed sequence joins the LRU queue tail first,
  so a leaf is always evicted before its parent.
Simplifications: no overlap scheduling (CPU scheduling is hidden by the step time only through
host_overhead_s), no priority scheduling, no in-batch prefix deprioritisation beyond the rule above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dataclasses

import numpy as np

from simkv.request import RequestTable
from simkv.sched.base import StepOutcome, StepPlan
from simkv.sched.chunked import ChunkedPrefillScheduler

if TYPE_CHECKING:
    from simkv.build import EngineLimits
    from simkv.kv.base import KVAllocator
    from simkv.kv.memory import MemoryPlan
    from simkv.scenario import Engine

CLIP_MAX_NEW_TOKENS = 4096            # schedule_policy.py SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION
INIT_NEW_TOKEN_RATIO = 0.7            # environ.py SGLANG_INIT_NEW_TOKEN_RATIO
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14     # environ.py SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR
NEW_TOKEN_RATIO_DECAY_STEPS = 600     # environ.py SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS
RETRACT_DECODE_STEPS = 20             # environ.py SGLANG_RETRACT_DECODE_STEPS
LPM_MAX_QUEUE = 128                   # schedule_policy.py _determine_active_policy
IN_BATCH_PREFIX_THRESHOLD = 32        # IN_BATCH_PREFIX_CACHING_CHECK / DEPRIORITIZE_THRESHOLD
MAX_PREFILL_TOKENS = 16384            # server_args.py ServerArgs.max_prefill_tokens


class SglangScheduler(ChunkedPrefillScheduler):
    """SGLang's event loop over a radix (page-granular prefix) cache."""

    name = "sglang"
    implicit_batch = False   # its retraction reads every decoder's generated tokens each step
    needs = "paged"
    supports_prefix_caching = True

    @classmethod
    def from_engine(cls, e: Engine, table: RequestTable, allocator: KVAllocator, limits: EngineLimits, mem: MemoryPlan,
                    warmup_s: float, kv_bytes_per_token: int) -> SglangScheduler:
        kw = cls.engine_kwargs(e, limits, mem, warmup_s)
        return cls(table, allocator, max_num_seqs=kw["max_num_seqs"], warmup_s=warmup_s, max_num_batched_tokens=kw["max_num_batched_tokens"],
                   max_model_len=kw["max_model_len"], schedule_policy=e.schedule_policy,
                   schedule_conservativeness=e.schedule_conservativeness, prefix_caching=e.prefix_caching)

    def __init__(self, table: RequestTable, allocator, *, schedule_policy: str = "fcfs",
                 schedule_conservativeness: float = 1.0, max_prefill_tokens: int = MAX_PREFILL_TOKENS,
                 prefix_caching: bool = True, **limits) -> None:
        if schedule_policy not in ("fcfs", "lpm"):
            raise ValueError(f"unknown schedule policy {schedule_policy!r}")
        super().__init__(table, allocator, prefix_caching=prefix_caching, **limits)
        self.policy = schedule_policy if prefix_caching else "fcfs"   # lpm needs the tree (_validate_and_adjust_policy)
        self.max_prefill_tokens = max_prefill_tokens
        self.init_ratio = min(INIT_NEW_TOKEN_RATIO * schedule_conservativeness, 1.0)
        self.min_ratio = min(self.init_ratio * MIN_NEW_TOKEN_RATIO_FACTOR, 1.0)
        self.ratio_decay = (self.init_ratio - self.min_ratio) / NEW_TOKEN_RATIO_DECAY_STEPS
        self.new_token_ratio = self.init_ratio
        self.num_retractions = 0
        self._queued_hashes: dict[int, tuple[int, list]] = {}   # waiting rid -> (tokens, page names)

    def _names(self, rid: int, tokens: int) -> list:
        got = self._queued_hashes.get(rid)
        if got is None or got[0] != tokens:
            got = self._queued_hashes[rid] = (tokens, self.block_hashes(rid, tokens))
        return got[1]

    # ------------------------------------------------------------ protocol
    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        if not len(plan.prefill_ids) and not plan.preempted_ids:   # a decode step: confidence grows
            self.new_token_ratio = max(self.new_token_ratio - self.ratio_decay * len(durations_s), self.min_ratio)
        in_batch = len(self.batch)   # decoders sitting out a prefill step are still running
        out = super().commit(plan, start_s, durations_s)
        if out.num_running != in_batch:
            out = dataclasses.replace(out, num_running=in_batch)
        return out

    def schedule(self) -> StepPlan | None:
        if not self.has_work():
            return None
        b = self.batch
        if not len(b):
            self.new_token_ratio = self.init_ratio
        chunks = self._prefill_batch() if (self.waiting or b.prefilling) else []
        if chunks:
            return self._plan_with_chunks(np.zeros(0, np.int64), np.zeros(0, np.int64), chunks, ())
        if not b.num_decoding:
            if self.waiting or b.prefilling:
                raise self.stuck() if self.waiting else RuntimeError("a chunked prefill cannot progress")
            return None
        retracted = self._retract_if_needed()
        if retracted:
            return StepPlan(b.ids.copy(), b.next_ctx(), preempted_ids=tuple(retracted))
        if self.waiting or b.prefilling:  # every decode step changes the budget: plan one at a time
            return self.repeated_decodes(arrival_sensitive=True, limit=1)
        return self.repeated_decodes(arrival_sensitive=True)

    # ------------------------------------------------------------ prefill batch
    def _offset(self) -> float:
        """Slots reserved for the running requests' future tokens (_get_running_request_total_token_offset)."""
        b, t = self.batch, self.t
        if not len(b):
            return 0.0
        ids = np.fromiter(list(b.ids.tolist()) + list(b.prefilling), dtype=np.int64)
        left = np.minimum(t.max_new_tokens[ids] - t.generated[ids], CLIP_MAX_NEW_TOKENS)
        if len(b.ids):
            left[:len(b.ids)] = np.minimum(t.max_new_tokens[b.ids] - b.gen, CLIP_MAX_NEW_TOKENS)
        return float(np.maximum(left, 0).sum()) * self.new_token_ratio

    def _prefill_batch(self) -> list[tuple[int, int]]:
        b, kv = self.batch, self.kv
        rem_total = kv.num_free_blocks * kv.block_size - self._offset()
        rem_chunk = self.max_num_batched_tokens
        rem_input = self.max_prefill_tokens
        chunks: list[tuple[int, int]] = []
        for state in sorted(b.prefilling.values(), key=lambda s: s.order):   # add_chunked_req
            n = min(state.remaining, rem_chunk, int(rem_total), kv.num_free_blocks * kv.block_size)
            if n <= 0 and not b.num_decoding:   # nothing else could free memory: take what is free
                n = min(state.remaining, kv.num_free_blocks * kv.block_size)
            if n <= 0:
                return chunks
            self.kv.grow_to(state.rid, state.computed + n)
            self._cache_scheduled(state.rid, state.computed + n)
            chunks.append((state.rid, n))
            rem_chunk, rem_input = rem_chunk - n, rem_input - n
            done = n == state.remaining
            rem_total -= n + (min(int(self.t.max_new_tokens[state.rid]), CLIP_MAX_NEW_TOKENS) if done else 0)
            if not done:
                return chunks
        self._order_queue()
        admitted = []
        while self.waiting and len(b) < self.max_num_seqs:
            busy = bool(chunks) or len(b) > 0   # an idle engine admits its head whatever the estimate says
            if (rem_total <= 0 and busy) or rem_chunk <= 0:
                break
            rid = self.waiting[0]
            target = self.prompt_tokens(rid)
            hashes = self._names(rid, target)
            hits = kv.match_prefix(hashes)
            if hits * kv.block_size >= target:
                hits -= 1
            cached = hits * kv.block_size
            extend = target - cached
            max_new = min(int(self.t.max_new_tokens[rid] - self.t.generated[rid]), CLIP_MAX_NEW_TOKENS)
            if extend + max_new >= rem_total and busy:
                break   # AddReqResult.NO_TOKEN
            if extend > rem_input and chunks:
                break
            n = extend if extend <= rem_chunk else rem_chunk // kv.block_size * kv.block_size
            if n <= 0 or not kv.can_allocate_cached(hashes, hits, cached + n):
                break
            kv.allocate_cached(rid, hashes, hits, cached + n, int(self.t.final_kv_tokens[rid]))
            t = self.t
            t.prefix_hit_tokens[rid] += cached
            t.prefix_query_tokens[rid] += target
            t.prefix_hit_blocks[rid] += hits
            t.prefix_query_blocks[rid] += len(hashes)
            self._hashes[rid] = hashes
            b.start_prefill(rid, cached, 0)
            self._cache_scheduled(rid, cached + n)
            self.waiting.popleft()
            self._queued_hashes.pop(rid, None)
            chunks.append((rid, n))
            admitted.append(rid)
            rem_chunk, rem_input = rem_chunk - n, rem_input - n
            rem_total -= n + (max_new if n == extend else 0)
            if n < extend:
                break   # the new chunked request ends the batch
        return chunks

    def _order_queue(self) -> None:
        """SchedulePolicy.calc_priority: lpm sorts by cached prefix, deferring in-queue duplicates."""
        if self.policy != "lpm" or len(self.waiting) > LPM_MAX_QUEUE or len(self.waiting) < 2:
            return
        kv, seen = self.kv, set()
        keys = {}
        for rid in self.waiting:
            hashes = self._names(rid, self.prompt_tokens(rid))
            hits = kv.match_prefix(hashes)
            deferred = False
            if hits * kv.block_size <= IN_BATCH_PREFIX_THRESHOLD:
                in_queue = 0
                for h in hashes:
                    if h not in seen:
                        break
                    in_queue += 1
                if in_queue * kv.block_size >= IN_BATCH_PREFIX_THRESHOLD:
                    deferred = True
                else:
                    seen.update(hashes)
            keys[rid] = float("inf") if deferred else -hits
        ordered = sorted(self.waiting, key=lambda r: keys[r])   # stable: FCFS among equals
        self.waiting.clear()
        self.waiting.extend(ordered)

    # ------------------------------------------------------------ retraction
    def _retract_if_needed(self) -> list[int]:
        b, kv = self.batch, self.kv
        if b.decode_blocks_needed(1) <= kv.num_free_blocks:
            return []
        t = self.t
        victims = []
        while True:
            if b.num_decoding > 1:
                gen, prompt = b.gen, t.prompt_tokens[b.ids]
                i = int(np.lexsort((-prompt, gen))[0])   # fewest output tokens, then longest prompt, first
                victims.append(self._retract(int(b.ids[i])))
            elif b.prefilling:
                victims.append(self._retract(next(iter(b.prefilling))))
            else:
                break
            room = kv.num_free_blocks * kv.block_size
            if room >= RETRACT_DECODE_STEPS * b.num_decoding and b.decode_blocks_needed(1) <= kv.num_free_blocks:
                break
            if b.num_decoding <= 1 and not b.prefilling:
                break
        if victims:
            decoded = int(b.gen.sum())
            total_max_new = int(t.max_new_tokens[b.ids].sum())
            self.new_token_ratio = min(1.0, (decoded + RETRACT_DECODE_STEPS * b.num_decoding) / (total_max_new + 1))
            self.num_retractions += len(victims)
        return victims

    def _retract(self, rid: int) -> int:
        """Release `rid`'s KV into the radix cache and requeue it (retracted requests rejoin the queue)."""
        b = self.batch
        tokens = b.prefilling[rid].computed if rid in b.prefilling else self.kv.tokens_of(rid)
        self.kv.register(rid, self.block_hashes(rid, tokens), tokens)
        self._hashes.pop(rid, None)
        b.preempt(rid)
        self.waiting.append(rid)
        return rid
