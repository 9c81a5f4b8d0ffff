"""What every fused engine's loop shares (simkv.fused): the clock and the arrivals of one replica
(simkv.engine.Replica), and the recorder's accumulation (simkv.metrics.recorder_kernels.on_steps,
Recorder._sample, on_idle, on_end), as numba functions over the state arrays a loop is given.

State layout shared by the loops (a loop's own slots come after these): `st_i` holds S_* and `st_f`
SF_*; `waiting` is the queue as a ring buffer (head st_i[S_WHEAD], length st_i[S_WCOUNT]); `rows_i`
/ `rows_f` the time series (Recorder._rows: sample index, the five KV rows, running, queued / time,
utilization); `gap_v` / `gap_m` token gaps (and how many tokens had each) that the caller bins with
numpy, as the pure recorder bins them (a recompute's gap; a step time near a bin edge).

Arrivals follow Replica._arrivals and _admit. The arrival process sleeps `arrival - now` and wakes
at `now + (arrival - now)`, which is the arrival time only when that subtraction is exact (the
previous arrival at least half as late): its own clock, st_f[SF_ARRIVALS], gives the times the
engine sees arrivals at (`fire`), while the table's times decide where a decode run is cut, as in
Replica._next_arrival_s. A request refused at build time (status REJECTED) is skipped; one the
policy refuses (TGI's max_concurrent_requests) becomes REJECTED with REFUSED_BY_ENGINE; neither
wakes an idle engine. During a multi-step run, the first arrival not refused at build time starts
the per-step queue depths (Replica._queue_by_step), whether the policy then takes it or not.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from simkv.metrics.recorder_kernels import _bin_position, _near_edge, on_steps
from simkv.request import REFUSED_BY_ENGINE, REJECTED

# st_i / st_f slots every loop has
S_NEXT, S_WHEAD, S_WCOUNT, S_SAMPLE, S_NROWS, S_NGAPS, S_BAIL, S_ITER = range(8)
SF_NOW, SF_DT, SF_ARRIVALS = range(3)
# return codes of a loop; a BAIL's reason is in st_i[S_BAIL]
DONE, PAUSE, BAIL = 0, 1, 2
BAIL_TIE, BAIL_STEP_TIME, BAIL_STUCK, BAIL_TABLE, BAIL_NONUNIFORM = 1, 2, 3, 4, 5
# the recorder's KV rows and state slots (simkv.kv.base, simkv.metrics.recorder_kernels)
TOKEN, RESERVED, INTERNAL, EXTERNAL, FREE = range(5)
F_W0, F_W1 = 8, 9
NO_LIMIT = np.iinfo(np.int64).max


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
def wait_for_arrival(arrival, status, reason, waiting, max_in_system, st_i, st_f):
    """An idle engine (nothing running or waiting) sleeps until an arrival joins the queue: every
    arrival of that instant is offered first. With the arrivals over and none taken, it wakes at
    the last one. Returns when it slept from (the clock is then the wake-up time)."""
    n_req = arrival.shape[0]
    nxt = st_i[S_NEXT]
    idle_from = st_f[SF_NOW]
    clock = st_f[SF_ARRIVALS]
    woke = False
    while nxt < n_req:
        if woke and arrival[nxt] > clock:   # the process sleeps: the engine wakes first
            break
        clock = fire(arrival[nxt], clock)
        if status[nxt] != REJECTED and _offer(nxt, 0, max_in_system, status, reason, waiting, st_i):
            woke = True
        nxt += 1
    st_i[S_NEXT] = nxt
    st_f[SF_ARRIVALS] = clock
    st_f[SF_NOW] = clock
    return idle_from


@njit(cache=True)
def arrivals_during(arrival, status, reason, waiting, max_in_system, in_batch, ends, k, wbs, st_i, st_f):
    """The arrivals while steps ending at ends[:k] run (those the arrival process takes before the
    last end), offered then. Returns whether the steps get a queue depth each (in `wbs`), or -1 if
    an arrival falls exactly on the last end (simpy would order the two by when each was scheduled)."""
    n_req = arrival.shape[0]
    nxt = st_i[S_NEXT]
    end = ends[k - 1]
    wc0 = st_i[S_WCOUNT]
    clock = st_f[SF_ARRIVALS]
    by_step = False
    while nxt < n_req and fire(arrival[nxt], clock) < end:
        rid = nxt
        nxt += 1
        clock = fire(arrival[rid], clock)
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
    if nxt < n_req and fire(arrival[nxt], clock) == end:
        return -1
    if by_step:
        wbs[k - 1] = st_i[S_WCOUNT]
    return 1 if by_step else 0


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
