"""FasterTransformer-style static batching: request-level, not iteration-level.

Models: when the engine is empty it forms a batch from the head of the queue (up to
max_num_seqs requests whose contiguous regions fit, and whose prompts fit the step's token
budget), prefills them together, then decodes the batch step by step until its last request
ends. Requests that finish early stop computing but keep their memory until the whole batch
ends; nothing is admitted meanwhile. This is the baseline iteration-level batching (Orca) improves on.
Simplifications: finished requests leave the compute batch (FasterTransformer pads them).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from simkv.kv.reservation import reservation_tokens
from simkv.request import RequestTable
from simkv.sched.base import StepOutcome, StepPlan
from simkv.sched.batch import RunningBatch
from simkv.sched.continuous import MAX_REPEAT


class StaticBatchScheduler:
    """One batch at a time; memory returns only when the batch ends."""

    def __init__(self, table: RequestTable, allocator, *, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, reservation: str = "max_model_len", warmup_s: float = 0.0,
                 max_repeat: int = MAX_REPEAT) -> None:
        self.t = table
        self.kv = allocator
        self.batch = RunningBatch(table, allocator, warmup_s, defer_free=True)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.reservation = reservation
        self.max_repeat = max_repeat
        self.waiting: deque[int] = deque()

    def add_request(self, req_id: int) -> bool:
        self.waiting.append(req_id)
        return True

    def has_work(self) -> bool:
        return bool(self.waiting) or len(self.batch) > 0

    def reservation_for(self, rid: int) -> int:
        t = self.t
        return reservation_tokens(self.reservation, prompt_tokens=int(t.prompt_tokens[rid]),
                                  final_tokens=int(t.final_kv_tokens[rid]),
                                  max_new_tokens=int(t.max_new_tokens[rid]), max_model_len=self.max_model_len)

    def next_reservation(self) -> int | None:
        return self.reservation_for(self.waiting[0]) if self.waiting else None

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        out = self.batch.commit(plan, start_s, durations_s, len(self.waiting), self.next_reservation())
        if not len(self.batch):
            self.batch.release_deferred()  # the batch ended: its memory returns
        return out

    def schedule(self) -> StepPlan | None:
        b = self.batch
        if len(b):
            steps = min(int((b.out - b.gen).min()), self.max_repeat)
            return StepPlan(b.ids.copy(), b.kv + 1, max_steps=steps, arrival_sensitive=False)
        if not self.waiting:
            return None
        admitted, budget, t = [], self.max_num_batched_tokens, self.t
        while self.waiting and len(admitted) < self.max_num_seqs:
            rid = self.waiting[0]
            prompt = int(t.prompt_tokens[rid] + t.generated[rid])
            held = self.reservation_for(rid)
            if prompt > budget or not self.kv.can_allocate(prompt, held):
                break
            self.kv.allocate(rid, prompt, held, int(t.final_kv_tokens[rid]))
            b.start_prefill(rid, 0, held)
            self.waiting.popleft()
            admitted.append((rid, prompt, held))
            budget -= prompt
        if not admitted:
            raise RuntimeError(f"request {self.waiting[0]} can never be admitted to an empty engine")
        ids, new, held = (np.array(col, dtype=np.int64) for col in zip(*admitted))
        return StepPlan(prefill_ids=ids, prefill_new=new, prefill_ctx=new.copy(), prefill_held=held,
                        prefill_done=np.ones(len(ids), bool))
