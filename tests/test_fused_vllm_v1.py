"""Issue 17 (speed): the fused vLLM V1 engine (simkv.fused.vllm_v1: chunked prefill within a token
budget, the prefix-caching block pool with its LRU evictions, multi-turn conversations whose later
turns are sent a think time after each answer, in one compiled loop) gives exactly what the engine
it replaces gives: the same summary, request table and time series, bit for bit, against the
default engine (simkv.engine.Replica on ChunkedPrefillScheduler and the implicit batch) and the
step-by-step reference batch, on generated scenarios (conversations, shared prefixes, parallel
sampling, tight caches that preempt and evict, prefix caching off, small budgets that split
prompts, warm-up, decimated time series) and on the shipped multi-turn scenario. Where it meets
what it does not model it hands the run to the default engine, with the same results."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import simkv
from simkv import fused
from simkv.files.scenario_file import expand_variants, validate_scenario
from simkv.fused import dispatch, vllm_v1
from simkv.sched import chunked
from simkv.sched.queue import reference_engine
from simkv.simulate import build_simulation, run_simulation, stream_for
from test_step_grouping import _assert_same   # summary, request table and time series, bit for bit

pytest.importorskip("numba")
pytestmark = pytest.mark.xdist_group("fused")   # one worker compiles the fused loops (make test: --dist loadgroup)

BASE = dict(name="fused-v1", model="llama3-8b", hardware={"gpu": "h100"},
            engine={"preset": "vllm-v1", "gpu_memory_utilization": 0.24, "max_model_len": 4096},
            workload={"arrival": {"process": "poisson", "rate": 4.0},
                      "prompt_tokens": {"dist": "lognormal", "mean": 700, "p99": 2500, "max": 3000},
                      "output_tokens": {"dist": "exponential", "mean": 120, "max": 500}},
            run={"seed": 3, "num_requests": 200, "warmup_s": 0.0})
SESSIONS = {"turns": {"dist": "uniform", "low": 2, "high": 6}, "think_s": 2.0,
            "user_tokens": {"dist": "lognormal", "mean": 100, "p99": 400, "max": 600}}


@pytest.fixture(autouse=True)
def _compiled(monkeypatch):
    monkeypatch.setenv("SIMKV_COMPILED", "1")   # short runs too (simkv.compiled)


def _scenario(engine=None, workload=None, run=None):
    raw = json.loads(json.dumps(BASE))
    raw["engine"].update(engine or {})
    raw["workload"].update(workload or {})
    raw["run"].update(run or {})
    return validate_scenario(raw, "test")


def _three_ways(sc, variant: str = "base", expect: str = "fused", reference: bool = True, full_prompt: bool = False):
    """The run fused, with the fused engine off, and (`reference`) on the step-by-step reference
    batch; the fused run. `full_prompt`: vLLM's scheduler_reserve_full_isl (set by the parity
    harness, simkv.studies.parity)."""
    sc = dict(expand_variants(sc))[variant]
    stream = stream_for(sc)

    def run():
        sim = build_simulation(sc, stream)
        sim.scheduler.full_prompt_must_fit = full_prompt
        return run_simulation(sim, variant)
    got = run()
    assert fused.last_outcome[0].startswith(expect), fused.last_outcome[0]
    with fused.disabled():
        _assert_same(got, run())
        if reference:
            with reference_engine():
                _assert_same(got, run())
    return got


def test_conversations_in_a_tight_cache_evict_preempt_and_equal_the_reference():
    """Histories outgrow the cache: cached blocks are evicted, requests preempted (their computed
    blocks named for the recompute), follow-ups find part of their history."""
    got = _three_ways(_scenario(engine={"gpu_memory_utilization": 0.22, "max_num_batched_tokens": 1024},
                                workload={"sessions": SESSIONS, "arrival": {"process": "poisson", "rate": 3.0}},
                                run={"num_requests": 300, "warmup_s": 5.0}))
    s = got.summary
    assert s["requests"]["preemptions"] > 0
    hits = np.asarray(got.requests["arrival_s"])
    assert np.isfinite(hits).all()   # every later turn was sent
    assert s["kv_cache"]["prefix_cache"]["hit_tokens"] > 0


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from([1.0, 4.0, 20.0]), process=st.sampled_from(["poisson", "onoff", "gamma"]),
       mem=st.sampled_from([0.22, 0.24, 0.4]), block=st.sampled_from([8, 16, 32]),
       budget=st.sampled_from([256, 2048, 8192]), seqs=st.sampled_from([8, 256]), caching=st.booleans(),
       content=st.sampled_from(["sessions", "prefix", "sampling", "none"]), watermark=st.sampled_from([0.0, 0.01]),
       warmup=st.sampled_from([0.0, 0.2]), points=st.sampled_from([2000, 30]), full_prompt=st.booleans(),
       seed=st.integers(0, 5))
def test_generated_scenarios_equal_the_reference(rate, process, mem, block, budget, seqs, caching, content, watermark,
                                                  warmup, points, full_prompt, seed):
    arrival = {"poisson": {"process": "poisson", "rate": rate}, "gamma": {"process": "gamma", "rate": rate, "cv": 3.0},
               "onoff": {"process": "onoff", "rate_on": 2 * rate, "on_s": 20 / rate, "off_s": 20 / rate}}[process]
    workload = {"arrival": arrival, **{"sessions": {"sessions": SESSIONS},
                                       "prefix": {"shared_prefix": {"fraction": 0.7, "tokens": 600, "num_prefixes": 2}},
                                       "sampling": {"sampling": {"n": 3}}, "none": {}}[content]}
    engine = {"gpu_memory_utilization": mem, "block_size": block, "max_num_batched_tokens": budget,
              "max_num_seqs": seqs, "prefix_caching": caching, "watermark": watermark}
    _three_ways(_scenario(engine=engine, workload=workload,
                          run={"seed": seed, "num_requests": 150, "warmup_s": warmup * 150 / rate,
                               "time_series_points": points}),
                reference=False, full_prompt=full_prompt)


def test_sarathi_serve_without_prefix_caching_equals_the_reference():
    got = _three_ways(_scenario(engine={"preset": "sarathi-serve"}, workload={"arrival": {"process": "poisson",
                                                                                          "rate": 20.0}}))
    assert got.summary["setup"]["max_num_batched_tokens"] == 512


def test_the_shipped_multi_turn_scenario_equals_the_reference():
    got = _three_ways(simkv.load_scenario("scenarios/kv-offload-multiturn-h100.yaml", [
        "run.num_requests=600", "run.duration_s=null", "run.warmup_s=30"]), "no-offload")
    assert got.summary["kv_cache"]["prefix_cache"]["hit_tokens"] > 0


def _first_fire(init_arrivals: np.ndarray) -> np.ndarray:
    """The arrival process's clock at each first turn (simkv.fused.loop_parts.fire_times)."""
    clock, out = 0.0, []
    for a in init_arrivals.tolist():
        clock = clock + (a - clock) if a > clock else clock
        out.append(clock)
    return np.array(out)


def test_a_follow_up_at_a_first_turns_arrival_goes_to_the_default_engine():
    """simpy orders a follow-up and a first turn sent at one instant by when each was scheduled:
    the loop does not guess, it hands the run back (the results are the default engine's)."""
    sc = _scenario(workload={"sessions": SESSIONS, "arrival": {"process": "poisson", "rate": 0.5}},
                   run={"num_requests": 60})
    stream = stream_for(sc)
    first = build_simulation(sc, stream)
    run_simulation(first, "base")
    t = first.table
    nxt = int(t.next_turn[0])
    end = float(t.finish_s[0])
    fresh = build_simulation(sc, stream).table
    init = np.flatnonzero(~np.isnan(fresh.arrival_s))
    fired = _first_fire(fresh.arrival_s[init])
    target = float(fired[np.searchsorted(fired, end + 1.0)])   # a first turn sent after the answer
    think = target - end
    while end + ((end + think) - end) != target:   # the follow-up sent at exactly that instant
        think = np.nextafter(think, np.inf if end + ((end + think) - end) < target else -np.inf)

    def tied():
        sim = build_simulation(sc, stream)
        sim.table.think_s[nxt] = think
        return sim
    got = run_simulation(tied(), "base")
    assert fused.last_outcome[0] == "bailed: a follow-up turn and a first turn at one instant"
    with fused.disabled():
        _assert_same(got, run_simulation(tied(), "base"))
    assert got.requests["arrival_s"][nxt] == target


def test_which_runs_it_takes():
    def why(workload=None, **engine):
        sc = _scenario(engine=engine, workload=workload)
        return vllm_v1.why_not(build_simulation(sc, stream_for(sc)))
    assert why() is None and why(workload={"sessions": SESSIONS}) is None and why(preset="sarathi-serve") is None
    assert why(preset="simkv") == "not one replica under vLLM V1's chunked scheduling"
    assert why(kv_offload={"host_gib": 8}) == "not the prefix-caching block pool"
    with reference_engine():
        assert why() == "the reference batch was asked for"
    assert vllm_v1 in dispatch.ENGINES and vllm_v1 in dispatch.FLEET_ENGINES
    from simkv.fused import vllm_v1_kernel as vk   # the loop's block-name kinds are the scheduler's
    assert (vk.K_SESSION, vk.K_PREFIX, vk.K_GROUP, vk.K_OWN) == (chunked.SESSION, chunked.PREFIX, chunked.GROUP,
                                                                  chunked.OWN)


def test_runs_paused_and_resumed_every_few_steps_equal_the_reference(monkeypatch):
    """Long runs pause the loop (progress, token gaps to bin) and resume it: here every 3 iterations,
    idle waits and follow-ups pending included."""
    monkeypatch.setattr(vllm_v1, "CHUNK_ITERATIONS", 3)
    calls = []
    sc = _scenario(workload={"sessions": SESSIONS, "arrival": {"process": "poisson", "rate": 1.0}},
                   run={"num_requests": 120})
    stream = stream_for(sc)
    sim = build_simulation(sc, stream)
    first_turns = int(np.count_nonzero(~np.isnan(sim.table.arrival_s)))
    got = run_simulation(sim, "base", progress=lambda *a: calls.append(a))
    assert fused.last_outcome[0] == "fused" and len(calls) > 20
    assert max(sent for sent, *_ in calls[:-1]) > first_turns   # progress counts the follow-ups sent
    with fused.disabled():
        _assert_same(got, run_simulation(build_simulation(sc, stream), "base"))
