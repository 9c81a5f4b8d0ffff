"""The running batch: per-sequence arrays and the mechanics every policy shares (grow KV,
emit tokens, record token times, finish and free). Policies decide *who* runs; this applies it.

Models: each step, every sequence in the plan produces one token at the step's end; a decode
writes one KV slot; a prefill of a preempted request recomputes prompt + generated tokens.
Per-request token gaps: count and sum follow from the token times (gaps telescope), so only
the longest gap is tracked per request.
"""

from __future__ import annotations

import numpy as np

from simkv.kv.paged import PagedAllocator
from simkv.kv.usage import held_slots_paged, split_window
from simkv.request import DONE, RequestTable
from simkv.sched.base import StepOutcome, StepPlan

_I64 = np.int64
_NO_GAPS = np.zeros(0)


class RunningBatch:
    """Struct-of-arrays of the running sequences, in admission order (newest last)."""

    def __init__(self, table: RequestTable, allocator, warmup_s: float = 0.0) -> None:
        self.t = table
        self.kv_alloc = allocator
        self.paged = isinstance(allocator, PagedAllocator)
        self.block_size = allocator.block_size if self.paged else 1
        self.warmup_s = warmup_s
        self.ids = np.zeros(0, _I64)
        self.kv = np.zeros(0, _I64)       # KV slots written
        self.gen = np.zeros(0, _I64)      # tokens generated so far
        self.out = np.zeros(0, _I64)      # true output length
        self.final = np.zeros(0, _I64)    # KV slots the request will ever write
        self.held = np.zeros(0, _I64)     # contiguous: region size (paged: unused)
        self.measured = np.zeros(0, bool)  # arrived after warm-up
        self.tbt_max = np.zeros(0)        # longest token gap so far (written to the table on exit)
        self.extra_gaps_s = _NO_GAPS      # token gaps of resumed requests in the last commit

    def __len__(self) -> int:
        return len(self.ids)

    def _columns(self):
        return self.ids, self.kv, self.gen, self.out, self.final, self.held, self.measured, self.tbt_max

    def _set_columns(self, cols) -> None:
        self.ids, self.kv, self.gen, self.out, self.final, self.held, self.measured, self.tbt_max = cols

    def preempt_newest(self) -> int:
        """Free the newest sequence's KV (recompute preemption) and drop it from the batch."""
        rid = int(self.ids[-1])
        self.t.generated[rid] = self.gen[-1]
        self.t.tbt_max_s[rid] = self.tbt_max[-1]
        self.kv_alloc.free(rid)
        self._set_columns([c[:-1] for c in self._columns()])
        return rid

    # ------------------------------------------------------------ paged growth
    def decode_blocks_needed(self, steps: int = 1) -> int:
        """New blocks the batch needs to decode `steps` more tokens each (paged; 0 otherwise)."""
        if not self.paged or not len(self.ids):
            return 0
        b = self.block_size
        if steps == 1:  # a sequence needs a block when its next slot starts one
            return int(np.count_nonzero(self.kv % b == 0))
        return int(((self.kv + (steps + b - 1)) // b - (self.kv + (b - 1)) // b).sum())

    def max_decode_steps(self, limit: int) -> int:
        """Most decode steps (<= limit) whose block growth fits the free pool (>= 1 assumed)."""
        if not self.paged or limit == 1:
            return limit
        free = self.kv_alloc.num_free_blocks
        if self.decode_blocks_needed(limit) <= free:
            return limit
        lo, hi = 1, limit  # invariant: lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.decode_blocks_needed(mid) <= free else (lo, mid)
        return lo

    def _grow(self, steps: int) -> None:
        new_kv = self.kv + steps
        if self.paged:
            b = self.block_size
            need = (new_kv + (b - 1)) // b - (self.kv + (b - 1)) // b
            idx = np.flatnonzero(need)
            if len(idx):
                self.kv_alloc.take_blocks(self.ids[idx].tolist(), need[idx].tolist())
        self.kv_alloc.set_tokens(self.ids, new_kv)
        self.kv = new_kv

    # ------------------------------------------------------------ commit
    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray, num_waiting: int,
               next_reservation: int | None) -> StepOutcome:
        """Apply len(durations_s) repetitions of `plan` (k > 1 only for decode-only plans)."""
        t, k = self.t, len(durations_s)
        ends = start_s + np.cumsum(durations_s) if k > 1 else start_s + durations_s
        for rid in plan.preempted_ids:
            t.num_preemptions[rid] += 1
            t.last_token_s[rid] = start_s
        n_dec = len(self.ids)
        measured = 0
        if n_dec:
            longest = float(durations_s.max()) if k > 1 else float(durations_s[0])
            np.maximum(self.tbt_max, longest, out=self.tbt_max)
            measured = int(np.count_nonzero(self.measured))
            self._grow(k)
            self.gen = self.gen + k
        self.extra_gaps_s = _NO_GAPS
        n_pre = len(plan.prefill_ids)
        if n_pre:
            self._start_prefills(plan, start_s, float(ends[0]))
        usage = self._window_usage(k, next_reservation)
        finished = self._finish(float(ends[-1]))
        return StepOutcome(ends, usage, n_dec + n_pre, num_waiting, n_dec + n_pre, measured,
                           finished, self.extra_gaps_s)

    def _start_prefills(self, plan: StepPlan, start_s: float, end_s: float) -> None:
        t = self.t
        pid = plan.prefill_ids
        fresh = np.isnan(t.first_scheduled_s[pid])
        t.first_scheduled_s[pid[fresh]] = start_s
        g = t.generated[pid]
        first = g == 0
        t.first_token_s[pid[first]] = end_s
        measured = t.arrival_s[pid] >= self.warmup_s
        tbt_max = t.tbt_max_s[pid]
        if not first.all():
            resumed = ~first
            gaps = end_s - t.last_token_s[pid[resumed]]
            tbt_max[resumed] = np.maximum(tbt_max[resumed], gaps)
            self.extra_gaps_s = gaps[measured[resumed]]
        new_cols = (pid, plan.prefill_ctx, g + 1, t.output_tokens[pid], t.final_kv_tokens[pid],
                    plan.prefill_held, measured, tbt_max)
        self._set_columns([np.concatenate([old, new]) for old, new in zip(self._columns(), new_cols)])

    def _window_usage(self, k: int, next_reservation: int | None) -> np.ndarray:
        """(5, k) breakdown per step (after each step's writes, before finished requests free)."""
        out = np.empty((5, k), _I64)
        if k == 1:
            tokens = self.kv
        else:  # tokens after step j: kv_now - (k - 1 - j) for every sequence
            tokens = self.kv[None, :] - np.arange(k - 1, -1, -1, dtype=_I64)[:, None]
        if self.paged:
            held = held_slots_paged(tokens, self.block_size)
            external = 0
        else:
            held = np.broadcast_to(self.held, tokens.shape)
            external = self.kv_alloc.external_frag_tokens(next_reservation)
        out[0], out[1], out[2] = split_window(tokens, held, self.final)
        out[3] = external
        out[4] = self.kv_alloc.capacity_tokens - held.sum(axis=-1) - external
        return out

    def _finish(self, end_s: float) -> tuple[int, ...]:
        done = self.gen >= self.out
        if not done.any():
            return ()
        t = self.t
        ids = self.ids[done]
        t.finish_s[ids] = end_s
        t.last_token_s[ids] = end_s
        t.generated[ids] = self.gen[done]
        t.tbt_max_s[ids] = self.tbt_max[done]
        t.status[ids] = DONE
        for rid in ids.tolist():
            self.kv_alloc.free(rid)
        keep = ~done
        self._set_columns([c[keep] for c in self._columns()])
        return tuple(ids.tolist())
