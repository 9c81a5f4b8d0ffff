"""Issue 17 (speed): a fleet whose router decides without looking at load (round robin, random)
runs each replica in its fused loop, and a one-pool fleet behind least_loaded runs as one lockstep
loop (simkv.fused.fleet, fleet_loop); both give what the fleet on the simpy clock gives, bit for
bit: the summary with its fleet block, the request table with pool and replica, and the time
series. Generated fleets cover paged FCFS, TGI and vLLM V1 replicas, refusals beyond
max_concurrent_requests, requests refused at build time, replicas that get no request, two pools of
different engines, load in requests or tokens, and a measured window after a warm-up. Fleets it does
not model (a router's stale view, a decision delay, kv_aware, faults, sessions, two pools behind
least_loaded) and a hand-over at exactly a step's end go to simpy."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from simkv import fused
from simkv.files.scenario_file import validate_scenario
from simkv.fused import fleet as fused_fleet
from simkv.fused import paged_fcfs, tgi, vllm_v1
from simkv.request import REFUSED_BY_ENGINE
from simkv.simulate import prepared, run_simulation, stream_for
from test_step_grouping import _assert_same   # summary, request table and time series, bit for bit

pytest.importorskip("numba")
pytestmark = pytest.mark.xdist_group("fused")   # one worker compiles the fused loops (make test: --dist loadgroup)

BASE = dict(name="fused-fleet", model="llama3-8b", hardware={"gpu": "h100"},
            engine={"gpu_memory_utilization": 0.24, "max_model_len": 4096},
            workload={"arrival": {"process": "poisson", "rate": 40.0},
                      "prompt_tokens": {"dist": "lognormal", "mean": 700, "p99": 3000, "max": 5000},
                      "output_tokens": {"dist": "exponential", "mean": 120, "max": 500}},
            run={"seed": 3, "num_requests": 240, "warmup_s": 0.5},
            fleet={"router": {"policy": "round_robin"}, "pools": [{"name": "a", "replicas": 3}]})


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.setenv("SIMKV_COMPILED", "1")   # short runs too (simkv.compiled)


def _scenario(engine=None, workload=None, run=None, fleet=None):
    raw = json.loads(json.dumps(BASE))
    for key, part in (("engine", engine), ("workload", workload), ("run", run), ("fleet", fleet)):
        raw[key].update(part or {})
    return validate_scenario(raw, "test")


def _run(sc, stream=None):
    return run_simulation(next(prepared(sc, stream=stream))[2], "base")


def _both(sc, expect: str = "fused fleet", stream=None):
    """The fleet run with its replicas fused, and on simpy: equal; the fused run."""
    got = _run(sc, stream)
    assert fused.last_outcome[0] == expect
    with fused.disabled():
        _assert_same(got, _run(sc, stream))
    return got


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["round_robin", "random"]), replicas=st.sampled_from([1, 2, 5, 16]),
       preset=st.sampled_from(["simkv", "tgi", "vllm-v1"]), rate=st.sampled_from([5.0, 40.0, 150.0]),
       concurrent=st.sampled_from([4, 128]), second_pool=st.booleans(), points=st.sampled_from([2000, 40]),
       seed=st.integers(0, 5))
def test_generated_fleets_equal_the_fleet_on_simpy(policy, replicas, preset, rate, concurrent, second_pool, points,
                                                    seed):
    engine = {"preset": preset}
    if preset == "tgi":
        engine["max_concurrent_requests"] = concurrent
    pools = [{"name": "a", "replicas": replicas}]
    if second_pool:   # the other engine, in a pool of its own
        other = {"engine.preset": "tgi", "engine.max_concurrent_requests": concurrent} if preset != "tgi" else \
            {"engine.preset": "vllm-v1"}
        pools.append({"name": "b", "replicas": 2, "set": other})
    _both(_scenario(engine=engine, workload={"arrival": {"process": "poisson", "rate": rate}},
                    run={"seed": seed, "time_series_points": points, "warmup_s": 40 / rate},
                    fleet={"router": {"policy": policy}, "pools": pools}))


def test_refusals_rejections_and_idle_replicas():
    """TGI refuses beyond max_concurrent_requests, prompts over max_model_len are refused at build
    time, and of 16 replicas given 10 requests six get none (they idle to the fleet's end)."""
    got = _both(_scenario(engine={"preset": "tgi", "max_concurrent_requests": 2},
                          workload={"arrival": {"process": "poisson", "rate": 300.0},
                                    "prompt_tokens": {"dist": "lognormal", "mean": 900, "p99": 5000, "max": 9000}},
                          fleet={"pools": [{"name": "a", "replicas": 2}]}))
    reasons = np.asarray(got.requests["reject_reason"])
    assert (reasons == REFUSED_BY_ENGINE).any() and (reasons == 1).any()   # 1: longer than max_model_len
    idle = _both(_scenario(run={"num_requests": 10, "warmup_s": 0.0}, fleet={"pools": [{"name": "a", "replicas": 16}]}))
    routed = [r["routed"] for r in idle.summary["fleet"]["per_replica"]]
    assert routed == [1] * 10 + [0] * 6


def test_a_one_replica_fleet_equals_the_lone_replica():
    sc = _scenario(fleet={"pools": [{"name": "a", "replicas": 1}]})
    got = _both(sc)
    lone = _run(sc.model_copy(update={"fleet": None}))
    assert fused.last_outcome[0] == "fused"
    for key in ("finish_s", "first_token_s", "status"):
        np.testing.assert_array_equal(np.asarray(got.requests[key]), np.asarray(lone.requests[key]))
    assert got.summary["throughput"] == lone.summary["throughput"]


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(["least_loaded", "session"]), load=st.sampled_from(["requests", "tokens"]),
       preset=st.sampled_from(["simkv", "tgi", "vllm-v1"]), replicas=st.sampled_from([1, 2, 5, 16]),
       rate=st.sampled_from([5.0, 40.0, 150.0]), mem=st.sampled_from([0.24, 0.4]), seqs=st.sampled_from([8, 256]),
       interval=st.sampled_from([0.0, 0.0, 0.25]), points=st.sampled_from([2000, 40]), seed=st.integers(0, 5))
def test_generated_least_loaded_fleets_equal_the_fleet_on_simpy(policy, load, preset, replicas, rate, mem, seqs,
                                                                interval, points, seed):
    """One lockstep loop (simkv.fused.fleet_loop): the router reads every replica's answers as they
    come, or (`interval`) at its periodic refreshes; preemption (paged, tight caches), TGI's refusals
    (`seqs` is then max_concurrent_requests), prompts split over steps, rejections and runs cut by
    hand-overs included."""
    limit = {"max_num_seqs": seqs} if preset != "tgi" else {"max_concurrent_requests": seqs}
    _both(_scenario(engine={"preset": preset, "gpu_memory_utilization": mem, **limit},
                    workload={"arrival": {"process": "poisson", "rate": rate}},
                    run={"seed": seed, "time_series_points": points, "warmup_s": 40 / rate},
                    fleet={"router": {"policy": policy, "load": load, "state_interval_s": interval},
                           "pools": [{"name": "a", "replicas": replicas}]}))


@pytest.mark.parametrize("fleet, reason", [
    ({"router": {"policy": "least_loaded", "decision_delay_s": 0.001}}, "not a least-loaded router"),
    ({"router": {"policy": "kv_aware"}}, "not a least-loaded router"),
    ({"router": {"policy": "least_loaded"}, "faults": [{"pool": "a", "replica": 0, "at_s": 1.0}]}, "faults"),
])
def test_fleets_it_does_not_model_run_on_simpy(fleet, reason):
    sc = _scenario(fleet=fleet)
    built = next(prepared(sc))[2]
    assert fused_fleet.why_not(built) is not None and fused_fleet.why_not_lockstep(built).startswith(reason)
    _both(sc, expect="")


def test_a_least_loaded_fleet_of_two_pools_runs_on_simpy():
    sc = _scenario(fleet={"router": {"policy": "least_loaded"},
                          "pools": [{"name": "a", "replicas": 2}, {"name": "b", "replicas": 1,
                                                                  "set": {"engine.preset": "tgi"}}]})
    assert fused_fleet.why_not_lockstep(next(prepared(sc))[2]) == "more than one pool"
    _both(sc, expect="")


def test_sessions_and_engines_without_a_loop_run_on_simpy():
    sessions = _scenario(workload={"sessions": {"turns": {"dist": "fixed", "value": 2}, "think_s": 1.0,
                                                "user_tokens": {"dist": "fixed", "value": 50}}})
    assert fused_fleet.why_not(next(prepared(sessions))[2]).startswith("the router decides")
    assert fused_fleet.why_not_lockstep(next(prepared(sessions))[2]).startswith("not a least-loaded router")
    sglang = _scenario(engine={"preset": "sglang"}, fleet={"router": {"policy": "least_loaded"}})
    assert fused_fleet.why_not_lockstep(next(prepared(sglang))[2]).startswith("pool a: no fused engine fits")


@pytest.mark.parametrize("policy", ["round_robin", "least_loaded"])
def test_a_hand_over_at_a_step_end_goes_to_simpy(policy):
    """simpy orders a hand-over and a step end at the same instant by when each was scheduled: the
    replica's loop hands the fleet back, and simpy runs it (with the same results as without fused loops)."""
    sc = _scenario(workload={"arrival": {"process": "poisson", "rate": 2.0}}, run={"warmup_s": 0.0},
                   fleet={"router": {"policy": policy}, "pools": [{"name": "a", "replicas": 1}]})
    stream = stream_for(sc)
    first = _both(sc, stream=stream)
    step_end = float(np.asarray(first.requests["first_token_s"])[0])   # request 0's prefill: the first step
    assert stream.arrival_s[1] > step_end
    stream.arrival_s[1] = step_end
    _both(sc, expect="bailed: an arrival at exactly a step's end", stream=stream)


def test_a_replica_whose_queue_outgrows_its_ring_goes_to_simpy(monkeypatch):
    """A lockstep replica's queue is a ring of about its share of the requests (simkv.fused.fleet
    .ring_size): a fleet where one could outgrow it runs on simpy, with the same results."""
    monkeypatch.setattr(fused_fleet, "ring_size", lambda *_: 6)
    sc = _scenario(workload={"arrival": {"process": "poisson", "rate": 300.0}},
                   fleet={"router": {"policy": "least_loaded"}, "pools": [{"name": "a", "replicas": 2}]})
    _both(sc, expect="bailed: a replica's queue longer than its ring (lockstep fleet)")


@pytest.mark.parametrize("policy", ["round_robin", "least_loaded"])
@pytest.mark.parametrize("preset", ["simkv", "tgi", "vllm-v1"])
def test_fleets_paused_and_resumed_every_few_steps_equal_the_fleet_on_simpy(monkeypatch, policy, preset):
    """Long runs pause the loops (progress, token gaps to bin) and resume them: here every 3
    iterations of a replica and every 3 hand-overs of a lockstep fleet."""
    for module in (fused_fleet, paged_fcfs, tgi, vllm_v1):   # (each took the driver's number at import)
        monkeypatch.setattr(module, "CHUNK_ITERATIONS", 3)
    calls = []
    sc = _scenario(engine={"preset": preset, "max_concurrent_requests": 16},
                   fleet={"router": {"policy": policy}, "pools": [{"name": "a", "replicas": 3}]})
    got = run_simulation(next(prepared(sc))[2], "base", progress=lambda *a: calls.append(a))
    assert fused.last_outcome[0] == "fused fleet" and len(calls) > 20
    with fused.disabled():
        _assert_same(got, _run(sc))
