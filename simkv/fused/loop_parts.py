"""What every fused engine's loop shares (simkv.fused): the clock and the arrivals of one replica
(simkv.engine.Replica), the running decoders (simkv.sched.implicit_batch.ImplicitBatch: decode
commits, joins, completions), the calibrated step time (simkv.cost.calibrated.CalibratedCost) and
the recorder's accumulation (simkv.metrics.recorder_kernels.on_steps, Recorder._sample, on_idle,
on_end), as numba functions over the state arrays a loop is given.

State layout shared by the loops (a loop's own slots come after these): `st_i` holds S_* and `st_f`
SF_*; `waiting` is the queue as a ring buffer (head st_i[S_WHEAD], length st_i[S_WCOUNT]); `rows_i`
/ `rows_f` the time series (Recorder._rows: sample index, the five KV rows, running, queued / time,
utilization); `gap_v` / `gap_m` token gaps (and how many tokens had each) that the caller bins with
numpy, as the pure recorder bins them (a recompute's gap; a step time near a bin edge).

Arrivals follow Replica._arrivals and _admit. The arrival process sleeps `arrival - now` and wakes
at `now + (arrival - now)`, which is the arrival time only when that subtraction is exact (the
previous arrival at least half as late): a loop is given those times, `fired` (`fire_times`), the
times the engine sees arrivals at, and `cut`, the times that decide where a decode run is cut: the
table's, as in Replica._next_arrival_s. A request refused at build time (status REJECTED) is
skipped; one the policy refuses (TGI's max_concurrent_requests) becomes REJECTED with
REFUSED_BY_ENGINE; neither wakes an idle engine. During a multi-step run, the first arrival not
refused at build time starts the per-step queue depths (Replica._queue_by_step), whether the policy
then takes it or not.

A routed replica (st_i[S_ROUTED], a fleet's, simkv.fused.fleet) has no arrival process: the fleet's
hands it its requests (`fired` is then the fleet's clock at each hand-over, and `cut` the same).
Replica.submit cuts a run in flight at the hand-over, so the run is timed and checked whole first
(`timed_decode_run`); a request refused at build time does not wake it, and its loop stops at its
last step, without the idle tail: the fleet adds that up to its own end (Recorder.on_idle, on_end).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from simkv.cost.attention_kernels import _interp_into, _pairwise
from simkv.fused.layout import (S_NEXT, S_WHEAD, S_WCOUNT, S_SAMPLE, S_NROWS, S_NGAPS, S_NDEC, S_UNIFORM, S_ROUTED,
                                SF_NOW, SF_DT, SF_ARRIVALS, SF_UNIFORM, CF_C_ATT, CF_SCALE, CF_HOST, CF_HOST_PER_SEQ,
                                CF_MAX_STEP, D_RID, D_KV, D_GEN, D_OUT, D_FINAL, D_HOLD, D_MEAS, D_ORDER, DEC_I_ROWS,
                                DF_TBT, DF_LAST, DEC_F_ROWS, TOKEN, FREE, F_W0, F_W1, S_LOCKSTEP, S_PENDING,
                                S_BAIL, SF_HORIZON, WAIT, BAIL, BAIL_TIE, S_CLOSED, DONE, S_AHEAD,
                                S_ACOUNT)
from simkv.metrics.recorder_kernels import F_GAP_MAX, _bin_position, _near_edge, on_steps
from simkv.request import DONE as DONE_STATUS
from simkv.request import REFUSED_BY_ENGINE, REJECTED


@njit(cache=True)
def push_gap(gap, mult, gap_v, gap_m, st_i):
    """A token gap (`mult` tokens had it) for the caller to bin with numpy."""
    g = st_i[S_NGAPS]
    gap_v[g] = gap
    gap_m[g] = mult
    st_i[S_NGAPS] = g + 1


@njit(cache=True)
def sample(ends, k, kv, running, waiting, by_step, wbs, capacity, max_points, st_i, st_f, rows_i, rows_f):
    """Recorder._sample: the state at every grid time up to ends[k - 1], decimating past max_points."""
    last = k - 1
    while st_i[S_SAMPLE] * st_f[SF_DT] <= ends[last]:
        s = st_i[S_SAMPLE]
        t = s * st_f[SF_DT]
        j = 0
        if last:
            j = np.searchsorted(ends[:k], t)   # side="left", as ndarray.searchsorted
            if j > last:
                j = last
        r = st_i[S_NROWS]
        rows_i[r, 0] = s
        for q in range(5):
            rows_i[r, 1 + q] = kv[q, j]
        rows_i[r, 6] = running
        rows_i[r, 7] = wbs[j] if by_step else waiting
        rows_f[r, 0] = t
        rows_f[r, 1] = kv[TOKEN, j] / capacity
        st_i[S_NROWS] = r + 1
        st_i[S_SAMPLE] = s + 1
        if r + 1 > max_points:   # Recorder._decimate
            keep = 0
            for q in range(r + 1):
                if rows_i[q, 0] % 2 == 0:
                    rows_i[keep] = rows_i[q]
                    rows_i[keep, 0] = rows_i[q, 0] // 2
                    rows_f[keep] = rows_f[q]
                    keep += 1
            st_i[S_NROWS] = keep
            st_f[SF_DT] *= 2
            st_i[S_SAMPLE] = (st_i[S_SAMPLE] + 1) // 2


@njit(cache=True)
def on_idle(start, end, capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb, wbs):
    """Recorder.on_idle: the whole cache free from `start` to `end` (`ends`, `kvb` are scratch)."""
    overlap = max(0.0, min(end, rec_f[F_W1]) - max(start, rec_f[F_W0]))
    rec_f[FREE] += overlap * capacity
    if st_i[S_SAMPLE] * st_f[SF_DT] <= end:
        ends[0] = end
        for q in range(5):
            kvb[q, 0] = 0
        kvb[FREE, 0] = capacity
        sample(ends, 1, kvb, 0, 0, False, wbs, capacity, max_points, st_i, st_f, rows_i, rows_f)


@njit(cache=True)
def _offer(rid, in_batch, max_in_system, status, reason, waiting, st_i):
    """The policy's add_request: True if `rid` joins the queue, else it is refused."""
    if st_i[S_WCOUNT] + in_batch >= max_in_system:
        status[rid] = REJECTED
        reason[rid] = REFUSED_BY_ENGINE
        return False
    waiting[(st_i[S_WHEAD] + st_i[S_WCOUNT]) % waiting.shape[0]] = rid
    st_i[S_WCOUNT] += 1
    return True


@njit(cache=True)
def fire(a, clock):
    """When the arrival process, its clock at `clock`, takes an arrival due at `a` (no sleep if due)."""
    return clock + (a - clock) if a > clock else clock


@njit(cache=True)
def fire_times(arrival, out):
    """Replica._arrivals' clock at each arrival of `arrival` (sorted), into `out`: its `fired` times."""
    clock = 0.0
    for i in range(arrival.shape[0]):
        clock = fire(arrival[i], clock)
        out[i] = clock


@njit(cache=True)
def wait_for_arrival(fired, status, reason, waiting, max_in_system, st_i, st_f):
    """An idle engine (nothing running or waiting) sleeps until an arrival joins the queue: every
    arrival of that instant is offered first. With the arrivals over and none taken, it wakes at
    the last one (the arrival process ends; a routed replica sleeps on: its clock stays). Returns
    when it slept from (the clock is then the wake-up time)."""
    n_req = fired.shape[0]
    nxt = st_i[S_NEXT]
    idle_from = st_f[SF_NOW]
    clock = st_f[SF_ARRIVALS]
    woke = False
    while nxt < n_req:
        if woke and fired[nxt] > clock:   # the process sleeps: the engine wakes first
            break
        clock = fired[nxt]
        if status[nxt] != REJECTED and _offer(nxt, 0, max_in_system, status, reason, waiting, st_i):
            woke = True
        nxt += 1
    st_i[S_NEXT] = nxt
    st_f[SF_ARRIVALS] = clock
    if woke or st_i[S_ROUTED] == 0:
        st_f[SF_NOW] = clock
    return idle_from


@njit(cache=True)
def arrivals_during(fired, status, reason, waiting, max_in_system, in_batch, ends, k, wbs, st_i, st_f):
    """The arrivals while steps ending at ends[:k] run (those the arrival process takes before the
    last end), offered then. Returns whether the steps get a queue depth each (in `wbs`), or -1 if
    an arrival falls exactly on the last end (simpy would order the two by when each was scheduled)."""
    n_req = fired.shape[0]
    nxt = st_i[S_NEXT]
    end = ends[k - 1]
    wc0 = st_i[S_WCOUNT]
    clock = st_f[SF_ARRIVALS]
    by_step = False
    while nxt < n_req and fired[nxt] < end:
        rid = nxt
        nxt += 1
        clock = fired[rid]
        if status[rid] == REJECTED:
            continue
        if k > 1 and not by_step:   # the queue as the run began
            by_step = True
            for s in range(k):
                wbs[s] = wc0
        if _offer(rid, in_batch, max_in_system, status, reason, waiting, st_i) and k > 1:
            j = np.searchsorted(ends[:k], clock)   # the first step ending at or after it
            for s in range(j, k):
                wbs[s] = st_i[S_WCOUNT]
    st_i[S_NEXT] = nxt
    st_f[SF_ARRIVALS] = clock
    if nxt < n_req and fired[nxt] == end:
        return -1
    if by_step:
        wbs[k - 1] = st_i[S_WCOUNT]
    return 1 if by_step else 0


@njit(cache=True)
def on_end(now, capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb, wbs):
    """Recorder.on_end: the rest of the measured window idle; not for a routed replica, whose
    fleet ends it later (the module docstring)."""
    if st_i[S_ROUTED] == 0 and st_i[S_LOCKSTEP] == 0 and now < rec_f[F_W1]:
        on_idle(now, rec_f[F_W1], capacity, max_points, rec_f, st_i, st_f, rows_i, rows_f, ends, kvb, wbs)


@njit(cache=True)
def record(start, ends, dur, kvb, k, running, num_waiting, by_step, wbs, tokens, measured, capacity, max_points,
           rec_f, rec_i, hist, gap_v, gap_m, st_i, st_f, rows_i, rows_f):
    """Recorder.on_steps for one commit of k steps (every decoder's gaps are the step times)."""
    left = on_steps(start, ends[:k], dur[:k], kvb[:, :k], running, num_waiting, wbs[:k] if by_step else wbs[:0],
                    tokens, measured, 0, rec_f, rec_i, hist)
    if left:   # gaps near a bin edge: binned by numpy afterwards, as the pure recorder bins them
        for s in range(k):
            if _near_edge(_bin_position(dur[s])):
                push_gap(dur[s], measured, gap_v, gap_m, st_i)
    if st_i[S_SAMPLE] * st_f[SF_DT] <= ends[k - 1]:
        sample(ends, k, kvb, running, num_waiting, by_step, wbs, capacity, max_points, st_i, st_f, rows_i, rows_f)


@njit(cache=True)
def check_step_times(dur, k, max_step):
    """Replica's _check_step_times: every step time finite, non-negative and plausible."""
    for s in range(k):
        d = dur[s]
        if not (0 <= d <= max_step):
            return False
    return True


@njit(cache=True)
def step_ends(start, dur, k, ends):
    """simkv.sched.base.step_ends into `ends`: the start plus the step times added one at a time."""
    e = start
    for s in range(k):
        e = e + dur[s]
        ends[s] = e


# ---------------------------------------------------------------- the running decoders (implicit_batch.py)
@njit(cache=True)
def commit_decodes(dec_i, dec_f, n, dur, k, start, end, st_i, st_f):
    """ImplicitBatch._decode for the n decoders of k steps from `start` to `end`: each one's longest
    gap, its last token. Returns the measured decoders, or -1 where their last tokens were not all
    at `start` (this loop does not model that: BAIL_NONUNIFORM)."""
    if n == 0:
        return 0
    if st_i[S_UNIFORM] == 0 or st_f[SF_UNIFORM] != start:
        return -1
    gap = dur[0]
    for s in range(1, k):
        if dur[s] > gap:
            gap = dur[s]
    measured = 0
    for i in range(n):
        measured += dec_i[D_MEAS, i]
        if gap > dec_f[DF_TBT, i]:
            dec_f[DF_TBT, i] = gap
        dec_f[DF_LAST, i] = end
    st_i[S_UNIFORM] = 1
    st_f[SF_UNIFORM] = end
    return measured


@njit(cache=True)
def join_decoder(i, rid, kv, hold, order, end0, arrival, output, final, generated, tbt_max, first_tok, last_tok, warm,
                 dec_i, dec_f, rec_f, gap_v, gap_m, st_i):
    """ImplicitBatch._advance_prefills for one request whose prefill completed at `end0`: its first
    token (or, back after a recompute, the gap since its last one), and decoder column i."""
    g = generated[rid]
    meas = arrival[rid] >= warm
    t_max = tbt_max[rid]
    if g == 0:
        first_tok[rid] = end0
    else:
        gap = end0 - last_tok[rid]
        t_max = max(t_max, gap)
        if meas:
            push_gap(gap, 1, gap_v, gap_m, st_i)
            if gap > rec_f[F_GAP_MAX]:   # Recorder.on_extra_gaps
                rec_f[F_GAP_MAX] = gap
    dec_i[D_RID, i] = rid
    dec_i[D_KV, i] = kv
    dec_i[D_GEN, i] = g + 1
    dec_i[D_OUT, i] = output[rid]
    dec_i[D_FINAL, i] = final[rid]
    dec_i[D_HOLD, i] = hold
    dec_i[D_MEAS, i] = 1 if meas else 0
    dec_i[D_ORDER, i] = order
    dec_f[DF_TBT, i] = t_max
    dec_f[DF_LAST, i] = end0


@njit(cache=True)
def settle_uniform(n, n_join, end0, st_i, st_f):
    """After n_join decoders joined at `end0` (n now): whether every last token is at one time."""
    if n_join and (st_i[S_UNIFORM] == 0 or st_f[SF_UNIFORM] != end0):
        if n == n_join:
            st_i[S_UNIFORM] = 1
            st_f[SF_UNIFORM] = end0
        else:
            st_i[S_UNIFORM] = 0


@njit(cache=True)
def finish_decoders(dec_i, dec_f, n, end, finish, last_tok, generated, tbt_max, status, st_i, answers, done):
    """ImplicitBatch._finish: the decoders with all their tokens are done at `end` and leave, the
    rest keep their join order (st_i[S_NDEC]). Returns what those done held (D_HOLD), summed; their
    ids go to done[:n - st_i[S_NDEC]] in join order where `done` is not empty (a loop that frees
    each one's blocks itself). In a lockstep fleet each answer goes, in that order, to the `answers`
    ring the fleet's router reads (Router.answered; the ring holds at least what the router counts
    outstanding)."""
    freed = 0
    w = 0
    for i in range(n):
        if dec_i[D_GEN, i] >= dec_i[D_OUT, i]:
            rid = dec_i[D_RID, i]
            if done.shape[0]:
                done[i - w] = rid
            if st_i[S_LOCKSTEP]:   # the answer, for the router (its ring is as long as it may need)
                answers[(st_i[S_AHEAD] + st_i[S_ACOUNT]) % answers.shape[0]] = rid
                st_i[S_ACOUNT] += 1
            finish[rid] = end
            last_tok[rid] = end
            generated[rid] = dec_i[D_GEN, i]
            tbt_max[rid] = dec_f[DF_TBT, i]
            status[rid] = DONE_STATUS
            freed += dec_i[D_HOLD, i]
        else:
            if w != i:
                for r in range(DEC_I_ROWS):
                    dec_i[r, w] = dec_i[r, i]
                for r in range(DEC_F_ROWS):
                    dec_f[r, w] = dec_f[r, i]
            w += 1
    st_i[S_NDEC] = w
    return freed


@njit(cache=True)
def blocks_needed(dec_i, n, steps, b):
    """ImplicitBatch.decode_blocks_needed(steps) of on-demand paged decoders (blocks of b slots):
    the blocks they take in `steps` more steps (for one step, those whose next slot starts a block)."""
    total = 0
    for i in range(n):
        kv = dec_i[D_KV, i]
        total += (kv + steps + b - 1) // b - (kv + b - 1) // b
    return total


@njit(cache=True)
def max_decode_steps(dec_i, n, limit, b, free):
    """BatchBase.max_decode_steps: the most decode steps (<= limit, one at least) whose blocks fit
    in `free`, by the same bisection."""
    if limit == 1 or blocks_needed(dec_i, n, limit, b) <= free:
        return limit
    lo, hi = 1, limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if blocks_needed(dec_i, n, mid, b) <= free:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True)
def remaining_steps(dec_i, n, max_repeat):
    """QueuedScheduler.repeated_decodes' steps: up to the first completion and max_repeat, one at least."""
    steps = max_repeat
    for i in range(n):
        r = dec_i[D_OUT, i] - dec_i[D_GEN, i]
        if r < steps:
            steps = r
    return max(1, steps)


# ---------------------------------------------------------------- the step time (calibrated.py)
@njit(cache=True)
def sizes_fit(m, n_sampled, n, fixed, lm_tab, whole_tab, share):
    """The precomputed tables cover a step of m tokens, n_sampled sampled, n decoding (else BAIL_TABLE)."""
    return m < fixed.shape[0] and m < whole_tab.shape[0] and n_sampled < lm_tab.shape[0] and n < share.shape[0]


@njit(cache=True)
def decode_attention(dec_i, n, offset, knots, share, slopes, scale, vals):
    """CalibratedCost's decode attention of the n decoders at contexts kv + offset (0.0 for none)."""
    if n == 0:
        return 0.0
    _interp_into(dec_i[D_KV, :n], offset, knots[n], share[n], slopes[n], vals)
    return scale * (0.0 + _pairwise(vals, n))


@njit(cache=True)
def mixed_step_seconds(m, n_sampled, n_seqs, pre, dec, fixed, lm_tab, whole_tab, layers, cfg_f):
    """CalibratedCost.seconds of one step of m tokens with prefill attention `pre` and decode attention `dec`."""
    return (layers * (fixed[m] + cfg_f[CF_C_ATT] * (pre + dec)) + whole_tab[m] + lm_tab[n_sampled] + cfg_f[CF_HOST]
            + cfg_f[CF_HOST_PER_SEQ] * n_seqs + 0.0)


@njit(cache=True)
def decode_run(dec_i, n, limit, sensitive, now, next_at, fixed, lm_tab, whole_tab, knots, share, slopes, layers, cfg_f,
               vals, dur):
    """CalibratedCost.decode_run_seconds of up to `limit` steps of the n decoders into `dur`, only those
    the run keeps: where it is arrival-sensitive, the steps that start before `next_at`
    (Replica._steps_to_keep). Returns how many."""
    c_att, scale, host, hps = cfg_f[CF_C_ATT], cfg_f[CF_SCALE], cfg_f[CF_HOST], cfg_f[CF_HOST_PER_SEQ]
    fixed_n, whole_n, lm_n = fixed[n], whole_tab[n], lm_tab[n]
    k = 0
    prev = now   # the end of the step before (step_ends)
    for s in range(limit):
        if sensitive and s > 0 and not prev < next_at:
            break
        att = decode_attention(dec_i, n, 1 + s, knots, share, slopes, scale, vals)
        d = layers * (fixed_n + c_att * att) + whole_n + lm_n + host + hps * n
        dur[s] = d
        prev = prev + d
        k += 1
    return k


@njit(cache=True)
def timed_decode_run(dec_i, n, limit, sensitive, now, next_at, fixed, lm_tab, whole_tab, knots, share, slopes, layers,
                     cfg_f, vals, dur, st_i):
    """`decode_run` as the replica times it: alone, only the steps it keeps; routed, all `limit`
    steps (Replica._durations knows no next arrival), checked (Replica._check_step_times), then cut
    after the step in flight at the next hand-over where the run is arrival-sensitive
    (Replica._end_run_now). Returns how many steps run, or -1 for a step time the engine rejects."""
    if st_i[S_ROUTED] == 0:
        return decode_run(dec_i, n, limit, sensitive, now, next_at, fixed, lm_tab, whole_tab, knots, share, slopes,
                          layers, cfg_f, vals, dur)
    k = decode_run(dec_i, n, limit, False, now, next_at, fixed, lm_tab, whole_tab, knots, share, slopes, layers, cfg_f,
                   vals, dur)
    if not check_step_times(dur, k, cfg_f[CF_MAX_STEP]):
        return -1
    if sensitive:
        prev = now
        for s in range(k):
            if s > 0 and not prev < next_at:
                return s
            prev = prev + dur[s]
    return k


@njit(cache=True)
def lockstep_wait(end, by_step, wbs, k, st_i, st_f):
    """A lockstep replica's step planned and timed, ending at `end`: WAIT (pending) if the fleet's
    next hand-over comes first, BAIL on a tie (simpy orders those by event creation), else -1
    (commit; with per-step queue depths, `by_step`, the last step's is the queue as commit sees it,
    as arrivals_during leaves it)."""
    h = st_f[SF_HORIZON]
    if end > h:
        st_i[S_PENDING] = 1
        return WAIT
    if end == h:
        st_i[S_BAIL] = BAIL_TIE
        return BAIL
    st_i[S_PENDING] = 0
    if by_step:
        wbs[k - 1] = st_i[S_WCOUNT]
    return -1


@njit(cache=True)
def lockstep_idle(st_i):
    """An idle lockstep replica: DONE once the fleet has no more requests for it, else WAIT (the fleet
    hands it its requests, and wakes it: simkv.fused.fleet_loop)."""
    return DONE if st_i[S_CLOSED] else WAIT
