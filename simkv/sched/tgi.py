"""Text Generation Inference (v3 router) batching.

Models (text-generation-inference `backends/v3/src/backend.rs` and `queue.rs`): requests wait in
a FIFO queue; a new prefill batch is taken from its head, in order, while the prefill tokens stay
within `max_batch_prefill_tokens` and the block allocator can reserve prompt + max_new_tokens for
each (the first that does not fit blocks the rest: head-of-line). Prefill steps run alone: the
running batch pauses while new requests prefill, then all decode together. With a batch running,
a prefill is only attempted once the queue holds at least `waiting_served_ratio` x running
requests, or after `max_waiting_tokens` decode steps without one. Memory is reserved at admission
and never preempted; arrivals beyond `max_concurrent_requests` in the system are refused.
Simplifications: no prefill chunking, no speculative decoding.
"""

from __future__ import annotations

import numpy as np

from simkv.request import RequestTable
from simkv.sched.base import StepOutcome, StepPlan
from simkv.sched.queue import QueuedScheduler


class TgiScheduler(QueuedScheduler):
    """TGI's prefill-or-decode loop over a reserving paged allocator."""

    def __init__(self, table: RequestTable, allocator, *, max_batch_prefill_tokens: int = 4096,
                 waiting_served_ratio: float = 0.3, max_waiting_tokens: int = 20,
                 max_concurrent_requests: int = 128, max_num_seqs: int = 1024, **limits) -> None:
        if not getattr(allocator, "reserve_upfront", False):
            raise ValueError("TGI reserves prompt + max_new_tokens at admission: use a reserving allocator")
        super().__init__(table, allocator, max_num_seqs=max_num_seqs, reservation="prompt_plus_max_new", **limits)
        self.max_batch_prefill_tokens = max_batch_prefill_tokens
        self.waiting_served_ratio = waiting_served_ratio
        self.max_waiting_tokens = max_waiting_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.decode_steps_since_prefill = 0

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
        return super().commit(plan, start_s, durations_s)

    def schedule(self) -> StepPlan | None:
        if not self.has_work():
            return None
        b = self.batch
        admitted = self._next_prefill_batch() if self.waiting else []
        if admitted:
            return self.whole_prompt_plan(admitted)
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
        picked, tokens, blocks = [], 0, 0
        for rid in self.waiting:
            prompt = self.prompt_tokens(rid)
            need = self.kv.blocks_for(self.reservation_for(rid))
            if (tokens + prompt > self.max_batch_prefill_tokens or blocks + need > self.kv.num_free_blocks
                    or running + len(picked) >= self.max_num_seqs):
                break
            picked.append((rid, prompt))
            tokens, blocks = tokens + prompt, blocks + need
        if not picked or len(picked) < min_size:
            return []
        return [self.admit_head(prompt, self.reservation_for(rid)) for rid, prompt in picked]
