"""Issue 19: closed-loop and offline clients in fleets; the router spreads the clients' requests
over the replicas. Each check is against the request table or an independent lone-replica run."""

from __future__ import annotations

import numpy as np
import pytest

from simkv.request import DONE, REJECTED
from simkv.scenario import Scenario
from simkv.simulate import simulate


def _raw(arrival, num_requests=240, fleet=None, engine=None, **extra):
    raw = dict(model="llama3-8b", hardware={"gpu": "h100"},
               engine=engine or {"preset": "vllm-v1", "max_model_len": 4096},
               workload={"arrival": arrival, "prompt_tokens": {"dist": "uniform", "low": 100, "high": 600},
                         "output_tokens": {"dist": "uniform", "low": 20, "high": 120}},
               run={"num_requests": num_requests, "seed": 5})
    if fleet is not None:
        raw["fleet"] = fleet
    raw.update(extra)
    return raw


def _fleet(replicas, policy="round_robin", **router):
    return {"router": {"policy": policy, **router}, "pools": [{"name": "p", "replicas": replicas}]}


def _in_flight(sent, finish, times):
    return np.array([np.count_nonzero((sent <= t) & (finish > t)) for t in times])


def _once_each(res, n):
    """Every request ends exactly once: served or rejected, none lost, none twice."""
    st = np.asarray(res.requests["status"])
    assert len(st) == n
    assert np.all((st == DONE) | (st == REJECTED))
    s = res.summary["requests"]
    assert s["total"] == n and s["completed"] + s["rejected"] == n
    assert s["completed"] == np.count_nonzero(st == DONE)


def test_n_clients_keep_exactly_n_in_flight_fleet_wide_and_littles_law():
    n, k, total = 6, 3, 300
    res = simulate(Scenario(**_raw({"process": "closed", "concurrency": n}, total, fleet=_fleet(k))))
    q = res.requests
    sent, finish = np.asarray(q["sent_s"], float), np.asarray(q["finish_s"], float)
    assert np.all(np.isfinite(sent)) and np.all(np.isfinite(finish))
    _once_each(res, total)
    last_send = sent.max()
    events = np.unique(np.r_[sent, finish])
    events = events[events <= last_send]
    mids = (events[:-1] + events[1:]) / 2
    assert len(mids) > 100
    assert np.all(_in_flight(sent, finish, mids) == n)
    assert np.all(np.isin(sent[sent > 0], finish))   # a client sends again the moment its answer ends
    # spread over the replicas by the round robin: in sending order, request j goes to replica j % k
    replica = np.asarray(q["replica"])
    order = np.argsort(sent, kind="stable")
    counts = np.bincount(replica, minlength=k)
    assert counts.min() > 0 and counts.max() - counts.min() <= 1
    # sends at the same instant are ordered by the router as they come; over any n consecutive sends
    # every replica gets n / k of them, give or take one
    for start in range(0, total - n, n):
        c = np.bincount(replica[order[start:start + n]], minlength=k)
        assert c.max() - c.min() <= 2
    # Little's law, from the table, and the report agrees
    conc = res.summary["bench"]["concurrency"]
    w0, w1 = conc["window_s"]
    assert w1 == pytest.approx(last_send)
    rps = np.count_nonzero((finish >= w0) & (finish <= w1)) / (w1 - w0)
    e2e = np.mean(finish - sent)
    assert rps == pytest.approx(n / e2e, rel=0.03)
    assert conc["mean_in_flight"] == pytest.approx(n, rel=1e-9)
    assert conc["littles_law_relative_gap"] < 0.03
    assert res.summary["fleet"]["router"]["decisions_per_replica"] == counts.tolist()


@pytest.mark.parametrize("arrival", [{"process": "closed", "concurrency": 5, "think_s": 0.3},
                                     {"process": "offline"}])
def test_one_replica_fleet_with_clients_equals_the_lone_replica(arrival):
    lone = simulate(Scenario(**_raw(arrival, 120)))
    one = simulate(Scenario(**_raw(arrival, 120, fleet=_fleet(1))))
    for col in ("sent_s", "finish_s", "first_token_s"):
        np.testing.assert_allclose(np.asarray(one.requests[col], float), np.asarray(lone.requests[col], float),
                                   rtol=1e-12, equal_nan=True)
    assert one.summary["latency_s"]["e2e"] == lone.summary["latency_s"]["e2e"]
    assert one.summary["bench"]["concurrency"]["window_s"] == lone.summary["bench"]["concurrency"]["window_s"]
    assert one.summary["kv_cache"]["utilization_mean"] == pytest.approx(lone.summary["kv_cache"]["utilization_mean"],
                                                                        rel=1e-12)


def test_warmup_requests_window_matches_the_lone_replica():
    raw = dict(run={"num_requests": 80, "seed": 5, "warmup_requests": 10})
    arrival = {"process": "closed", "concurrency": 4}
    lone = simulate(Scenario(**_raw(arrival, **raw)))
    one = simulate(Scenario(**_raw(arrival, fleet=_fleet(1), **raw)))
    assert one.summary["bench"]["concurrency"]["window_s"] == lone.summary["bench"]["concurrency"]["window_s"]
    np.testing.assert_allclose(np.asarray(one.requests["finish_s"], float),
                               np.asarray(lone.requests["finish_s"], float), rtol=1e-12)


def test_offline_sends_everything_at_zero_through_the_router():
    total, k = 90, 3
    res = simulate(Scenario(**_raw({"process": "offline"}, total, fleet=_fleet(k))))
    q = res.requests
    assert np.all(np.asarray(q["sent_s"], float) == 0.0)
    _once_each(res, total)
    assert np.bincount(np.asarray(q["replica"]), minlength=k).tolist() == [total // k] * k
    w0, w1 = res.summary["bench"]["concurrency"]["window_s"]
    assert w0 == 0.0 and w1 == pytest.approx(np.nanmax(np.asarray(q["finish_s"], float)))


def test_least_loaded_router_and_refusals_release_clients():
    """A refused request frees its client at once; with a load-aware router nothing is lost either."""
    engine = {"preset": "tgi", "max_model_len": 4096, "max_concurrent_requests": 2}
    res = simulate(Scenario(**_raw({"process": "closed", "concurrency": 9}, 90, fleet=_fleet(2, "least_loaded"),
                                   engine=engine)))
    _once_each(res, 90)
    assert res.summary["requests"]["rejected"] > 0
    assert min(res.summary["fleet"]["router"]["decisions_per_replica"]) > 0


def test_sessions_with_closed_clients_in_a_fleet_equal_the_lone_replica():
    sess = {"turns": {"dist": "uniform", "low": 2, "high": 3}, "think_s": 0.5,
            "user_tokens": {"dist": "fixed", "value": 40}}
    arrival = {"process": "closed", "concurrency": 3}
    raw = _raw(arrival, 60)
    raw["workload"]["sessions"] = sess
    lone = simulate(Scenario(**raw))
    one = simulate(Scenario(**{**raw, "fleet": _fleet(1)}))
    np.testing.assert_allclose(np.asarray(one.requests["finish_s"], float),
                               np.asarray(lone.requests["finish_s"], float), rtol=1e-12, equal_nan=True)
    two = simulate(Scenario(**{**raw, "fleet": _fleet(2)}))
    _once_each(two, len(lone.requests["status"]))
    assert len(set(np.asarray(two.requests["replica"]).tolist())) == 2
