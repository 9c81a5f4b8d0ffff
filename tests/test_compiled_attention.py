"""The compiled decode-attention sums (simkv.cost.attention_kernels) against the numpy expressions
they stand in for, bit for bit: on hypothesis-drawn knots, shares, batches and run lengths (batch
sizes across numpy's pairwise blocks of 8 and 128; contexts below, on and above the knots), through
the calibrated cost model, and in whole runs (SIMKV_COMPILED=1 against =0)."""

from __future__ import annotations

import pickle

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from simkv import compiled
from simkv.cost.calibrated import _interp

kernels = compiled.kernels("simkv.cost.attention_kernels")
pytestmark = pytest.mark.skipif(kernels is None, reason="numba is not installed")


@st.composite
def curves(draw):
    """Strictly increasing knots (integer-valued, so contexts land on them, or fractional) and shares."""
    n = draw(st.integers(1, 24))
    knots = np.unique(np.array(draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n)), dtype=float))
    if draw(st.booleans()):
        knots = knots * draw(st.floats(0.1, 3.0))
    share = np.array(draw(st.lists(st.floats(0, 1e-3, allow_subnormal=False), min_size=len(knots), max_size=len(knots))))
    return knots, share


@settings(max_examples=150, deadline=None)
@given(curve=curves(), n=st.one_of(st.integers(1, 20), st.integers(120, 140), st.integers(250, 1100)),
       steps=st.integers(1, 30), seed=st.integers(0, 2**32 - 1), spread=st.sampled_from([10, 10**4, 2 * 10**6]))
def test_sums_equal_numpys(curve, n, steps, seed, spread):
    knots, share = curve
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, spread, n)
    if rng.random() < 0.5:   # some contexts exactly on knots
        on = rng.integers(0, n, min(n, 5))
        ctx[on] = knots[rng.integers(0, len(knots), len(on))].astype(np.int64)
    expected = np.add.reduce(_interp(ctx[None, :] + np.arange(steps)[:, None], knots, share), axis=1)
    got = np.empty(steps)
    kernels.run_sums(ctx, steps, knots, share, got)
    assert got.tobytes() == expected.tobytes()
    assert float(kernels.step_sum(ctx, knots, share)) == float(np.add.reduce(_interp(ctx, knots, share)))


def test_zero_and_negative_zero_shares_sum_as_numpy_does():
    knots, ctx = np.array([1.0, 2.0]), np.zeros(20, np.int64)
    for share in (np.array([-0.0, -0.0]), np.array([0.0, 0.0])):
        assert str(kernels.step_sum(ctx, knots, share)) == str(np.add.reduce(_interp(ctx, knots, share)))


@pytest.fixture(scope="module")
def cost():
    import simkv
    from simkv.simulate import make_cost
    c, _ = make_cost(simkv.load_scenario("scenarios/vllm-vs-tgi-h100.yaml", ["run.num_requests=10", "run.duration_s=null"]))
    return c


def test_the_cost_model_gives_the_same_step_times(cost):
    rng = np.random.default_rng(3)
    for n in (1, 7, 8, 64, 129, 300):
        ctx = rng.integers(1, 8000, n)
        cost.use_compiled_attention(None)
        run, one = cost.decode_run_seconds(ctx, 25), cost.decode_attention_s(ctx)
        cost.use_compiled_attention(kernels)
        assert cost.decode_run_seconds(ctx, 25).tobytes() == run.tobytes() and cost.decode_attention_s(ctx) == one
    cost.use_compiled_attention(None)


def test_a_pickled_cost_model_keeps_its_kernels(cost):
    cost.use_compiled_attention(kernels)
    assert pickle.loads(pickle.dumps(cost))._att_kernels is kernels
    cost.use_compiled_attention(None)
    assert pickle.loads(pickle.dumps(cost))._att_kernels is None


def test_whole_runs_without_a_prefix_cache_are_the_same():
    """Paged and contiguous allocators, a fleet and a step-table-free roofline cost (which has no kernels)."""
    import simkv
    from test_compiled_prefix_cache import _same_both_ways
    from test_step_grouping import _scenario
    _same_both_ways(simkv.load_scenario("scenarios/paged-vs-contiguous-h100.yaml",
                                        ["run.num_requests=300", "run.duration_s=null", "run.warmup_s=1"]), "paged")
    _same_both_ways(_scenario(engine={"allocator": "contiguous", "reservation": "pow2"}))
    _same_both_ways(_scenario(engine={"preset": "vllm-v0"}, fleet={"router": {"policy": "least_loaded"},
                                                                   "pools": [{"name": "a", "replicas": 2}]}))


def test_large_batches_split_as_numpy_splits_them():
    """Above 128 values numpy sums halves (the first a multiple of 8 long), several levels deep."""
    rng = np.random.default_rng(11)
    knots, share = np.array([1.0, 100.0, 5000.0, 10**6]), np.array([1e-9, 3e-7, 1e-5, 0.3])
    for n in (129, 255, 256, 257, 1000, 1031, 4096, 5000):
        ctx = rng.integers(0, 10**5, n)
        got = np.empty(3)
        kernels.run_sums(ctx, 3, knots, share, got)
        assert got.tobytes() == np.add.reduce(_interp(ctx[None, :] + np.arange(3)[:, None], knots, share), axis=1).tobytes()


def test_the_builder_attaches_the_kernels_only_where_numba_is_loaded(monkeypatch):
    """They never pay for numba's start-up alone (simkv.compiled): a run without a compiled pool, in
    a process without numba, sums with numpy."""
    import sys
    import simkv
    from simkv.simulate import build_simulation
    from simkv.workload.stream import generate_stream
    sc = simkv.load_scenario("scenarios/paged-vs-contiguous-h100.yaml", ["run.num_requests=50", "run.duration_s=null",
                                                                         "run.warmup_s=0"])
    from simkv.files.scenario_file import expand_variants
    paged = dict(expand_variants(sc))["paged"]

    def attached():
        return build_simulation(paged, generate_stream(paged.workload, paged.run)).cost._att_kernels
    monkeypatch.delenv("SIMKV_COMPILED", raising=False)
    assert attached() is kernels
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "numba")
        assert attached() is None
    monkeypatch.setenv("SIMKV_COMPILED", "0")
    assert attached() is None
