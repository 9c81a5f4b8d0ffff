"""The running batch: per-sequence arrays and the mechanics every policy shares (grow KV,
emit tokens, record token times, finish and free). Policies decide *who* runs; this applies it.

Models: a request is first *prefilling* (its prompt, plus any tokens generated before a
recompute preemption, is computed in one or more chunks), then *decoding* (one token per step
it takes part in). The step that computes the last prompt token samples the first new token.
Decoders take part in a step all together or not at all (a prefill-only step stalls them), so
their token gaps are the step times since their last token. Per-request gap count and sum
telescope to the token times; only the longest gap is tracked per request.
"""

from __future__ import annotations

import numpy as np

from simkv.kv.base import KVAllocator
from simkv.kv.usage import held_by, held_slots_paged, prefilling_breakdown, window_breakdown
from simkv.request import DONE, RequestTable
from simkv.sched.base import StepOutcome, StepPlan, step_ends

_I64 = np.int64
_NO_GAPS = np.zeros(0)


class Prefill:
    """A request whose prompt is still being computed."""

    __slots__ = ("rid", "computed", "target", "held", "order")

    def __init__(self, rid: int, computed: int, target: int, held: int, order: int) -> None:
        self.rid, self.computed, self.target, self.held, self.order = rid, computed, target, held, order

    @property
    def remaining(self) -> int:
        return self.target - self.computed


class BatchBase:
    """What both running batches share: the prefilling requests, admission order, the newest
    running request, growth limits, deferred frees and the breakdown's non-decoder parts. A
    subclass holds the decoders (`ids`, `order`, `preempt`, `decode_blocks_needed`, ...)."""

    def __init__(self, table: RequestTable, allocator: KVAllocator, warmup_s: float = 0.0, defer_free: bool = False) -> None:
        self.t = table
        self.defer_free = defer_free      # static batches: finished requests keep memory until release
        self.deferred: list[int] = []
        self.kv_alloc = allocator
        self.paged = allocator.paged
        self.block_size = allocator.block_size if self.paged else 1
        self.on_demand = self.paged and not allocator.reserve_upfront  # blocks as tokens are written
        self.warmup_s = warmup_s
        self.prefilling: dict[int, Prefill] = {}
        self._next_order = 0
        self._uniform_last_tok: float | None = None  # all decoders' last token time, when shared
        self.extra_gaps_s = _NO_GAPS
        self._gap_steps_from = 0
        self.rng = np.random.default_rng(0)   # beam re-selection; seeded by the builder
        self.spec_tokens: np.ndarray | None = None  # speculative step: tokens each decoder emits (set per step)

    @property
    def num_decoding(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return self.num_decoding + len(self.prefilling)

    def start_prefill(self, rid: int, computed: int, held: int) -> Prefill:
        """Admit `rid` (its KV already allocated by the policy): prompt + generated tokens to compute."""
        target = int(self.t.prompt_tokens[rid] + self.t.generated[rid])  # prompt + tokens before a recompute
        state = self.prefilling[rid] = Prefill(rid, computed, target, held, self._next_order)
        self._next_order += 1
        return state

    def newest(self) -> int:
        """The most recently admitted running request (decoding or prefilling)."""
        best_rid, best = -1, -1
        if self.num_decoding:
            best, best_rid = int(self.order[-1]), int(self.ids[-1])
        for p in self.prefilling.values():
            if p.order > best:
                best, best_rid = p.order, p.rid
        return best_rid

    def preempt(self, rid: int) -> None:  # pragma: no cover - provided by the batch
        raise NotImplementedError

    def preempt_newest(self) -> int:
        rid = self.newest()
        self.preempt(rid)
        return rid

    def decode_blocks_needed(self, steps: int = 1) -> int:  # pragma: no cover - provided by the batch
        raise NotImplementedError

    def max_decode_steps(self, limit: int) -> int:
        """Most decode steps (<= limit) whose block growth fits the free pool (>= 1 assumed)."""
        if not self.on_demand or limit == 1:
            return limit
        free = self.kv_alloc.num_free_blocks
        if self.decode_blocks_needed(limit) <= free:
            return limit
        lo, hi = 1, limit  # invariant: lo fits, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.decode_blocks_needed(mid) <= free else (lo, mid)
        return lo

    @property
    def has_beams(self) -> bool:
        """Beam groups are decoding (their re-selection changes memory every step)."""
        return bool(self.t.beam_reselect) and self.num_decoding > len(np.unique(self.t.group[self.ids]))

    def _others_breakdown(self) -> tuple[np.ndarray | None, int]:
        """The prefilling requests' (token, reserved, internal) slots (None if there are none)
        and the slots finished requests of a static batch still hold."""
        prefilling = None
        if self.prefilling:
            prefilling = prefilling_breakdown(self.kv_alloc, ((p.rid, p.computed, int(self.t.final_kv_tokens[p.rid]))
                                                              for p in self.prefilling.values()))
        return prefilling, (held_by(self.kv_alloc, self.deferred) if self.deferred else 0)

    def release_deferred(self) -> None:
        """Free the memory of finished requests held back by a static batch."""
        for rid in self.deferred:
            self.kv_alloc.free(rid)
        self.deferred = []


class RunningBatch(BatchBase):
    """Decoding sequences as struct-of-arrays (admission order), prefilling ones as a dict: the
    step-by-step reference that simkv.sched.implicit_batch.ImplicitBatch must equal."""

    def __init__(self, table: RequestTable, allocator: KVAllocator, warmup_s: float = 0.0, defer_free: bool = False) -> None:
        super().__init__(table, allocator, warmup_s, defer_free)
        self.ids = np.zeros(0, _I64)
        self.kv = np.zeros(0, _I64)       # KV slots written
        self.gen = np.zeros(0, _I64)      # tokens generated so far
        self.out = np.zeros(0, _I64)      # true output length
        self.final = np.zeros(0, _I64)    # KV slots the request will ever write
        self.held = np.zeros(0, _I64)     # contiguous / reserved: slots held (paged on demand: unused)
        self.measured = np.zeros(0, bool)  # arrived after warm-up
        self.tbt_max = np.zeros(0)        # longest token gap so far (written to the table on exit)
        self.last_tok = np.zeros(0)       # time of the last token
        self.order = np.zeros(0, _I64)    # admission order
        self._boundary_of: np.ndarray | None = None   # the kv array _boundary was computed from
        self._boundary = np.zeros(0, _I64)

    def _columns(self):
        return (self.ids, self.kv, self.gen, self.out, self.final, self.held, self.measured, self.tbt_max,
                self.last_tok, self.order)

    def _set_columns(self, cols) -> None:
        (self.ids, self.kv, self.gen, self.out, self.final, self.held, self.measured, self.tbt_max,
         self.last_tok, self.order) = cols

    # ------------------------------------------------------------ membership
    def preempt(self, rid: int) -> None:
        """Free `rid`'s KV and drop it from the batch (recompute preemption)."""
        if rid in self.prefilling:
            del self.prefilling[rid]
        else:
            i = int(np.flatnonzero(self.ids == rid)[0])
            self.t.generated[rid] = self.gen[i]
            self.t.tbt_max_s[rid] = self.tbt_max[i]
            self.t.last_token_s[rid] = self.last_tok[i]
            keep = np.ones(len(self.ids), bool)
            keep[i] = False
            self._set_columns([c[keep] for c in self._columns()])
        self.kv_alloc.free(rid)

    def swap_out(self, rid: int) -> tuple:
        """Drop decoder `rid` from the batch and free its blocks, returning its row (KV kept on host)."""
        i = int(np.flatnonzero(self.ids == rid)[0])
        row = tuple(c[i] for c in self._columns())
        keep = np.ones(len(self.ids), bool)
        keep[i] = False
        self._set_columns([c[keep] for c in self._columns()])
        self.kv_alloc.free(rid)
        return row

    def swap_in(self, row: tuple) -> None:
        """Bring a swapped-out decoder back with its KV intact."""
        rid, kv = int(row[0]), int(row[1])
        self.kv_alloc.allocate(rid, kv, None, int(row[4]))
        self._set_columns([np.append(c, v) for c, v in zip(self._columns(), row)])
        self._uniform_last_tok = None

    def join_decoder(self, rid: int, at: float) -> None:
        """Request `rid` (its KV allocated) joins as a decoder: its prompt written, one token
        generated at `at` (disaggregated serving's hand-off)."""
        t = self.t
        row = (rid, int(t.prompt_tokens[rid]), 1, int(t.output_tokens[rid]), int(t.final_kv_tokens[rid]),
               self.kv_alloc.held_tokens(rid), bool(t.arrival_s[rid] >= self.warmup_s), 0.0, at, self._next_order)
        self._next_order += 1
        self._set_columns([np.append(c, v).astype(c.dtype) for c, v in zip(self._columns(), row)])
        self._uniform_last_tok = None

    def remaining_min(self) -> int:
        """Fewest tokens any decoder still has to generate."""
        return int((self.out - self.gen).min())

    def next_ctx(self) -> np.ndarray:
        """Each decoder's context in its next step (its written slots + the new token)."""
        return self.kv + 1

    # ------------------------------------------------------------ paged growth
    def decode_blocks_needed(self, steps: int = 1) -> int:
        """New blocks the decoders need to decode `steps` more tokens each (paged; 0 otherwise)."""
        if not self.on_demand or not len(self.ids):
            return 0
        b = self.block_size
        if steps == 1:  # a sequence needs a block when its next slot starts one
            return len(self._at_boundary())
        return int(((self.kv + (steps + b - 1)) // b - (self.kv + (b - 1)) // b).sum())

    def _at_boundary(self) -> np.ndarray:
        """Indices of the decoders whose next slot starts a new block (paged on demand); cached
        per `kv` array (the columns are replaced, never written in place)."""
        kv = self.kv
        if self._boundary_of is not kv:
            self._boundary = np.flatnonzero(kv % self.block_size == 0)
            self._boundary_of = kv
        return self._boundary

    def _grow(self, steps: int) -> None:
        new_kv = self.kv + steps
        if self.on_demand and steps == 1:  # one block each for the decoders at a block boundary
            idx = self._at_boundary()
            if len(idx):
                ids = self.ids[idx].tolist()
                self.kv_alloc.take_blocks(ids, [1] * len(ids))
        elif self.on_demand:
            self._take_blocks_up_to(new_kv)
        self.kv_alloc.set_tokens(self.ids, new_kv)
        self.kv = new_kv

    def _grow_by(self, tokens: np.ndarray) -> None:
        """Each decoder writes its own number of tokens (the blocks of rejected proposals, taken
        for the verification, are back in the pool: only the kept tokens' blocks remain)."""
        new_kv = self.kv + tokens
        if self.on_demand:
            self._take_blocks_up_to(new_kv)
        self.kv_alloc.set_tokens(self.ids, new_kv)
        self.kv = new_kv

    def _take_blocks_up_to(self, new_kv: np.ndarray) -> None:
        """The blocks each decoder needs to hold `new_kv` slots beyond those it holds for `self.kv`."""
        b = self.block_size
        need = (new_kv + (b - 1)) // b - (self.kv + (b - 1)) // b
        idx = np.flatnonzero(need)
        if len(idx):
            self.kv_alloc.take_blocks(self.ids[idx].tolist(), need[idx].tolist())

    # ------------------------------------------------------------ commit
    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray, num_waiting: int,
               next_reservation: int | None) -> StepOutcome:
        """Apply len(durations_s) repetitions of `plan` (k > 1 only for decode-only plans)."""
        t, k = self.t, len(durations_s)
        ends = step_ends(start_s, durations_s)
        for rid in plan.preempted_ids:
            t.num_preemptions[rid] += 1
        n_dec = len(plan.decode_ids)
        self.extra_gaps_s = _NO_GAPS
        self._gap_steps_from = 0
        measured = 0
        n_sampled = n_dec if self.spec_tokens is None else int(self.spec_tokens.sum())
        if n_dec:
            measured = self._decode(start_s, ends, durations_s)
        elif len(self.ids):
            self._uniform_last_tok = None  # the decoders sat this step out
        if len(plan.prefill_ids):
            n_sampled += self._advance_prefills(plan, start_s, float(ends[0]))
        usage = self._window_usage(k, next_reservation)
        finished = self._finish(float(ends[-1]))
        return StepOutcome(ends, usage, n_dec + len(plan.prefill_ids), num_waiting, n_sampled, measured,
                           finished, self.extra_gaps_s, self._gap_steps_from)

    def _decode(self, start_s: float, ends: np.ndarray, durations_s: np.ndarray) -> int:
        """Every decoder emits one token per step; returns the measured decoders (their gaps in
        later steps are the step durations; the first step's are passed one by one when they differ)."""
        k = len(ends)
        first = float(ends[0])
        if self._uniform_last_tok == start_s:
            longest = float(durations_s.max()) if k > 1 else float(durations_s[0])
            np.maximum(self.tbt_max, longest, out=self.tbt_max)
            measured = int(np.count_nonzero(self.measured))
        else:  # some decoders waited longer than this step for their next token
            gaps = first - self.last_tok
            np.maximum(self.tbt_max, gaps, out=self.tbt_max)
            if k > 1:
                np.maximum(self.tbt_max, float(durations_s[1:].max()), out=self.tbt_max)
            self.extra_gaps_s = gaps[self.measured]
            self._gap_steps_from = 1
            measured = int(np.count_nonzero(self.measured))
        spec, self.spec_tokens = self.spec_tokens, None
        if spec is not None:  # speculative step: each decoder keeps its accepted proposals + 1 token
            self._grow_by(spec)
            self.gen = self.gen + spec
        else:
            self._grow(k)
            self.gen = self.gen + k
        if self.t.beam_reselect and self.kv_alloc.prefix_caching:
            self._reselect_beams()
        last = float(ends[-1])
        self.last_tok = np.full(len(self.ids), last)
        self._uniform_last_tok = last
        return measured

    def _reselect_beams(self) -> None:
        """After a step each beam continues, with chance beam_reselect, the hypothesis of a beam
        of its request chosen at random (one of the same length): the paged cache then shares
        that beam's blocks instead of holding the old ones."""
        ids = self.ids
        groups = self.t.group[ids]
        movers = np.flatnonzero(self.rng.random(len(ids)) < self.t.beam_reselect)
        for i in movers.tolist():
            peers = np.flatnonzero((groups == groups[i]) & (self.kv == self.kv[i]))
            j = int(peers[self.rng.integers(len(peers))])
            if j != i:
                self.kv_alloc.fork_into(int(ids[i]), int(ids[j]))

    def _advance_prefills(self, plan: StepPlan, start_s: float, end_s: float) -> int:
        """Credit each chunk; requests whose prompt is complete sample their first token (or,
        after a recompute, their next one) and join the decoders. Returns tokens sampled."""
        t = self.t
        pid = plan.prefill_ids
        fresh = np.isnan(t.first_scheduled_s[pid])
        t.first_scheduled_s[pid[fresh]] = start_s
        for rid, new in zip(pid.tolist(), plan.prefill_new.tolist()):
            self.prefilling[rid].computed += new
        done = pid[plan.prefill_done] if len(plan.prefill_done) else pid
        if not len(done):
            return 0
        states = [self.prefilling.pop(rid) for rid in done.tolist()]
        g = t.generated[done]
        first = g == 0
        t.first_token_s[done[first]] = end_s
        measured = t.arrival_s[done] >= self.warmup_s
        tbt_max = t.tbt_max_s[done]
        if not first.all():
            resumed = ~first
            gaps = end_s - t.last_token_s[done[resumed]]
            tbt_max[resumed] = np.maximum(tbt_max[resumed], gaps)
            self.extra_gaps_s = np.concatenate([self.extra_gaps_s, gaps[measured[resumed]]])
        n = len(done)
        new_cols = (done, np.array([s.target for s in states], _I64), g + 1, t.output_tokens[done],
                    t.final_kv_tokens[done], np.array([s.held for s in states], _I64), measured, tbt_max,
                    np.full(n, end_s), np.array([s.order for s in states], _I64))
        self._set_columns([np.concatenate([old, new]) for old, new in zip(self._columns(), new_cols)])
        if self._uniform_last_tok != end_s:
            self._uniform_last_tok = end_s if len(self.ids) == n else None
        return n

    def _window_usage(self, k: int, next_reservation: int | None) -> np.ndarray:
        """(5, k) breakdown per step (after each step's writes, before finished requests free)."""
        if k == 1:
            tokens = self.kv
        else:  # tokens after step j: kv_now - (k - 1 - j) for every sequence
            tokens = self.kv[None, :] - np.arange(k - 1, -1, -1, dtype=_I64)[:, None]
        if self.on_demand:
            held = held_slots_paged(tokens, self.block_size)
        else:
            held = np.broadcast_to(self.held, tokens.shape)
        prefilling, dead = self._others_breakdown()
        return window_breakdown(self.kv_alloc, tokens, held, self.final, next_reservation, k, prefilling, dead)

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
        if self.defer_free:
            self.deferred.extend(ids.tolist())
        else:
            for rid in ids.tolist():
                self.kv_alloc.free(rid)
        keep = ~done
        self._set_columns([c[keep] for c in self._columns()])
        return tuple(ids.tolist())
