"""Issue 17 (speed): the default engine's batch with implicit per-sequence progress
(simkv.sched.implicit_batch.ImplicitBatch) gives exactly what the step-by-step reference
(simkv.sched.batch.RunningBatch, selected with `reference_engine()`) gives: the same summary, the
same request table column for column and the same time series, bit for bit, on every preset,
allocator and workload kind, fleets included, and on generated scenarios."""

from __future__ import annotations

import json
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import simkv
from simkv.files.scenario_file import validate_scenario
from simkv.presets import PRESETS
from simkv.sched.batch import RunningBatch
from simkv.sched.implicit_batch import ImplicitBatch
from simkv.sched.queue import reference_engine
from simkv.simulate import build_simulation, stream_for

BASE = dict(name="implicit", model="llama3-8b", hardware={"gpu": "h100"},
            engine={"gpu_memory_utilization": 0.24, "max_model_len": 4096},
            workload={"arrival": {"process": "poisson", "rate": 40.0},
                      "prompt_tokens": {"dist": "lognormal", "mean": 700, "p99": 3000, "max": 3500},
                      "output_tokens": {"dist": "exponential", "mean": 150, "max": 500}},
            run={"seed": 3, "num_requests": 120, "warmup_s": 0.5})


def _scenario(**changes):
    raw = json.loads(json.dumps(BASE))
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return validate_scenario(raw, "test")


def _assert_same(fast, ref) -> None:
    assert fast.keys() == ref.keys()
    for name in fast:
        a, b = fast[name], ref[name]
        assert json.dumps(a.summary, sort_keys=True, default=str) == json.dumps(b.summary, sort_keys=True, default=str), name
        assert a.requests.keys() == b.requests.keys()
        for col in a.requests:
            x, y = np.asarray(a.requests[col]), np.asarray(b.requests[col])
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (name, col)
        for col in a.timeseries:
            assert np.array_equal(a.timeseries[col], b.timeseries[col], equal_nan=True), (name, col)


def _both(scenario):
    fast = simkv.simulate_all(scenario)
    with reference_engine():
        ref = simkv.simulate_all(scenario)
    return fast, ref


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_equals_the_reference(preset):
    fast, ref = _both(_scenario(engine__preset=preset))
    _assert_same(fast, ref)
    if preset in ("simkv", "vllm-v1", "vllm-v0", "sarathi-serve"):   # the memory is tight enough to preempt
        assert any(r.summary["requests"]["preemptions"] for r in fast.values())


@pytest.mark.parametrize("engine", [
    {"allocator": "contiguous", "reservation": "max_model_len"},
    {"allocator": "contiguous", "reservation": "prompt_plus_max_new"},
    {"allocator": "contiguous", "reservation": "pow2", "placement": "buddy"},
    {"allocator": "paged", "block_size": 32},
    {"allocator": "paged", "block_size": 1},
    {"preset": "vllm-v0", "preemption": "swap"},
    {"preset": "vllm-v1", "prefix_caching": False, "block_size": 8},
])
def test_allocators_and_preemption_equal_the_reference(engine):
    _assert_same(*_both(_scenario(engine={**BASE["engine"], **engine})))


@pytest.mark.parametrize("workload", [
    {"shared_prefix": {"fraction": 0.7, "tokens": 512, "num_prefixes": 3}},
    {"sampling": {"n": 3}},
    {"sessions": {"turns": {"dist": "uniform", "low": 2, "high": 4}, "think_s": 0.5,
                  "user_tokens": {"dist": "lognormal", "mean": 80, "p99": 300, "max": 400}}},
])
@pytest.mark.parametrize("preset", ["vllm-v1", "tgi"])
def test_workload_kinds_equal_the_reference(workload, preset):
    sc = _scenario(engine__preset=preset, workload={**BASE["workload"], **workload})
    _assert_same(*_both(sc))


@pytest.mark.parametrize("path, overrides, variant", [
    ("scenarios/fleet-routing-h100.yaml", ["run.num_requests=100", "run.warmup_s=2"], "kv_aware"),
    ("scenarios/fleet-pd-h100.yaml", ["run.num_requests=100", "run.warmup_s=1"], "pd-2p2d-nvlink"),
    ("scenarios/closed-loop-h100.yaml", ["run.num_requests=300", "run.warmup_requests=40",
                                         "workload.arrival.concurrency=48"], None),
    ("scenarios/kv-offload-multiturn-h100.yaml", ["run.duration_s=40", "run.warmup_s=5", "workload.sessions.think_s=3",
                                                  "engine.gpu_memory_utilization=0.25"], "host-64g-ssd-1t"),
])
def test_shipped_fleets_clients_and_offload_equal_the_reference(path, overrides, variant):
    sc = simkv.load_scenario(path, overrides)
    fast = {variant: simkv.simulate(sc, variant)}
    with reference_engine():
        ref = {variant: simkv.simulate(sc, variant)}
    _assert_same(fast, ref)


def test_the_batch_kind_each_policy_gets():
    """Implicit progress where decoders advance together; the reference where they do not
    (speculative decoding), where beams re-select every step, and for SGLang's retraction
    (which reads every decoder's tokens each step)."""
    def batch_of(**changes):
        sc = _scenario(**changes)
        return type(build_simulation(sc, stream_for(sc)).scheduler.batch)
    assert batch_of(engine__preset="vllm-v1") is ImplicitBatch
    assert batch_of(engine__preset="tgi") is ImplicitBatch
    assert batch_of(engine__preset="sglang") is RunningBatch
    assert batch_of(engine={**BASE["engine"], "speculative": {"method": "ngram", "num_tokens": 3,
                                                              "acceptance_rate": 0.6}}) is RunningBatch
    assert batch_of(workload={**BASE["workload"], "sampling": {"beam_width": 2, "beam_reselect": 0.3}}) is RunningBatch
    with reference_engine():
        assert batch_of(engine__preset="vllm-v1") is RunningBatch


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(preset=st.sampled_from(sorted(PRESETS)),
       memory=st.floats(0.22, 0.5), rate=st.floats(2.0, 80.0), prompt=st.integers(50, 1500),
       output=st.integers(2, 400), block=st.sampled_from([1, 4, 16, 32]), seqs=st.integers(2, 64),
       seed=st.integers(0, 1000))
def test_generated_scenarios_equal_the_reference(preset, memory, rate, prompt, output, block, seqs, seed):
    engine = {"preset": preset, "gpu_memory_utilization": memory, "max_model_len": 4096, "max_num_seqs": seqs}
    if preset not in ("tgi", "trtllm"):
        engine["block_size"] = block
    sc = _scenario(engine=engine, run={"seed": seed, "num_requests": 50, "warmup_s": 0.2},
                   workload={"arrival": {"process": "poisson", "rate": rate},
                             "prompt_tokens": {"dist": "exponential", "mean": prompt, "max": 3500},
                             "output_tokens": {"dist": "exponential", "mean": output, "max": 1000}})
    _assert_same(*_both(sc))


def test_a_sweep_equals_the_reference(tmp_path):
    """Every point of a sweep (grid over rate, zip over block size and batch limit, a variant per
    point) is the same with the implicit batch as with the reference (in process: workers=1)."""
    from simkv.studies.sweep import load_sweep, run_sweep
    (tmp_path / "s.yaml").write_text(
        "base: " + str(Path(__file__).resolve().parent.parent / "scenarios" / "paged-vs-contiguous-h100.yaml") + "\n"
        "set: {run.num_requests: 150, run.warmup_s: 0, run.duration_s: null, engine.gpu_memory_utilization: 0.3}\n"
        "grid: {workload.arrival.rate: [10, 40]}\n"
        "zip: {engine.block_size: [8, 32], engine.max_num_seqs: [32, 256]}\n")
    base, points, _ = load_sweep(tmp_path / "s.yaml")
    variants = ["paged", "contiguous-prompt_plus_max_new"]
    fast = run_sweep(base, points, variants, tmp_path / "fast", workers=1)
    with reference_engine():
        ref = run_sweep(base, points, variants, tmp_path / "ref", workers=1)
    assert len(fast) == len(ref) == len(points) * len(variants)

    def stable(summary):
        return json.dumps({k: v for k, v in summary.items() if k not in ("timing", "wall_s")}, sort_keys=True,
                          default=str)
    for a, b in zip(fast, ref):
        assert a["error"] is None and b["error"] is None
        assert a["key"] == b["key"] and stable(a["summary"]) == stable(b["summary"]), a["key"]
