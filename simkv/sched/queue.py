"""What every batching policy shares: the request table, the KV allocator, the running batch
and a first-come-first-served waiting queue (preempted requests rejoin at its front)."""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar, Iterator

import numpy as np

from simkv.kv.base import KVAllocator
from simkv.kv.reservation import reservation_tokens
from simkv.request import RequestTable
from simkv.sched.base import _EMPTY, StepOutcome, StepPlan
from simkv.sched.batch import RunningBatch
from simkv.sched.implicit_batch import ImplicitBatch

if TYPE_CHECKING:
    from simkv.build import EngineLimits
    from simkv.kv.memory import MemoryPlan
    from simkv.scenario import Engine

MAX_REPEAT = 1024  # most identical decode steps fast-forwarded at once
_REFERENCE = [False]


@contextmanager
def reference_engine(on: bool = True) -> Iterator[None]:
    """Schedulers built inside use the step-by-step reference batch (simkv.sched.batch.RunningBatch)
    instead of the implicit one: the tests and `make bench` compare the two."""
    before = _REFERENCE[0]
    _REFERENCE[0] = on
    try:
        yield
    finally:
        _REFERENCE[0] = before


def make_batch(table: RequestTable, allocator: KVAllocator, warmup_s: float, defer_free: bool = False,
               implicit: bool = True) -> RunningBatch | ImplicitBatch:
    """The running batch for a policy: implicit progress unless the reference is asked for, the
    policy reads per-sequence state every step (`implicit=False`), or beams re-select."""
    if _REFERENCE[0] or not implicit or table.beam_reselect:
        return RunningBatch(table, allocator, warmup_s, defer_free=defer_free)
    return ImplicitBatch(table, allocator, warmup_s, defer_free=defer_free)


def use_reference_batch(scheduler) -> None:
    """Give a policy that has not run yet the reference batch (speculative decoding: decoders
    advance by different numbers of tokens)."""
    inner = vars(scheduler).get("inner")
    if inner is not None:   # a wrapper (LoRA, speculative): the policy underneath
        use_reference_batch(inner)
        scheduler.batch = inner.batch
        return
    b = scheduler.batch
    if isinstance(b, ImplicitBatch):
        assert not len(b), "the batch is replaced before the policy runs"
        b.kv_alloc._source = None
        scheduler.batch = RunningBatch(b.t, b.kv_alloc, b.warmup_s, defer_free=b.defer_free)
        scheduler.batch.rng = b.rng


class QueuedScheduler:
    """Base of the policies in this package; subclasses implement `schedule()` and register
    themselves in `simkv.sched.SCHEDULERS` by declaring:

    - `name`: the `engine.scheduler` value that selects the policy;
    - `needs`: the allocator the policy works on ("paged", "contiguous", or None for either);
    - `supports_prefix_caching`: whether `engine.prefix_caching` is modelled for it;
    - `from_engine(e, table, allocator, limits, mem, warmup_s, kv_bytes_per_token)`: the policy
      built from the (preset-resolved) engine settings."""

    name: ClassVar[str] = ""
    needs: ClassVar[str | None] = None
    supports_prefix_caching: ClassVar[bool] = False
    implicit_batch: ClassVar[bool] = True   # False: the policy reads per-sequence columns every step

    @staticmethod
    def engine_kwargs(e: Engine, limits: EngineLimits, mem: MemoryPlan, warmup_s: float) -> dict:
        """The limits every policy takes from the engine: sequences, step tokens, model length, the
        watermark (in blocks) and the warm-up."""
        return dict(max_num_seqs=limits.max_num_seqs, warmup_s=warmup_s, max_num_batched_tokens=limits.max_num_batched_tokens,
                    max_model_len=limits.max_model_len, watermark_blocks=int(e.watermark * mem.num_blocks))

    def __init__(self, table: RequestTable, allocator: KVAllocator, *, max_num_seqs: int, max_num_batched_tokens: int = 0,
                 max_model_len: int = 0, reservation: str = "max_model_len", watermark_blocks: int = 0,
                 warmup_s: float = 0.0, max_repeat: int = MAX_REPEAT, defer_free: bool = False) -> None:
        self.t = table
        self.kv = allocator
        self.batch = make_batch(table, allocator, warmup_s, defer_free, self.implicit_batch)
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

    def num_waiting(self) -> int:
        return len(self.waiting)

    def next_reservation(self) -> int | None:
        """Slots the head of the queue needs (defines external fragmentation); None if nobody waits."""
        return self.reservation_for(self.waiting[0]) if self.waiting else None

    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray) -> StepOutcome:
        return self.batch.commit(plan, start_s, durations_s, self.num_waiting(), self.next_reservation())

    # ------------------------------------------------------------ helpers
    def prompt_tokens(self, rid: int) -> int:
        """Tokens `rid` computes before sampling: its prompt plus any tokens it generated before
        a recompute preemption."""
        return int(self.t.prompt_tokens[rid] + self.t.generated[rid])

    def admit_head(self, tokens: int, reserve: int = 0) -> tuple[int, int]:
        """Move the head of the queue into the batch: KV for `tokens` slots (a region or blocks of
        `reserve` slots where the allocator reserves), its prefill started. Returns (rid, tokens)."""
        rid = self.waiting.popleft()
        self.kv.allocate(rid, tokens, reserve, int(self.t.final_kv_tokens[rid]))
        self.batch.start_prefill(rid, 0, self.kv.held_tokens(rid))
        return rid, tokens

    @staticmethod
    def whole_prompt_plan(admitted: list[tuple[int, int]], decode_ids=None, decode_ctx=None,
                          preempted: tuple[int, ...] = ()) -> StepPlan:
        """A step that prefills the (rid, tokens) requests whole, with the given decodes."""
        cols = np.array(admitted, dtype=np.int64)   # (rid, tokens) rows
        ids, new = cols[:, 0], cols[:, 1]
        if decode_ids is None:
            decode_ids = decode_ctx = _EMPTY
        # every prefill completes: prefill_done stays empty (StepPlan: "empty: all do")
        return StepPlan(decode_ids, decode_ctx, ids, new, new.copy(), preempted_ids=preempted)

    def reservation_for(self, rid: int) -> int:
        """Slots a contiguous region for `rid` gets under the reservation policy."""
        t = self.t
        return reservation_tokens(self.reservation, prompt_tokens=int(t.prompt_tokens[rid]),
                                  final_tokens=int(t.final_kv_tokens[rid]),
                                  max_new_tokens=int(t.max_new_tokens[rid]), max_model_len=self.max_model_len)

    def repeated_decodes(self, arrival_sensitive: bool, limit: int | None = None,
                         decodes: tuple[np.ndarray, np.ndarray] | None = None) -> StepPlan:
        """All decoders for as many identical steps as nothing can change: up to the first
        completion, within the free blocks, `limit` and max_repeat. `decodes`: the batch's
        (ids copy, next contexts) when the caller already made them this step."""
        b = self.batch
        if b.has_beams:  # beams re-select every step: no fast-forward
            limit = 1
        steps = min(b.remaining_min(), self.max_repeat, limit or self.max_repeat)
        ids, ctx = decodes if decodes is not None else (b.ids.copy(), b.next_ctx())
        return StepPlan(ids, ctx, max_steps=b.max_decode_steps(max(1, steps)), arrival_sensitive=arrival_sensitive)

    def stuck(self) -> RuntimeError:
        return RuntimeError(f"request {self.waiting[0]} can never be admitted to an empty engine")
