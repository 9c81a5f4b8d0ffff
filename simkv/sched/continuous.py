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

from collections import deque

import numpy as np

from simkv.kv.reservation import reservation_tokens
from simkv.request import RequestTable
from simkv.sched.base import StepOutcome, StepPlan
from simkv.sched.batch import RunningBatch

MAX_REPEAT = 1024  # most identical decode steps fast-forwarded at once


class ContinuousBatchingScheduler:
    """The core policy; later presets plug in behind the same `Scheduler` protocol."""

    def __init__(self, table: RequestTable, allocator, *, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, reservation: str = "max_model_len", watermark_blocks: int = 0,
                 warmup_s: float = 0.0, max_repeat: int = MAX_REPEAT) -> None:
        self.t = table
        self.kv = allocator
        self.batch = RunningBatch(table, allocator, warmup_s)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.reservation = reservation
        self.watermark_blocks = watermark_blocks
        self.max_repeat = max_repeat
        self.waiting: deque[int] = deque()

    # ------------------------------------------------------------ protocol
    def add_request(self, req_id: int) -> bool:
        self.waiting.append(req_id)
        return True

    def has_work(self) -> bool:
        return bool(self.waiting) or len(self.batch) > 0

    @property
    def num_running(self) -> int:
        return len(self.batch)

    def schedule(self) -> StepPlan | None:
        if not self.has_work():
            return None
        preempted, blocks_needed = self._make_room_for_decodes()
        b = self.batch
        decode_ids, decode_ctx = b.ids.copy(), b.kv + 1
        admitted = [] if preempted else self._admit(blocks_needed)
        if not len(decode_ids) and not admitted:
            if self.waiting:
                raise RuntimeError(f"request {self.waiting[0]} can never be admitted to an empty engine")
            return None
        if admitted:
            ids, new, held = (np.array(col, dtype=np.int64) for col in zip(*admitted))
            return StepPlan(decode_ids, decode_ctx, ids, new, new.copy(), held, np.ones(len(ids), bool),
                            preempted_ids=preempted)
        if preempted:
            return StepPlan(decode_ids, decode_ctx, preempted_ids=preempted)
        steps = min(int((b.out - b.gen).min()), self.max_repeat)
        steps = b.max_decode_steps(steps)
        return StepPlan(decode_ids, decode_ctx, max_steps=steps, arrival_sensitive=not self.waiting)

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        return self.batch.commit(plan, start_s, durations_s, len(self.waiting), self.next_reservation())

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

    def _admit(self, decode_blocks: int) -> list[tuple[int, int, int]]:
        """Admit from the head of the queue while everything fits; (req_id, tokens, held) each."""
        t, b = self.t, self.batch
        budget = self.max_num_batched_tokens - len(b)
        running = len(b)
        keep_free = (self.watermark_blocks + decode_blocks) * b.block_size if b.paged else 0
        admitted = []
        while self.waiting and running < self.max_num_seqs:
            rid = self.waiting[0]
            new = int(t.prompt_tokens[rid] + t.generated[rid])
            if new > budget:
                break
            held = 0 if b.paged else self.reservation_for(rid)
            if not self.kv.can_allocate(new, held, keep_free):
                break
            self.kv.allocate(rid, new, held, int(t.final_kv_tokens[rid]))
            b.start_prefill(rid, 0, held)
            self.waiting.popleft()
            admitted.append((rid, new, held))
            budget -= new
            running += 1
        return admitted

    def reservation_for(self, rid: int) -> int:
        t = self.t
        return reservation_tokens(self.reservation, prompt_tokens=int(t.prompt_tokens[rid]),
                                  final_tokens=int(t.final_kv_tokens[rid]),
                                  max_new_tokens=int(t.max_new_tokens[rid]), max_model_len=self.max_model_len)

    def next_reservation(self) -> int | None:
        """Slots the head of the queue needs (defines external fragmentation), None if nobody waits."""
        if not self.waiting:
            return None
        rid = self.waiting[0]
        if self.batch.paged:
            return int(self.t.prompt_tokens[rid] + self.t.generated[rid])
        return self.reservation_for(rid)
