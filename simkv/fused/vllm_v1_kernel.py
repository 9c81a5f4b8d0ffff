"""The fused engine's compiled loop for vLLM V1 (simkv.fused.vllm_v1): arrivals and a session's
follow-up turns, token-budget scheduling with chunked prefill, the prefix-caching block pool, the
calibrated step time and the recorder's accumulation of one replica, in one numba function. Equal,
number for number, to simkv.engine.Replica running simkv.sched.chunked.ChunkedPrefillScheduler on
simkv.kv.compiled_prefix_cache.CompiledPrefixCache (or the plain paged pool with prefix caching
off) with simkv.cost.calibrated.CalibratedCost and the compiled recorder
(tests/test_fused_vllm_v1.py compares them).

A fleet's replica runs it routed or in lockstep with the others, as simkv.fused.paged_fcfs_kernel
says (the fleet then hands it every request: it has no follow-up turns of its own).

What it mirrors, and where (each piece keeps the reference's order of operations, of floats and of
the pool's blocks, so every eviction is the reference's):

- the clock and the arrivals (Replica._arrivals, _admit, _answered, _follow_up): the first turns
  arrive on the arrival process's clock (`init_fired`, simkv.fused.loop_parts.fire_times); a
  finished turn's follow-up is sent a think time later, at `end + (at - end)` where `at = end +
  think` (simpy's timeout), and joins the queue then; `at` itself decides where a decode run is cut
  (Replica._next_arrival_s). An idle engine wakes at every follow-up, even one refused at build
  time, and when the first turns are all sent; a refused turn ends its conversation
  (Replica._end_session);
- the policy (ChunkedPrefillScheduler.schedule): preempt the newest request (BatchBase.newest: the
  last decoder column or the newest prefill) until every decode's next slot fits, then the next
  chunk of each prefilling request in admission order within the token budget (preempting for its
  blocks), then new requests from the head of the queue (their cached prefix looked up, pinned and
  the rest taken, `_admit_cached`); full blocks are named when scheduled (`_cache_scheduled`) and at
  preemption; else the decodes repeated up to the first completion, the free blocks and max_repeat,
  cut at the next arrival when nobody waits;
- the pool (simkv.kv.pool_kernels, the compiled prefix cache's own kernels on the same arrays:
  reference counts, the LRU free queue, the name table), block tables per running request, decode
  growth taken in one call per commit in column order (ImplicitBatch._grow), frees in join order;
- block names (ChunkedPrefillScheduler.block_hashes): a conversation's blocks, else a shared
  prefix's, the sampling group's prompt, then the request's own;
- the step time (CalibratedCost.seconds, decode_run_seconds, prefill_attention_s): a chunk after
  cached context costs max(its causal table time, the fitted chunk time x the causal fraction),
  from the same table and coefficients (simkv.cost.operators.AttentionModel.prefill_time);
- the batch and the recorder as simkv.fused.paged_fcfs_kernel (simkv.fused.loop_parts), plus the
  prefilling requests and the blocks shared between tables in the KV breakdown
  (simkv.kv.usage.breakdown_from_sums).

It stops with BAIL (simkv.fused.loop_parts) where it does not model a case, and the caller runs the
default engine: an arrival or a follow-up at exactly a step's end, or a first turn and a follow-up
at the same instant (simpy orders those by event creation), a step time the engine rejects, a
request that can never be admitted, a size outside the cost model's tables.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from simkv.cost.attention_kernels import _pairwise
from simkv.fused.layout import (BAIL, BAIL_NONUNIFORM, BAIL_SAME_INSTANT, BAIL_STEP_TIME, BAIL_STUCK, BAIL_TABLE,
                                BAIL_TIE, CF_MAX_STEP, CF_SCALE, CF_WARMUP, D_FINAL, D_GEN, D_HOLD, D_KV, D_ORDER, D_RID,
                                DF_LAST, DF_TBT, DONE, EXTERNAL, FREE, INTERNAL, PAUSE, RESERVED, S_BAIL, S_BYSTEP,
                                S_FREE, S_ITER, S_K, S_LOCKSTEP, S_NDEC, S_NEXT, S_NGAPS, S_ORDER, S_PENDING, S_ROUTED,
                                S_SENS, S_WCOUNT, S_WHEAD, SF_HORIZON, SF_NOW, ST_F_SHARED, ST_I_SHARED, TOKEN, WAIT)
from simkv.fused.loop_parts import (blocks_needed, check_step_times, commit_decodes, decode_attention,
                                    finish_decoders, join_decoder, lockstep_idle, lockstep_wait, max_decode_steps,
                                    mixed_step_seconds, on_end, on_idle, record, remaining_steps, settle_uniform,
                                    sizes_fit, step_ends, timed_decode_run)
from simkv.kv import pool_kernels as pk
from simkv.request import REJECTED, SESSION_ENDED

# cfg_i
(C_MAX_SEQS, C_MAX_BATCHED, C_WATERMARK, C_MAX_REPEAT, C_BLOCK, C_LAYERS, C_MAX_POINTS, C_CAPACITY, C_CHUNK,
 C_CACHING, C_FULL_PROMPT) = range(11)
CFG_I_LEN = 11
# att_f: CalibratedCost's chunked-prefill attention (AttentionModel.prefill_time, _chunk_time)
A_A, A_B, A_C, A_HEADS, A_H, A_HEAD_DIM = range(6)
ATT_F_LEN = 6
# st_i after the shared slots: prefilling requests; the first turns all sent; the follow-up heaps'
# sizes and the next follow-up's creation number; blocks in several tables (sum of references - 1);
# free table slots
S_NPRE, S_INIT_DONE, S_FH, S_AH, S_FSEQ, S_SHARED, S_NSLOTS = range(ST_I_SHARED, ST_I_SHARED + 7)
# a pending lockstep step's preempted requests and chunks (in `victims` and pre_i's first rows)
S_NV, S_NCH = ST_I_SHARED + 7, ST_I_SHARED + 8
ST_I_LEN = ST_I_SHARED + 9
ST_F_LEN = ST_F_SHARED
# pre_i rows (prefilling requests, in admission order; P_NEW: this step's chunk)
P_RID, P_COMPUTED, P_TARGET, P_ORDER, P_NEW = range(5)
PRE_I_ROWS = 5
# follow-ups pending: fh_f / fh_i a heap by (fire time, creation), fh_i rows (creation, request);
# ah a heap of their `at` times (Replica._follow_ups)
FH_SEQ, FH_RID = range(2)
# block names (simkv.sched.chunked: SESSION, TRACE, PREFIX, GROUP, OWN)
K_SESSION, K_PREFIX, K_GROUP, K_OWN = 0, 2, 3, 4
INIT, FOLLOW = 1, 2   # event kinds


# ---------------------------------------------------------------- block names
@njit(cache=True)
def fill_names(rid, n, session, prefix_id, prefix_blocks, group, prompt, b, names):
    """ChunkedPrefillScheduler.block_hashes(rid, n * b) into names[:n]: block i of a conversation,
    else of the shared prefix (below its blocks), of the group's prompt (below the prompt's full
    blocks), else the request's own; a name is id * 2^35 + 8 i + kind."""
    s = session[rid]
    if s >= 0:
        base = (s << 35) + K_SESSION
        for i in range(n):
            names[i] = base + 8 * i
        return
    shared, full = prefix_blocks[rid], prompt[rid] // b
    for i in range(n):
        if i < shared:
            names[i] = (prefix_id[rid] << 35) + 8 * i + K_PREFIX
        elif i < full:
            names[i] = (group[rid] << 35) + 8 * i + K_GROUP
        else:
            names[i] = (rid << 35) + 8 * i + K_OWN


# ---------------------------------------------------------------- follow-up heaps
@njit(cache=True)
def _fh_less(fh_f, fh_i, x, y):
    return fh_f[x] < fh_f[y] or (fh_f[x] == fh_f[y] and fh_i[FH_SEQ, x] < fh_i[FH_SEQ, y])


@njit(cache=True)
def _fh_swap(fh_f, fh_i, x, y):
    fh_f[x], fh_f[y] = fh_f[y], fh_f[x]
    for r in range(2):
        fh_i[r, x], fh_i[r, y] = fh_i[r, y], fh_i[r, x]


@njit(cache=True)
def fh_push(fire_s, rid, fh_f, fh_i, st_i):
    """A follow-up sent at `fire_s`, after every one pending for that instant (simpy: by creation)."""
    j = st_i[S_FH]
    fh_f[j] = fire_s
    fh_i[FH_SEQ, j] = st_i[S_FSEQ]
    fh_i[FH_RID, j] = rid
    st_i[S_FSEQ] += 1
    st_i[S_FH] = j + 1
    while j > 0:
        p = (j - 1) // 2
        if not _fh_less(fh_f, fh_i, j, p):
            break
        _fh_swap(fh_f, fh_i, j, p)
        j = p


@njit(cache=True)
def fh_pop(fh_f, fh_i, st_i):
    """The next follow-up's request (the heap's top) out of the heap."""
    rid = fh_i[FH_RID, 0]
    m = st_i[S_FH] - 1
    st_i[S_FH] = m
    if m:
        fh_f[0] = fh_f[m]
        fh_i[FH_SEQ, 0], fh_i[FH_RID, 0] = fh_i[FH_SEQ, m], fh_i[FH_RID, m]
        j = 0
        while True:
            c = 2 * j + 1
            if c >= m:
                break
            if c + 1 < m and _fh_less(fh_f, fh_i, c + 1, c):
                c += 1
            if not _fh_less(fh_f, fh_i, c, j):
                break
            _fh_swap(fh_f, fh_i, c, j)
            j = c
    return rid


@njit(cache=True)
def ah_push(at, ah, st_i):
    j = st_i[S_AH]
    ah[j] = at
    st_i[S_AH] = j + 1
    while j > 0:
        p = (j - 1) // 2
        if not ah[j] < ah[p]:
            break
        ah[j], ah[p] = ah[p], ah[j]
        j = p


@njit(cache=True)
def ah_pop(ah, st_i):
    m = st_i[S_AH] - 1
    st_i[S_AH] = m
    if m:
        ah[0] = ah[m]
        j = 0
        while True:
            c = 2 * j + 1
            if c >= m:
                break
            if c + 1 < m and ah[c + 1] < ah[c]:
                c += 1
            if not ah[c] < ah[j]:
                break
            ah[c], ah[j] = ah[j], ah[c]
            j = c


# ---------------------------------------------------------------- arrivals and follow-ups
@njit(cache=True)
def next_event(init_fired, fh_f, st_i):
    """(time, kind) of the next arrival event: a first turn (INIT) or a follow-up (FOLLOW); kind 0
    if none is left, -1 if the two fall on one instant (simpy orders them by creation: BAIL)."""
    t_init = init_fired[st_i[S_NEXT]] if st_i[S_NEXT] < init_fired.shape[0] else np.inf
    t_fu = fh_f[0] if st_i[S_FH] > 0 else np.inf
    if t_init == np.inf and t_fu == np.inf:
        return np.inf, 0
    if t_init == t_fu:
        return t_init, -1
    return (t_init, INIT) if t_init < t_fu else (t_fu, FOLLOW)


@njit(cache=True)
def end_session(rid, next_turn, status, reason):
    """Replica._end_session: a turn that cannot run ends its conversation."""
    nxt = next_turn[rid]
    while nxt >= 0:
        status[nxt] = REJECTED
        if reason[nxt] == 0:
            reason[nxt] = SESSION_ENDED
        nxt = next_turn[nxt]


@njit(cache=True)
def take_event(kind, t, init_rows, next_turn, status, reason, arrival, waiting, fh_f, fh_i, ah, st_i):
    """Replica._arrivals / _follow_up at `t`: the event's request joins the queue (or, refused at
    build time, ends its conversation). Returns (wake, joined): joined 1 if it joined the queue;
    wake nonzero where the event wakes an idle engine: a joined request (1), every follow-up and the
    first turns' end (2: whatever the request)."""
    if kind == INIT:
        rid = init_rows[st_i[S_NEXT]]
        st_i[S_NEXT] += 1
        wake = 0
        if st_i[S_NEXT] == init_rows.shape[0]:   # the arrival process ends (and wakes the engine)
            st_i[S_INIT_DONE] = 1
            if st_i[S_ROUTED] == 0:   # (a routed replica has no arrival process: nothing ends)
                wake = 2
    else:
        rid = fh_pop(fh_f, fh_i, st_i)
        ah_pop(ah, st_i)
        arrival[rid] = t
        wake = 2
    if status[rid] == REJECTED:
        end_session(rid, next_turn, status, reason)
        return wake, 0
    waiting[(st_i[S_WHEAD] + st_i[S_WCOUNT]) % waiting.shape[0]] = rid
    st_i[S_WCOUNT] += 1
    return max(wake, 1), 1


@njit(cache=True)
def events_during(init_fired, init_rows, next_turn, status, reason, arrival, waiting, fh_f, fh_i, ah, ends, k, wbs,
                  st_i):
    """The arrivals and follow-ups while steps ending at ends[:k] run, taken then
    (simkv.fused.loop_parts.arrivals_during). Returns whether the steps get a queue depth each,
    -1 on an event at exactly the last end, -2 on two kinds at one instant before it."""
    end = ends[k - 1]
    wc0 = st_i[S_WCOUNT]
    by_step = False
    while True:
        t, kind = next_event(init_fired, fh_f, st_i)
        if kind < 0 and t < end:
            return -2
        if kind < 0 and t == end:
            return -1
        if kind == 0 or not t < end:
            if kind != 0 and t == end:
                return -1
            break
        _, joined = take_event(kind, t, init_rows, next_turn, status, reason, arrival, waiting, fh_f, fh_i, ah, st_i)
        if joined and k > 1:
            if not by_step:   # the queue as the run began
                by_step = True
                for s in range(k):
                    wbs[s] = wc0
            j = np.searchsorted(ends[:k], t)   # the first step ending at or after it
            for s in range(j, k):
                wbs[s] = st_i[S_WCOUNT]
    if by_step:
        wbs[k - 1] = st_i[S_WCOUNT]
    return 1 if by_step else 0


@njit(cache=True)
def wait_for_wake(init_fired, init_rows, next_turn, status, reason, arrival, waiting, fh_f, fh_i, ah, st_i, st_f):
    """An idle engine sleeps until something wakes it (`take_event`); every event of that instant
    is taken first. Returns when it slept from, or -1.0 on a tie of two kinds."""
    idle_from = st_f[SF_NOW]
    clock = idle_from
    woke = False
    while True:
        t, kind = next_event(init_fired, fh_f, st_i)
        if kind == 0 or (woke and t > clock):
            break
        if kind < 0:
            return -1.0
        clock = t
        wake, _ = take_event(kind, t, init_rows, next_turn, status, reason, arrival, waiting, fh_f, fh_i, ah, st_i)
        if wake:
            woke = True
    if woke or st_i[S_ROUTED] == 0:   # (a routed replica woken by nothing sleeps on: its clock stays)
        st_f[SF_NOW] = clock
    return idle_from


# ---------------------------------------------------------------- the block pool (CompiledPrefixCache)
@njit(cache=True)
def register(rid, slot, tokens, n_names, session, prefix_id, prefix_blocks, group, prompt, b, blk, nblk, registered,
             pool_st, pool_tab, names):
    """PrefixCacheBase.register(rid, block_hashes(rid, n_names * b), tokens): the full blocks among
    the first `tokens` slots take their names, where neither is taken yet."""
    full = min(tokens // b, n_names, nblk[slot])
    done = registered[slot]
    if full > done:
        fill_names(rid, full, session, prefix_id, prefix_blocks, group, prompt, b, names)
        pk.name_blocks(names[done:full], blk[slot, done:full], pool_st, pool_tab)
        registered[slot] = full


@njit(cache=True)
def release(slot, caching, blk, nblk, slots, pool_st, st_i):
    """PrefixCacheBase.free: one reference fewer to each block of the table, tail blocks first (the
    ones left free join the queue's end); the table slot is free again."""
    m = nblk[slot]
    if caching and m:
        shared = pk.release(blk[slot, :m], pool_st)
        st_i[S_SHARED] -= shared
        st_i[S_FREE] += m - shared
    else:
        st_i[S_FREE] += m
    nblk[slot] = 0
    slots[st_i[S_NSLOTS]] = slot
    st_i[S_NSLOTS] += 1


@njit(cache=True)
def grow(slot, blocks, caching, blk, nblk, pool_st, pool_tab, st_i):
    """PagedAllocator.append up to `blocks` blocks: the missing ones taken from the queue's front."""
    need = blocks - nblk[slot]
    if need > 0:
        if caching:
            pk.take(need, pool_st, pool_tab, blk[slot, nblk[slot]:blocks])
        nblk[slot] = blocks
        st_i[S_FREE] -= need


# ---------------------------------------------------------------- the policy (chunked.py)
@njit(cache=True)
def preempt_newest(caching, session, prefix_id, prefix_blocks, group, prompt, b, generated, tbt_max, last_tok,
                   dec_i, dec_f, pre_i, slot_of, blk, nblk, registered, slots, pool_st, pool_tab, names, waiting,
                   st_i):
    """ChunkedPrefillScheduler._preempt_newest: the newest running request (BatchBase.newest: the
    last decoder column, or a prefill admitted later) names its computed full blocks, frees its
    table and rejoins the queue's front. Returns it."""
    n, n_pre = st_i[S_NDEC], st_i[S_NPRE]
    best = dec_i[D_ORDER, n - 1] if n else -1
    if n_pre and pre_i[P_ORDER, n_pre - 1] > best:   # prefills are in admission order: the last is the newest
        rid = pre_i[P_RID, n_pre - 1]
        tokens = pre_i[P_COMPUTED, n_pre - 1]
        st_i[S_NPRE] = n_pre - 1
    else:
        rid = dec_i[D_RID, n - 1]
        tokens = dec_i[D_KV, n - 1]
        generated[rid] = dec_i[D_GEN, n - 1]
        tbt_max[rid] = dec_f[DF_TBT, n - 1]
        last_tok[rid] = dec_f[DF_LAST, n - 1]
        st_i[S_NDEC] = n - 1
    slot = slot_of[rid]
    if caching:   # its computed blocks stay cached (until evicted) for the recompute
        register(rid, slot, tokens, tokens // b, session, prefix_id, prefix_blocks, group, prompt, b, blk, nblk,
                 registered, pool_st, pool_tab, names)
    release(slot, caching, blk, nblk, slots, pool_st, st_i)
    st_i[S_WHEAD] = (st_i[S_WHEAD] - 1) % waiting.shape[0]
    waiting[st_i[S_WHEAD]] = rid
    st_i[S_WCOUNT] += 1
    return rid


# ---------------------------------------------------------------- the step time (calibrated.py)
@njit(cache=True)
def prefill_attention(pre_i, n_ch, prefill_tab, att_f, vals):
    """CalibratedCost.prefill_attention_s of the step's chunks; -1.0 for a chunk beyond the table."""
    whole = True
    for q in range(n_ch):
        if pre_i[P_NEW, q] >= prefill_tab.shape[0]:
            return -1.0
        if pre_i[P_COMPUTED, q] != 0:
            whole = False
    if whole:   # the measured table (simkv.fused.tgi_kernel._table_prefill)
        if n_ch == 1:
            return prefill_tab[pre_i[P_NEW, 0]]
        for q in range(n_ch):
            vals[q] = prefill_tab[pre_i[P_NEW, q]]
        return 0.0 + _pairwise(vals, n_ch)
    a, bb, c = att_f[A_A], att_f[A_B], att_f[A_C]
    heads, h, head_dim = att_f[A_HEADS], att_f[A_H], att_f[A_HEAD_DIM]
    for q in range(n_ch):   # AttentionModel.prefill_time, element by element
        new = float(pre_i[P_NEW, q])
        cached = float(pre_i[P_COMPUTED, q])
        base = prefill_tab[pre_i[P_NEW, q]]
        if cached > 0:
            kv = new + cached
            chunk = (a * new * kv + bb * kv + c) * heads / h * head_dim / 128
            causal = (new * cached + new * (new + 1) / 2) / (new * (new + cached))
            v = chunk * causal
            vals[q] = base if base >= v else v   # np.maximum (no NaN here)
        else:
            vals[q] = base
    return 0.0 + _pairwise(vals, n_ch)


@njit(cache=True)
def run(init_rows, init_cut, init_fired, arrival, prompt, output, final, session, prefix_id, prefix_blocks, group,
        next_turn, think,
        status, reason, generated, first_sched, first_tok, finish, last_tok, tbt_max, npre,
        hit_tok, query_tok, hit_blk, query_blk,
        cfg_i, cfg_f, att_f, fixed, prefill_tab, lm_tab, whole_tab, knots, share, slopes,
        st_i, st_f, dec_i, dec_f, waiting, pre_i, slot_of, slots, blk, nblk, registered, pool_st, pool_tab,
        fh_f, fh_i, ah,
        rec_f, rec_i, hist, rows_i, rows_f, gap_v, gap_m,
        dur, ends, kvb, wbs, vals, names, victims, need_i, answers):
    """Run the replica from the state in `st_*` until it has nothing left to do (DONE), for
    cfg_i[C_CHUNK] iterations or until the gap buffers fill (PAUSE), or until it meets what it
    does not model (BAIL, reason in st_i[S_BAIL])."""
    max_seqs, max_batched = cfg_i[C_MAX_SEQS], cfg_i[C_MAX_BATCHED]
    watermark, max_repeat, b = cfg_i[C_WATERMARK], cfg_i[C_MAX_REPEAT], cfg_i[C_BLOCK]
    layers, max_points, capacity = cfg_i[C_LAYERS], cfg_i[C_MAX_POINTS], cfg_i[C_CAPACITY]
    caching, full_prompt = cfg_i[C_CACHING] != 0, cfg_i[C_FULL_PROMPT] != 0
    scale, warm, max_step = cfg_f[CF_SCALE], cfg_f[CF_WARMUP], cfg_f[CF_MAX_STEP]
    wsize = waiting.shape[0]
    gap_cap = gap_v.shape[0]
    gap_room = max_seqs + max_repeat + 2   # the most gaps one iteration leaves
    outb = need_i   # (a decode commit's new blocks, before they are dealt out)
    lockstep = st_i[S_LOCKSTEP] != 0
    done_at = 0
    while True:
        if done_at >= cfg_i[C_CHUNK] or st_i[S_NGAPS] + gap_room > gap_cap:
            return PAUSE
        done_at += 1
        now = st_f[SF_NOW]
        n = st_i[S_NDEC]
        if st_i[S_PENDING]:   # a lockstep step, pending: its plan as made (the fleet may have cut it since)
            k, nv, n_ch, by_step = st_i[S_K], st_i[S_NV], st_i[S_NCH], st_i[S_BYSTEP]
            free = st_i[S_FREE]
            n_pre = st_i[S_NPRE]
        else:
            # ---------------------------------------------------------------- idle (Replica._step_loop)
            if st_i[S_WCOUNT] == 0 and n == 0 and st_i[S_NPRE] == 0:
                if lockstep:
                    return lockstep_idle(st_i)
                if st_i[S_INIT_DONE] and st_i[S_FH] == 0:
                    on_end(now, capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb, wbs)
                    return DONE
                idle_from = wait_for_wake(init_fired, init_rows, next_turn, status, reason, arrival, waiting, fh_f, fh_i,
                                          ah, st_i, st_f)
                if idle_from < 0:
                    st_i[S_BAIL] = BAIL_SAME_INSTANT
                    return BAIL
                on_idle(idle_from, st_f[SF_NOW], capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb, wbs)
                continue
            if lockstep and now >= st_f[SF_HORIZON]:   # woken: the hand-overs of this instant come first
                return WAIT
            # ---------------------------------------------------------------- schedule (chunked.py)
            nv = 0
            dbn = blocks_needed(dec_i, n, 1, b)
            while st_i[S_NDEC] and dbn > st_i[S_FREE]:   # _make_room_for_decodes
                victims[nv] = preempt_newest(caching, session, prefix_id, prefix_blocks, group, prompt, b, generated,
                                             tbt_max, last_tok, dec_i, dec_f, pre_i, slot_of, blk, nblk, registered, slots,
                                             pool_st, pool_tab, names, waiting, st_i)
                nv += 1
                dbn = blocks_needed(dec_i, st_i[S_NDEC], 1, b)
            budget = max_batched - st_i[S_NDEC]
            more = False
            q = 0
            while q < st_i[S_NPRE]:   # _continue_prefills: the next chunks, in admission order
                if budget <= 0:
                    more = True
                    break
                rid = pre_i[P_RID, q]
                c = min(pre_i[P_TARGET, q] - pre_i[P_COMPUTED, q], budget)
                blocks = -(-(pre_i[P_COMPUTED, q] + c) // b)
                while q < st_i[S_NPRE] and blocks - nblk[slot_of[rid]] + dbn > st_i[S_FREE]:   # _can_grow
                    victims[nv] = preempt_newest(caching, session, prefix_id, prefix_blocks, group, prompt, b, generated,
                                                 tbt_max, last_tok, dec_i, dec_f, pre_i, slot_of, blk, nblk, registered,
                                                 slots, pool_st, pool_tab, names, waiting, st_i)
                    nv += 1
                    dbn = blocks_needed(dec_i, st_i[S_NDEC], 1, b)
                if q >= st_i[S_NPRE]:   # preempted itself
                    more = True
                    break
                slot = slot_of[rid]
                grow(slot, blocks, caching, blk, nblk, pool_st, pool_tab, st_i)
                if caching:
                    register(rid, slot, pre_i[P_COMPUTED, q] + c, pre_i[P_TARGET, q] // b, session, prefix_id,
                             prefix_blocks, group, prompt, b, blk, nblk, registered, pool_st, pool_tab, names)
                pre_i[P_NEW, q] = c
                budget -= c
                q += 1
            n_ch = q
            n = st_i[S_NDEC]
            if nv == 0 and not more:   # _admit: new requests from the head of the queue
                keep = watermark + dbn
                while st_i[S_WCOUNT] > 0 and budget > 0 and n + st_i[S_NPRE] < max_seqs:
                    rid = waiting[st_i[S_WHEAD]]
                    target = prompt[rid] + generated[rid]
                    if caching:   # _admit_cached
                        nh = target // b
                        hits = 0
                        if nh:
                            fill_names(rid, nh, session, prefix_id, prefix_blocks, group, prompt, b, names)
                            hits = pk.leading(names[:nh], pool_tab)
                        if hits * b >= target:   # fully cached: the last token is recomputed
                            hits -= 1
                        cached = hits * b
                        c = min(target - cached, budget)
                        tokens = target if full_prompt else cached + c
                        free_hits = pk.free_among(names[:hits], pool_st, pool_tab) if hits else 0
                        if max(0, -(-tokens // b) - hits) + free_hits + keep > st_i[S_FREE]:
                            break
                        st_i[S_NSLOTS] -= 1
                        slot = slots[st_i[S_NSLOTS]]
                        slot_of[rid] = slot
                        if hits:   # the cached blocks pinned first: taking new ones must not evict them
                            pk.blocks_of(names[:hits], pool_tab, blk[slot, :hits])
                            freed = pk.pin(blk[slot, :hits], pool_st)
                            st_i[S_FREE] -= freed
                            st_i[S_SHARED] += hits - freed
                        nblk[slot] = hits
                        registered[slot] = hits
                        grow(slot, -(-(cached + c) // b), caching, blk, nblk, pool_st, pool_tab, st_i)
                        hit_tok[rid] += cached
                        query_tok[rid] += target
                        hit_blk[rid] += hits
                        query_blk[rid] += nh
                        register(rid, slot, cached + c, nh, session, prefix_id, prefix_blocks, group, prompt, b, blk, nblk,
                                 registered, pool_st, pool_tab, names)
                    else:
                        cached = 0
                        c = min(target, budget)
                        tokens = target if full_prompt else c
                        if -(-tokens // b) + keep > st_i[S_FREE]:
                            break
                        st_i[S_NSLOTS] -= 1
                        slot = slots[st_i[S_NSLOTS]]
                        slot_of[rid] = slot
                        nblk[slot] = 0
                        grow(slot, -(-c // b), caching, blk, nblk, pool_st, pool_tab, st_i)
                    st_i[S_WHEAD] = (st_i[S_WHEAD] + 1) % wsize
                    st_i[S_WCOUNT] -= 1
                    p = st_i[S_NPRE]
                    pre_i[P_RID, p] = rid
                    pre_i[P_COMPUTED, p] = cached
                    pre_i[P_TARGET, p] = target
                    pre_i[P_ORDER, p] = st_i[S_ORDER]
                    pre_i[P_NEW, p] = c
                    st_i[S_ORDER] += 1
                    st_i[S_NPRE] = p + 1
                    budget -= c
                n_ch = st_i[S_NPRE]
            n_pre = st_i[S_NPRE]
            if n == 0 and n_ch == 0:   # nothing can run though requests wait (the reference raises)
                st_i[S_BAIL] = BAIL_STUCK
                return BAIL
            free = st_i[S_FREE]
            # ---------------------------------------------------------------- step times (calibrated.py)
            nxt_init = init_cut[st_i[S_NEXT]] if st_i[S_NEXT] < init_cut.shape[0] else np.inf
            next_at = min(nxt_init, ah[0]) if st_i[S_AH] > 0 else nxt_init   # Replica._next_arrival_s
            if n_ch or nv:
                k = 1
                m = n
                n_sampled = n
                for q in range(n_ch):
                    m += pre_i[P_NEW, q]
                    if pre_i[P_COMPUTED, q] + pre_i[P_NEW, q] == pre_i[P_TARGET, q]:
                        n_sampled += 1
                n_seqs = n + n_ch
                if not sizes_fit(m, n_sampled, n, fixed, lm_tab, whole_tab, share):
                    st_i[S_BAIL] = BAIL_TABLE
                    return BAIL
                pre = 0.0
                if n_ch:
                    pre = prefill_attention(pre_i, n_ch, prefill_tab, att_f, vals)
                    if pre < 0:
                        st_i[S_BAIL] = BAIL_TABLE
                        return BAIL
                dec = decode_attention(dec_i, n, 1, knots, share, slopes, scale, vals)
                dur[0] = mixed_step_seconds(m, n_sampled, n_seqs, pre, dec, fixed, lm_tab, whole_tab, layers, cfg_f)
            else:   # repeated decodes: up to the first completion, max_repeat and the free blocks
                if not sizes_fit(n, n, n, fixed, lm_tab, whole_tab, share):
                    st_i[S_BAIL] = BAIL_TABLE
                    return BAIL
                limit = max_decode_steps(dec_i, n, remaining_steps(dec_i, n, max_repeat), b, free)
                sensitive = st_i[S_WCOUNT] == 0   # nobody waits: an arrival can change the plan
                k = timed_decode_run(dec_i, n, limit, sensitive, now, next_at, fixed, lm_tab, whole_tab, knots, share,
                                     slopes, layers, cfg_f, vals, dur, st_i)
            if not check_step_times(dur, k, max_step):
                st_i[S_BAIL] = BAIL_STEP_TIME
                return BAIL
            step_ends(now, dur, k, ends)
            # ---------------------------------------------------------------- arrivals during the steps
            if lockstep:   # the fleet hands them over while the step is pending
                st_i[S_K], st_i[S_NV], st_i[S_NCH] = k, nv, n_ch
                st_i[S_SENS] = 1 if k > 1 and not (n_ch or nv) and st_i[S_WCOUNT] == 0 else 0
                st_i[S_BYSTEP] = 0
                by_step = 0
            else:
                by_step = events_during(init_fired, init_rows, next_turn, status, reason, arrival, waiting, fh_f, fh_i,
                                        ah, ends, k, wbs, st_i)
                if by_step < 0:
                    st_i[S_BAIL] = BAIL_TIE if by_step == -1 else BAIL_SAME_INSTANT
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
        # the decoders' growth: every block of the k steps taken at once, dealt out in column order
        total = 0
        tok = 0
        held = 0
        for i in range(n):
            kv = dec_i[D_KV, i]
            tok += kv
            held += dec_i[D_HOLD, i]
            total += (kv + k + b - 1) // b - (kv + b - 1) // b
        if total:
            if caching:
                pk.take(total, pool_st, pool_tab, outb)
                pos = 0
                for i in range(n):
                    kv = dec_i[D_KV, i]
                    g = (kv + k + b - 1) // b - (kv + b - 1) // b
                    if g:
                        slot = slot_of[dec_i[D_RID, i]]
                        m0 = nblk[slot]
                        for j in range(g):
                            blk[slot, m0 + j] = outb[pos + j]
                        nblk[slot] = m0 + g
                        pos += g
            else:
                for i in range(n):
                    kv = dec_i[D_KV, i]
                    nblk[slot_of[dec_i[D_RID, i]]] += (kv + k + b - 1) // b - (kv + b - 1) // b
            free -= total
        shared_slots = st_i[S_SHARED] * b
        for s in range(k):
            for i in range(n):
                kv = dec_i[D_KV, i]
                if kv % b == 0:
                    dec_i[D_HOLD, i] += 1
                    held += 1
                dec_i[D_KV, i] = kv + 1
                dec_i[D_GEN, i] += 1
            tok += n
            if s < k - 1:   # (a run has no prefills)
                res = 0
                for i in range(n):
                    kv = dec_i[D_KV, i]
                    res += min(dec_i[D_HOLD, i] * b - kv, max(dec_i[D_FINAL, i] - kv, 0))
                kvb[TOKEN, s] = tok - shared_slots
                kvb[RESERVED, s] = res
                kvb[INTERNAL, s] = held * b - tok - res
                kvb[EXTERNAL, s] = 0
                kvb[FREE, s] = capacity - held * b + shared_slots
        # prefill chunks advance; the completed ones join as decoders, in plan order
        end0 = ends[0]
        n_join = 0
        keep_q = 0
        for q in range(n_pre):
            if q < n_ch:
                rid = pre_i[P_RID, q]
                if math.isnan(first_sched[rid]):
                    first_sched[rid] = start
                pre_i[P_COMPUTED, q] += pre_i[P_NEW, q]
                if pre_i[P_COMPUTED, q] == pre_i[P_TARGET, q]:
                    blocks = nblk[slot_of[rid]]
                    join_decoder(n, rid, pre_i[P_TARGET, q], blocks, pre_i[P_ORDER, q], end0, arrival, output, final,
                                 generated, tbt_max, first_tok, last_tok, warm, dec_i, dec_f, rec_f, gap_v, gap_m,
                                 st_i)
                    held += blocks
                    tok += pre_i[P_TARGET, q]
                    n += 1
                    n_join += 1
                    continue
            if keep_q != q:
                for r in range(PRE_I_ROWS):
                    pre_i[r, keep_q] = pre_i[r, q]
            keep_q += 1
        n_pre = keep_q
        st_i[S_NPRE] = n_pre
        st_i[S_NDEC] = n
        settle_uniform(n, n_join, end0, st_i, st_f)
        res = 0
        for i in range(n):
            kv = dec_i[D_KV, i]
            res += min(dec_i[D_HOLD, i] * b - kv, max(dec_i[D_FINAL, i] - kv, 0))
        tok_p = 0   # the requests still prefilling (simkv.kv.usage.prefilling_breakdown)
        res_p = 0
        int_p = 0
        for q in range(n_pre):
            computed, h = pre_i[P_COMPUTED, q], nblk[slot_of[pre_i[P_RID, q]]] * b
            r = min(h - computed, max(0, final[pre_i[P_RID, q]] - computed))
            tok_p += computed
            res_p += r
            int_p += h - computed - r
        kvb[TOKEN, k - 1] = tok + tok_p - shared_slots
        kvb[RESERVED, k - 1] = res + res_p
        kvb[INTERNAL, k - 1] = held * b - tok - res + int_p
        kvb[EXTERNAL, k - 1] = 0
        kvb[FREE, k - 1] = capacity - held * b - (tok_p + res_p + int_p) + shared_slots
        running = n - n_join + n_ch   # the step's batch: decodes and prefill chunks
        tokens = n   # decodes + the completed prefills' first tokens
        st_i[S_FREE] = free
        # completions, in join order (ImplicitBatch._finish): tables freed, follow-ups sent a think time later
        finish_decoders(dec_i, dec_f, n, end, finish, last_tok, generated, tbt_max, status, st_i, answers, outb)
        for j in range(n - st_i[S_NDEC]):
            rid = outb[j]
            release(slot_of[rid], caching, blk, nblk, slots, pool_st, st_i)
            nxt = next_turn[rid]
            if nxt >= 0:   # Replica._answered, _follow_up: timeout(at - now) from now
                at = end + think[nxt]
                fh_push(end + (at - end), nxt, fh_f, fh_i, st_i)
                ah_push(at, ah, st_i)
        record(start, ends, dur, kvb, k, running, num_waiting, by_step == 1, wbs, tokens, measured, capacity, max_points,
               rec_f, rec_i, hist, gap_v, gap_m, st_i, st_f, rows_i, rows_f)
        st_i[S_ITER] += 1
