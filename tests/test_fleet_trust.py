"""Fleets (issue 14): replicas on one clock behind a router; each check against an independent run."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

import simkv
from simkv.files.scenario_file import validate_scenario
from simkv.request import DONE, REJECTED
from simkv.files.traces import trace_for
from simkv.workload.stream import generate_stream
from conftest import run_cli

BASE = dict(name="fleet-test", model="llama3-8b", hardware={"gpu": "h100"},
            engine={"preset": "vllm-v1", "max_model_len": 4096},
            workload={"arrival": {"process": "poisson", "rate": 8},
                      "prompt_tokens": {"dist": "lognormal", "mean": 400, "p99": 1600},
                      "output_tokens": {"dist": "exponential", "mean": 120, "max": 600}},
            run={"seed": 3, "num_requests": 400}, slo={"ttft_s": 1.0})


def scenario(fleet=None, **changes):
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        node = raw
        *path, last = key.split("__")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    if fleet is not None:
        raw["fleet"] = fleet
    return validate_scenario(raw, "test")


def rows_of(stream, rows):
    """The stream restricted to `rows` (each its own request)."""
    cut = lambda a: None if a is None else a[rows]
    return dataclasses.replace(stream, arrival_s=stream.arrival_s[rows], prompt_tokens=stream.prompt_tokens[rows],
                               output_tokens=stream.output_tokens[rows], max_new_tokens=stream.max_new_tokens[rows],
                               prefix_id=cut(stream.prefix_id), prefix_tokens=cut(stream.prefix_tokens),
                               group=None, class_id=cut(stream.class_id))


def test_round_robin_replicas_are_exactly_lone_replicas_on_their_share():
    """Replica k of a 2-replica round-robin fleet serves rows k, k+2, ... exactly as a lone replica
    simulated on only those rows does: nothing is approximated by being in a fleet."""
    fleet = scenario({"router": {"policy": "round_robin"}, "pools": [{"name": "p", "replicas": 2}]})
    res = simkv.simulate(fleet)
    req = res.requests
    single = scenario()
    stream = generate_stream(single.workload, single.run, trace_for(None))
    for k in range(2):
        rows = np.arange(k, stream.num_requests, 2)
        assert (req["replica"][rows] == k).all()
        alone = simkv.simulate(single, stream=rows_of(stream, rows)).requests
        np.testing.assert_allclose(req["finish_s"][rows], alone["finish_s"], rtol=1e-12)
        np.testing.assert_allclose(req["first_token_s"][rows], alone["first_token_s"], rtol=1e-12)


def test_one_replica_fleet_with_sessions_equals_the_lone_replica():
    """Follow-up turns routed by the fleet arrive when a lone replica's own follow-ups do."""
    sess = {"turns": {"dist": "uniform", "low": 2, "high": 4}, "think_s": 1.0,
            "user_tokens": {"dist": "fixed", "value": 60}}
    lone = simkv.simulate(scenario(workload__sessions=sess, run__num_requests=200))
    one = simkv.simulate(scenario({"pools": [{"name": "p", "replicas": 1}]}, workload__sessions=sess,
                                  run__num_requests=200))
    np.testing.assert_allclose(one.requests["finish_s"], lone.requests["finish_s"], rtol=1e-12, equal_nan=True)
    assert one.summary["latency_s"]["e2e"] == lone.summary["latency_s"]["e2e"]


def test_n_replicas_at_n_times_the_rate_give_n_times_the_throughput():
    lone = simkv.simulate(scenario(workload__arrival={"process": "poisson", "rate": 8}, run__num_requests=500)).summary
    four = simkv.simulate(scenario({"pools": [{"name": "p", "replicas": 4}]},
                                   workload__arrival={"process": "poisson", "rate": 32}, run__num_requests=2000)).summary
    ratio = four["throughput"]["output_tokens_per_s"] / lone["throughput"]["output_tokens_per_s"]
    assert ratio == pytest.approx(4.0, rel=0.08)
    for metric in ("ttft", "e2e", "tpot"):
        assert four["latency_s"][metric]["p50"] == pytest.approx(lone["latency_s"][metric]["p50"], rel=0.15), metric
    assert four["fleet"]["imbalance"]["routed_requests"] == pytest.approx(1.0, abs=0.01)
    assert sum(r["completed"] for r in four["fleet"]["per_replica"]) == four["requests"]["completed"]


SESSIONS = {"turns": {"dist": "uniform", "low": 3, "high": 6}, "think_s": 2.0,
            "user_tokens": {"dist": "fixed", "value": 80}}


@pytest.mark.parametrize("policy", ["kv_aware", "session"])
def test_prefix_aware_routing_hits_the_cache_more_than_round_robin(policy):
    def hit_rate(p):
        s = simkv.simulate(scenario({"router": {"policy": p}, "pools": [{"name": "p", "replicas": 4}]},
                                    workload__sessions=SESSIONS, workload__arrival={"process": "poisson", "rate": 4},
                                    run__num_requests=150)).summary
        per = [r["prefix_hit_rate"] for r in s["fleet"]["per_replica"]]
        assert all(h is not None for h in per)
        return s["kv_cache"]["prefix_cache"]["hit_rate"]
    rr, aware = hit_rate("round_robin"), hit_rate(policy)
    assert aware > rr + 0.15, (rr, aware)


def test_by_class_sends_every_request_of_a_class_to_its_pool():
    classes = [{"name": "chat", "arrival": {"process": "poisson", "rate": 6},
                "prompt_tokens": {"dist": "fixed", "value": 300}, "output_tokens": {"dist": "fixed", "value": 50}},
               {"name": "batch", "arrival": {"process": "poisson", "rate": 2},
                "prompt_tokens": {"dist": "fixed", "value": 1500}, "output_tokens": {"dist": "fixed", "value": 300}}]
    raw = copy.deepcopy(BASE)
    for k in ("arrival", "prompt_tokens", "output_tokens"):
        raw["workload"].pop(k)
    raw["workload"]["classes"] = classes
    raw["fleet"] = {"router": {"policy": "by_class"},
                    "pools": [{"name": "interactive", "replicas": 2, "set": {"engine.preset": "tgi"}, "classes": ["chat"]},
                              {"name": "batch", "replicas": 1}]}
    res = simkv.simulate(validate_scenario(raw, "test"))
    req, fleet = res.requests, res.summary["fleet"]
    assert (req["pool"][req["class_id"] == 0] == 0).all()
    assert (req["pool"][req["class_id"] == 1] == 1).all()
    assert np.isin(req["replica"][req["class_id"] == 0], [0, 1]).all()
    assert fleet["pools"]["interactive"]["setup"]["preset"] == "tgi"
    assert fleet["pools"]["batch"]["summary"]["requests"]["total"] == int((req["class_id"] == 1).sum())


def test_faults_and_overload_lose_and_duplicate_nothing():
    """TGI replicas refusing arrivals (queue full) while two of three fail: every request ends served
    or rejected with a reason; the failed replicas' requests are retried and counted."""
    fleet = {"router": {"policy": "least_loaded"}, "pools": [{"name": "p", "replicas": 3}],
             "faults": [{"pool": "p", "replica": 0, "at_s": 5.0}, {"pool": "p", "replica": 2, "at_s": 12.0}]}
    res = simkv.simulate(scenario(fleet, engine={"preset": "tgi", "max_model_len": 4096, "max_concurrent_requests": 24},
                                  workload__arrival={"process": "poisson", "rate": 40}, run__num_requests=800))
    req, s = res.requests, res.summary
    status = req["status"]
    assert np.isin(status, [DONE, REJECTED]).all()
    assert (req["reject_reason"][status == REJECTED] > 0).all()
    assert np.isfinite(req["finish_s"][status == DONE]).all()
    assert s["requests"]["completed"] + s["requests"]["rejected"] == 800
    assert sum(r["completed"] for r in s["fleet"]["per_replica"]) == s["requests"]["completed"]
    retried = req["retries"] > 0
    assert retried.any() and s["fleet"]["retries"]["requests_retried"] == int(retried.sum())
    # a retried request restarted after its replica failed, and its latency counts from the first arrival
    assert (req["first_scheduled_s"][retried & (status == DONE)] >= 5.0).all()
    assert (req["replica"][retried & (status == DONE)] != 0).all()
    assert s["requests"]["rejected_by_reason"].get("refused by the engine (queue full: max_concurrent_requests)", 0) > 0


def test_a_fleet_whose_replicas_all_fail_fails_the_rest_with_a_reason():
    fleet = {"pools": [{"name": "p", "replicas": 2}],
             "faults": [{"pool": "p", "replica": 0, "at_s": 4.0}, {"pool": "p", "replica": 1, "at_s": 6.0}]}
    res = simkv.simulate(scenario(fleet, run__num_requests=200))
    req, s = res.requests, res.summary
    assert np.isin(req["status"], [DONE, REJECTED]).all()
    failed = s["requests"]["rejected_by_reason"]["failed: its replica failed and no live replica was left to retry it on"]
    assert failed == s["fleet"]["retries"]["failed_no_replica"] > 0
    assert (req["arrival_s"][req["status"] == DONE] < 6.0).all()
    assert s["slo"]["attainment"] < 1.0   # a failed request is a missed SLO, not left out


@pytest.mark.parametrize("fleet, needle", [
    ({"pools": [{"name": "p"}], "faults": [{"pool": "q", "at_s": 1}]}, "no pool named 'q'"),
    ({"pools": [{"name": "p", "set": {"workload.arrival.rate": 3}}]}, "cannot differ between pools"),
    ({"router": {"policy": "by_class"}, "pools": [{"name": "p"}]}, "needs workload.classes"),
    ({"pools": [{"name": "p", "set": {"engine.block_sise": 32}}]}, "block_sise"),
])
def test_bad_fleet_sections_are_clean_errors(tmp_path, fleet, needle):
    import yaml
    raw = copy.deepcopy(BASE)
    raw["fleet"] = fleet
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli("run", path, "-q", "--no-figures", "-o", tmp_path / "out", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("simkv: error: ") and needle in proc.stderr and "; fix: " in proc.stderr
    assert "Traceback" not in proc.stderr
