"""Least-squares fits and dot products that give the same floats on every machine.

Why: the calibrated cost model fits its corrections (layer coefficients, whole-model terms,
collective and host-overhead lines, attention chunks, step-table planes) by least squares.
scipy's `nnls` / `lsq_linear` and numpy's `lstsq` and `@` run on BLAS, and OpenBLAS picks its
kernels for the CPU, each adding in its own order (with or without FMA): the fitted coefficients
differed in their last bits between OpenBLAS's Haswell and Prescott kernels, and so did every
summary simulated with them (measured 2026-12-05, `OPENBLAS_CORETYPE`). A reviewer's
`simkv reproduce --check` on another CPU would then fail although nothing is wrong.

How: the normal equations AᵀA x = Aᵀb are formed exactly, in integers (every float is an
integer times a power of two; the matrix is scaled by one common power of two, which both sides
share), and solved exactly in rationals (`fractions.Fraction`), so a fit is the exact
least-squares optimum rounded once to float: the same on any CPU and, unlike the BLAS result, with
no rounding error of its own. Bounds (non-negative or box constraints) are handled by trying
every assignment of the variables to "free", "at its lower bound" or "at its upper bound" and
keeping the feasible one with the least residual: the problem is convex, so that is the optimum.
That is 3^p small solves, fine for the p <= 5 coefficients fitted here (`MAX_VARIABLES`).
A rank-deficient system gets its minimum-norm solution, as `numpy.linalg.lstsq` gives.
Dot products (`dot`, `matvec`) multiply element by element (IEEE products are the same
everywhere) and add with `math.fsum` (exactly rounded), never through BLAS.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np

MAX_VARIABLES = 8   # 3^8 = 6,561 bounded assignments at most; the fits here have 2-5 coefficients
_MANTISSA_BITS = 53


def _as_scaled_integers(values: np.ndarray) -> list[list[int]]:
    """The rows of a finite float matrix as Python integers, all scaled by one power of two (the
    smallest nonzero entry's), so sums of their products are exact."""
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("a least-squares fit got a value that is not finite")
    mant, expo = np.frexp(v)
    ints = (mant * 2.0 ** _MANTISSA_BITS).astype(np.int64)   # exact: |mant| < 1 has 53 bits
    expo = expo.astype(np.int64) - _MANTISSA_BITS
    nonzero = ints != 0
    if not nonzero.any():
        return [[0] * v.shape[1] for _ in range(v.shape[0])]
    shift = np.where(nonzero, expo - expo[nonzero].min(), 0)
    return [[m << s for m, s in zip(row_m, row_s)] for row_m, row_s in zip(ints.tolist(), shift.tolist())]


class NormalEquations:
    """AᵀA and Aᵀb of a design matrix A (n x p) and targets b (n), exactly (integers sharing one
    power-of-two scale). `without(rows)` gives the equations of the other rows exactly, so a
    leave-one-out loop costs one subtraction a fit."""

    def __init__(self, rows: list[list[int]], p: int) -> None:
        self.rows, self.p = rows, p   # each row: p design entries, then the target
        pairs = [(j, k) for j in range(p + 1) for k in range(j, p + 1)]
        sums = dict.fromkeys(pairs, 0)
        for r in rows:
            for j, k in pairs:
                sums[j, k] += r[j] * r[k]
        self._sums = sums

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> "NormalEquations":
        a = np.asarray(a, dtype=np.float64)
        a = a.reshape(len(a), -1)
        b = np.asarray(b, dtype=np.float64).reshape(-1)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a least-squares fit got {a.shape[0]} rows of features and {b.shape[0]} targets")
        if a.shape[1] > MAX_VARIABLES:
            raise ValueError(f"exact fits take at most {MAX_VARIABLES} coefficients, not {a.shape[1]}")
        return cls(_as_scaled_integers(np.column_stack([a, b])), a.shape[1])

    def without(self, drop: np.ndarray) -> "NormalEquations":
        """The equations of the rows not in the boolean mask `drop`."""
        out = NormalEquations.__new__(NormalEquations)
        out.rows, out.p = [r for r, d in zip(self.rows, np.asarray(drop, bool).tolist()) if not d], self.p
        sums = dict(self._sums)
        for r, d in zip(self.rows, np.asarray(drop, bool).tolist()):
            if d:
                for j, k in sums:
                    sums[j, k] -= r[j] * r[k]
        out._sums = sums
        return out

    def gram(self) -> list[list[int]]:
        p, s = self.p, self._sums
        return [[s[min(j, k), max(j, k)] for k in range(p)] for j in range(p)]

    def rhs(self) -> list[int]:
        return [self._sums[j, self.p] for j in range(self.p)]

    def solve(self, lower: np.ndarray | None = None, upper: np.ndarray | None = None) -> np.ndarray:
        """The coefficients minimising |A x - b|² within lower <= x <= upper (None: unbounded)."""
        p = self.p
        lo = _bounds(lower, p)
        hi = _bounds(upper, p)
        for a, b in zip(lo, hi):
            if a is not None and b is not None and a > b:
                raise ValueError("a bounded fit got a lower bound above its upper bound")
        g, h = self.gram(), self.rhs()
        choices = [("free",) + (("lo",) if lo[j] is not None else ()) + (("hi",) if hi[j] is not None else ())
                   for j in range(p)]
        best, best_f = None, None
        for states in itertools.product(*choices):   # "free" first: unbounded optimum tried first
            x = _candidate(g, h, states, lo, hi)
            if x is None:
                continue
            if any((lo[j] is not None and x[j] < lo[j]) or (hi[j] is not None and x[j] > hi[j]) for j in range(p)):
                continue
            if all(st == "free" for st in states):   # the unconstrained optimum is feasible: it is the optimum
                return np.array([float(v) for v in x])
            f = _objective(g, h, x)
            if best_f is None or f < best_f:
                best, best_f = x, f
        if best is None:   # not when every variable has a bound (all at bounds is feasible); a free variable of a singular system may leave none
            raise ValueError("a bounded least-squares fit found no feasible solution")
        return np.array([float(v) for v in best])


def _bounds(values, p: int) -> list[Fraction | None]:
    """Finite bounds as exact rationals; None where a side is unbounded (None or infinite)."""
    if values is None:
        return [None] * p
    return [Fraction(float(v)) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).tolist()]


def _candidate(g: list[list[int]], h: list[int], states: tuple, lo: list, hi: list) -> list[Fraction] | None:
    """The minimiser with the variables in `states` fixed at their bounds and the others free."""
    p = len(h)
    x: list[Fraction] = [Fraction(0)] * p
    fixed = [j for j in range(p) if states[j] != "free"]
    free = [j for j in range(p) if states[j] == "free"]
    for j in fixed:
        x[j] = lo[j] if states[j] == "lo" else hi[j]
    if free:
        sub_g = [[Fraction(g[i][j]) for j in free] for i in free]
        sub_h = [Fraction(h[i]) - sum((g[i][j] * x[j] for j in fixed), Fraction(0)) for i in free]
        sol = _min_norm_solve(sub_g, sub_h)
        if sol is None:
            return None
        for j, v in zip(free, sol):
            x[j] = v
    return x


def _objective(g: list[list[int]], h: list[int], x: list[Fraction]) -> Fraction:
    """|A x - b|² - |b|² = xᵀ G x - 2 hᵀ x, exactly."""
    p = len(h)
    gx = [sum((g[i][j] * x[j] for j in range(p)), Fraction(0)) for i in range(p)]
    return sum((x[i] * (gx[i] - 2 * h[i]) for i in range(p)), Fraction(0))


def _min_norm_solve(g: list[list[Fraction]], h: list[Fraction]) -> list[Fraction] | None:
    """The minimum-norm solution of the symmetric system g x = h, or None if it has none."""
    n = len(h)
    rows = [list(r) + [v] for r, v in zip(g, h)]
    # row echelon form by exact elimination: the independent rows and their pivots
    pivots: list[int] = []
    r = 0
    for c in range(n):
        pick = next((i for i in range(r, n) if rows[i][c] != 0), None)
        if pick is None:
            continue
        rows[r], rows[pick] = rows[pick], rows[r]
        for i in range(n):
            if i != r and rows[i][c] != 0:
                f = rows[i][c] / rows[r][c]
                rows[i] = [a - f * b for a, b in zip(rows[i], rows[r])]
        pivots.append(c)
        r += 1
    if any(rows[i][n] != 0 for i in range(r, n)):   # inconsistent (cannot happen for normal equations)
        return None
    if r == n:   # full rank: the unique solution
        return [rows[i][n] / rows[i][i] for i in range(n)]
    # rank r < n: every solution satisfies R x = c (R: the r echelon rows); the least-norm one is
    # Rᵀ y with (R Rᵀ) y = c
    big_r = [rows[i][:n] for i in range(r)]
    c = [rows[i][n] for i in range(r)]
    rrt = [[sum((a * b for a, b in zip(big_r[i], big_r[j])), Fraction(0)) for j in range(r)] for i in range(r)]
    y = _min_norm_solve(rrt, c)
    if y is None:
        return None
    return [sum((big_r[i][j] * y[i] for i in range(r)), Fraction(0)) for j in range(n)]


def lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares (minimum norm if rank-deficient), as `numpy.linalg.lstsq(a, b)[0]`, exactly."""
    return NormalEquations.of(a, b).solve()


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares, as `scipy.optimize.nnls(a, b)[0]`, exactly."""
    p = np.asarray(a).reshape(len(a), -1).shape[1]
    return NormalEquations.of(a, b).solve(lower=np.zeros(p))


def bounded_lstsq(a: np.ndarray, b: np.ndarray, lower, upper) -> np.ndarray:
    """Least squares within the bounds, as `scipy.optimize.lsq_linear(a, b, bounds=(lower, upper)).x`, exactly."""
    p = np.asarray(a).reshape(len(a), -1).shape[1]
    return NormalEquations.of(a, b).solve(lower=np.broadcast_to(np.asarray(lower, float), p),
                                          upper=np.broadcast_to(np.asarray(upper, float), p))


def dot(a, b) -> float:
    """Σ aᵢbᵢ: products rounded one by one, then added exactly rounded (math.fsum), not by BLAS."""
    prod = np.multiply(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return math.fsum(prod.reshape(-1).tolist())


def matvec(m, v) -> np.ndarray:
    """M v, one `dot` a row."""
    m = np.atleast_2d(np.asarray(m, dtype=np.float64))
    return np.array([dot(row, v) for row in m])
