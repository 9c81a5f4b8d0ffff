"""The fused engine's compiled loop (simkv.fused.paged_fcfs): arrivals, FCFS continuous batching on
paged blocks, the calibrated step time and the recorder's accumulation of one replica, in one
numba function. Equal, number for number, to simkv.engine.Replica running
simkv.sched.continuous.ContinuousBatchingScheduler on simkv.kv.paged.PagedAllocator with
simkv.cost.calibrated.CalibratedCost and the compiled recorder (the reference it is tested against,
tests/test_fused_engine.py).

The same loop runs a replica of a fleet: routed (its requests handed over at the fleet's times)
or in lockstep with the others (simkv.fused.fleet_loop: it stops at the fleet's next hand-over
and keeps its step in flight pending; simkv.fused.loop_parts says how).

Why one loop: the reference spends ~150 µs of Python per engine iteration in many small calls
(plan, step time, commit, record); here an iteration is a few microseconds of compiled code whose
work is a pass over the running batch.

What it mirrors, and where (each piece keeps the reference's order of float operations):

- the clock and the arrivals (simkv.fused.loop_parts: Replica._step_loop, _arrivals): an idle
  engine wakes at the first arrival it admits, after every arrival of that instant; an arrival
  during a step joins the queue then; a decode run is cut after the step in flight at the next
  arrival when nobody waits (`arrival_sensitive`); the queue depth of each step of a run follows
  the arrivals in it (Replica._queue_by_step);
- the policy (ContinuousBatchingScheduler.schedule): make room for the decodes by preempting the
  newest request (recompute), admit from the head of the queue within max_num_seqs, the token budget
  and the free blocks (watermark included), else repeat the decodes up to the first completion, the
  free blocks and max_repeat;
- the batch (simkv.sched.implicit_batch.ImplicitBatch.commit): token times, longest gaps, the
  recompute gaps, the KV breakdown after each step, completions in join order;
- the step time (CalibratedCost.seconds, decode_run_seconds) from the cost model's own tables;
- the recorder (simkv.metrics.recorder_kernels.on_steps, Recorder._sample, on_idle, on_end).

What it does not model it does not guess: the loop stops with BAIL (a reason code of
simkv.fused.loop_parts) and the caller runs the default engine instead. That covers an arrival at exactly a step's end (simpy
orders such ties by event creation), a step time the engine would reject, a request that can never
be admitted, a table lookup outside the cost model's precomputed range, and decoders whose last
tokens differ (which this policy never produces).

State lives in the arrays passed in (the loop can stop and resume): `st_i` / `st_f` the scalars,
`dec_i` / `dec_f` the running decoders in join order (the slots and rows of simkv.fused.loop_parts,
which also holds the decode commits, joins, completions and step times both loops share), `waiting`
the queue as a ring buffer, the recorder's arrays as
simkv.metrics.compiled_recorder lays them out, `rows_i` / `rows_f` the time series, `gap_v` / `gap_m`
the token gaps left for numpy to bin.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from simkv.cost.attention_kernels import _pairwise
from simkv.fused.layout import (S_LOCKSTEP, S_PENDING, S_K, S_SENS, S_BYSTEP, SF_HORIZON, WAIT,
                                BAIL, BAIL_NONUNIFORM, BAIL_STEP_TIME, BAIL_STUCK, BAIL_TABLE, BAIL_TIE, CF_MAX_STEP,
                                CF_SCALE, CF_WARMUP, DF_LAST, DF_TBT, DONE, D_FINAL, D_GEN, D_HOLD, D_KV, D_RID,
                                EXTERNAL, FREE, INTERNAL, NO_LIMIT, PAUSE, RESERVED, SF_NOW, ST_F_SHARED,
                                ST_I_SHARED, S_BAIL, S_FREE, S_ITER, S_NDEC, S_NEXT, S_NGAPS, S_ORDER, S_WCOUNT,
                                S_WHEAD, TOKEN)
from simkv.fused.loop_parts import (lockstep_idle, lockstep_wait, arrivals_during, check_step_times, commit_decodes, decode_attention,
                                    finish_decoders, join_decoder, max_decode_steps, mixed_step_seconds, on_end, on_idle, record,
                                    remaining_steps, settle_uniform, sizes_fit, step_ends, timed_decode_run,
                                    wait_for_arrival)

# cfg_i
C_MAX_SEQS, C_MAX_BATCHED, C_WATERMARK, C_MAX_REPEAT, C_BLOCK, C_LAYERS, C_MAX_POINTS, C_CAPACITY, C_CHUNK = range(9)
CFG_I_LEN = 9
# st_i / st_f: only the shared slots (simkv.fused.loop_parts; cfg_f and the decoders' rows too)
# st_i: a pending step's preempted and admitted requests (in plan_i's rows; lockstep fleets only)
S_NV, S_NADM = ST_I_SHARED, ST_I_SHARED + 1
ST_I_LEN, ST_F_LEN = ST_I_SHARED + 2, ST_F_SHARED
P_ADMITTED, P_NEW, P_VICTIMS = range(3)   # plan_i rows
PLAN_I_ROWS = 3
D_BLOCKS = D_HOLD   # a decoder holds blocks


@njit(cache=True)
def run(arrival, cut, fired, prompt, output, final,
        status, reason, generated, first_sched, first_tok, finish, last_tok, tbt_max, npre,
        cfg_i, cfg_f, fixed, prefill_tab, lm_tab, whole_tab, knots, share, slopes,
        st_i, st_f, dec_i, dec_f, waiting,
        rec_f, rec_i, hist, rows_i, rows_f, gap_v, gap_m,
        dur, ends, kvb, wbs, vals, plan_i, answers):
    """Run the replica from the state in `st_*` until it has nothing left to do (DONE), for
    cfg_i[C_CHUNK] iterations or until the gap buffers fill (PAUSE), or until it meets what it
    does not model (BAIL, reason in st_i[S_BAIL]). The rows of `knots`, `share` and `slopes` (one
    per batch size) are the decode-attention curves; `*_tab` the cost model's per-size tables.
    In a lockstep fleet (st_i[S_LOCKSTEP], simkv.fused.fleet_loop) the fleet hands requests over
    itself: the loop runs up to the fleet's next hand-over (st_f[SF_HORIZON]) and WAITs there, a
    step in flight kept pending (its plan in `plan_i` and the S_* slots); its answers go to the
    `answers` ring (request ids), for the fleet's router."""
    n_req = arrival.shape[0]
    max_seqs, max_batched = cfg_i[C_MAX_SEQS], cfg_i[C_MAX_BATCHED]
    watermark, max_repeat, b = cfg_i[C_WATERMARK], cfg_i[C_MAX_REPEAT], cfg_i[C_BLOCK]
    layers, max_points, capacity = cfg_i[C_LAYERS], cfg_i[C_MAX_POINTS], cfg_i[C_CAPACITY]
    scale, warm, max_step = cfg_f[CF_SCALE], cfg_f[CF_WARMUP], cfg_f[CF_MAX_STEP]
    wsize = waiting.shape[0]
    gap_cap = gap_v.shape[0]
    gap_room = max_seqs + max_repeat + 2   # the most gaps one iteration leaves (its recompute gaps and steps)
    admitted, new_tok, victims = plan_i[P_ADMITTED], plan_i[P_NEW], plan_i[P_VICTIMS]
    lockstep = st_i[S_LOCKSTEP] != 0
    done_at = 0
    while True:
        if done_at >= cfg_i[C_CHUNK] or st_i[S_NGAPS] + gap_room > gap_cap:
            return PAUSE
        done_at += 1
        now = st_f[SF_NOW]
        n = st_i[S_NDEC]
        if st_i[S_PENDING]:   # a lockstep step, pending: its plan as made (the fleet may have cut it since)
            k, nv, n_adm, free, by_step = st_i[S_K], st_i[S_NV], st_i[S_NADM], st_i[S_FREE], st_i[S_BYSTEP]
        else:
            # ---------------------------------------------------------------- idle (Replica._step_loop)
            if st_i[S_WCOUNT] == 0 and n == 0:
                if lockstep:
                    return lockstep_idle(st_i)
                if st_i[S_NEXT] == n_req:
                    on_end(now, capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb, wbs)
                    return DONE
                idle_from = wait_for_arrival(fired, status, reason, waiting, NO_LIMIT, st_i, st_f)
                on_idle(idle_from, st_f[SF_NOW], capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb, wbs)
                continue
            if lockstep and now >= st_f[SF_HORIZON]:   # woken: the hand-overs of this instant come first
                return WAIT
            # ---------------------------------------------------------------- schedule (continuous.py)
            # make room: preempt the newest decoder (the last column) until the decodes' blocks fit
            nv = 0
            free = st_i[S_FREE]
            need = 0
            for i in range(n):
                if dec_i[D_KV, i] % b == 0:
                    need += 1
            while need > free:
                i = n - 1
                rid = dec_i[D_RID, i]
                generated[rid] = dec_i[D_GEN, i]
                tbt_max[rid] = dec_f[DF_TBT, i]
                last_tok[rid] = dec_f[DF_LAST, i]
                free += dec_i[D_BLOCKS, i]
                if dec_i[D_KV, i] % b == 0:
                    need -= 1
                victims[nv] = rid
                nv += 1
                n -= 1
            for v in range(nv):   # newest first, so the oldest victim ends at the front
                st_i[S_WHEAD] = (st_i[S_WHEAD] - 1) % wsize
                waiting[st_i[S_WHEAD]] = victims[v]
                st_i[S_WCOUNT] += 1
            n_adm = 0
            new_sum = 0
            if nv == 0:   # admit from the head of the queue
                budget = max_batched - n
                running = n
                keep_free = watermark + need
                while st_i[S_WCOUNT] > 0 and running < max_seqs:
                    rid = waiting[st_i[S_WHEAD]]
                    new = prompt[rid] + generated[rid]
                    if new > budget:
                        break
                    blocks = -(-new // b)
                    if blocks + keep_free > free:
                        break
                    st_i[S_WHEAD] = (st_i[S_WHEAD] + 1) % wsize
                    st_i[S_WCOUNT] -= 1
                    free -= blocks
                    admitted[n_adm] = rid
                    new_tok[n_adm] = new
                    n_adm += 1
                    new_sum += new
                    budget -= new
                    running += 1
            if n == 0 and n_adm == 0:   # nothing can run though requests wait (the reference raises)
                st_i[S_BAIL] = BAIL_STUCK
                return BAIL
            # ---------------------------------------------------------------- step times (calibrated.py)
            nxt = st_i[S_NEXT]
            next_at = cut[nxt] if nxt < cut.shape[0] else np.inf   # (a lockstep fleet cuts runs itself)
            if n_adm or nv:
                k = 1
                m = n + new_sum
                n_seqs = n + n_adm
                if not sizes_fit(m, n_seqs, n, fixed, lm_tab, whole_tab, share):
                    st_i[S_BAIL] = BAIL_TABLE
                    return BAIL
                pre = 0.0
                if n_adm == 1:
                    if new_tok[0] >= prefill_tab.shape[0]:
                        st_i[S_BAIL] = BAIL_TABLE
                        return BAIL
                    pre = prefill_tab[new_tok[0]]
                elif n_adm > 1:
                    for q in range(n_adm):
                        if new_tok[q] >= prefill_tab.shape[0]:
                            st_i[S_BAIL] = BAIL_TABLE
                            return BAIL
                        vals[q] = prefill_tab[new_tok[q]]
                    pre = 0.0 + _pairwise(vals, n_adm)   # float(self._prefill[new].sum())
                dec = decode_attention(dec_i, n, 1, knots, share, slopes, scale, vals)
                dur[0] = mixed_step_seconds(m, n_seqs, n_seqs, pre, dec, fixed, lm_tab, whole_tab, layers, cfg_f)
            else:   # repeated decodes: up to the first completion, max_repeat and the free blocks
                if not sizes_fit(n, n, n, fixed, lm_tab, whole_tab, share):
                    st_i[S_BAIL] = BAIL_TABLE
                    return BAIL
                limit = max_decode_steps(dec_i, n, remaining_steps(dec_i, n, max_repeat), b, free)
                sensitive = st_i[S_WCOUNT] == 0   # nobody waits: an arrival can change the plan
                k = timed_decode_run(dec_i, n, limit, sensitive, now, next_at, fixed, lm_tab, whole_tab, knots, share,
                                     slopes, layers, cfg_f, vals, dur, st_i)
                if k < 0:
                    st_i[S_BAIL] = BAIL_STEP_TIME
                    return BAIL
            if not check_step_times(dur, k, max_step):
                st_i[S_BAIL] = BAIL_STEP_TIME
                return BAIL
            step_ends(now, dur, k, ends)
            # ---------------------------------------------------------------- arrivals during the steps
            if lockstep:   # the fleet hands them over while the step is pending
                st_i[S_NDEC], st_i[S_FREE], st_i[S_K], st_i[S_NV], st_i[S_NADM] = n, free, k, nv, n_adm
                st_i[S_SENS] = 1 if k > 1 and not (n_adm or nv) and st_i[S_WCOUNT] == 0 else 0
                st_i[S_BYSTEP] = 0
                by_step = 0
            else:
                by_step = arrivals_during(fired, status, reason, waiting, NO_LIMIT, n + n_adm, ends, k, wbs, st_i, st_f)
                if by_step < 0:
                    st_i[S_BAIL] = BAIL_TIE
                    return BAIL
        start = now
        end = ends[k - 1]
        if lockstep:
            code = lockstep_wait(end, by_step, wbs, k, st_i, st_f)
            if code >= 0:
                return code
        st_f[SF_NOW] = end
        num_waiting = st_i[S_WCOUNT]
        # ---------------------------------------------------------------- commit (implicit_batch.py)
        for v in range(nv):
            npre[victims[v]] += 1
        measured = commit_decodes(dec_i, dec_f, n, dur, k, start, end, st_i, st_f)
        if measured < 0:
            st_i[S_BAIL] = BAIL_NONUNIFORM
            return BAIL
        # the steps' KV breakdown, after each step's writes (the joins count from the first step)
        tok = 0
        held = 0
        res = 0
        for i in range(n):
            kv = dec_i[D_KV, i]
            tok += kv
            held += dec_i[D_BLOCKS, i]
        for s in range(k):
            for i in range(n):
                kv = dec_i[D_KV, i]
                if kv % b == 0:
                    dec_i[D_BLOCKS, i] += 1
                    free -= 1
                    held += 1
                dec_i[D_KV, i] = kv + 1
                dec_i[D_GEN, i] += 1
            tok += n
            if s < k - 1:
                res = 0
                for i in range(n):
                    kv = dec_i[D_KV, i]
                    empty = dec_i[D_BLOCKS, i] * b - kv
                    left = dec_i[D_FINAL, i] - kv
                    res += min(empty, max(left, 0))
                kvb[TOKEN, s] = tok
                kvb[RESERVED, s] = res
                kvb[INTERNAL, s] = held * b - tok - res
                kvb[EXTERNAL, s] = 0
                kvb[FREE, s] = capacity - held * b
        # prefills complete and join (ImplicitBatch._advance_prefills)
        end0 = ends[0]
        n_join = 0
        for q in range(n_adm):
            rid = admitted[q]
            if math.isnan(first_sched[rid]):
                first_sched[rid] = start
            blocks = -(-new_tok[q] // b)
            join_decoder(n, rid, new_tok[q], blocks, st_i[S_ORDER], end0, arrival, output, final, generated, tbt_max,
                         first_tok, last_tok, warm, dec_i, dec_f, rec_f, gap_v, gap_m, st_i)
            st_i[S_ORDER] += 1
            held += blocks
            tok += new_tok[q]
            n += 1
            n_join += 1
        settle_uniform(n, n_join, end0, st_i, st_f)
        res = 0
        for i in range(n):
            kv = dec_i[D_KV, i]
            res += min(dec_i[D_BLOCKS, i] * b - kv, max(dec_i[D_FINAL, i] - kv, 0))
        kvb[TOKEN, k - 1] = tok
        kvb[RESERVED, k - 1] = res
        kvb[INTERNAL, k - 1] = held * b - tok - res
        kvb[EXTERNAL, k - 1] = 0
        kvb[FREE, k - 1] = capacity - held * b
        running = n - n_join + n_adm   # the step's batch: decodes and prefills
        tokens = n   # decodes + the prefills' first tokens
        # completions, in join order (ImplicitBatch._finish): their blocks go back
        st_i[S_FREE] = free + finish_decoders(dec_i, dec_f, n, end, finish, last_tok, generated, tbt_max, status, st_i,
                                                answers, answers[:0])
        record(start, ends, dur, kvb, k, running, num_waiting, by_step == 1, wbs, tokens, measured, capacity, max_points,
               rec_f, rec_i, hist, gap_v, gap_m, st_i, st_f, rows_i, rows_f)
        st_i[S_ITER] += 1

