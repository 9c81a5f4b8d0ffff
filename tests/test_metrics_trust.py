"""Trust in the summary: SLO attainment and goodput over offered requests (refused = missed,
unservable reported by cause), the offered latency view, a KV breakdown that covers the whole
window, the resolved engine in `setup`, and labelled cost sources. Each check recomputes the
number independently from the per-request columns (requests.csv) or the scenario."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import simkv
from simkv.build import resolve_engine
from simkv.simulate import build_simulation
from simkv.report.markdown import markdown_report
from simkv.scenario import Engine
from simkv.simulate import run_simulation
from simkv.workload.stream import generate_stream

from conftest import small_scenario

DONE, REJECTED = 1, 2
UNSERVABLE = (1, 2, 4)


def _tgi_overloaded(**over):
    """TGI refusing arrivals (queue full) and, with chunking off, rejecting prompts over its prefill budget."""
    raw = dict(engine={"preset": "tgi", "max_concurrent_requests": 10, "num_gpu_blocks": 128, "max_model_len": 512,
                       "max_batch_prefill_tokens": 180, "prefill_chunking": False},
               run={"seed": 5, "num_requests": 200, "warmup_s": 0.5},
               workload__arrival={"process": "poisson", "rate": 20.0}, slo={"ttft_s": 0.3})
    raw.update(over)
    return small_scenario(**raw)


def _percentile_with_inf(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile on a list that may hold inf, in plain Python."""
    v = sorted(values)
    pos = q / 100 * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if math.isinf(v[hi]):
        return math.inf
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


# ---------------------------------------------------------------- SLO over offered requests

def test_slo_attainment_and_goodput_count_refused_requests_as_missed():
    res = simkv.simulate(_tgi_overloaded())
    s, r = res.summary, res.requests
    w0, w1 = s["throughput"]["measured_window_s"]
    arrived = r["arrival_s"] >= w0
    unservable = arrived & (r["status"] == REJECTED) & np.isin(r["reject_reason"], UNSERVABLE)
    refused = arrived & (r["status"] == REJECTED) & np.isin(r["reject_reason"], (3, 5))
    met = arrived & (r["status"] == DONE) & (r["ttft_s"] <= 0.3)
    offered = arrived & ~unservable
    assert refused.sum() > 20 and unservable.sum() > 10            # the scenario exercises both
    slo = s["slo"]
    assert slo["attainment"] == pytest.approx(met.sum() / offered.sum(), rel=1e-12)
    assert slo["goodput_requests_per_s"] == pytest.approx(met.sum() / (w1 - w0), rel=1e-12)
    assert (slo["offered"], slo["met"], slo["refused"], slo["unservable"]) == (
        offered.sum(), met.sum(), refused.sum(), unservable.sum())
    assert f"{unservable.sum()} unservable excluded" in slo["over"] and "refused = missed" in slo["over"]
    served = arrived & (r["status"] == DONE)
    assert slo["attainment_served"] == pytest.approx(met.sum() / served.sum(), rel=1e-12)
    assert slo["attainment"] < slo["attainment_served"] - 0.1    # refusals are not a free pass


def test_unservable_requests_are_counted_by_cause_and_left_out():
    # prompts over max_model_len (reason 1) and over TGI's prefill budget (reason 4)
    sc = _tgi_overloaded(engine={"preset": "tgi", "max_concurrent_requests": 64, "num_gpu_blocks": 128,
                                 "max_model_len": 150, "max_batch_prefill_tokens": 120,
                                 "prefill_chunking": False},
                         workload__overlong="reject", workload__arrival={"process": "poisson", "rate": 5.0},
                         run={"seed": 5, "num_requests": 200, "warmup_s": 6.0})
    res = simkv.simulate(sc)
    s, r = res.summary, res.requests
    w0 = s["throughput"]["measured_window_s"][0]
    from simkv.request import REJECT_REASONS
    names = {1: REJECT_REASONS[1], 4: REJECT_REASONS[4]}
    in_window = {names[k]: int(((r["reject_reason"] == k) & (r["arrival_s"] >= w0)).sum()) for k in names}
    total = {names[k]: int((r["reject_reason"] == k).sum()) for k in names}
    assert all(in_window.values()) and total != in_window       # warm-up arrivals make them differ
    assert s["requests"]["unservable"] == in_window
    assert s["requests"]["unservable_total"] == total
    offered = (r["arrival_s"] >= w0) & ~np.isin(r["reject_reason"], UNSERVABLE)
    met = offered & (r["status"] == DONE) & (r["ttft_s"] <= 0.3)
    assert s["slo"]["attainment"] == pytest.approx(met.sum() / offered.sum(), rel=1e-12)
    assert s["slo"]["unservable"] == sum(in_window.values())


def test_offered_latency_view_counts_refused_requests_as_infinite():
    res = simkv.simulate(_tgi_overloaded())
    s, r = res.summary, res.requests
    w0 = s["throughput"]["measured_window_s"][0]
    served = (r["arrival_s"] >= w0) & (r["status"] == DONE)
    refused = (r["arrival_s"] >= w0) & (r["status"] == REJECTED) & np.isin(r["reject_reason"], (3, 5))
    assert s["latency_s"]["over"].startswith("served")
    off = s["latency_s_offered"]
    assert off["refused"] == refused.sum() and off["requests"] == served.sum() + refused.sum()
    for key in ("ttft", "e2e", "queue"):
        col = f"{key}_s"
        values = list(r[col][served]) + [math.inf] * int(refused.sum())
        for q in (50, 90, 99):
            expect = _percentile_with_inf(values, q)
            got = off[key][f"p{q}"]
            assert (got is None) if math.isinf(expect) else got == pytest.approx(expect, rel=1e-12), (key, q)
        assert off[key]["mean"] is None and off[key]["max"] is None
        # the served table is unchanged: numpy over the served requests only
        assert s["latency_s"][key]["p99"] == pytest.approx(np.percentile(r[col][served], 99), rel=1e-12)
    assert off["ttft"]["p50"] is not None and off["ttft"]["p99"] is None   # ~1/3 refused: median finite
    md = markdown_report({"tgi": res}, [])
    assert "offered view" in md and "∞" in md


def test_offered_view_equals_served_view_without_refusals():
    res = simkv.simulate(small_scenario(slo={"ttft_s": 1.0}))
    s = res.summary
    assert s["requests"]["refused_in_window"] == 0
    for key in ("ttft", "e2e", "tpot", "queue"):
        assert s["latency_s_offered"][key] == s["latency_s"][key]
    assert s["slo"]["attainment"] == s["slo"]["attainment_served"]


def test_per_class_attainment_and_offered_view():
    cls = lambda name, rate, slo: {"name": name, "arrival": {"process": "poisson", "rate": rate},
                                   "prompt_tokens": {"dist": "uniform", "low": 10, "high": 170},
                                   "output_tokens": {"dist": "uniform", "low": 1, "high": 150}, "slo": slo}
    sc = _tgi_overloaded(workload={"classes": [cls("chat", 14.0, {"ttft_s": 0.2}), cls("batch", 6.0, {"e2e_s": 3.0})]})
    res = simkv.simulate(sc)
    s, r = res.summary, res.requests
    w0, w1 = s["throughput"]["measured_window_s"]
    for i, (name, key, target) in enumerate((("chat", "ttft_s", 0.2), ("batch", "e2e_s", 3.0))):
        mine = (r["class_id"] == i) & (r["arrival_s"] >= w0)
        unservable = mine & np.isin(r["reject_reason"], UNSERVABLE)
        refused = mine & np.isin(r["reject_reason"], (3, 5))
        met = mine & (r["status"] == DONE) & (r[key] <= target)
        c = s["classes"][name]
        assert refused.sum() > 0
        assert c["slo"]["attainment"] == pytest.approx(met.sum() / (mine & ~unservable).sum(), rel=1e-12)
        assert c["slo"]["goodput_requests_per_s"] == pytest.approx(met.sum() / (w1 - w0), rel=1e-12)
        assert c["refused_in_window"] == refused.sum() and sum(c["unservable"].values()) == unservable.sum()
        served = mine & (r["status"] == DONE)
        values = list(r["ttft_s"][served]) + [math.inf] * int(refused.sum())
        expect = _percentile_with_inf(values, 50)
        got = c["latency_s_offered"]["ttft"]["p50"]
        assert (got is None) if math.isinf(expect) else got == pytest.approx(expect, rel=1e-12)
        assert c["latency_s"]["over"].startswith("served")
    assert "offered TTFT / E2E p99 s" in markdown_report({"x": res}, [])


def _session_tgi(**engine):
    raw = {"model": "llama3-8b", "hardware": {"gpu": "h100"},
           "engine": {"preset": "tgi", "max_model_len": 800, "num_gpu_blocks": 400, "max_concurrent_requests": 4,
                      **engine},
           "workload": {"arrival": {"process": "poisson", "rate": 4.0}, "overlong": "reject",
                        "prompt_tokens": {"dist": "uniform", "low": 100, "high": 400},
                        "output_tokens": {"dist": "uniform", "low": 20, "high": 100},
                        "sessions": {"turns": {"dist": "uniform", "low": 2, "high": 5}, "think_s": 0.5,
                                     "user_tokens": {"dist": "uniform", "low": 50, "high": 200}}},
           "run": {"seed": 2, "num_requests": 40}, "slo": {"ttft_s": 0.5}}
    return simkv.Scenario(**raw)


def test_turns_of_ended_conversations_are_missed_and_unservable_turns_keep_their_cause():
    sc = _session_tgi()
    stream = generate_stream(sc.workload, sc.run)
    sim = build_simulation(sc, stream)
    res = run_simulation(sim, "base")
    t, s = sim.table, res.summary
    ended = t.reject_reason == 5
    assert ended.any() and np.isnan(t.arrival_s[ended]).all()          # never sent
    too_long = stream.prompt_tokens > 800 - 1
    assert too_long.any()
    assert (t.reject_reason[too_long] == 1).all()                     # not relabelled "conversation ended"
    # no warm-up: every row was offered; only the unservable ones are left out
    unservable = np.isin(t.reject_reason, UNSERVABLE)
    met = (t.status == DONE) & (t.first_token_s - t.arrival_s <= 0.5)
    assert s["slo"]["attainment"] == pytest.approx(met.sum() / (~unservable).sum(), rel=1e-12)
    assert s["requests"]["unservable"] == {"prompt longer than max_model_len": int(too_long.sum())}
    assert s["slo"]["refused"] == np.isin(t.reject_reason, (3, 5)).sum()


# ---------------------------------------------------------------- KV breakdown covers the window

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kv_breakdown_sums_to_one_when_the_engine_ends_idle(seed):
    sc = small_scenario(run={"seed": seed, "duration_s": 20.0, "warmup_s": 1.0},
                        workload__arrival={"process": "poisson", "rate": 0.3},
                        workload__output_tokens={"dist": "uniform", "low": 1, "high": 20})
    res = simkv.simulate(sc)
    s = res.summary
    w0, w1 = s["throughput"]["measured_window_s"]
    assert s["throughput"]["makespan_s"] < w1                           # an idle tail
    kv = s["kv_cache"]["mean_fraction"]
    assert sum(kv.values()) == pytest.approx(1.0, abs=1e-9)
    # the tail is all free: free >= its share of the window
    assert kv["free"] >= (w1 - max(w0, s["throughput"]["makespan_s"])) / (w1 - w0) - 1e-12


@pytest.mark.parametrize("over", [{}, {"engine__preset": "vllm-v1"},
                                  {"run": {"seed": 1, "duration_s": 2.0, "warmup_s": 0.3}}])
def test_kv_breakdown_sums_to_one_for_busy_runs(over):
    res = simkv.simulate(small_scenario(**over))
    assert sum(res.summary["kv_cache"]["mean_fraction"].values()) == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------- setup: the engine as it ran

def test_setup_lists_every_resolved_engine_field(tmp_path):
    sc = small_scenario(engine={"preset": "vllm-v1", "num_gpu_blocks": 64, "max_model_len": 512})
    res = simkv.simulate(sc)
    res.save(tmp_path)
    setup = json.loads((tmp_path / "summary.json").read_text())["setup"]    # JSON-safe round trip
    engine = setup["engine"]
    assert set(engine) == set(Engine.model_fields)
    resolved = resolve_engine(sc)
    for name in Engine.model_fields:
        if name not in ("max_num_batched_tokens", "max_model_len", "activation_reserve_gib",
                        "host_overhead_s", "host_per_seq_s"):   # derived at build time (simkv.features.host_overhead)
            assert engine[name] == getattr(resolved, name), name
    assert engine["scheduler"] == "chunked" and engine["prefix_caching"] is True
    assert engine["max_num_batched_tokens"] == 8192 and engine["max_model_len"] == 512   # preset, then derived
    assert engine["activation_reserve_gib"] == setup["memory"]["activation_reserve_gib"]
    default = simkv.simulate(small_scenario(engine={"num_gpu_blocks": 64, "max_model_len": 512}))
    assert default.summary["setup"]["engine"]["max_num_batched_tokens"] == 2048           # max(max_model_len, 2048)
    assert "Engine as run" in markdown_report({"a": res}, [])


# ---------------------------------------------------------------- where the cost numbers come from

KINDS = ("measured", "fitted", "roofline", "assumed", "n/a")


def _sources(**over):
    return simkv.simulate(small_scenario(run__num_requests=4, **over)).summary["setup"]["cost_sources"]


def test_cost_sources_calibrated_h100():
    src = _sources()
    assert all(v.startswith(KINDS) for v in src.values())
    assert src["gemm"].startswith("measured: h100 GEMM tables")
    assert src["attention_decode"].startswith("measured: h100 attention")
    assert src["layer_correction"].startswith("fitted")
    assert src["swap"].startswith("measured") and "55.1" in src["swap"]     # h100 device.json d2h 55.14 GB/s
    assert src["host_overhead"].startswith("assumed 0: no public per-step number")
    assert src["tp_allreduce"].startswith("n/a") and src["kv_fp8_attention"].startswith("n/a")


def test_cost_sources_name_the_assumptions_when_used():
    src = _sources(engine={"num_gpu_blocks": 64, "max_model_len": 512, "kv_cache_dtype": "fp8",
                           "weight_dtype": "fp8", "host_overhead_s": 0.002},
                   model="llama3-70b", hardware={"gpu": "h100", "tensor_parallel": 4})
    assert src["kv_fp8_attention"].startswith("assumed") and "not measured" in src["kv_fp8_attention"]
    assert src["tp_allreduce"].startswith("measured: Vidur NCCL profile h100_dgx")  # issue 16: was the NVLink roofline
    assert src["fp8_weights"].startswith("measured") and "assumed" in src["fp8_weights"]
    assert src["host_overhead"].startswith("assumed: engine.host_overhead_s 0.002 s")
    # llama3-70b at TP 4 fp8: its GEMM shapes were measured in bf16 only -> scaled, and said so
    assert "scaled" in src["gemm"]


def test_cost_sources_gpu_without_measurements_is_roofline_everywhere():
    gpu = {"memory_gib": 80, "hbm_bandwidth_gbps": 2039, "bf16_tflops": 312, "host_link_gbps": 32}  # a100 is Vidur-calibrated (issue 16)
    src = _sources(hardware={"gpu": gpu})
    for key, value in src.items():
        assert value.startswith(("roofline", "n/a", "assumed")), key
    assert src["host_overhead"].startswith("assumed") and src["swap"].startswith("roofline")
    assert not any(v.startswith(("measured", "fitted")) for v in src.values())
    rl = _sources(cost="roofline")   # h100 with the roofline model: compute roofline, swap still measured
    assert not any(v.startswith(("measured", "fitted")) for k, v in rl.items() if k != "swap")
    assert rl["swap"].startswith("measured")
    assert "measured ceilings" in rl["gemm"]                             # h100 roofline uses measured ceilings
    res = simkv.simulate(small_scenario(run__num_requests=4, hardware={"gpu": gpu}))
    assert "datasheet" in markdown_report({"a": res}, [])
