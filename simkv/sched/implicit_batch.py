"""The running batch with implicit per-sequence progress: the default engine's batch, equal
result for result to `simkv.sched.batch.RunningBatch` (the reference, kept step by step).

Why it can be implicit: decoders take part in a step all together or not at all, so after D
decode steps a decoder's written slots and generated tokens are its values at joining plus the
steps since: `kv = kbase + D`, `gen = gbase + D`, with one counter D for the whole batch. A
step then touches no per-sequence state:

- **blocks**: decoders are bucketed by `kbase mod block_size`; the ones whose next slot starts a
  block in step D are one bucket (in join order, the order the reference takes blocks in);
- **completions**: a heap of the D at which each decoder has generated its output;
- **longest token gap**: each decode commit has one gap, the one every decoder that took part got;
  a decoder's longest gap is the maximum over its commits, taken when it leaves, from a monotonic
  stack of the commits whose gap exceeds every later one's (one binary search, no array pass);
- **KV breakdown**: running sums (written slots, blocks or held slots, min(held, final)) plus the
  empty slots of decoders in their last block, which they will never write (an event when a
  decoder takes its last block).

Per-sequence arrays (`ids`, `kv`, `gen`, ...) are kept as one (rows x n) integer array in
column (join) order, replaced on join and leave, so a policy that reads them gets them with one
numpy operation; the float columns (longest gap, last token time) are materialised on demand.
Not covered (the builder gives those runs the reference batch): speculative decoding, whose
decoders advance by different numbers of tokens, and beam re-selection.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left

import numpy as np

from simkv.kv.base import KVAllocator
from simkv.kv.usage import breakdown_from_sums
from simkv.request import DONE, RequestTable
from simkv.sched.base import StepOutcome, StepPlan, step_ends
from simkv.sched.batch import BatchBase

_I64 = np.int64
_add_reduce, _max_reduce = np.add.reduce, np.maximum.reduce   # ndarray.sum / max without their Python wrappers
_NO_GAPS = np.zeros(0)
# rows of the integer column array
ID, KB, GB, OUT, FINAL, HELD, MEAS, ORDER, JSEQ = range(9)
_NROWS = 9


class _Decoder:
    """One decoding sequence's implicit state (what the reference keeps in its columns)."""

    __slots__ = ("rid", "jseq", "kbase", "gbase", "out", "final", "held", "measured", "order", "tbt0", "start_c",
                 "jt", "fresh", "alive", "corr", "in_final")

    def __init__(self, rid, jseq, kbase, gbase, out, final, held, measured, order, tbt0, jt) -> None:
        self.rid, self.jseq, self.kbase, self.gbase = rid, jseq, kbase, gbase
        self.out, self.final, self.held, self.measured, self.order = out, final, held, measured, order
        self.tbt0 = tbt0          # longest gap before the commits counted from start_c
        self.start_c = 0          # first decode commit whose gap counts (set at its first commit)
        self.jt = jt              # its last token's time while it has not decoded since joining
        self.fresh = True         # joined since the last decode commit
        self.alive = True
        self.corr = 0             # empty slots of its last block it will never write
        self.in_final = False


class ImplicitBatch(BatchBase):
    """Decoding sequences with implicit progress, prefilling ones as a dict (the reference's interface)."""

    def __init__(self, table: RequestTable, allocator: KVAllocator, warmup_s: float = 0.0, defer_free: bool = False) -> None:
        super().__init__(table, allocator, warmup_s, defer_free)
        self.extra_gap_value, self.extra_gap_count = 0.0, 0
        self._cols = np.zeros((_NROWS, 0), _I64)
        self._dec: dict[int, _Decoder] = {}
        self._fresh: list[_Decoder] = []
        self._jseq = 0
        self.D = 0                       # decode steps committed
        self._c = 0                      # decode commits
        # the largest gap from each decode commit on: commits (increasing) whose gap is larger than
        # every later one's, and those gaps (decreasing); max over commits [s, now) is the first from s
        self._mono_c: list[int] = []
        self._mono_v: list[float] = []
        self._mono_limit = 4096
        self._last_end = math.nan        # end of the last decode commit
        self._heap: list[tuple[int, int, _Decoder]] = []   # (D at which it has its output, join seq, decoder)
        self._buckets: list[dict[int, _Decoder]] = [{} for _ in range(self.block_size)] if self.on_demand else []
        self._events: dict[int, list[_Decoder]] = {}   # D -> decoders taking their last block in that step
        self._kb_sum = 0       # sum of kbase
        self._held_sum = 0     # on demand: blocks of decoders; else slots held
        self._minhf_sum = 0    # not on demand: sum of min(held, final)
        self._corr_sum = 0     # on demand: slots of last blocks that will stay empty
        self._n_meas = 0
        self._kv_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        # the allocator's per-request written slots of decoders are written on demand (kv.base.LazyTokens)
        self.tokens_stale = False
        allocator._source = self
        self._entered: list[tuple[int, int]] = []   # (step index, slots): last blocks taken in the last commit

    # ------------------------------------------------------------ columns
    @property
    def num_decoding(self) -> int:
        return self._cols.shape[1]

    @property
    def ids(self) -> np.ndarray:
        return self._cols[ID]

    @property
    def kv(self) -> np.ndarray:
        c = self._kv_cache
        if c is None or c[0] != self.D or c[1] is not self._cols:
            c = self._kv_cache = (self.D, self._cols, self._cols[KB] + self.D)
        return c[2]

    def next_ctx(self) -> np.ndarray:
        """Each decoder's context in its next step (its written slots + the new token)."""
        return self._cols[KB] + (self.D + 1)

    @property
    def gen(self) -> np.ndarray:
        return self._cols[GB] + self.D

    @property
    def out(self) -> np.ndarray:
        return self._cols[OUT]

    @property
    def final(self) -> np.ndarray:
        return self._cols[FINAL]

    @property
    def held(self) -> np.ndarray:
        return self._cols[HELD]

    @property
    def measured(self) -> np.ndarray:
        return self._cols[MEAS].astype(bool)

    @property
    def order(self) -> np.ndarray:
        return self._cols[ORDER]

    def _tbt_of(self, d: _Decoder) -> float:
        if d.fresh or d.start_c >= self._c:
            return d.tbt0
        return max(d.tbt0, self._mono_v[bisect_left(self._mono_c, d.start_c)])

    def _last_tok_of(self, d: _Decoder) -> float:
        return d.jt if d.fresh else self._last_end

    @property
    def tbt_max(self) -> np.ndarray:
        return np.array([self._tbt_of(self._dec[r]) for r in self.ids.tolist()], dtype=float)

    @property
    def last_tok(self) -> np.ndarray:
        return np.array([self._last_tok_of(self._dec[r]) for r in self.ids.tolist()], dtype=float)

    def remaining_min(self) -> int:
        """Fewest tokens any decoder still has to generate."""
        heap = self._heap
        while not heap[0][2].alive:
            heapq.heappop(heap)
        return heap[0][0] - self.D

    # ------------------------------------------------------------ join / leave
    def _join(self, rows: list[tuple]) -> None:
        """Decoders join at the end of the columns: (rid, kv, gen, out, final, held, measured,
        longest gap, last token time, order) each."""
        D, b = self.D, self.block_size
        new = []
        for rid, kv, gen, out, final, held, measured, tbt, last, order in rows:
            j = self._jseq
            self._jseq += 1
            d = _Decoder(rid, j, kv - D, gen - D, out, final, held, bool(measured), order, tbt, last)
            self._dec[rid] = d
            self._fresh.append(d)
            heapq.heappush(self._heap, (out - d.gbase, j, d))
            self._kb_sum += d.kbase
            self._n_meas += d.measured
            if self.on_demand:
                self._buckets[d.kbase % b][rid] = d
                blocks, last_blocks = -(-kv // b), -(-final // b)
                self._held_sum += blocks
                corr = last_blocks * b - final
                if corr > 0:   # its last block keeps `corr` slots it never writes
                    d.corr = corr
                    if blocks >= last_blocks:
                        d.in_final = True
                        self._corr_sum += corr
                    else:
                        self._events.setdefault(b * (last_blocks - 1) + 1 - d.kbase, []).append(d)
            else:
                self._held_sum += held
                self._minhf_sum += min(held, final)
            new.append((rid, d.kbase, d.gbase, out, final, held, int(measured), order, j))
        block = np.array(new, dtype=_I64).T
        self._cols = block if not self._cols.shape[1] else np.concatenate([self._cols, block], axis=1)

    def _leave(self, decs: list[_Decoder]) -> None:
        """Remove decoders (given in column order) from the batch's state and columns."""
        b, D = self.block_size, self.D
        tok = self.kv_alloc._tok if self.tokens_stale else None
        for d in decs:
            if tok is not None:   # its count in the allocator, current as it leaves
                tok[d.rid] = d.kbase + D
            d.alive = False
            del self._dec[d.rid]
            self._kb_sum -= d.kbase
            self._n_meas -= d.measured
            if d.fresh:
                self._fresh.remove(d)
            if self.on_demand:
                del self._buckets[d.kbase % b][d.rid]
                self._held_sum -= -(-(d.kbase + D) // b)
                if d.in_final:
                    self._corr_sum -= d.corr
            else:
                self._held_sum -= d.held
                self._minhf_sum -= min(d.held, d.final)
        if len(decs) == self._cols.shape[1]:
            self._cols = np.zeros((_NROWS, 0), _I64)
        else:
            cols = self._cols
            if len(decs) == 1:
                i = int(cols[JSEQ].searchsorted(decs[0].jseq))
                self._cols = np.concatenate((cols[:, :i], cols[:, i + 1:]), axis=1)
            else:
                keep = np.ones(cols.shape[1], bool)
                keep[np.searchsorted(cols[JSEQ], [d.jseq for d in decs])] = False
                self._cols = cols[:, keep]

    def _row(self, d: _Decoder) -> tuple:
        """The reference's column values of a decoder."""
        return (d.rid, d.kbase + self.D, d.gbase + self.D, d.out, d.final, d.held, d.measured, self._tbt_of(d),
                self._last_tok_of(d), d.order)

    # ------------------------------------------------------------ membership
    def preempt(self, rid: int) -> None:
        if rid in self.prefilling:
            del self.prefilling[rid]
        else:
            d = self._dec[rid]
            t = self.t
            t.generated[rid] = d.gbase + self.D
            t.tbt_max_s[rid] = self._tbt_of(d)
            t.last_token_s[rid] = self._last_tok_of(d)
            self._leave([d])
        self.kv_alloc.free(rid)

    def swap_out(self, rid: int) -> tuple:
        d = self._dec[rid]
        row = self._row(d)
        self._leave([d])
        self.kv_alloc.free(rid)
        return row

    def swap_in(self, row: tuple) -> None:
        rid, kv = int(row[0]), int(row[1])
        self.kv_alloc.allocate(rid, kv, None, int(row[4]))
        self._join([(rid, kv, int(row[2]), int(row[3]), int(row[4]), int(row[5]), bool(row[6]), float(row[7]),
                     float(row[8]), int(row[9]))])
        self._uniform_last_tok = None

    def join_decoder(self, rid: int, at: float) -> None:
        """Request `rid` (its KV allocated) joins as a decoder: its prompt written, one token
        generated at `at` (disaggregated serving's hand-off)."""
        t = self.t
        self._join([(rid, int(t.prompt_tokens[rid]), 1, int(t.output_tokens[rid]), int(t.final_kv_tokens[rid]),
                     self.kv_alloc.held_tokens(rid), bool(t.arrival_s[rid] >= self.warmup_s), 0.0, at, self._next_order)])
        self._next_order += 1
        self._uniform_last_tok = None

    # ------------------------------------------------------------ paged growth
    def decode_blocks_needed(self, steps: int = 1) -> int:
        if not self.on_demand or not self._cols.shape[1]:
            return 0
        b = self.block_size
        if steps == 1:
            return len(self._buckets[-self.D % b])
        kv = self.kv
        return int(_add_reduce((kv + (steps + b - 1)) // b - (kv + (b - 1)) // b))

    def _grow(self, k: int) -> None:
        """Every decoder writes k more slots (blocks taken in the reference's order)."""
        if self.on_demand:
            b = self.block_size
            if k == 1:
                bucket = self._buckets[-self.D % b]
                if bucket:
                    rids = list(bucket)
                    self.kv_alloc.take_blocks(rids, [1] * len(rids))
                    self._held_sum += len(rids)
            else:
                kv = self.kv
                need = (kv + (k + b - 1)) // b - (kv + (b - 1)) // b
                idx = need.nonzero()[0]
                if len(idx):
                    self.kv_alloc.take_blocks(self.ids[idx].tolist(), need[idx].tolist())
                    self._held_sum += int(_add_reduce(need))
        self.D += k
        self.tokens_stale = True

    def write_tokens(self) -> None:
        """Write the decoders' slot counts into the allocator (something reads them)."""
        self.tokens_stale = False
        self.kv_alloc._tok.update(zip(self.ids.tolist(), self.kv.tolist()))

    def is_decoding(self, rid: int) -> bool:
        return rid in self._dec

    # ------------------------------------------------------------ commit
    def commit(self, plan: StepPlan, start_s: float, durations_s: np.ndarray, num_waiting: int,
               next_reservation: int | None) -> StepOutcome:
        t, k = self.t, len(durations_s)
        ends = step_ends(start_s, durations_s)
        for rid in plan.preempted_ids:
            t.num_preemptions[rid] += 1
        n_dec = len(plan.decode_ids)
        self.extra_gaps_s = _NO_GAPS
        self.extra_gap_value, self.extra_gap_count = 0.0, 0
        self._gap_steps_from = 0
        measured = 0
        n_sampled = n_dec
        d_before = self.D
        if n_dec:
            measured = self._decode(start_s, ends, durations_s)
        elif self._cols.shape[1]:
            self._uniform_last_tok = None
        extra: list[float] = []
        if len(plan.prefill_ids):
            n_sampled += self._advance_prefills(plan, start_s, float(ends[0]), extra)
        if extra:
            self.extra_gaps_s = (np.array(extra) if not len(self.extra_gaps_s)
                                 else np.concatenate([self.extra_gaps_s, extra]))
        usage = self._window_usage(k, next_reservation, d_before)
        finished = self._finish(float(ends[-1]))
        return StepOutcome(ends, usage, n_dec + len(plan.prefill_ids), num_waiting, n_sampled, measured,
                           finished, self.extra_gaps_s, self._gap_steps_from, self.extra_gap_value,
                           self.extra_gap_count)

    def _decode(self, start_s: float, ends: np.ndarray, durations_s: np.ndarray) -> int:
        k = len(ends)
        c = self._c
        if self._uniform_last_tok == start_s:   # every decoder's last token ended the previous step
            gap = float(_max_reduce(durations_s)) if k > 1 else float(durations_s[0])
            for d in self._fresh:
                d.start_c, d.fresh = c, False
        else:   # gaps since each one's last token; those that decoded last share one
            first = float(ends[0])
            tail = float(_max_reduce(durations_s[1:])) if k > 1 else -math.inf
            old = first - self._last_end
            gap = max(old, tail) if self._cols.shape[1] > len(self._fresh) else tail
            gaps = []
            fresh_measured = 0
            for d in self._fresh:
                g = first - d.jt
                d.tbt0 = max(d.tbt0, g, tail)
                d.start_c, d.fresh = c + 1, False
                if d.measured:
                    gaps.append(g)
                    fresh_measured += 1
            self.extra_gaps_s = np.array(gaps) if gaps else _NO_GAPS
            self.extra_gap_value, self.extra_gap_count = old, self._n_meas - fresh_measured
            self._gap_steps_from = 1
        self._fresh = []
        mono_c, mono_v = self._mono_c, self._mono_v
        while mono_v and mono_v[-1] <= gap:
            mono_c.pop()
            mono_v.pop()
        mono_c.append(c)
        mono_v.append(gap)
        if len(mono_c) > self._mono_limit:
            self._drop_old_gaps()
        self._c = c + 1
        d0 = self.D
        self._grow(k)
        entered = self._entered = []
        if self._events:   # decoders that took their last block in these steps
            for step in range(d0 + 1, d0 + k + 1):
                for d in self._events.pop(step, ()):
                    if d.alive:
                        d.in_final = True
                        self._corr_sum += d.corr
                        entered.append((step - d0 - 1, d.corr))
        last = float(ends[-1])
        self._last_end = last
        self._uniform_last_tok = last
        return self._n_meas

    def _drop_old_gaps(self) -> None:
        """Forget the commits older than every running decoder's first one (memory stays flat)."""
        lo = min((d.start_c for d in self._dec.values() if not d.fresh), default=self._c)
        i = bisect_left(self._mono_c, lo)
        del self._mono_c[:i], self._mono_v[:i]
        self._mono_limit = max(4096, 2 * len(self._mono_c))

    def _advance_prefills(self, plan: StepPlan, start_s: float, end_s: float, extra: list) -> int:
        t = self.t
        pids = plan.prefill_ids.tolist()
        fs = t.first_scheduled_s
        for rid, new in zip(pids, plan.prefill_new.tolist()):
            if math.isnan(fs[rid]):
                fs[rid] = start_s
            self.prefilling[rid].computed += new
        done = [r for r, ok in zip(pids, plan.prefill_done.tolist()) if ok] if len(plan.prefill_done) else pids
        if not done:
            return 0
        rows = []
        warm = self.warmup_s
        for rid in done:
            s = self.prefilling.pop(rid)
            g = int(t.generated[rid])
            measured = bool(t.arrival_s[rid] >= warm)
            tbt = float(t.tbt_max_s[rid])
            if g == 0:
                t.first_token_s[rid] = end_s
            else:   # back after a recompute: the gap since its last token
                gap = end_s - float(t.last_token_s[rid])
                tbt = max(tbt, gap)
                if measured:
                    extra.append(gap)
            rows.append((rid, s.target, g + 1, int(t.output_tokens[rid]), int(t.final_kv_tokens[rid]), s.held, measured,
                         tbt, end_s, s.order))
        self._join(rows)
        if self._uniform_last_tok != end_s:
            self._uniform_last_tok = end_s if self._cols.shape[1] == len(rows) else None
        return len(rows)

    def _window_usage(self, k: int, next_reservation: int | None, d_before: int) -> np.ndarray:
        """(5, k) breakdown per step (after each step's writes, before finished requests free),
        from the running sums; equals simkv.kv.usage.window_breakdown over the reference's columns."""
        a, n = self.kv_alloc, self._cols.shape[1]
        b = self.block_size
        if k == 1:
            tok_v = self._kb_sum + n * self.D
            if self.on_demand:
                held_v = self._held_sum * b
                res_v = held_v - tok_v - self._corr_sum
            else:
                held_v = self._held_sum
                res_v = self._minhf_sum - tok_v
        else:
            steps = np.arange(d_before + 1, d_before + k + 1, dtype=_I64)
            tok_v = self._kb_sum + n * steps
            if self.on_demand:
                counts = np.array([len(bk) for bk in self._buckets], dtype=_I64)
                crossed = np.cumsum(counts[(-(steps - 1)) % b])
                held_v = (self._held_sum - int(crossed[-1]) + crossed) * b
                corr = np.full(k, self._corr_sum, dtype=_I64)
                for j, slots in self._entered:   # before step j these were not in their last block
                    corr[:j] -= slots
                res_v = held_v - tok_v - corr
            else:
                held_v = np.full(k, self._held_sum, dtype=_I64)
                res_v = self._minhf_sum - tok_v
        prefilling, dead = self._others_breakdown()
        return breakdown_from_sums(a, tok_v, res_v, held_v, next_reservation, k, prefilling, dead)

    def _finish(self, end_s: float) -> tuple[int, ...]:
        heap, D = self._heap, self.D
        if not heap or heap[0][0] > D:
            return ()
        decs = []
        while heap and heap[0][0] <= D:
            d = heapq.heappop(heap)[2]
            if d.alive:
                decs.append(d)
        if not decs:
            return ()
        decs.sort(key=lambda d: d.jseq)
        t = self.t
        for d in decs:
            rid = d.rid
            t.finish_s[rid] = end_s
            t.last_token_s[rid] = end_s
            t.generated[rid] = d.gbase + D
            t.tbt_max_s[rid] = self._tbt_of(d)
            t.status[rid] = DONE
        self._leave(decs)
        ids = [d.rid for d in decs]
        if self.defer_free:
            self.deferred.extend(ids)
        else:
            for rid in ids:
                self.kv_alloc.free(rid)
        return tuple(ids)
