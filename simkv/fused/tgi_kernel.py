"""The fused engine's compiled loop for TGI (simkv.fused.tgi): arrivals, TGI v3's chunked batching
over blocks reserved at admission, the calibrated step time and the recorder's accumulation of
one replica, in one numba function. Equal, number for number, to simkv.engine.Replica running
simkv.sched.tgi.TgiScheduler with prefill chunking (the v3 default) and the compiled recorder
(tests/test_fused_engine.py compares them).

A fleet's replica runs it routed or in lockstep, as simkv.fused.paged_fcfs_kernel says.

What it mirrors (each piece keeps the reference's order of float operations):

- the clock and the arrivals (simkv.fused.loop_parts), with TGI's refusal beyond
  max_concurrent_requests in the system (TgiScheduler.add_request);
- the policy (TgiScheduler._schedule_chunked): each prefilling request's next chunk, oldest first,
  of at most what is left of max_batch_prefill_tokens (one token at least); then requests from the
  head of the queue while the budget lasts, max_num_seqs allows and the free blocks hold each one's
  prompt + max_new_tokens - 1 (the one that overflows the budget gets exactly the rest and ends the
  batch); with no chunk, the decodes repeated up to the first completion or max_repeat, cut at the
  next arrival;
- the allocator: a request holds the blocks of max(its first chunk, its reservation) from admission
  to its end. With prefix caching (TGI's radix allocator) this loop runs only where no block can
  ever be found cached (no shared prefix, session, trace or sampling group, and TGI never
  preempts), so a lookup finds nothing and each admission only counts its query
  (prefix_query_tokens, prefix_query_blocks);
- the batch (simkv.sched.implicit_batch.ImplicitBatch.commit, reserved allocator): completed
  prefills join as decoders in plan order, the KV breakdown counts each request's reservation, and
  prefilling requests as simkv.kv.usage.prefilling_breakdown does;
- the step time (CalibratedCost.seconds, decode_run_seconds), except the prefill attention of a
  step whose chunks are not all whole prompts in the measured table. For that step the loop stops
  with CALL, the plan in its arrays; the caller computes it with the cost model's own
  `prefill_attention_s` (numpy's log-space curves), stores it in st_f[SF_PRE] and calls again.

It stops with BAIL (simkv.fused.loop_parts) where it does not model a case, and the caller then
runs the default engine. The decode commits, joins, completions and step times are the ones the
paged loop uses too (simkv.fused.loop_parts).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from simkv.cost.attention_kernels import _pairwise
from simkv.fused.layout import (S_LOCKSTEP, S_PENDING, S_K, S_SENS, S_BYSTEP, SF_HORIZON, WAIT,
                                BAIL, BAIL_NONUNIFORM, BAIL_STEP_TIME, BAIL_STUCK, BAIL_TABLE, BAIL_TIE, CF_MAX_STEP,
                                CF_SCALE, CF_WARMUP, DONE, D_FINAL, D_GEN, D_HOLD, D_KV, EXTERNAL, FREE, INTERNAL,
                                PAUSE, RESERVED, SF_NOW, ST_F_SHARED, ST_I_SHARED, S_BAIL, S_FREE, S_ITER, S_NDEC,
                                S_NEXT, S_NGAPS, S_ORDER, S_WCOUNT, S_WHEAD, TOKEN)
from simkv.fused.loop_parts import (lockstep_idle, lockstep_wait, arrivals_during, check_step_times, commit_decodes, decode_attention,
                                    finish_decoders, join_decoder, mixed_step_seconds, on_end, on_idle, record,
                                    remaining_steps, settle_uniform, sizes_fit, step_ends, timed_decode_run,
                                    wait_for_arrival)

CALL = 3   # the step's prefill attention is wanted from the caller
# cfg_i
(C_MAX_SEQS, C_PREFILL_BUDGET, C_MAX_REPEAT, C_BLOCK, C_LAYERS, C_MAX_POINTS, C_CAPACITY, C_CHUNK, C_MAX_IN_SYSTEM,
 C_PREFIX_CACHING) = range(10)
CFG_I_LEN = 10
# st_i / st_f: the shared slots (simkv.fused.loop_parts; cfg_f and the decoders' rows too), then these
S_NPRE, S_PHASE = ST_I_SHARED, ST_I_SHARED + 1
ST_I_LEN = ST_I_SHARED + 2
SF_PRE = ST_F_SHARED
ST_F_LEN = ST_F_SHARED + 1
D_HELD = D_HOLD   # a decoder holds the slots of its reservation
# pre_i rows (prefilling requests, in admission order; P_NEW: this step's chunk)
P_RID, P_COMPUTED, P_TARGET, P_HELD, P_ORDER, P_NEW = range(6)
PRE_I_ROWS = 6
WANTS_PRE = 1   # st_i[S_PHASE]: the plan is made and its prefill attention asked for


@njit(cache=True)
def _table_prefill(pre_i, n_pre, prefill_tab, vals):
    """CalibratedCost.prefill_attention_s where it reads its table (every chunk a whole prompt
    shorter than the table); -1.0 where it does not (the caller computes it)."""
    for q in range(n_pre):
        if pre_i[P_COMPUTED, q] != 0 or pre_i[P_NEW, q] >= prefill_tab.shape[0]:
            return -1.0
    if n_pre == 1:
        return prefill_tab[pre_i[P_NEW, 0]]
    for q in range(n_pre):
        vals[q] = prefill_tab[pre_i[P_NEW, q]]
    return 0.0 + _pairwise(vals, n_pre)   # float(self._prefill[new].sum())


@njit(cache=True)
def run(arrival, cut, fired, prompt, output, final, max_new,
        status, reason, generated, first_sched, first_tok, finish, last_tok, tbt_max, query_tokens, query_blocks,
        cfg_i, cfg_f, fixed, prefill_tab, lm_tab, whole_tab, knots, share, slopes,
        st_i, st_f, dec_i, dec_f, waiting, pre_i,
        rec_f, rec_i, hist, rows_i, rows_f, gap_v, gap_m,
        dur, ends, kvb, wbs, vals, answers):
    """Run the replica from the state in `st_*` until it has nothing left to do (DONE), for
    cfg_i[C_CHUNK] iterations or until the gap buffers fill (PAUSE), until a step's prefill
    attention is wanted (CALL), or until it meets what it does not model (BAIL). In a lockstep fleet
    (st_i[S_LOCKSTEP], simkv.fused.fleet_loop) it runs up to the fleet's next hand-over and WAITs, as
    simkv.fused.paged_fcfs_kernel.run does."""
    n_req = arrival.shape[0]
    max_seqs, budget0, max_repeat, b = cfg_i[C_MAX_SEQS], cfg_i[C_PREFILL_BUDGET], cfg_i[C_MAX_REPEAT], cfg_i[C_BLOCK]
    layers, max_points, capacity = cfg_i[C_LAYERS], cfg_i[C_MAX_POINTS], cfg_i[C_CAPACITY]
    max_in_system, prefix_caching = cfg_i[C_MAX_IN_SYSTEM], cfg_i[C_PREFIX_CACHING]
    scale, warm, max_step = cfg_f[CF_SCALE], cfg_f[CF_WARMUP], cfg_f[CF_MAX_STEP]
    wsize = waiting.shape[0]
    gap_room = max_seqs + max_repeat + 2
    lockstep = st_i[S_LOCKSTEP] != 0
    done_at = 0
    while True:
        n = st_i[S_NDEC]
        n_pre = st_i[S_NPRE]
        now = st_f[SF_NOW]
        pre = 0.0
        pending = st_i[S_PENDING] != 0
        k = 1
        by_step = 0
        if pending:   # a lockstep step, pending: its plan as made (the fleet may have cut it since)
            k, by_step = st_i[S_K], st_i[S_BYSTEP]
            chunks = n_pre > 0
        elif st_i[S_PHASE] == WANTS_PRE:   # back with the plan's prefill attention
            st_i[S_PHASE] = 0
            pre = st_f[SF_PRE]
            chunks = True
        else:
            if done_at >= cfg_i[C_CHUNK] or st_i[S_NGAPS] + gap_room > gap_v.shape[0]:
                return PAUSE
            done_at += 1
            # ------------------------------------------------------------ idle (Replica._step_loop)
            if st_i[S_WCOUNT] == 0 and n == 0 and n_pre == 0:
                if lockstep:
                    return lockstep_idle(st_i)
                if st_i[S_NEXT] == n_req:
                    on_end(now, capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb, wbs)
                    return DONE
                idle_from = wait_for_arrival(fired, status, reason, waiting, max_in_system, st_i, st_f)
                on_idle(idle_from, st_f[SF_NOW], capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb,
                        wbs)
                continue
            if lockstep and now >= st_f[SF_HORIZON]:   # woken: the hand-overs of this instant come first
                return WAIT
            # ------------------------------------------------------------ schedule (tgi.py, chunked)
            budget = budget0 - n
            for q in range(n_pre):   # the batch's next chunks, oldest first
                c = max(1, min(pre_i[P_TARGET, q] - pre_i[P_COMPUTED, q], budget))
                pre_i[P_NEW, q] = c
                budget -= c
            free = st_i[S_FREE]
            while st_i[S_WCOUNT] > 0 and budget > 0 and n + n_pre < max_seqs:   # next_batch, concatenated
                rid = waiting[st_i[S_WHEAD]]
                reserve = prompt[rid] + max(max_new[rid] - 1, 0)
                target = prompt[rid] + generated[rid]
                if -(-max(target, reserve) // b) > free:   # can_allocate(target, reserve) / _cached(.., reserve)
                    break
                c = min(target, budget)
                blocks = -(-max(c, reserve) // b)
                free -= blocks
                st_i[S_WHEAD] = (st_i[S_WHEAD] + 1) % wsize
                st_i[S_WCOUNT] -= 1
                q = n_pre
                pre_i[P_RID, q] = rid
                pre_i[P_COMPUTED, q] = 0
                pre_i[P_TARGET, q] = target
                pre_i[P_HELD, q] = blocks * b
                pre_i[P_ORDER, q] = st_i[S_ORDER]
                pre_i[P_NEW, q] = c
                st_i[S_ORDER] += 1
                n_pre += 1
                if prefix_caching:   # the lookup finds nothing: only the query counts
                    query_tokens[rid] += target
                    query_blocks[rid] += target // b
                budget -= c
                if target != c:   # it overflows the budget: it takes the rest and ends the batch
                    break
            st_i[S_FREE] = free
            st_i[S_NPRE] = n_pre
            chunks = n_pre > 0
            if not chunks and n == 0:   # nothing can run though requests wait (the reference raises)
                st_i[S_BAIL] = BAIL_STUCK
                return BAIL
            if chunks:
                pre = _table_prefill(pre_i, n_pre, prefill_tab, vals)
                if pre < 0:
                    st_i[S_PHASE] = WANTS_PRE
                    return CALL
        if not pending:
            # ---------------------------------------------------------------- step times (calibrated.py)
            nxt = st_i[S_NEXT]
            next_at = cut[nxt] if nxt < cut.shape[0] else np.inf   # (a lockstep fleet cuts runs itself)
            if chunks:
                k = 1
                m = n
                n_sampled = n
                for q in range(n_pre):
                    m += pre_i[P_NEW, q]
                    if pre_i[P_COMPUTED, q] + pre_i[P_NEW, q] == pre_i[P_TARGET, q]:
                        n_sampled += 1
                n_seqs = n + n_pre
                if not sizes_fit(m, n_sampled, n, fixed, lm_tab, whole_tab, share):
                    st_i[S_BAIL] = BAIL_TABLE
                    return BAIL
                dec = decode_attention(dec_i, n, 1, knots, share, slopes, scale, vals)
                dur[0] = mixed_step_seconds(m, n_sampled, n_seqs, pre, dec, fixed, lm_tab, whole_tab, layers, cfg_f)
            else:   # repeated decodes, cut after the step in flight at the next arrival
                if not sizes_fit(n, n, n, fixed, lm_tab, whole_tab, share):
                    st_i[S_BAIL] = BAIL_TABLE
                    return BAIL
                limit = remaining_steps(dec_i, n, max_repeat)
                k = timed_decode_run(dec_i, n, limit, True, now, next_at, fixed, lm_tab, whole_tab, knots, share, slopes,
                                     layers, cfg_f, vals, dur, st_i)
                if k < 0:
                    st_i[S_BAIL] = BAIL_STEP_TIME
                    return BAIL
            if not check_step_times(dur, k, max_step):
                st_i[S_BAIL] = BAIL_STEP_TIME
                return BAIL
            step_ends(now, dur, k, ends)
            # ---------------------------------------------------------------- arrivals during the steps
            if lockstep:   # the fleet hands them over while the step is pending
                st_i[S_K], st_i[S_SENS], st_i[S_BYSTEP] = k, 1 if k > 1 and not chunks else 0, 0
            else:
                by_step = arrivals_during(fired, status, reason, waiting, max_in_system, n + n_pre, ends, k, wbs, st_i,
                                          st_f)
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
        measured = commit_decodes(dec_i, dec_f, n, dur, k, start, end, st_i, st_f)
        if measured < 0:
            st_i[S_BAIL] = BAIL_NONUNIFORM
            return BAIL
        # the decoders' slots: written, held (their reservations), min(held, final)
        tok = 0
        held = 0
        minhf = 0
        for i in range(n):
            tok += dec_i[D_KV, i]
            held += dec_i[D_HELD, i]
            minhf += min(dec_i[D_HELD, i], dec_i[D_FINAL, i])
        for s in range(k - 1):   # the steps of a run before its last (no prefill in a run)
            tok += n
            kvb[TOKEN, s] = tok
            kvb[RESERVED, s] = minhf - tok
            kvb[INTERNAL, s] = held - minhf
            kvb[EXTERNAL, s] = 0
            kvb[FREE, s] = capacity - held
        tok += n
        for i in range(n):
            dec_i[D_KV, i] += k
            dec_i[D_GEN, i] += k
        # prefill chunks advance; the completed ones join as decoders, in plan order
        end0 = ends[0]
        running = n + n_pre
        n_join = 0
        keep = 0
        for q in range(n_pre):
            rid = pre_i[P_RID, q]
            if math.isnan(first_sched[rid]):
                first_sched[rid] = start
            pre_i[P_COMPUTED, q] += pre_i[P_NEW, q]
            if pre_i[P_COMPUTED, q] < pre_i[P_TARGET, q]:
                if keep != q:
                    for r in range(PRE_I_ROWS):
                        pre_i[r, keep] = pre_i[r, q]
                keep += 1
                continue
            join_decoder(n, rid, pre_i[P_TARGET, q], pre_i[P_HELD, q], pre_i[P_ORDER, q], end0, arrival, output, final,
                         generated, tbt_max, first_tok, last_tok, warm, dec_i, dec_f, rec_f, gap_v, gap_m, st_i)
            tok += pre_i[P_TARGET, q]
            held += pre_i[P_HELD, q]
            minhf += min(pre_i[P_HELD, q], final[rid])
            n += 1
            n_join += 1
        n_pre = keep
        st_i[S_NPRE] = n_pre
        settle_uniform(n, n_join, end0, st_i, st_f)
        # the last step's breakdown: decoders, then the requests still prefilling (prefilling_breakdown)
        tok_p = 0
        res_p = 0
        int_p = 0
        for q in range(n_pre):
            computed, h = pre_i[P_COMPUTED, q], pre_i[P_HELD, q]
            r = min(h - computed, max(0, final[pre_i[P_RID, q]] - computed))
            tok_p += computed
            res_p += r
            int_p += h - computed - r
        res = minhf - tok
        kvb[TOKEN, k - 1] = tok + tok_p
        kvb[RESERVED, k - 1] = res + res_p
        kvb[INTERNAL, k - 1] = held - tok - res + int_p
        kvb[EXTERNAL, k - 1] = 0
        kvb[FREE, k - 1] = capacity - held - (tok_p + res_p + int_p)
        tokens = n   # tokens each step: every decoder's, and the first of each prefill completed
        # completions, in join order (ImplicitBatch._finish): their reservations go back (whole blocks)
        held_done = finish_decoders(dec_i, dec_f, n, end, finish, last_tok, generated, tbt_max, status, st_i,
                                    answers, answers[:0])
        st_i[S_FREE] += held_done // b
        record(start, ends, dur, kvb, k, running, num_waiting, by_step == 1, wbs, tokens, measured, capacity, max_points,
               rec_f, rec_i, hist, gap_v, gap_m, st_i, st_f, rows_i, rows_f)
        st_i[S_ITER] += 1
