"""Compiled decode-attention sums for the calibrated cost model (simkv.cost.calibrated), equal bit for
bit to the numpy expressions they replace:

    np.add.reduce(np.interp(ctx, knots, share))                                   # one step
    np.add.reduce(np.interp(ctx[None, :] + np.arange(k)[:, None], knots, share), axis=1)   # k steps

Why compiled: a decode run of k steps over a batch of n interpolates k x n contexts (a TGI run:
~100 x ~20), 3-5x faster in a loop than through numpy's calls and temporaries (a microbenchmark on
the development VM, batches of 32-256; 1.07-1.12x on whole TGI and multi-turn runs,
docs/performance.md). Why equal: each interpolated value is computed as numpy's `interp` computes it
(the interval j with knots[j] <= x < knots[j+1], slope (share[j+1] - share[j]) / (knots[j+1] -
knots[j]), value slope * (x - knots[j]) + share[j]; the ends and exact knots take the knot's value),
and each row is summed in numpy's pairwise order (8 running partial sums over blocks of up to 128
values, halves above that). tests/test_compiled_attention.py compares them with numpy on
hypothesis-drawn inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_BLOCK = 128   # numpy's PW_BLOCKSIZE
_STACK = 192   # room for halving 2^63 values (3 entries a level)


@njit(cache=True)
def _block(a, lo, n):
    """numpy's pairwise sum of a[lo:lo + n] for n <= 128 (loops_utils.h: pairwise_sum's base cases)."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    whole = n - n % 8
    while i < whole:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit(cache=True)
def _pairwise(a, n):
    """numpy's pairwise sum of a[:n]: above 128 values, the sum of the two halves (the first a
    multiple of 8 long), each summed the same way. Without recursion (numba cannot load a
    recursive function from its cache): the halves are walked depth first with explicit stacks."""
    if n <= _BLOCK:
        return _block(a, 0, n)
    los, lens, combine = np.empty(_STACK, np.int64), np.empty(_STACK, np.int64), np.empty(_STACK, np.bool_)
    sums = np.empty(_STACK)
    top, held = 0, 0
    los[0], lens[0], combine[0] = 0, n, False
    top = 1
    while top:
        top -= 1
        lo, m = los[top], lens[top]
        if combine[top]:   # both halves summed: add them
            held -= 1
            sums[held - 1] = sums[held - 1] + sums[held]
        elif m <= _BLOCK:
            sums[held] = _block(a, lo, m)
            held += 1
        else:
            half = m // 2
            half -= half % 8
            los[top], lens[top], combine[top] = lo, m, True
            los[top + 1], lens[top + 1], combine[top + 1] = lo + half, m - half, False
            los[top + 2], lens[top + 2], combine[top + 2] = lo, half, False   # the first half first
            top += 3
    return sums[0]


@njit(cache=True)
def _interp_into(ctx, offset, xp, fp, slopes, out):
    """out[i] = np.interp(ctx[i] + offset, xp, fp) (compiled_base.c: arr_interp)."""
    last = len(xp) - 1
    for i in range(len(ctx)):
        x = np.float64(ctx[i] + offset)
        if np.isnan(x):
            out[i] = x
        elif last == 0:
            out[i] = fp[0]
        elif x > xp[last]:
            out[i] = fp[last]
        elif x < xp[0]:
            out[i] = fp[0]
        else:
            lo, hi = 0, last          # the j with xp[j] <= x < xp[j + 1], or last if x == xp[last]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if xp[mid] <= x:
                    lo = mid
                else:
                    hi = mid
            j = last if x >= xp[last] else lo
            if j == last or xp[j] == x:
                out[i] = fp[j]
            else:
                v = slopes[j] * (x - xp[j]) + fp[j]
                if np.isnan(v):
                    v = slopes[j] * (x - xp[j + 1]) + fp[j + 1]
                    if np.isnan(v) and fp[j] == fp[j + 1]:
                        v = fp[j]
                out[i] = v


@njit(cache=True)
def _slopes(xp, fp):
    s = np.empty(max(len(xp) - 1, 0))
    for i in range(len(s)):
        s[i] = (fp[i + 1] - fp[i]) / (xp[i + 1] - xp[i])
    return s


@njit(cache=True)
def step_sum(ctx, xp, fp):
    """np.add.reduce(np.interp(ctx, xp, fp)) for a non-empty `ctx`."""
    vals = np.empty(len(ctx))
    _interp_into(ctx, 0, xp, fp, _slopes(xp, fp), vals)
    return 0.0 + _pairwise(vals, len(ctx))   # the reduction starts from add's identity (so -0.0 sums to 0.0)


@njit(cache=True)
def run_sums(ctx, steps, xp, fp, out):
    """out[s] = np.add.reduce(np.interp(ctx + s, xp, fp)) for s < steps, for a non-empty `ctx`."""
    vals = np.empty(len(ctx))
    slopes = _slopes(xp, fp)
    for s in range(steps):
        _interp_into(ctx, s, xp, fp, slopes, vals)
        out[s] = 0.0 + _pairwise(vals, len(ctx))
