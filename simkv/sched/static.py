"""FasterTransformer-style static batching: request-level, not iteration-level.

Models: when the engine is empty it forms a batch from the head of the queue (up to
max_num_seqs requests whose contiguous regions fit, and whose prompts fit the step's token
budget), prefills them together, then decodes the batch step by step until its last request
ends. Requests that finish early stop computing but keep their memory until the whole batch
ends; nothing is admitted meanwhile. This is the baseline iteration-level batching (Orca) improves on.
Simplifications: finished requests leave the compute batch (FasterTransformer pads them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from simkv.request import RequestTable
from simkv.sched.base import StepOutcome, StepPlan
from simkv.sched.queue import QueuedScheduler

if TYPE_CHECKING:
    from simkv.build import EngineLimits
    from simkv.kv.base import KVAllocator
    from simkv.kv.memory import MemoryPlan
    from simkv.scenario import Engine


class StaticBatchScheduler(QueuedScheduler):
    """One batch at a time; memory returns only when the batch ends."""

    name = "static"
    needs = "contiguous"

    @classmethod
    def from_engine(cls, e: Engine, table: RequestTable, allocator: KVAllocator, limits: EngineLimits, mem: MemoryPlan,
                    warmup_s: float, kv_bytes_per_token: int) -> StaticBatchScheduler:
        kw = cls.engine_kwargs(e, limits, mem, warmup_s)
        return cls(table, allocator, max_num_seqs=kw["max_num_seqs"], warmup_s=warmup_s, max_num_batched_tokens=kw["max_num_batched_tokens"],
                   max_model_len=kw["max_model_len"], reservation=e.reservation)

    def __init__(self, table: RequestTable, allocator, **limits) -> None:
        super().__init__(table, allocator, defer_free=True, **limits)

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        out = super().commit(plan, start_s, durations_s)
        if not len(self.batch):
            self.batch.release_deferred()  # the batch ended: its memory returns
        return out

    def schedule(self) -> StepPlan | None:
        b = self.batch
        if len(b):
            return self.repeated_decodes(arrival_sensitive=False)
        if not self.waiting:
            return None
        admitted, budget = [], self.max_num_batched_tokens
        while self.waiting and len(admitted) < self.max_num_seqs:
            rid = self.waiting[0]
            prompt, held = self.prompt_tokens(rid), self.reservation_for(rid)
            if prompt > budget or not self.kv.can_allocate(prompt, held):
                break
            admitted.append(self.admit_head(prompt, held))
            budget -= prompt
        if not admitted:
            raise self.stuck()
        return self.whole_prompt_plan(admitted)
