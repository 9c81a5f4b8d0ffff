"""Fleet autoscaling (issue 14): replica counts follow a step in load within [min, max], drains lose
nothing, GPU-hours are the replicas' lifetimes, a cold start delays a new replica's service."""

from __future__ import annotations


import numpy as np
import pytest

import simkv
from simkv.files.scenario_file import validate_scenario
from simkv.request import DONE, FAILED_NO_REPLICA, REJECTED
from conftest import run_cli

COLD = 20.0


def step_scenario(**auto):
    raw = dict(name="autoscale-test", model="llama3-8b", hardware={"gpu": "h100"},
               engine={"preset": "vllm-v1", "max_model_len": 4096},
               workload={"arrival": {"process": "piecewise", "times_s": [0, 40, 120], "rates": [2, 80, 2]},
                         "prompt_tokens": {"dist": "lognormal", "mean": 600, "p99": 2400},
                         "output_tokens": {"dist": "exponential", "mean": 150, "max": 600}},
               run={"seed": 1, "num_requests": 6600}, slo={"ttft_s": 1.0},
               fleet={"router": {"policy": "least_loaded"}, "pools": [{"name": "p", "replicas": 1}],
                      "autoscale": {"pool": "p", "min": 1, "max": 5, "metric": "queue", "target": 2,
                                    "interval_s": 5, "cold_start_s": COLD, "window_s": 20, **auto}})
    return validate_scenario(raw, "test")


@pytest.fixture(scope="module")
def step_run():
    return simkv.simulate(step_scenario())


def test_count_rises_then_falls_within_bounds(step_run):
    a = step_run.summary["fleet"]["autoscale"]
    over = a["replicas_over_time"]
    counted = (np.array(over["serving"]) + np.array(over["starting"]))[:-1]   # draining ones no longer count
    assert over["up"][-1] == 0                                          # the last row: the run's end
    assert counted.min() >= 1 and counted.max() <= 5
    assert max(np.array(over["up"])) <= 5                              # never more engines than max
    times = np.array(over["time_s"])[:-1]
    assert counted[times < 40].max() == 1                               # nothing to do before the step
    assert counted.max() >= 3                                           # it rose under the step
    assert counted[-1] == 1                                              # and fell back after it
    actions = [e["action"] for e in a["events"]]
    assert actions.index("add") < actions.index("drain")
    assert actions.count("add") == actions.count("ready") and actions.count("drain") == actions.count("stop")


def test_drained_replicas_lose_no_request(step_run):
    s, req = step_run.summary, step_run.requests
    status, replica = np.asarray(req["status"]), np.asarray(req["replica"])
    n = s["requests"]["total"]
    assert n == 6600 and len(status) == n
    assert np.isin(status, [DONE, REJECTED]).all()
    rejected = status == REJECTED
    assert (np.asarray(req["reject_reason"])[rejected] > 0).all()      # every refusal has its reason
    routed = s["fleet"]["router"]["decisions_per_replica"]
    assert sum(routed) == n                                              # each request routed once
    assert [int((replica == g).sum()) for g in range(len(routed))] == routed
    finish = np.asarray(req["finish_s"])
    for r in s["fleet"]["per_replica"]:
        mine = replica == r["replica"]
        if r["lifetimes_s"]:   # everything it took was answered before it stopped
            assert (finish[mine & (status == DONE)] <= r["lifetimes_s"][-1][1] + 1e-9).all()
    drained = {e["replica"] for e in s["fleet"]["autoscale"]["events"] if e["action"] == "stop"}
    reason = np.asarray(req["reject_reason"])
    for g in drained:   # served, or refused on arrival with its reason (too long): none dropped by the drain
        mine = replica == g
        assert (status[mine] == DONE).sum() > 0
        refused = set(reason[mine & (status == REJECTED)].tolist())
        assert FAILED_NO_REPLICA not in refused and 0 not in refused
    assert drained


def test_gpu_hours_are_replica_lifetimes(step_run):
    a = step_run.summary["fleet"]["autoscale"]
    end = max(r["lifetimes_s"][-1][1] for r in step_run.summary["fleet"]["per_replica"] if r["lifetimes_s"])
    # independently: replica 0 serves from 0; every other one from its add event to its stop event (or the end)
    up = {0: [0.0]}
    spans = []
    for e in a["events"]:
        if e["action"] == "add":
            up.setdefault(e["replica"], []).append(e["t_s"])
        elif e["action"] == "stop":
            spans.append(e["t_s"] - up[e["replica"]].pop())
    spans += [end - t for starts in up.values() for t in starts]
    assert a["gpu_hours"] == pytest.approx(sum(spans) / 3600, rel=1e-9)
    lifetimes = sum(b - s for r in step_run.summary["fleet"]["per_replica"] for s, b in r["lifetimes_s"])
    assert a["gpu_hours"] == pytest.approx(lifetimes / 3600, rel=1e-9)
    assert a["gpu_hours"] < a["gpu_hours_fixed_at_peak"]


def test_cold_start_delays_first_step_by_cold_start(step_run):
    req = step_run.requests
    arrival, replica = np.asarray(req["arrival_s"]), np.asarray(req["replica"])
    first = np.asarray(req["first_scheduled_s"])
    events = step_run.summary["fleet"]["autoscale"]["events"]
    adds = [e for e in events if e["action"] == "add"]
    assert adds
    for e in adds:
        g, t = e["replica"], e["t_s"]
        ready = next(x for x in events if x["action"] == "ready" and x["replica"] == g and x["t_s"] >= t)
        assert ready["t_s"] == pytest.approx(t + COLD, abs=1e-9)
        mine = (replica == g) & (arrival >= t)
        assert arrival[mine].min() >= t + COLD - 1e-9                  # nothing reaches it while it loads
        assert np.nanmin(first[mine]) >= t + COLD - 1e-9                # its first step after exactly that
        if e["t_s"] < 100:   # under the step, the first request after it comes up goes to it at once
            later = arrival >= t + COLD
            k = np.flatnonzero(later)[np.argmin(arrival[later])]
            assert replica[k] == g and first[k] == pytest.approx(arrival[k], abs=1e-9)


def test_load_gbps_cold_start_is_weights_over_rate():
    res = simkv.simulate(step_scenario(cold_start_s=None, load_gbps=2.0))
    a = res.summary["fleet"]["autoscale"]
    # independently: Llama-3-8B's 8.03e9 parameters in bf16 (2 bytes) at 2 GB/s
    assert a["cold_start_s"] == pytest.approx(8.03e9 * 2 / 2e9, rel=0.01)
    for e in a["events"]:
        if e["action"] == "ready":
            add = max(x["t_s"] for x in a["events"] if x["action"] == "add" and x["replica"] == e["replica"]
                      and x["t_s"] <= e["t_s"])
            assert e["t_s"] - add == pytest.approx(a["cold_start_s"], abs=1e-9)


@pytest.mark.parametrize("auto, problem", [
    ({"min": 3}, "outside"),
    ({"max": 0}, "max"),
    ({"cold_start_s": None}, "exactly one of cold_start_s"),
    ({"load_gbps": 5}, "exactly one of cold_start_s"),
    ({"pool": "nope"}, "no pool named"),
    ({"metric": "kv", "target": 4}, "fraction"),
])
def test_bad_autoscale_is_a_clean_error(tmp_path, auto, problem):
    import yaml
    sc = step_scenario().model_dump(mode="json", exclude_unset=True)
    sc["fleet"]["autoscale"].update(auto)
    sc["fleet"]["autoscale"] = {k: v for k, v in sc["fleet"]["autoscale"].items() if v is not None}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sc))
    out = run_cli("validate", path, cwd=None)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"simkv: error: {path}:") and "fix:" in out.stderr and problem in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("metric, target", [("kv", 0.3), ("slo", 0.9)])
def test_kv_and_slo_signals_scale_within_bounds(metric, target):
    res = simkv.simulate(step_scenario(metric=metric, target=target, max=4))
    a = res.summary["fleet"]["autoscale"]
    over = a["replicas_over_time"]
    counted = (np.array(over["serving"]) + np.array(over["starting"]))[:-1]
    assert counted.min() >= 1 and counted.max() <= 4 and max(over["up"]) <= 4
    assert counted.max() >= 2 and counted[-1] == 1   # it rose under the step, fell after it
    adds = [e for e in a["events"] if e["action"] == "add"]
    # each add saw the signal past its target: kv above it, attainment below it
    assert all((e["signal"] > target) if metric == "kv" else (e["signal"] < target) for e in adds)
    assert res.summary["requests"]["completed"] + res.summary["requests"]["rejected"] == 6600


def test_replicas_over_time_figure_counts_lifetimes(step_run):
    from simkv.report.fleet_plots import replicas_over_time
    fig = replicas_over_time({"base": step_run})
    x, y = fig.axes[0].lines[0].get_data()
    over = step_run.summary["fleet"]["autoscale"]["replicas_over_time"]
    # independently: the autoscaler's own step-wise count of replicas holding GPUs at each grid time
    idx = np.searchsorted(over["time_s"], x, side="right") - 1
    want = np.asarray(over["up"])[idx]
    inner = (x > 0) & (x < over["time_s"][-1])
    assert np.array_equal(np.asarray(y)[inner], want[inner])
