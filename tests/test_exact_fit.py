"""The cost model's fits are exact least-squares optima, so they and every result simulated with
them are the same floats on any CPU (simkv.cost.exact_fit): checked against numpy's and scipy's
solvers (which round), by properties only an exact fit has (row order and power-of-two scale do
not change a bit), and by running the calibration and a scenario under two OpenBLAS kernels."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import lsq_linear, nnls

from simkv.cost import exact_fit

from conftest import ROOT


@st.composite
def problems(draw, max_rows=12, max_cols=4):
    """A design matrix with columns of very different scales (as the features are), and targets."""
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(rows, cols)) * 10.0 ** rng.integers(-6, 6, size=cols)
    if cols > 1 and draw(st.booleans()):   # a rank-deficient design: one column repeats another
        a[:, -1] = a[:, 0] * 2.0
    b = rng.normal(size=rows) * 10.0 ** rng.integers(-3, 3)
    return a, b


def _sq(a, b, x) -> float:
    return float(np.sum((a @ x - b) ** 2))


def _no_worse(a, b, ours, theirs) -> bool:
    """Our residual is no larger than theirs, up to the rounding of evaluating it in floats."""
    return _sq(a, b, ours) <= _sq(a, b, theirs) * (1 + 1e-9) + 1e-12 * float(np.sum(b ** 2))


@settings(max_examples=150, deadline=None)
@given(problems())
def test_lstsq_is_numpys_answer_without_its_rounding(problem):
    a, b = problem
    ours, theirs = exact_fit.lstsq(a, b), np.linalg.lstsq(a, b, rcond=None)[0]
    assert _no_worse(a, b, ours, theirs)
    if a.shape[1] > 1 and np.array_equal(a[:, -1], a[:, 0] * 2.0):
        # rank-deficient: the minimum-norm solution splits the repeated column's weight 1 : 2
        # (numpy's SVD, badly conditioned here, may not; the residual is checked above)
        assert ours[-1] == pytest.approx(2 * ours[0], rel=1e-12, abs=1e-300)
    elif np.linalg.matrix_rank(a) == a.shape[1]:   # the unique minimiser, up to numpy's rounding
        scale = np.abs(theirs).max() + 1e-300
        assert np.max(np.abs(ours - theirs)) <= scale * max(1e-9, 1e-14 * np.linalg.cond(a))


@settings(max_examples=150, deadline=None)
@given(problems(), st.floats(0.01, 10.0))
def test_bounded_fits_are_feasible_and_no_worse_than_scipys(problem, cap):
    a, b = problem
    p = a.shape[1]
    ours = exact_fit.nnls(a, b)
    assert np.all(ours >= 0)
    assert _no_worse(a, b, ours, nnls(a, b, maxiter=1000)[0])
    lo, hi = np.zeros(p), np.full(p, cap)
    box = exact_fit.bounded_lstsq(a, b, lo, hi)
    assert np.all(box >= 0) and np.all(box <= cap)
    assert _no_worse(a, b, box, lsq_linear(a, b, bounds=(lo, hi)).x)


@settings(max_examples=100, deadline=None)
@given(problems(), st.integers(0, 2**32 - 1), st.integers(-20, 20))
def test_row_order_and_power_of_two_scale_change_no_bit(problem, seed, power):
    """An exact optimum does not depend on the order the rows are added in, nor on a common
    power-of-two scale; a BLAS solver's rounding does."""
    a, b = problem
    perm = np.random.default_rng(seed).permutation(len(b))
    for fit in (exact_fit.lstsq, exact_fit.nnls):
        x = fit(a, b)
        assert fit(a[perm], b[perm]).tobytes() == x.tobytes()
        assert fit(a * 2.0 ** power, b * 2.0 ** power).tobytes() == x.tobytes()


def test_leaving_rows_out_equals_fitting_the_rest():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=40)
    eq = exact_fit.NormalEquations.of(a, b)
    for i in (0, 17, 39):
        drop = np.zeros(40, bool)
        drop[i] = True
        assert eq.without(drop).solve().tobytes() == exact_fit.lstsq(a[~drop], b[~drop]).tobytes()


def test_exact_cases_and_errors():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert exact_fit.lstsq(a, a @ [3.0, -2.0]).tolist() == [3.0, -2.0]          # an exact fit is found exactly
    assert exact_fit.nnls(a, a @ [3.0, -2.0])[1] == 0.0                           # the bound holds
    assert exact_fit.lstsq(np.ones((3, 2)), np.full(3, 4.0)).tolist() == [2.0, 2.0]   # minimum norm
    assert exact_fit.lstsq(np.zeros((2, 1)), np.ones(2)).tolist() == [0.0]
    assert exact_fit.dot([0.1] * 10, [1.0] * 10) == 1.0                           # exactly rounded, unlike a loop
    with pytest.raises(ValueError, match="not finite"):
        exact_fit.lstsq(np.array([[np.nan]]), np.ones(1))
    with pytest.raises(ValueError, match="rows"):
        exact_fit.lstsq(np.ones((3, 1)), np.ones(2))


_FITS = r"""
import hashlib, json
import numpy as np
import simkv
from simkv.files.calibration import load_tables
from simkv.cost.calibrated import Calibration
from simkv.files.scenario_file import expand_variants
from simkv.simulate import build_simulation, cost_inputs, run_simulation
from simkv.workload.stream import generate_stream
out = {}
for gpu in ("h100", "h200"):
    cal = Calibration.fit(load_tables(gpu))
    out[gpu] = [float(v).hex() for v in np.concatenate([cal.coef, cal.whole])]
sc = simkv.load_scenario("scenarios/vllm-vs-tgi-h100.yaml", ["run.num_requests=120", "run.duration_s=null", "run.warmup_s=0"])
stream = generate_stream(sc.workload, sc.run)
for name, v in expand_variants(sc):
    res = run_simulation(build_simulation(v, stream), name)
    out[name] = hashlib.sha256(json.dumps(res.summary, sort_keys=True, default=str).encode()).hexdigest()
ar = cost_inputs(simkv.load_scenario("scenarios/models/llama4-maverick-h100.yaml")).calibration.allreduce
out["allreduce"] = {str(k): [float(v).hex() for v in f[:2]] for k, f in sorted(ar.fits.items())} if ar else None
print(json.dumps(out))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="OPENBLAS_CORETYPE names x86-64 kernels")
def test_fits_and_results_are_the_same_under_two_blas_kernels():
    """OpenBLAS's Prescott (SSE3) kernels and the ones it picks for an AVX2 CPU add in different
    orders: before the exact fits, the calibration's coefficients differed in their last bits
    between them, and so did the summaries (measured 2026-12-05 on an AMD EPYC: Zen kernels)."""
    procs = []
    for core in ("Prescott", None):   # SSE3, which every x86-64 CPU runs, and the kernel picked for this CPU
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        env.pop("OPENBLAS_CORETYPE", None)
        if core:
            env["OPENBLAS_CORETYPE"] = core
        procs.append(subprocess.Popen([sys.executable, "-c", _FITS], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    assert outs[0]["allreduce"]   # the collective fit ran too
