"""Compiled kernel of the recorder's per-commit accumulation (simkv.metrics.compiled_recorder): the
time-weighted KV, running and queue integrals, the peaks, the token counts and the token-gap
histogram of one commit of k steps, in one call.

Why compiled: `Recorder.on_steps` runs once per iteration and makes ~15 numpy calls and ~40 Python
operations on five rows of a few steps (~15 µs an iteration, 10-15% of a paged or TGI run); this
kernel does the same arithmetic in ~2 µs.

The same numbers as the pure recorder (simkv.metrics.Recorder, the reference; compared in
tests/test_compiled_recorder.py): every total takes its terms one at a time, left to right, in the
order the pure recorder adds them (numba does not fuse a multiply and an add without fastmath), and
integer totals are exact. The one difference is the logarithm of the gap bins: the pure recorder
uses numpy's log10 (SIMD code on some CPUs), this kernel the C library's, and the two may differ in
the last bit. A gap whose bin position lies within `NEAR` of a bin edge, where that bit could move it
to the next bin, is not binned here: the kernel returns how many it left, and the caller bins those
with numpy (`near_edge_gaps`).

State (changed in place): `f`, float64, and `i`, int64, laid out as F_* and I_* below, and `hist`, the
gap histogram. A call passes few arguments and returns an int (numba checks each argument's type,
~0.1 µs an array; a returned array costs ~1 µs).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# f: the five KV rows' integrals, then these; i: the five KV rows' peaks, then these
F_RUNNING, F_WAITING, F_GAP_MAX, F_W0, F_W1 = 5, 6, 7, 8, 9
I_MAX_RUNNING, I_MAX_WAITING, I_WINDOW_TOKENS, I_TOTAL_TOKENS, I_STEPS = 5, 6, 7, 8, 9
STATE_LEN = 10
NEAR = 1e-6   # bin positions closer than this to an integer are binned by numpy (a bin is 1 wide)
# the gap bins of simkv.metrics (checked equal by CompiledRecorder): log-spaced from 10^GAP_LO s
GAP_LO, GAP_PER_DECADE, GAP_BINS = -6.0, 1000, 10_000


@njit(cache=True, inline="always")
def _bin_position(gap):
    return (math.log10(max(gap, 1e-12)) - GAP_LO) * GAP_PER_DECADE


@njit(cache=True, inline="always")
def _near_edge(pos):
    return abs(pos - math.floor(pos + 0.5)) < NEAR


@njit(cache=True)
def on_steps(start_s, ends, durations, kv, running, waiting, waiting_by_step, tokens_per_step, measured,
             gap_from, f, i, hist):
    """Add one commit of k = len(ends) steps (started at `start_s`) to the state; `waiting_by_step`
    is empty where the queue depth `waiting` held during every step. Returns how many token gaps
    it left unbinned because they lie near a bin edge (the caller bins them, `near_edge_gaps`)."""
    k = ends.shape[0]
    rows = kv.shape[0]
    last = ends[k - 1]
    w0, w1 = f[F_W0], f[F_W1]
    inside = w0 <= start_s and last <= w1   # the whole commit in the measured window
    # each step's overlap with the window (a step starts where the one before ends)
    overlap = np.empty(k)
    prev = start_s
    span = 0.0
    for j in range(k):
        e = ends[j]
        x = e - prev if inside else min(e, w1) - max(prev, w0)
        if not inside and not x > 0.0:
            x = 0.0
        overlap[j] = x
        if x > span:
            span = x
        prev = e
    if span > 0:
        by_step = waiting_by_step.shape[0] > 0
        for r in range(rows):
            acc = f[r]
            top = i[r]
            for j in range(k):
                x = overlap[j]
                acc += x * kv[r, j]
                if x > 0 and kv[r, j] > top:
                    top = kv[r, j]
            f[r] = acc
            i[r] = top
        acc = f[F_RUNNING]
        for j in range(k):
            acc += overlap[j] * running
        f[F_RUNNING] = acc
        acc = f[F_WAITING]
        top = i[I_MAX_WAITING]
        for j in range(k):
            w = waiting_by_step[j] if by_step else waiting
            acc += overlap[j] * w
            if by_step and overlap[j] > 0 and w > top:
                top = w
        f[F_WAITING] = acc
        i[I_MAX_RUNNING] = max(i[I_MAX_RUNNING], running)
        i[I_MAX_WAITING] = top if by_step else max(top, waiting)
    i[I_STEPS] += k
    i[I_TOTAL_TOKENS] += k * tokens_per_step
    if inside:
        i[I_WINDOW_TOKENS] += k * tokens_per_step
    elif last >= w0 and start_s <= w1:
        n = 0
        for j in range(k):
            if ends[j] >= w0 and ends[j] <= w1:
                n += 1
        i[I_WINDOW_TOKENS] += n * tokens_per_step
    left = 0
    if measured and k > gap_from:
        top = durations[gap_from]
        for j in range(gap_from, k):
            g = durations[j]
            if g > top:
                top = g
            pos = _bin_position(g)
            if _near_edge(pos):
                left += 1
            else:
                hist[min(max(int(pos), 0), GAP_BINS - 1)] += measured
        if top > f[F_GAP_MAX]:
            f[F_GAP_MAX] = top
    return left


@njit(cache=True)
def near_edge_gaps(durations, gap_from):
    """The gaps among durations[gap_from:] that `on_steps` leaves unbinned (rare: ~2e-6 of them)."""
    out = []
    for j in range(gap_from, durations.shape[0]):
        if _near_edge(_bin_position(durations[j])):
            out.append(durations[j])
    return np.array(out, dtype=np.float64)
