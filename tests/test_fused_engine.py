"""Issue 17 (speed): the fused engine (simkv.fused.paged_fcfs: FCFS continuous batching on paged
blocks, the calibrated cost model and the recorder in one compiled loop) gives exactly what the
engine it replaces gives: the same summary, request table and time series, bit for bit, against
both the default engine (simkv.engine.Replica with the implicit batch) and the step-by-step
reference batch, on generated scenarios (preemption by recompute, watermarks, warm-up, rejected
requests, decimated time series) and on the shipped scenarios it runs. Where it meets what it does
not model it hands the run to the reference engine, with the same results."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import simkv
from simkv import fused
from simkv.files.scenario_file import validate_scenario
from simkv.fused import paged_fcfs, tgi
from simkv.sched.queue import reference_engine
from simkv.simulate import build_simulation, run_simulation, stream_for
from test_step_grouping import _assert_same   # summary, request table and time series, bit for bit

pytest.importorskip("numba")
pytestmark = pytest.mark.xdist_group("fused")   # one worker compiles the fused loops (make test: --dist loadgroup)

BASE = dict(name="fused", model="llama3-8b", hardware={"gpu": "h100"},
            engine={"gpu_memory_utilization": 0.24, "max_model_len": 4096},
            workload={"arrival": {"process": "poisson", "rate": 40.0},
                      "prompt_tokens": {"dist": "lognormal", "mean": 700, "p99": 3000, "max": 3500},
                      "output_tokens": {"dist": "exponential", "mean": 150, "max": 500}},
            run={"seed": 3, "num_requests": 300, "warmup_s": 0.5})


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.setenv("SIMKV_COMPILED", "1")   # short runs too (simkv.compiled)


def _scenario(engine=None, workload=None, run=None):
    raw = json.loads(json.dumps(BASE))
    raw["engine"].update(engine or {})
    raw["workload"].update(workload or {})
    raw["run"].update(run or {})
    return validate_scenario(raw, "test")


def _arrivals(process: str, rate: float) -> dict:
    """Poisson, bursts with long idle gaps (the arrival process's clock then rounds: `now + (arrival
    - now)` is not the arrival time, simkv.fused.loop_parts), or gamma gaps burstier than Poisson."""
    if process == "onoff":
        return {"process": "onoff", "rate_on": 2 * rate, "on_s": 40 / rate, "off_s": 40 / rate}
    if process == "gamma":
        return {"process": "gamma", "rate": rate, "cv": 3.0}
    return {"process": "poisson", "rate": rate}


def _three_ways(scenario, variant: str = "base", expect: str = "fused", reference: bool = True):
    """The run fused, with the fused engine off, and (`reference`) on the step-by-step reference
    batch, which tests/test_implicit_engine.py already equates with the default engine; the run."""
    sc = dict(simkv.files.scenario_file.expand_variants(scenario))[variant]
    stream = stream_for(sc)
    got = run_simulation(build_simulation(sc, stream), variant)
    outcome = fused.last_outcome[0]
    assert outcome.startswith(expect), outcome
    with fused.disabled():
        _assert_same(got, run_simulation(build_simulation(sc, stream), variant))
        if reference:
            with reference_engine():
                _assert_same(got, run_simulation(build_simulation(sc, stream), variant))
    return got


def test_preemption_by_recompute_and_rejected_requests_equal_the_reference():
    got = _three_ways(_scenario(workload={"prompt_tokens": {"dist": "lognormal", "mean": 900, "p99": 5000,
                                                              "max": 9000}}))
    assert got.summary["requests"]["preemptions"] > 0
    assert (np.asarray(got.requests["status"]) == 2).any()   # prompts over max_model_len: refused at arrival


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from([2.0, 15.0, 40.0, 120.0]), process=st.sampled_from(["poisson", "onoff", "gamma"]),
       mem=st.sampled_from([0.24, 0.3, 0.5]), block=st.sampled_from([1, 8, 16, 32]), seqs=st.sampled_from([4, 32, 256]),
       watermark=st.sampled_from([0.0, 0.01]), batched=st.sampled_from([None, 4096, 12000]),
       warmup=st.sampled_from([0.0, 0.1, 0.2]), points=st.sampled_from([2000, 40]),
       out_mean=st.sampled_from([1, 20, 150]), seed=st.integers(0, 5))
def test_generated_scenarios_equal_the_reference(rate, process, mem, block, seqs, watermark, batched, warmup, points,
                                                  out_mean, seed):
    engine = {"gpu_memory_utilization": mem, "block_size": block, "max_num_seqs": seqs, "watermark": watermark}
    if batched is not None:
        engine["max_num_batched_tokens"] = batched
    output = {"dist": "fixed", "value": 1} if out_mean == 1 else {"dist": "exponential", "mean": out_mean, "max": 500}
    _three_ways(_scenario(engine=engine, workload={"arrival": _arrivals(process, rate), "output_tokens": output},
                          run={"seed": seed, "num_requests": 150, "warmup_s": warmup * 150 / rate, "time_series_points": points}),
                reference=False)


@pytest.mark.parametrize("path, variant", [("scenarios/quickstart.yaml", "base"),
                                           ("scenarios/paged-vs-contiguous-h100.yaml", "paged")])
def test_the_shipped_scenarios_it_runs_equal_the_reference(path, variant):
    _three_ways(simkv.load_scenario(path, ["run.num_requests=700", "run.duration_s=null", "run.warmup_s=5"]), variant)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from([2.0, 15.0, 40.0, 120.0]), process=st.sampled_from(["poisson", "onoff", "gamma"]),
       mem=st.sampled_from([0.24, 0.3, 0.5]), block=st.sampled_from([1, 16, 32]), budget=st.sampled_from([600, 2048, 8192]),
       concurrent=st.sampled_from([8, 128]), prefix=st.booleans(), warmup=st.sampled_from([0.0, 0.1, 0.2]),
       points=st.sampled_from([2000, 40]), out_mean=st.sampled_from([1, 20, 150]), seed=st.integers(0, 5))
def test_generated_tgi_scenarios_equal_the_reference(rate, process, mem, block, budget, concurrent, prefix, warmup,
                                                      points, out_mean, seed):
    """TGI's chunked batching: refusals beyond max_concurrent_requests, prompts split over steps
    (their attention priced by the cost model through the loop's CALL), the radix allocator
    without hits or the plain reserving pool."""
    engine = {"preset": "tgi", "gpu_memory_utilization": mem, "block_size": block, "max_batch_prefill_tokens": budget,
              "max_concurrent_requests": concurrent, "prefix_caching": prefix}
    output = {"dist": "fixed", "value": 1} if out_mean == 1 else {"dist": "exponential", "mean": out_mean, "max": 500}
    _three_ways(_scenario(engine=engine, workload={"arrival": _arrivals(process, rate), "output_tokens": output,
                                                   "max_new_tokens": {"policy": "cap", "tokens": 600}},
                          run={"seed": seed, "num_requests": 150, "warmup_s": warmup * 150 / rate, "time_series_points": points}),
                reference=False)


def test_the_shipped_tgi_scenario_equals_the_reference():
    """(engines-2026-h100.yaml's TGI has shared prefixes: the default engine runs it.)"""
    got = _three_ways(simkv.load_scenario("scenarios/vllm-vs-tgi-h100.yaml", [
        "run.num_requests=700", "run.duration_s=null", "run.warmup_s=5", "workload.arrival.rate=30"]), "tgi")
    assert (np.asarray(got.requests["reject_reason"]) == 3).any()   # refused beyond max_concurrent_requests
    assert got.summary["kv_cache"]["prefix_cache"]["query_tokens"] > 0


def test_arrivals_after_long_idle_gaps_come_when_the_arrival_process_wakes():
    """After a long idle gap the arrival process wakes at `now + (arrival - now)`, an ulp off the
    arrival time; the engine starts the request then (found by fuzzing: its first step started one
    ulp late in the reference, and the fused loop once started it on time)."""
    sc = _scenario(engine={"max_num_seqs": 64}, workload={
        "arrival": {"process": "onoff", "rate_on": 10.0, "on_s": 2.0, "off_s": 2.0},
        "prompt_tokens": {"dist": "fixed", "value": 512}, "output_tokens": {"dist": "fixed", "value": 1}},
        run={"seed": 288, "num_requests": 200, "warmup_s": 0.0})
    got = _three_ways(sc)
    arrival, scheduled = np.asarray(got.requests["arrival_s"]), np.asarray(got.requests["first_scheduled_s"])
    assert ((scheduled > arrival) & (scheduled - arrival < 1e-12)).any()   # started an ulp after it arrived
    assert (scheduled >= arrival).all()


def test_an_arrival_at_a_step_end_goes_to_the_reference_engine():
    """simpy orders an arrival and a step end at the same instant by when each was scheduled: the
    fused loop does not guess, it hands the run back (and the results are the reference's)."""
    sc = _scenario(workload={"arrival": {"process": "poisson", "rate": 2.0}})
    stream = stream_for(sc)
    first = build_simulation(sc, stream)
    run_simulation(first, "base")
    step_end = float(first.table.first_token_s[0])   # the end of the first step (request 0's prefill)
    assert first.table.arrival_s[1] > step_end

    def tied():
        sim = build_simulation(sc, stream)
        sim.table.arrival_s[1] = step_end
        return sim
    got = run_simulation(tied(), "base")
    assert fused.last_outcome[0] == "bailed: an arrival at exactly a step's end"
    with fused.disabled():
        _assert_same(got, run_simulation(tied(), "base"))


def test_which_runs_each_takes(monkeypatch):
    def why(engine_module=paged_fcfs, cost="calibrated", workload=None, **engine):
        sc = _scenario(engine=engine, workload=workload).model_copy(update={"cost": cost})
        return engine_module.why_not(build_simulation(sc, stream_for(sc)))
    assert why() is None
    assert why(preset="vllm-v1") == "not one replica under the fcfs policy"
    assert why(allocator="contiguous") == "not the paged allocator taking blocks on demand"
    assert why(cost="roofline") == "not the calibrated cost model"
    assert why(tgi, preset="tgi") is None and why(tgi, preset="tgi", prefix_caching=False) is None
    assert why(tgi) == why(tgi, preset="tgi", prefill_chunking=False) == "not one replica under TGI's chunked batching"
    shared = {"shared_prefix": {"fraction": 0.5, "tokens": 512, "num_prefixes": 2}}
    assert why(tgi, preset="tgi", workload=shared) == "prefix-cache hits are possible (shared content)"
    assert why(tgi, preset="tgi", workload={"sampling": {"n": 2}}) == "prefix-cache hits are possible (shared content)"
    assert why(tgi, preset="tgi", prefix_caching=False, workload=shared) is None   # no cache, no hits
    with reference_engine():
        assert why() == why(tgi, preset="tgi") == "the reference batch was asked for"
    sc = _scenario()
    for switch, value in (("SIMKV_FUSED", "0"), ("SIMKV_COMPILED", "0")):   # the default engine runs it
        with monkeypatch.context() as m:
            m.setenv(switch, value)
            run_simulation(build_simulation(sc, stream_for(sc)), "base")
            assert fused.last_outcome[0] == "", switch
    run_simulation(build_simulation(sc, stream_for(sc)), "base")
    assert fused.last_outcome[0] == "fused"
