"""The recorder on its compiled kernel (simkv.metrics.compiled_recorder) against the pure recorder
(simkv.metrics.Recorder), total for total and bit for bit: on hypothesis-drawn sequences of commits,
idle periods and extra gaps (runs inside, across and outside the measured window, per-step queue
depths, gaps on bin edges), through the factory and the builder's rule, and in whole runs
(SIMKV_COMPILED=1 against =0; the prefix-cache and attention tests' whole runs use it as well)."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from simkv.metrics import _GAP_LO, _GAP_PER_DECADE, Recorder, _gap_bins
from simkv.metrics.compiled_recorder import CompiledRecorder, new_recorder, recorder_kernels
from simkv.sched.base import StepOutcome, step_ends

kernels = recorder_kernels()
pytestmark = pytest.mark.skipif(kernels is None, reason="numba is not installed")

SCALARS = ("running_integral", "waiting_integral", "gap_max_s", "w0", "w1", "max_running", "max_waiting",
           "window_tokens", "total_tokens", "num_steps")
EDGE_GAPS = [10 ** (b / _GAP_PER_DECADE + _GAP_LO) for b in (3000, 4000, 4321, 5999)]   # bin edges, as floats


def _assert_same(pure: Recorder, comp: CompiledRecorder) -> None:
    for name in SCALARS:
        a, b = getattr(pure, name), getattr(comp, name)
        assert type(a) is type(b) and repr(a) == repr(b), name
    for name in ("kv_integral", "kv_peak", "gap_hist"):
        a, b = getattr(pure, name), getattr(comp, name)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    sa, sb = pure.time_series(), comp.time_series()
    assert sa.keys() == sb.keys() and all(np.asarray(sa[k]).tobytes() == np.asarray(sb[k]).tobytes() for k in sa)


durations_st = st.one_of(st.floats(0.0, 2.0, allow_subnormal=False), st.sampled_from(EDGE_GAPS + [0.0, 1e-13, 5e4]))


@st.composite
def commit(draw, now: float):
    k = draw(st.one_of(st.just(1), st.integers(2, 20), st.integers(17, 60)))
    d = np.array(draw(st.lists(durations_st, min_size=k, max_size=k)))
    if draw(st.booleans()):   # a decode run: one duration repeated
        d[:] = d[0]
    ends = step_ends(now, d)
    kv = np.array(draw(st.lists(st.integers(0, 10**6), min_size=5 * k, max_size=5 * k)), dtype=np.int64).reshape(5, k)
    waiting = draw(st.integers(0, 500))
    o = StepOutcome(ends, kv, draw(st.integers(0, 300)), waiting, draw(st.integers(0, 300)), draw(st.integers(0, 40)),
                    gap_steps_from=draw(st.integers(0, min(1, k))))
    if k > 1 and draw(st.booleans()):
        o.waiting_by_step = np.array(draw(st.lists(st.integers(0, 500), min_size=k, max_size=k)), dtype=np.int64)
    return o, d


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), w0=st.floats(0.0, 3.0), span=st.one_of(st.floats(0.5, 20.0), st.just(np.inf)),
       points=st.integers(2, 50))
def test_sequences_of_events_give_the_same_totals(data, w0, span, points):
    """Commits, idle periods and extra gaps in any order, the window anywhere (or open-ended, as a
    closed-loop run's until its clients stop): every total, peak, bin and time-series row the same."""
    w1 = w0 + span
    pure = Recorder(1000, w0, 1.0 if span == np.inf else w1, points)
    comp = new_recorder(1000, w0, 1.0 if span == np.inf else w1, points, True)
    assert type(comp) is CompiledRecorder
    if span == np.inf:
        pure.w1 = comp.w1 = np.inf
    now = data.draw(st.floats(0.0, 2.0))
    for _ in range(data.draw(st.integers(1, 25))):
        kind = data.draw(st.sampled_from(["steps", "steps", "steps", "idle", "gaps", "close"]))
        if kind == "steps":
            o, d = data.draw(commit(now))
            pure.on_steps(now, o, d)
            comp.on_steps(now, o, d)
            now = float(o.step_end_s[-1])
        elif kind == "idle":
            end = now + data.draw(st.floats(0.0, 3.0))
            pure.on_idle(now, end)
            comp.on_idle(now, end)
            now = end
        elif kind == "gaps":
            gaps = np.array(data.draw(st.lists(durations_st, max_size=5)))
            value, count = data.draw(durations_st), data.draw(st.integers(0, 4))
            pure.on_extra_gaps(gaps, value, count)
            comp.on_extra_gaps(gaps, value, count)
        elif pure.w1 == np.inf and now > pure.w0:   # a closed-loop run's window closes
            pure.w1 = comp.w1 = now
        _assert_same(pure, comp)
    if pure.w1 == np.inf:   # the engine closes an open window before the end (simkv.engine)
        pure.w1 = comp.w1 = now
    pure.on_end(now)
    comp.on_end(now)
    _assert_same(pure, comp)


def test_gaps_on_bin_edges_are_binned_by_numpy():
    """The kernel leaves a gap whose bin position is within NEAR of an edge to numpy's log10 (the
    C library's may differ in the last bit there); every edge gap lands where the pure recorder puts it."""
    d = np.array(EDGE_GAPS + [0.0123, 0.02])   # and two off the edges
    assert len(kernels.near_edge_gaps(d, 0)) == len(EDGE_GAPS)
    pure, comp = Recorder(10, 0.0, 100.0), CompiledRecorder(10, 0.0, 100.0, kernels=kernels)
    for gap_from in (0, 1):
        o = StepOutcome(step_ends(0.0, d), np.ones((5, len(d)), np.int64), 3, 0, 3, 3, gap_steps_from=gap_from)
        pure.on_steps(0.0, o, d)
        comp.on_steps(0.0, o, d)
        one = StepOutcome(step_ends(0.0, d[:1]), np.ones((5, 1), np.int64), 3, 0, 3, 2)
        pure.on_steps(0.0, one, d[:1])
        comp.on_steps(0.0, one, d[:1])
    _assert_same(pure, comp)
    assert comp.gap_hist[_gap_bins(d)].sum() == pure.gap_hist[_gap_bins(d)].sum() > 0


def test_the_attributes_read_and_set_as_the_pure_recorders():
    """A fleet sums replicas' recorders through these attributes (simkv.fleet.summary)."""
    rec = CompiledRecorder(10, 0.5, 9.0, kernels=kernels)
    rec.max_running, rec.gap_max_s, rec.kv_integral = 7, 0.25, [1.0, 2.0, 3.0, 4.0, 5.0]
    assert (rec.max_running, rec.gap_max_s, rec.w0, rec.w1) == (7, 0.25, 0.5, 9.0)
    assert type(rec.max_running) is int and rec.kv_integral.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    rec.on_idle(0.0, 1.0)   # half a second of it in the window, all free
    assert rec.kv_integral.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0 + 0.5 * 10]


def test_the_builder_follows_the_run_length_and_the_switch(monkeypatch):
    import sys

    import simkv
    from simkv import compiled
    from simkv.files.scenario_file import expand_variants
    from simkv.simulate import build_simulation
    from simkv.workload.stream import generate_stream

    def built(n: int):
        sc = simkv.load_scenario("scenarios/paged-vs-contiguous-h100.yaml", [f"run.num_requests={n}",
                                                                             "run.duration_s=null", "run.warmup_s=0"])
        paged = dict(expand_variants(sc))["paged"]
        return build_simulation(paged, generate_stream(paged.workload, paged.run)).compiled_recorder

    monkeypatch.delenv("SIMKV_COMPILED", raising=False)
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "numba")
        assert built(50) is False   # a short run in a process without numba stays pure
        m.setattr(compiled, "RECORDER_FROM_REQUESTS", 60)
        assert built(60) is True
    assert built(50) is True    # numba loaded: it costs nothing more
    monkeypatch.setenv("SIMKV_COMPILED", "0")
    assert built(50) is False
    assert type(new_recorder(10, 0.0, 1.0, 100, True)) is Recorder   # the switch wins
    monkeypatch.delenv("SIMKV_COMPILED")
    assert type(new_recorder(10, 0.0, 1.0, 100, False)) is Recorder


def test_a_copied_or_pickled_recorder_goes_on_the_same():
    """Its kernels are found again and its views remade on the copied arrays."""
    import copy
    import pickle
    d = np.array([0.01, 0.02, 0.03])
    o = StepOutcome(step_ends(0.0, d), np.arange(15, dtype=np.int64).reshape(5, 3), 2, 1, 2, 2)
    rec = CompiledRecorder(100, 0.0, 10.0, kernels=kernels)
    rec.on_steps(0.0, o, d)
    before = rec.kv_integral
    for other in (copy.deepcopy(rec), pickle.loads(pickle.dumps(rec))):
        pure = Recorder(100, 0.0, 10.0)
        pure.on_steps(0.0, o, d)
        for r in (other, pure):
            r.on_steps(0.06, StepOutcome(step_ends(0.06, d), o.kv, 2, 1, 2, 2), d)
            r.on_idle(0.12, 0.5)
        _assert_same(pure, other)
    assert rec.kv_integral.tobytes() == before.tobytes() and rec.num_steps == 3   # the copies are its own


def test_closed_loop_and_warm_up_runs_are_the_same():
    """Clients set the window at run time (w0, w1 through the attributes); warm-up requests are left out."""
    from test_compiled_prefix_cache import _same_both_ways
    from test_step_grouping import _scenario
    _same_both_ways(_scenario(engine={"preset": "vllm-v0"},
                              workload={"arrival": {"process": "closed", "concurrency": 8}},
                              run={"warmup_s": 0, "warmup_requests": 5}))
    _same_both_ways(_scenario(engine={"preset": "tgi"}, run={"warmup_s": 1.0, "num_requests": 60}))
