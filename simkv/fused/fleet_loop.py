"""The compiled loop of a lockstep fleet (simkv.fused.fleet): one pool of paged FCFS, TGI or vLLM V1
replicas behind a router that reads load (least_loaded; session affinity, where every request is its
own group), on one clock, in one numba function. Equal, number for number, to
simkv.fleet.run.Fleet on simpy.

The fleet's arrival process hands request i over at fired[i]. Before it does, every replica runs
up to that instant (simkv.fused.paged_fcfs_kernel in lockstep: it commits the steps that end
earlier, its answers reaching the router in order, and keeps the step in flight pending); a step
ending exactly then is a tie simpy orders by event creation (BAIL). Then the router picks
(Router.pick: the lowest load, ties taken in turn) and the replica takes the request as
Replica.submit does: a pending arrival-sensitive run is cut after its step in flight
(Replica._end_run_now), the request joins the queue (the per-step queue depths of a run follow,
Replica._queue_by_step), and an idle replica wakes, after every hand-over of that instant.

State: fl_i / fl_f (FL_*), next_at (when each replica next has something to do), the router's
outstanding requests and tokens per replica (router_f) and its decisions; each replica's arrays
are the lone loop's, stacked (one row per replica).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from simkv.fused import paged_fcfs_kernel as pk
from simkv.fused import tgi_kernel as tk
from simkv.fused import vllm_v1_kernel as vk
from simkv.fused.layout import (BAIL, BAIL_RING, DONE, NO_LIMIT, PAUSE, S_BAIL, S_BYSTEP, S_CLOSED, S_K, S_NDEC,
                                S_PENDING, S_SENS, S_WCOUNT, S_WHEAD, SF_HORIZON, SF_NOW, S_AHEAD, S_ACOUNT)
from simkv.fused.loop_parts import on_idle
from simkv.request import REFUSED_BY_ENGINE, REJECTED

FL_NEXT, FL_RR, FL_TOKENS_N, FL_BY_TOKENS, FL_CHUNK, FL_REPLICA = range(6)
FL_I_LEN = 6
FL_TOKENS_SUM, FL_STATE_INTERVAL = 0, 1
FL_F_LEN = 2


@njit(cache=True)
def _pick(router_f, by_tokens, fl_i, fl_f):
    """Router.pick for least_loaded over every replica: the lowest load (outstanding requests, or
    tokens in mean-request units), ties within 1e-12 taken in turn."""
    r = router_f.shape[0]
    col = 1 if by_tokens else 0
    unit = 1.0
    if by_tokens and fl_i[FL_TOKENS_N]:
        unit = fl_f[FL_TOKENS_SUM] / fl_i[FL_TOKENS_N]
    low = np.inf
    for g in range(r):   # the scores, computed as Router._load does (tokens over the mean request's)
        low = min(low, router_f[g, col] / unit if by_tokens else router_f[g, col])
    top = low + 1e-12
    ties = 0
    for g in range(r):
        if (router_f[g, col] / unit if by_tokens else router_f[g, col]) <= top:
            ties += 1
    want = fl_i[FL_RR] % ties
    fl_i[FL_RR] += 1
    for g in range(r):
        if (router_f[g, col] / unit if by_tokens else router_f[g, col]) <= top:
            if want == 0:
                return g
            want -= 1
    return -1


@njit(cache=True)
def _refresh(now, interval, finish, answers, req_tokens, st_i, router_f):
    """Router.answered and _refresh: each replica's answers the router has seen by `now` (all of them,
    or with a state interval those answered by the last refresh before `now`), in the order they
    came, count no more (one request and its tokens fewer outstanding)."""
    seen_until = np.floor(now / interval) * interval if interval > 0 else np.inf
    size = answers.shape[1]
    for g in range(answers.shape[0]):
        while st_i[g, S_ACOUNT] > 0:
            rid = answers[g, st_i[g, S_AHEAD]]
            if not finish[rid] <= seen_until:
                break
            router_f[g, 0] -= 1.0
            router_f[g, 1] -= req_tokens[rid]
            st_i[g, S_AHEAD] = (st_i[g, S_AHEAD] + 1) % size
            st_i[g, S_ACOUNT] -= 1


@njit(cache=True)
def _next_at(g, in_batch, st_i, st_f, ends):
    """When replica g next has something to do: its pending step's end, now if it was woken, never if idle."""
    if st_i[g, S_PENDING]:
        return ends[g, st_i[g, S_K] - 1]
    if st_i[g, S_WCOUNT] or in_batch:
        return st_f[g, SF_NOW]
    return np.inf


@njit(cache=True)
def _due(g, horizon, closing, next_at, st_i, st_f):
    """Replica g has something to do before the fleet's next hand-over at `horizon` (closing: every
    replica runs to its end; those done are DONE at once): it is told the horizon."""
    if not next_at[g] <= horizon:
        return False
    st_f[g, SF_HORIZON] = horizon
    st_i[g, S_CLOSED] = 1 if closing else 0
    return True


@njit(cache=True)
def _hand_over(rid, g, f, in_batch, held, room, max_in_system, status, reason, capacity, max_points, st_i, st_f,
               waiting, rec_f, rows_i, rows_f, ends, kvb, wbs):
    """Replica.submit(rid) on replica g at `f`, `in_batch` requests in its batch and `held` counted
    outstanding by the router (this one too; its answers not yet seen included): 1 if it takes the
    request, 0 if it refuses it (refused at build time, or by the engine beyond `max_in_system`, TGI's
    max_concurrent_requests, as Scheduler.add_request refuses it), -1 where its queue could outgrow
    its ring, or its answers the `room` of theirs (BAIL_RING)."""
    pending = st_i[g, S_PENDING] != 0
    k = st_i[g, S_K]
    if pending and st_i[g, S_SENS] and k > 1:   # _end_run_now: the run ends with its step in flight
        keep = 1 + np.searchsorted(ends[g, :k - 1], f)
        if keep < k:
            st_i[g, S_K] = keep
            k = keep
    if status[rid] == REJECTED:
        return 0
    if pending and k > 1 and not st_i[g, S_BYSTEP]:   # the queue as the run began
        st_i[g, S_BYSTEP] = 1
        for s in range(k):
            wbs[g, s] = st_i[g, S_WCOUNT]
    idle = not pending and st_i[g, S_WCOUNT] == 0 and in_batch == 0
    if st_i[g, S_WCOUNT] + in_batch >= max_in_system:
        status[rid] = REJECTED
        reason[rid] = REFUSED_BY_ENGINE
        return 0
    wsize = waiting.shape[1]
    if held - st_i[g, S_ACOUNT] >= wsize - 1 or held >= room - 1:
        st_i[g, S_BAIL] = BAIL_RING
        return -1
    waiting[g, (st_i[g, S_WHEAD] + st_i[g, S_WCOUNT]) % wsize] = rid
    st_i[g, S_WCOUNT] += 1
    if pending and st_i[g, S_BYSTEP]:
        j = np.searchsorted(ends[g, :k], f)   # the first step ending at or after it
        for s in range(j, k):
            wbs[g, s] = st_i[g, S_WCOUNT]
    if idle:   # it wakes (after every hand-over of this instant: it plans when the fleet moves on)
        on_idle(st_f[g, SF_NOW], f, capacity, max_points, rec_f[g], st_i[g], st_f[g], rows_i[g], rows_f[g], ends[g],
                kvb[g], wbs[g])
        st_f[g, SF_NOW] = f
    return 1


@njit(cache=True)
def run(arrival, fired, empty, prompt, output, final,
        status, reason, generated, first_sched, first_tok, finish, last_tok, tbt_max, npre,
        cfg_i, cfg_f, fixed, prefill_tab, lm_tab, whole_tab, knots, share, slopes,
        st_i, st_f, dec_i, dec_f, waiting,
        rec_f, rec_i, hist, rows_i, rows_f, gap_v, gap_m,
        dur, ends, kvb, wbs, vals, plan_i, answers, req_tokens, router_f,
        fl_i, fl_f, next_at, decisions, replica_of):
    """Run the fleet until every request is answered (DONE), for fl_i[FL_CHUNK] hand-overs (PAUSE,
    fl_i[FL_REPLICA] -1), until a replica pauses (PAUSE, its index there: its gap buffer wants
    binning) or until a replica meets what it does not model (BAIL, its index there)."""
    n_req = fired.shape[0]
    r = st_i.shape[0]
    capacity, max_points = cfg_i[pk.C_CAPACITY], cfg_i[pk.C_MAX_POINTS]
    handed = 0
    while True:
        i = fl_i[FL_NEXT]
        closing = i >= n_req
        horizon = np.inf if closing else fired[i]
        # ------------------------------------------------ every replica up to the hand-over
        for g in range(r):
            if not _due(g, horizon, closing, next_at, st_i, st_f):
                continue
            code = pk.run(arrival, empty, empty, prompt, output, final, status, reason, generated, first_sched,
                          first_tok, finish, last_tok, tbt_max, npre, cfg_i, cfg_f, fixed, prefill_tab, lm_tab,
                          whole_tab, knots, share, slopes, st_i[g], st_f[g], dec_i[g], dec_f[g], waiting[g],
                          rec_f[g], rec_i[g], hist[g], rows_i[g], rows_f[g], gap_v[g], gap_m[g], dur[g], ends[g],
                          kvb[g], wbs[g], vals[g], plan_i[g], answers[g])
            if code == PAUSE or code == BAIL:
                fl_i[FL_REPLICA] = g
                return code
            next_at[g] = np.inf if code == DONE else _next_at(g, st_i[g, S_NDEC], st_i, st_f, ends)
        if closing:
            return DONE
        # ------------------------------------------------ the router decides; the replica takes it
        if handed >= fl_i[FL_CHUNK]:
            fl_i[FL_REPLICA] = -1
            return PAUSE
        handed += 1
        g = _route(i, fired[i], st_i[:, S_NDEC], NO_LIMIT, status, reason, capacity, max_points, st_i, st_f, waiting,
                   rec_f, rows_i, rows_f, ends, kvb, wbs, finish, answers, req_tokens, router_f, fl_i, fl_f, decisions,
                   replica_of)
        if g < 0:
            fl_i[FL_REPLICA] = replica_of[i]
            return BAIL
        next_at[g] = _next_at(g, st_i[g, S_NDEC], st_i, st_f, ends)
        fl_i[FL_NEXT] = i + 1


@njit(cache=True)
def run_tgi(arrival, fired, empty, prompt, output, final, max_new,
            status, reason, generated, first_sched, first_tok, finish, last_tok, tbt_max, query_tokens, query_blocks,
            cfg_i, cfg_f, fixed, prefill_tab, lm_tab, whole_tab, knots, share, slopes,
            st_i, st_f, dec_i, dec_f, waiting, pre_i,
            rec_f, rec_i, hist, rows_i, rows_f, gap_v, gap_m,
            dur, ends, kvb, wbs, vals, answers, req_tokens, router_f,
            fl_i, fl_f, next_at, decisions, replica_of):
    """`run` for TGI replicas (simkv.fused.tgi_kernel): their refusals beyond max_concurrent_requests
    at the hand-over, and a replica's CALL (its step's prefill attention wanted: its index in
    fl_i[FL_REPLICA]) returned to the caller. (The two loops differ only in the kernel they call and
    its arguments: a cached numba function cannot take the kernel as an argument.)"""
    n_req = fired.shape[0]
    r = st_i.shape[0]
    capacity, max_points = cfg_i[tk.C_CAPACITY], cfg_i[tk.C_MAX_POINTS]
    in_batch = np.zeros(r, np.int64)   # each replica's batch: its decoders and the requests prefilling
    handed = 0
    while True:
        i = fl_i[FL_NEXT]
        closing = i >= n_req
        horizon = np.inf if closing else fired[i]
        # ------------------------------------------------ every replica up to the hand-over
        for g in range(r):
            if not _due(g, horizon, closing, next_at, st_i, st_f):
                continue
            code = tk.run(arrival, empty, empty, prompt, output, final, max_new, status, reason, generated, first_sched,
                          first_tok, finish, last_tok, tbt_max, query_tokens, query_blocks, cfg_i, cfg_f, fixed,
                          prefill_tab, lm_tab, whole_tab, knots, share, slopes, st_i[g], st_f[g], dec_i[g], dec_f[g],
                          waiting[g], pre_i[g], rec_f[g], rec_i[g], hist[g], rows_i[g], rows_f[g], gap_v[g], gap_m[g],
                          dur[g], ends[g], kvb[g], wbs[g], vals[g], answers[g])
            if code == PAUSE or code == BAIL or code == tk.CALL:
                fl_i[FL_REPLICA] = g
                return code
            next_at[g] = np.inf if code == DONE else _next_at(g, st_i[g, S_NDEC] + st_i[g, tk.S_NPRE], st_i, st_f, ends)
        if closing:
            return DONE
        # ------------------------------------------------ the router decides; the replica takes it
        if handed >= fl_i[FL_CHUNK]:
            fl_i[FL_REPLICA] = -1
            return PAUSE
        handed += 1
        for q in range(r):
            in_batch[q] = st_i[q, S_NDEC] + st_i[q, tk.S_NPRE]
        g = _route(i, fired[i], in_batch, cfg_i[tk.C_MAX_IN_SYSTEM], status, reason, capacity, max_points, st_i, st_f, waiting,
                   rec_f, rows_i, rows_f, ends, kvb, wbs, finish, answers, req_tokens, router_f, fl_i, fl_f, decisions,
                   replica_of)
        if g < 0:
            fl_i[FL_REPLICA] = replica_of[i]
            return BAIL
        next_at[g] = _next_at(g, in_batch[g], st_i, st_f, ends)   # (taking a request does not change the batch)
        fl_i[FL_NEXT] = i + 1


@njit(cache=True)
def run_v1(empty_i, empty, arrival, fired, prompt, output, final, session, prefix_id, prefix_blocks, group, next_turn,
           think, status, reason, generated, first_sched, first_tok, finish, last_tok, tbt_max, npre,
           hit_tok, query_tok, hit_blk, query_blk,
           cfg_i, cfg_f, att_f, fixed, prefill_tab, lm_tab, whole_tab, knots, share, slopes,
           st_i, st_f, dec_i, dec_f, waiting, pre_i, slot_of, slots, blk, nblk, registered, pool_st, pool_tab,
           fh_f, fh_i, ah, rec_f, rec_i, hist, rows_i, rows_f, gap_v, gap_m,
           dur, ends, kvb, wbs, vals, names, victims, need_i, answers, req_tokens, router_f,
           fl_i, fl_f, next_at, decisions, replica_of):
    """`run` for vLLM V1 replicas (simkv.fused.vllm_v1_kernel): a replica's batch is its decoders and
    the requests prefilling, and its own block pool (the same loop, a third copy for the reason
    `run_tgi` gives)."""
    n_req = fired.shape[0]
    r = st_i.shape[0]
    capacity, max_points = cfg_i[vk.C_CAPACITY], cfg_i[vk.C_MAX_POINTS]
    in_batch = np.zeros(r, np.int64)
    handed = 0
    while True:
        i = fl_i[FL_NEXT]
        closing = i >= n_req
        horizon = np.inf if closing else fired[i]
        # ------------------------------------------------ every replica up to the hand-over
        for g in range(r):
            if not _due(g, horizon, closing, next_at, st_i, st_f):
                continue
            code = vk.run(empty_i, empty, empty, arrival, prompt, output, final, session, prefix_id, prefix_blocks,
                          group, next_turn, think, status, reason, generated, first_sched, first_tok, finish, last_tok,
                          tbt_max, npre, hit_tok, query_tok, hit_blk, query_blk, cfg_i, cfg_f, att_f, fixed,
                          prefill_tab, lm_tab, whole_tab, knots, share, slopes, st_i[g], st_f[g], dec_i[g], dec_f[g],
                          waiting[g], pre_i[g], slot_of, slots[g], blk[g], nblk[g], registered[g], pool_st[g],
                          pool_tab[g], fh_f[g], fh_i[g], ah[g], rec_f[g], rec_i[g], hist[g], rows_i[g], rows_f[g],
                          gap_v[g], gap_m[g], dur[g], ends[g], kvb[g], wbs[g], vals[g], names[g], victims[g],
                          need_i[g], answers[g])
            if code == PAUSE or code == BAIL:
                fl_i[FL_REPLICA] = g
                return code
            next_at[g] = np.inf if code == DONE else _next_at(g, st_i[g, S_NDEC] + st_i[g, vk.S_NPRE], st_i, st_f, ends)
        if closing:
            return DONE
        # ------------------------------------------------ the router decides; the replica takes it
        if handed >= fl_i[FL_CHUNK]:
            fl_i[FL_REPLICA] = -1
            return PAUSE
        handed += 1
        for q in range(r):
            in_batch[q] = st_i[q, S_NDEC] + st_i[q, vk.S_NPRE]
        g = _route(i, fired[i], in_batch, NO_LIMIT, status, reason, capacity, max_points, st_i, st_f, waiting, rec_f,
                   rows_i, rows_f, ends, kvb, wbs, finish, answers, req_tokens, router_f, fl_i, fl_f, decisions,
                   replica_of)
        if g < 0:
            fl_i[FL_REPLICA] = replica_of[i]
            return BAIL
        next_at[g] = _next_at(g, in_batch[g], st_i, st_f, ends)
        fl_i[FL_NEXT] = i + 1


@njit(cache=True)
def _route(i, f, in_batch, max_in_system, status, reason, capacity, max_points, st_i, st_f, waiting, rec_f, rows_i,
           rows_f, ends, kvb, wbs, finish, answers, req_tokens, router_f, fl_i, fl_f, decisions, replica_of):
    """Fleet._deliver of request i at `f`: the router picks, counts it sent (Router.sent) and, if the
    replica refuses it, answered (Router.answered(refused=True)). Returns the replica, or -1 (BAIL,
    the replica's reason set) where the replica's queue could outgrow its ring."""
    _refresh(f, fl_f[FL_STATE_INTERVAL], finish, answers, req_tokens, st_i, router_f)
    g = _pick(router_f, fl_i[FL_BY_TOKENS], fl_i, fl_f)
    tok = req_tokens[i]
    router_f[g, 0] += 1.0
    router_f[g, 1] += tok
    decisions[g] += 1
    fl_f[FL_TOKENS_SUM] += tok
    fl_i[FL_TOKENS_N] += 1
    replica_of[i] = g
    taken = _hand_over(i, g, f, in_batch[g], router_f[g, 0], answers.shape[1], max_in_system, status, reason, capacity,
                       max_points, st_i, st_f, waiting, rec_f, rows_i, rows_f, ends, kvb, wbs)
    if taken < 0:
        return -1
    if taken == 0:
        router_f[g, 0] -= 1.0
        router_f[g, 1] -= tok
    return g
