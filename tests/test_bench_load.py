"""Issue 19: closed-loop and offline clients, vllm-bench metric definitions, frontend cost."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from simkv.metrics.bench import bench_summary
from simkv.errors import SimkvError
from simkv.files.scenario_file import validate_scenario
from simkv.metrics import Recorder
from simkv.request import DONE, RequestTable
from simkv.scenario import Scenario
from simkv.simulate import simulate
from conftest import run_cli


def _raw(arrival, num_requests=240, engine=None, **extra):
    raw = dict(model="llama3-8b", hardware={"gpu": "h100"},
               engine=engine or {"preset": "vllm-v1", "max_model_len": 4096},
               workload={"arrival": arrival, "prompt_tokens": {"dist": "uniform", "low": 100, "high": 600},
                         "output_tokens": {"dist": "uniform", "low": 20, "high": 120}},
               run={"num_requests": num_requests})
    for key, value in extra.items():
        raw.setdefault(key, {}).update(value) if isinstance(value, dict) and key in raw else raw.__setitem__(key, value)
    return raw


def _run(raw):
    return simulate(Scenario(**raw))


def _in_flight(sent, finish, times):
    return np.array([np.count_nonzero((sent <= t) & (finish > t)) for t in times])


def test_closed_loop_keeps_exactly_n_in_flight_and_littles_law():
    n = 8
    res = _run(_raw({"process": "closed", "concurrency": n}, num_requests=400))
    q = res.requests
    sent, finish = np.asarray(q["sent_s"], float), np.asarray(q["finish_s"], float)
    assert np.all(np.isfinite(sent)) and np.all(np.isfinite(finish))
    last_send = sent.max()
    events = np.unique(np.r_[sent, finish])
    events = events[events <= last_send]
    mids = (events[:-1] + events[1:]) / 2   # between ramp-up (all start at 0) and drain (the last send)
    assert len(mids) > 100
    assert np.all(_in_flight(sent, finish, mids) == n)
    # each client sends its next request the moment its previous one ends
    assert np.all(np.isin(sent[sent > 0], finish))
    conc = res.summary["bench"]["concurrency"]
    assert conc["mean_in_flight"] == pytest.approx(n, rel=1e-9)
    rps, e2e = conc["requests_per_s"], conc["mean_e2e_s"]
    # Little's law from the request table, independently of the report
    w0, w1 = conc["window_s"]
    assert w1 == pytest.approx(last_send)
    done_in = np.count_nonzero((finish >= w0) & (finish <= w1)) / (w1 - w0)
    assert rps == pytest.approx(done_in)
    assert np.mean(finish - sent) == pytest.approx(e2e)
    assert rps == pytest.approx(n / e2e, rel=0.03)
    assert conc["littles_law_relative_gap"] < 0.03


def test_ramp_up_and_think_time():
    res = _run(_raw({"process": "closed", "concurrency": 4, "ramp_up_s": 2.0, "think_s": 0.5}, num_requests=80))
    sent = np.sort(np.asarray(res.requests["sent_s"], float))
    for start in (0.0, 0.5, 1.0, 1.5):   # client i starts at i / 4 x 2 s
        assert np.isclose(sent, start).any()
    assert np.count_nonzero(sent < 0.5) == 1
    conc = res.summary["bench"]["concurrency"]
    assert conc["mean_in_flight"] < 4   # clients spend time thinking
    q = res.requests
    finish, s = np.asarray(q["finish_s"], float), np.asarray(q["sent_s"], float)
    assert np.all(_in_flight(s, finish, np.linspace(0, s.max(), 500)) <= 4)


def test_same_seed_same_results_and_seed_matters():
    raw = _raw({"process": "closed", "concurrency": 6, "think_s": 0.2}, num_requests=60)
    a, b = _run(raw), _run(raw)
    for col in ("sent_s", "arrival_s", "first_token_s", "finish_s"):
        np.testing.assert_array_equal(np.asarray(a.requests[col]), np.asarray(b.requests[col]))
    assert a.summary["bench"] == b.summary["bench"]
    raw["run"]["seed"] = 1
    c = _run(raw)
    assert not np.array_equal(np.asarray(a.requests["sent_s"]), np.asarray(c.requests["sent_s"]))


def test_offline_reaches_max_batch_and_matches_saturated_open_loop():
    engine = {"preset": "vllm-v1", "max_model_len": 4096, "max_num_seqs": 48}
    off = _run(_raw({"process": "offline"}, num_requests=300, engine=engine))
    sat = _run(_raw({"process": "poisson", "rate": 5000.0}, num_requests=300, engine=engine))
    assert off.summary["batch"]["max_running"] == 48
    sent = np.asarray(off.requests["sent_s"], float)
    assert np.all(sent == 0.0)
    b = off.summary["bench"]
    makespan = off.summary["throughput"]["makespan_s"]
    assert b["duration_s"] == pytest.approx(makespan)
    assert b["output_throughput"] == pytest.approx(b["total_output_tokens"] / makespan)
    # offline throughput = saturated open-loop throughput (same requests, arrivals ~0.06 s apart in all)
    assert off.summary["throughput"]["output_tokens_per_s"] == pytest.approx(b["output_throughput"], rel=1e-9)
    assert b["output_throughput"] == pytest.approx(sat.summary["bench"]["output_throughput"], rel=0.03)
    assert b["concurrency"]["littles_law_relative_gap"] < 1e-9   # exact over [0, makespan]


def test_offline_kv_limited_batch():
    # a small KV cache: the batch is bounded by blocks, not max_num_seqs
    engine = {"preset": "vllm-v1", "max_model_len": 1024, "max_num_seqs": 256, "num_gpu_blocks": 400,
              "prefix_caching": False}
    raw = _raw({"process": "offline"}, num_requests=200, engine=engine)
    raw["workload"]["prompt_tokens"] = {"dist": "fixed", "value": 256}
    raw["workload"]["output_tokens"] = {"dist": "fixed", "value": 32}
    res = _run(raw)
    # 400 blocks of 16 tokens; a request needs ceil((256 + 32) / 16) = 18 blocks at most
    assert res.summary["batch"]["max_running"] >= 400 // 18
    assert res.summary["batch"]["max_running"] <= 400 // 16   # each needs 16 prompt blocks at least
    assert res.summary["requests"]["completed"] == 200


def test_warmup_requests_leave_the_first_sends_out():
    raw = _raw({"process": "closed", "concurrency": 4}, num_requests=60)
    raw["run"]["warmup_requests"] = 20
    res = _run(raw)
    assert res.summary["requests"]["measured"] == 40
    assert res.summary["bench"]["completed"] == 40
    sent = np.sort(np.asarray(res.requests["sent_s"], float))
    assert res.summary["throughput"]["measured_window_s"][0] == pytest.approx(sent[20])


def test_closed_loop_classes_and_sessions():
    raw = _raw(None, num_requests=90)
    w = raw["workload"]
    del w["arrival"], w["prompt_tokens"], w["output_tokens"]
    w["classes"] = [{"name": "chat", "arrival": {"process": "closed", "concurrency": 4},
                     "prompt_tokens": {"dist": "fixed", "value": 200}, "output_tokens": {"dist": "fixed", "value": 40}},
                    {"name": "batch", "arrival": {"process": "closed", "concurrency": 2},
                     "prompt_tokens": {"dist": "fixed", "value": 800}, "output_tokens": {"dist": "fixed", "value": 80}}]
    res = _run(raw)
    q = res.requests
    cls, sent, fin = (np.asarray(q[c]) for c in ("class_id", "sent_s", "finish_s"))
    assert np.count_nonzero(cls == 0) == 60 and np.count_nonzero(cls == 1) == 30
    times = np.linspace(0, sent.max(), 400)
    assert _in_flight(sent[cls == 0], fin[cls == 0], times).max() == 4
    assert _in_flight(sent[cls == 1], fin[cls == 1], times).max() == 2
    # sessions: a client runs a whole conversation, then the next
    raw = _raw({"process": "closed", "concurrency": 3}, num_requests=12)
    raw["workload"]["sessions"] = {"turns": {"dist": "fixed", "value": 3}, "think_s": 0.1,
                                   "user_tokens": {"dist": "fixed", "value": 50}}
    res = _run(raw)
    assert res.summary["requests"]["completed"] == 36
    arr = np.asarray(res.requests["arrival_s"], float)
    fin = np.asarray(res.requests["finish_s"], float)
    assert _in_flight(arr, fin, np.linspace(0, arr.max(), 400)).max() <= 3


def test_refused_request_releases_its_client():
    engine = {"preset": "tgi", "max_model_len": 4096, "max_concurrent_requests": 3}
    res = _run(_raw({"process": "closed", "concurrency": 6}, num_requests=60, engine=engine))
    s = res.summary["requests"]
    assert s["rejected"] > 0 and s["completed"] + s["rejected"] == 60


def test_frontend_cost_client_side_ttft():
    raw = _raw({"process": "closed", "concurrency": 1}, num_requests=20)
    raw["frontend"] = {"fixed_s": 0.02, "per_prompt_token_s": 1e-5}
    res = _run(raw)
    b = res.summary["bench"]
    q = res.requests
    prompt, sent, arrival = (np.asarray(q[c], float) for c in ("prompt_tokens", "sent_s", "arrival_s"))
    np.testing.assert_allclose(arrival - sent, 0.02 + 1e-5 * prompt)
    assert b["mean_ttft_ms"] == pytest.approx(b["engine_side"]["mean_ttft_ms"] + 1000 * np.mean(0.02 + 1e-5 * prompt))
    assert b["frontend"]["source"] == "scenario.frontend"
    # one client: the next request is sent when the previous answer ends
    order = np.argsort(sent)
    np.testing.assert_allclose(sent[order][1:], np.asarray(q["finish_s"], float)[order][:-1])


def _table():
    """Three requests by hand: sent, first token, last token, output tokens (one refused)."""
    n = 4
    t = RequestTable(arrival_s=np.array([0.0, 0.1, 0.5, 0.6]), prompt_tokens=np.array([10, 20, 30, 40]),
                     output_tokens=np.array([5, 1, 4, 2]), max_new_tokens=np.array([5, 1, 4, 2]),
                     reject_reason=np.zeros(n, dtype=np.int8))
    t.status[:] = [DONE, DONE, DONE, 2]
    t.first_token_s[:] = [0.2, 0.4, 0.9, np.nan]
    t.finish_s[:] = [1.0, 0.4, 1.5, np.nan]
    t.frontend_s = np.array([0.01, 0.01, 0.01, 0.01])
    return t


def test_metric_definitions_against_hand_computation():
    t = _table()
    rec = Recorder(1000, 0.0, 2.0)
    # the recorder's token gaps of request 0 (4 gaps) and request 2 (3 gaps)
    for g in (0.1, 0.2, 0.2, 0.3, 0.2, 0.15, 0.25):
        rec.on_extra_gaps(np.array([g]))
    b = bench_summary(t, rec, {"fixed_s": 0.01, "per_prompt_token_s": 0.0, "source": "test"})
    # vLLM's calculate_metrics, by hand: sent = arrival - 0.01
    ttfts = [0.2 - (-0.01), 0.4 - 0.09, 0.9 - 0.49]
    e2els = [1.0 + 0.01, 0.4 - 0.09, 1.5 - 0.49]
    tpots = [(e2els[0] - ttfts[0]) / 4, (e2els[2] - ttfts[2]) / 3]   # request 1 has one token: no TPOT
    assert b["completed"] == 3
    assert b["mean_ttft_ms"] == pytest.approx(1000 * sum(ttfts) / 3)
    assert b["median_ttft_ms"] == pytest.approx(1000 * sorted(ttfts)[1])
    assert b["std_ttft_ms"] == pytest.approx(1000 * float(np.sqrt(np.mean((np.array(ttfts) - np.mean(ttfts)) ** 2))))
    assert b["mean_tpot_ms"] == pytest.approx(1000 * sum(tpots) / 2)
    # p99 with linear interpolation between the two TPOTs
    lo, hi = sorted(tpots)
    assert b["p99_tpot_ms"] == pytest.approx(1000 * (lo + 0.99 * (hi - lo)))
    assert b["mean_e2el_ms"] == pytest.approx(1000 * sum(e2els) / 3)
    # ITL: every gap pooled; mean = (0.8 + 0.6) / 7 exactly; median of the 7 gaps (histogram, 0.23%)
    assert b["mean_itl_ms"] == pytest.approx(1000 * 1.4 / 7)
    assert b["median_itl_ms"] == pytest.approx(1000 * 0.2, rel=0.003)
    assert b["engine_side"]["mean_ttft_ms"] == pytest.approx(1000 * (0.2 + 0.3 + 0.4) / 3)
    assert b["total_input_tokens"] == 60 and b["total_output_tokens"] == 10
    assert b["duration_s"] == pytest.approx(1.5 + 0.01)
    assert b["request_throughput"] == pytest.approx(3 / 1.51)
    assert b["total_token_throughput"] == pytest.approx(70 / 1.51)
    # concurrency: in flight over [0, 2]: (1.0 - 0) (sent before the window) + (0.4 - 0.09) + (1.5 - 0.49)
    c = b["concurrency"]
    assert c["mean_in_flight"] == pytest.approx((1.0 + 0.31 + 1.01) / 2)
    assert c["requests_per_s"] == pytest.approx(3 / 2)


@pytest.mark.parametrize("arrival, run, needle", [
    ({"process": "closed", "concurrency": 0}, {"num_requests": 10}, "workload.arrival.concurrency"),
    ({"process": "closed", "concurrency": 4, "think_s": -1}, {"num_requests": 10}, "workload.arrival.think_s"),
    ({"process": "closed", "concurrency": 4}, {"duration_s": 10}, "run.num_requests"),
    ({"process": "offline"}, {"num_requests": 10, "warmup_requests": 10}, "warmup_requests"),
    ({"process": "poisson", "rate": 1}, {"num_requests": 10, "warmup_requests": 2}, "warmup_requests"),
])
def test_bad_client_inputs_are_clear_errors(arrival, run, needle):
    raw = _raw(arrival)
    raw["run"] = run
    with pytest.raises(SimkvError) as err:
        validate_scenario(raw, "bad.yaml")
    assert needle in str(err.value)
    assert "fix" in str(err.value)


def test_bad_concurrency_through_the_cli(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""\
        model: llama3-8b
        hardware: {gpu: h100}
        workload:
          arrival: {process: closed, concurrency: 0}
          prompt_tokens: {dist: fixed, value: 100}
          output_tokens: {dist: fixed, value: 10}
        run: {num_requests: 10}
        """))
    out = run_cli("run", path, "-o", tmp_path / "o", timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("simkv: error: ") and "concurrency" in out.stderr and "fix:" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("trace", ["lengths_sharegpt_8k_llama2", "azure2023_conv"])
def test_closed_loop_over_a_trace(trace):
    from simkv.files.traces import trace_for
    from simkv.scenario import TraceSpec
    raw = dict(model="llama3-8b", hardware={"gpu": "h100"}, engine={"preset": "vllm-v1", "max_model_len": 8192},
               workload={"trace": {"name": trace}, "arrival": {"process": "closed", "concurrency": 4}},
               run={"num_requests": 40})
    res = _run(raw)
    assert res.summary["requests"]["completed"] == 40
    assert res.summary["bench"]["concurrency"]["mean_in_flight"] == pytest.approx(4.0)
    data = trace_for(TraceSpec(name=trace))
    if data.arrival_s is not None:  # a timed trace: its first rows, in order, paced by the clients
        np.testing.assert_array_equal(np.asarray(res.requests["prompt_tokens"]), data.prompt_tokens[:40])
