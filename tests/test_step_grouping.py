"""The engine's fast-forward (a decode run committed as k steps at once, cut where a request
arrives) gives exactly what committing every step on its own gives: the same summary, request
table and time series, bit for bit, on every preset, allocator and workload kind, LoRA, fleets
(with follow-up turns routed anywhere, a fault, an autoscaler, disaggregation) and generated
scenarios. `step_by_step()` re-plans after every step (each decode run is limited to one step).

What this guards (each was wrong before it, found by this comparison):
- the queue depth and, for contiguous allocators, the external fragmentation of a run's steps
  were the values at the run's end for every step, so requests that arrived in its last step
  counted as waiting through all of it (mean_waiting 3-10x too high on TGI and vLLM V1 sessions);
- LoRA's distinct adapters per step were counted per plan, not per step;
- in a fleet, a replica did not end its run when a follow-up turn (started by another replica's
  answer) reached it, so that request waited for the run's end (tens of ms of extra TTFT);
- step ends and the KV integrals were sums whose rounding depended on how steps were grouped
  (and the integrals on the CPU's BLAS kernel); they are now added one step at a time.
"""

from __future__ import annotations

import contextlib
import json

import hypothesis.strategies as st
import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, given, settings

import simkv
from simkv.engine import _TimeoutAt
from simkv.files.scenario_file import validate_scenario
from simkv.presets import PRESETS
from simkv.sched.base import step_ends
from simkv.sched.queue import QueuedScheduler

BASE = dict(name="grouping", model="llama3-8b", hardware={"gpu": "h100"},
            engine={"gpu_memory_utilization": 0.24, "max_model_len": 4096},
            workload={"arrival": {"process": "poisson", "rate": 30.0},
                      "prompt_tokens": {"dist": "lognormal", "mean": 700, "p99": 3000, "max": 3500},
                      "output_tokens": {"dist": "exponential", "mean": 120, "max": 400}},
            run={"seed": 5, "num_requests": 100, "warmup_s": 0.5})
SESSIONS = {"turns": {"dist": "uniform", "low": 2, "high": 4}, "think_s": 0.3,
            "user_tokens": {"dist": "lognormal", "mean": 80, "p99": 300, "max": 400}}


@contextlib.contextmanager
def step_by_step():
    """Every decode run limited to one step: the engine plans and commits each step on its own."""
    orig = QueuedScheduler.repeated_decodes

    def one_step(self, arrival_sensitive, limit=None, decodes=None):
        return orig(self, arrival_sensitive, 1, decodes)
    QueuedScheduler.repeated_decodes = one_step
    try:
        yield
    finally:
        QueuedScheduler.repeated_decodes = orig


def _scenario(**sections):
    raw = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key != "fleet" else value
    return validate_scenario(raw, "test")


def _assert_same(a, b) -> None:
    assert json.dumps(a.summary, sort_keys=True, default=str) == json.dumps(b.summary, sort_keys=True, default=str)
    assert a.requests.keys() == b.requests.keys()
    for col in a.requests:
        x, y = np.asarray(a.requests[col]), np.asarray(b.requests[col])
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), col
    assert a.timeseries.keys() == b.timeseries.keys()
    for col in a.timeseries:
        assert np.array_equal(a.timeseries[col], b.timeseries[col], equal_nan=True), col


def _check(scenario, variant=None, runs_expected=True):
    fast = simkv.simulate(scenario, variant)
    with step_by_step():
        slow = simkv.simulate(scenario, variant)
    _assert_same(fast, slow)
    if runs_expected:   # the comparison means something: the fast engine did fast-forward
        assert fast.summary["batch"]["steps"] > 0
    return fast


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_equals_step_by_step(preset):
    _check(_scenario(engine={"preset": preset}))


@pytest.mark.parametrize("engine", [
    {"allocator": "contiguous", "reservation": "max_model_len"},
    {"allocator": "contiguous", "reservation": "pow2", "placement": "buddy"},
    {"preset": "vllm-v0", "preemption": "swap"},
    {"preset": "vllm-v1", "lora": {"max_loras": 4, "max_lora_rank": 16}},
    {"preset": "tgi", "lora": {"max_loras": 4, "max_lora_rank": 16}},
])
def test_allocators_swap_and_lora_equal_step_by_step(engine):
    lora = {"lora": {"adapters": 12, "popularity": "uniform", "rank": 16}} if "lora" in engine else {}
    _check(_scenario(engine=engine, workload=lora))


@pytest.mark.parametrize("preset", ["vllm-v1", "tgi"])
def test_sessions_and_prefixes_equal_step_by_step(preset):
    _check(_scenario(engine={"preset": preset}, workload={"sessions": SESSIONS}))
    _check(_scenario(engine={"preset": preset},
                     workload={"shared_prefix": {"fraction": 0.7, "tokens": 512, "num_prefixes": 3}}))


@pytest.mark.parametrize("fleet", [
    {"router": {"policy": "round_robin"}, "pools": [{"name": "a", "replicas": 3}]},
    {"router": {"policy": "least_loaded"}, "pools": [{"name": "a", "replicas": 3}]},
    {"router": {"policy": "least_loaded", "decision_delay_s": 0.002}, "pools": [{"name": "a", "replicas": 2}]},
    {"router": {"policy": "least_loaded"}, "pools": [{"name": "a", "replicas": 3}],
     "faults": [{"pool": "a", "replica": 1, "at_s": 2.0}]},
])
def test_fleets_with_follow_up_turns_equal_step_by_step(fleet):
    """Follow-up turns are routed to any replica, at times no replica can foresee (another
    replica's answer starts them): each must be seen after the step in flight."""
    fast = _check(_scenario(engine={"preset": "vllm-v1"}, workload={"sessions": SESSIONS},
                            run={"num_requests": 150}, fleet=fleet))
    assert fast.summary["requests"]["completed"] > 0


def test_the_shipped_fleet_scenarios_equal_step_by_step():
    for path, variant in [("scenarios/fleet-routing-h100.yaml", "least_loaded"),
                          ("scenarios/fleet-pd-h100.yaml", "pd-2p2d-nvlink")]:
        _check(simkv.load_scenario(path, ["run.num_requests=120", "run.warmup_s=1"]), variant)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preset=st.sampled_from(sorted(PRESETS)), memory=st.floats(0.22, 0.5), rate=st.floats(2.0, 80.0),
       prompt=st.integers(50, 1500), output=st.integers(2, 300), seqs=st.integers(2, 64),
       sessions=st.booleans(), replicas=st.integers(1, 3), seed=st.integers(0, 1000))
def test_generated_scenarios_equal_step_by_step(preset, memory, rate, prompt, output, seqs, sessions, replicas, seed):
    workload = {"arrival": {"process": "poisson", "rate": rate},
                "prompt_tokens": {"dist": "exponential", "mean": prompt, "max": 3000},
                "output_tokens": {"dist": "exponential", "mean": output, "max": 600}}
    if sessions:
        workload["sessions"] = SESSIONS
    extra = {"fleet": {"router": {"policy": "least_loaded"}, "pools": [{"name": "a", "replicas": replicas}]}} \
        if replicas > 1 else {}
    _check(_scenario(engine={"preset": preset, "gpu_memory_utilization": memory, "max_num_seqs": seqs},
                     workload=workload, run={"seed": seed, "num_requests": 40, "warmup_s": 0.2}, **extra))


@given(start=st.floats(0, 1e5), d=st.lists(st.floats(1e-6, 2.0), min_size=1, max_size=40),
       cut=st.integers(0, 40))
def test_step_ends_are_the_same_in_pieces(start, d, cut):
    """A step's end is the same float whether its run is committed whole or in two pieces."""
    d = np.array(d)
    cut = min(cut, len(d) - 1)
    whole = step_ends(start, d)
    loop, t = [], start
    for x in d.tolist():
        t += x
        loop.append(t)
    assert whole.tolist() == loop
    if cut:
        first = step_ends(start, d[:cut])
        assert np.concatenate((first, step_ends(float(first[-1]), d[cut:]))).tolist() == loop


def test_a_run_ends_exactly_where_its_steps_end():
    """Some ends no delay reaches from `now` (every `now + delay` rounds to even): the timeout
    for a run's end is queued at the end itself."""
    now, end = 0.6682489805617106, 1.9949284640376266
    assert now + (end - now) != end
    env = simpy.Environment(initial_time=now)
    seen = []

    def proc():
        yield _TimeoutAt(env, end)
        seen.append(env.now)
    env.process(proc())
    env.run()
    assert seen == [end]
    with pytest.raises(ValueError):
        _TimeoutAt(env, end - 1.0)


@given(k=st.integers(1, 40), seed=st.integers(0, 10**6), per_step_queue=st.booleans())
def test_short_and_long_runs_integrate_alike(k, seed, per_step_queue):
    """The recorder adds a short run's terms with Python floats and a long one's with numpy's
    sequential cumsum: the same IEEE operations in the same order, so the same totals."""
    from simkv.metrics import Recorder
    rng = np.random.default_rng(seed)
    overlap = rng.random(k) * rng.choice([1e-3, 1.0, 1e3])
    kv = rng.integers(0, 10**9, size=(5, k))
    waiting = rng.integers(0, 50, size=k) if per_step_queue else int(rng.integers(0, 50))
    a, b = (Recorder(10**9, 0.0, 1e9) for _ in range(2))
    for r in (a, b):
        r._kv_integral = (rng.random(5) * 1e4).tolist() if r is a else list(a._kv_integral)
        r.running_integral, r.waiting_integral = 12.5, 3.25
    a._accumulate_short(overlap.tolist(), kv, 37, waiting)
    b._accumulate(overlap, kv, 37, waiting)
    assert a._kv_integral == b._kv_integral
    assert (a.running_integral, a.waiting_integral) == (b.running_integral, b.waiting_integral)
