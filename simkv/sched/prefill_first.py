"""vLLM v0's default scheduler: prefill-prioritised steps that never mix prefill and decode.

Models (vllm `core/scheduler.py`, `_schedule_default`): with nothing swapped out, a step first
tries to admit waiting requests (whole prompts, within max_num_batched_tokens and max_num_seqs,
keeping a `watermark` of blocks free); if any are admitted the step prefills only them and the
running requests wait. Otherwise every running request decodes; when the blocks run short the
newest running request is preempted — by swap (its KV copied to host memory at the measured
device-to-host rate, within the swap space) or by recompute; "auto" is V0's default rule
(`_preempt`): recompute for a request with one unfinished sequence, swap for one with several — and requests swapped out earlier
are swapped back in (host-to-device) before anything new is admitted, resuming with their KV
intact.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from simkv.request import DONE, RequestTable
from simkv.sched.base import StepPlan
from simkv.sched.queue import QueuedScheduler
from simkv.specs import GIB

if TYPE_CHECKING:
    from simkv.build import EngineLimits
    from simkv.kv.base import KVAllocator
    from simkv.kv.memory import MemoryPlan
    from simkv.scenario import Engine


class PrefillFirstScheduler(QueuedScheduler):
    """Prefill-or-decode steps with swap or recompute preemption."""

    name = "prefill-first"
    needs = "paged"

    @classmethod
    def from_engine(cls, e: Engine, table: RequestTable, allocator: KVAllocator, limits: EngineLimits, mem: MemoryPlan,
                    warmup_s: float, kv_bytes_per_token: int) -> PrefillFirstScheduler:
        kw = cls.engine_kwargs(e, limits, mem, warmup_s)
        return cls(table, allocator, **kw, preemption=e.preemption,
                   swap_capacity_tokens=int(e.swap_space_gib * GIB // kv_bytes_per_token))

    def __init__(self, table: RequestTable, allocator, *, preemption: str = "swap", swap_capacity_tokens: int = 0,
                 **limits) -> None:
        super().__init__(table, allocator, **limits)
        self.preemption = preemption
        self.swap_capacity_tokens = swap_capacity_tokens
        self.swapped: deque[tuple] = deque()   # saved decoder rows, oldest first
        self.swapped_tokens = 0

    def has_work(self) -> bool:
        return bool(self.swapped) or super().has_work()

    def num_waiting(self) -> int:
        return len(self.waiting) + len(self.swapped)

    def next_reservation(self) -> int | None:
        return None

    def schedule(self) -> StepPlan | None:
        if not self.has_work():
            return None
        if not self.swapped and self.waiting:
            admitted = self._admit()
            if admitted:
                return self.whole_prompt_plan(admitted)
        preempted, out_tokens = self._make_room()
        in_tokens = 0 if preempted else self._swap_in()
        b = self.batch
        if not b.num_decoding:
            if not preempted and self.waiting and not self.swapped:
                raise self.stuck()
            if not preempted:
                return None
        plan_kw = dict(preempted_ids=tuple(preempted), swap_out_tokens=out_tokens, swap_in_tokens=in_tokens)
        if preempted or in_tokens or self.waiting or self.swapped:
            return StepPlan(b.ids.copy(), b.next_ctx(), **plan_kw)
        return self.repeated_decodes(arrival_sensitive=True)

    def _admit(self) -> list[tuple[int, int]]:
        budget, out = self.max_num_batched_tokens, []
        keep = self.watermark_blocks * self.kv.block_size
        while self.waiting and len(self.batch) < self.max_num_seqs:
            prompt = self.prompt_tokens(self.waiting[0])
            if prompt > budget or not self.kv.can_allocate(prompt, None, keep):
                break
            out.append(self.admit_head(prompt))
            budget -= prompt
        return out

    def _make_room(self) -> tuple[list[int], int]:
        """Preempt newest-first until every decode can write its next slot; returns the victims
        and the KV tokens swapped out."""
        b, victims, swapped_out = self.batch, [], 0
        while b.num_decoding and b.decode_blocks_needed(1) > self.kv.num_free_blocks:
            rid = b.newest()
            tokens = self.kv.tokens_of(rid)
            if self._swaps(rid) and self.swapped_tokens + tokens <= self.swap_capacity_tokens:
                self.swapped.append(b.swap_out(rid))
                self.swapped_tokens += tokens
                swapped_out += tokens
            else:
                b.preempt(rid)
                self.waiting.appendleft(rid)
            victims.append(rid)
        return victims, swapped_out

    def _swaps(self, rid: int) -> bool:
        """Is `rid` preempted by swap? vLLM V0's `_preempt` with preemption_mode None ("auto"):
        recompute a request with one sequence, swap one whose group runs several (n > 1, beams)."""
        if self.preemption == "auto":  # get_max_num_running_seqs: the group's unfinished sequences
            t = self.t
            return np.count_nonzero((t.group == t.group[rid]) & (t.status != DONE)) > 1
        return self.preemption == "swap"

    def _swap_in(self) -> int:
        """Bring swapped requests back, oldest first, while blocks (and the watermark) allow."""
        b, moved = self.batch, 0
        keep = self.watermark_blocks + b.decode_blocks_needed(1)
        while self.swapped and len(b) < self.max_num_seqs:
            row = self.swapped[0]
            tokens = int(row[1])
            if self.kv.blocks_for(tokens + 1) + keep > self.kv.num_free_blocks:
                break
            self.swapped.popleft()
            self.swapped_tokens -= tokens
            b.swap_in(row)
            keep = self.watermark_blocks + b.decode_blocks_needed(1)
            moved += tokens
        return moved
