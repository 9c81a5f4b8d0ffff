"""FCFS iteration-level continuous batching (Orca-style, as in vLLM v0 with mixed batches).

Models: every step first makes room for each running sequence's next token (paged: preempting
the newest running request by recompute until the free blocks suffice), then admits waiting
requests in arrival order while max_num_seqs, the step's token budget (max_num_batched_tokens)
and the allocator allow; a whole prompt is prefilled in the step that admits it, mixed with the
decodes. The first request that does not fit blocks the ones behind it (head-of-line). No
admission in a step that preempted, so a freed block is not immediately re-taken.
Simplifications: no chunked prefill, no prefix caching, no swap (later policies add them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simkv.sched.base import StepPlan
from simkv.sched.queue import MAX_REPEAT, QueuedScheduler

if TYPE_CHECKING:
    from simkv.build import EngineLimits
    from simkv.kv.base import KVAllocator
    from simkv.kv.memory import MemoryPlan
    from simkv.request import RequestTable
    from simkv.scenario import Engine

__all__ = ["ContinuousBatchingScheduler", "MAX_REPEAT"]


class ContinuousBatchingScheduler(QueuedScheduler):
    """The core policy; the engine presets plug in behind the same `Scheduler` protocol."""

    name = "fcfs"

    @classmethod
    def from_engine(cls, e: Engine, table: RequestTable, allocator: KVAllocator, limits: EngineLimits, mem: MemoryPlan,
                    warmup_s: float, kv_bytes_per_token: int) -> ContinuousBatchingScheduler:
        kw = cls.engine_kwargs(e, limits, mem, warmup_s)
        return cls(table, allocator, **kw, reservation=e.reservation)

    def schedule(self) -> StepPlan | None:
        if not self.has_work():
            return None
        preempted, blocks_needed = self._make_room_for_decodes()
        b = self.batch
        decode_ids, decode_ctx = b.ids.copy(), b.next_ctx()
        admitted = [] if preempted else self._admit(blocks_needed)
        if not len(decode_ids) and not admitted:
            if self.waiting:
                raise self.stuck()
            return None
        if admitted:
            return self.whole_prompt_plan(admitted, decode_ids, decode_ctx, preempted)
        if preempted:
            return StepPlan(decode_ids, decode_ctx, preempted_ids=preempted)
        return self.repeated_decodes(arrival_sensitive=not self.waiting, decodes=(decode_ids, decode_ctx))

    # ------------------------------------------------------------ policy
    def _make_room_for_decodes(self) -> tuple[tuple[int, ...], int]:
        """Preempt newest-first until every running sequence can write its next slot; returns
        the victims and the blocks the remaining decodes will take this step."""
        b = self.batch
        if not b.paged:
            return (), 0
        victims = []
        need = b.decode_blocks_needed(1)
        while need > self.kv.num_free_blocks:
            victims.append(b.preempt_newest())
            need = b.decode_blocks_needed(1)
        for rid in victims:  # newest first, so the oldest victim ends up at the front
            self.waiting.appendleft(rid)
        return tuple(victims), need

    def _admit(self, decode_blocks: int) -> list[tuple[int, int]]:
        """Admit from the head of the queue while everything fits; (req_id, tokens) each."""
        b = self.batch
        budget = self.max_num_batched_tokens - len(b)
        running = len(b)
        keep_free = (self.watermark_blocks + decode_blocks) * b.block_size if b.paged else 0
        admitted = []
        while self.waiting and running < self.max_num_seqs:
            rid = self.waiting[0]
            new = self.prompt_tokens(rid)
            if new > budget:
                break
            held = 0 if b.paged else self.reservation_for(rid)
            if not self.kv.can_allocate(new, held, keep_free):
                break
            admitted.append(self.admit_head(new, held))
            budget -= new
            running += 1
        return admitted

    def next_reservation(self) -> int | None:
        if self.waiting and self.batch.paged:
            return self.prompt_tokens(self.waiting[0])
        return super().next_reservation()
