"""Request streams: the distributions deliver what their parameters say, and seeds are honoured."""

from __future__ import annotations

import numpy as np
import pytest

from simkv.scenario import Run, Workload
from simkv.workload.stream import generate_stream


def _wl(**kw):
    base = {"arrival": {"process": "poisson", "rate": 10.0},
            "prompt_tokens": {"dist": "fixed", "value": 10}, "output_tokens": {"dist": "fixed", "value": 5}}
    base.update(kw)
    return Workload(**base)


def test_poisson_rate_and_cv():
    s = generate_stream(_wl(), Run(seed=1, num_requests=40_000))
    gaps = np.diff(np.concatenate([[0.0], s.arrival_s]))
    assert gaps.mean() == pytest.approx(0.1, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_cv(cv):
    s = generate_stream(_wl(arrival={"process": "gamma", "rate": 4.0, "cv": cv}), Run(seed=2, num_requests=40_000))
    gaps = np.diff(np.concatenate([[0.0], s.arrival_s]))
    tol = 4 * cv / np.sqrt(len(gaps))  # four standard errors of the mean
    assert gaps.mean() == pytest.approx(0.25, rel=tol)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_duration_bounds_arrivals():
    s = generate_stream(_wl(), Run(seed=1, duration_s=100))
    assert s.arrival_s.max() < 100 and len(s.arrival_s) == pytest.approx(1000, rel=0.1)


def test_lognormal_by_mean_and_p99():
    s = generate_stream(_wl(prompt_tokens={"dist": "lognormal", "mean": 800, "p99": 5000}), Run(seed=3, num_requests=100_000))
    assert s.prompt_tokens.mean() == pytest.approx(800, rel=0.03)
    assert np.percentile(s.prompt_tokens, 99) == pytest.approx(5000, rel=0.05)


def test_exponential_bounds_and_mean():
    s = generate_stream(_wl(output_tokens={"dist": "exponential", "mean": 200, "min": 5, "max": 400}),
                        Run(seed=4, num_requests=50_000))
    assert s.output_tokens.min() >= 5 and s.output_tokens.max() == 400
    unbounded = generate_stream(_wl(output_tokens={"dist": "exponential", "mean": 200}), Run(seed=4, num_requests=50_000))
    assert unbounded.output_tokens.mean() == pytest.approx(200.5, rel=0.03)  # ceil adds half a token


def test_uniform_inclusive():
    s = generate_stream(_wl(prompt_tokens={"dist": "uniform", "low": 3, "high": 5}), Run(seed=5, num_requests=3000))
    assert set(np.unique(s.prompt_tokens)) == {3, 4, 5}


def test_max_new_tokens_policies():
    out = {"dist": "exponential", "mean": 300}
    cap = generate_stream(_wl(output_tokens=out, max_new_tokens={"policy": "cap", "tokens": 256}), Run(seed=6, num_requests=5000))
    assert (cap.output_tokens <= 256).all() and (cap.max_new_tokens == 256).all()
    mult = generate_stream(_wl(output_tokens=out, max_new_tokens={"policy": "multiple", "factor": 2}), Run(seed=6, num_requests=5000))
    assert (mult.max_new_tokens == np.ceil(2 * mult.output_tokens)).all()
    exact = generate_stream(_wl(output_tokens=out, max_new_tokens={"policy": "exact"}), Run(seed=6, num_requests=5000))
    assert (exact.max_new_tokens == exact.output_tokens).all()


def test_same_seed_same_stream_and_independent_streams():
    a = generate_stream(_wl(output_tokens={"dist": "exponential", "mean": 50}), Run(seed=9, num_requests=500))
    b = generate_stream(_wl(output_tokens={"dist": "exponential", "mean": 50}), Run(seed=9, num_requests=500))
    c = generate_stream(_wl(output_tokens={"dist": "exponential", "mean": 90}), Run(seed=9, num_requests=500))
    d = generate_stream(_wl(output_tokens={"dist": "exponential", "mean": 50}), Run(seed=10, num_requests=500))
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.output_tokens, b.output_tokens)
    np.testing.assert_array_equal(a.arrival_s, c.arrival_s)  # changing outputs leaves arrivals alone
    assert not np.array_equal(a.arrival_s, d.arrival_s)


def test_lognormal_rejects_impossible_mean_p99():
    with pytest.raises(Exception, match="no lognormal"):
        _wl(prompt_tokens={"dist": "lognormal", "mean": 10, "p99": 1000})


def test_load_spike_doubles_the_rate_then_returns():
    wl = _wl(arrival={"process": "spike", "rate": 10.0, "factor": 2.0, "start_s": 100, "duration_s": 50})
    t = generate_stream(wl, Run(seed=3, duration_s=300)).arrival_s
    before, during, after = ((t >= 0) & (t < 100)).sum() / 100, ((t >= 100) & (t < 150)).sum() / 50, (t >= 150).sum() / 150
    assert before == pytest.approx(10, rel=0.12) and during == pytest.approx(20, rel=0.12) and after == pytest.approx(10, rel=0.12)


def test_piecewise_diurnal_curve_and_onoff_bursts():
    wl = _wl(arrival={"process": "piecewise", "times_s": [0, 50], "rates": [2.0, 20.0], "period_s": 100})
    t = generate_stream(wl, Run(seed=4, duration_s=2000)).arrival_s
    phase = np.mod(t, 100)
    assert (phase < 50).sum() / 1000 == pytest.approx(2, rel=0.1) and (phase >= 50).sum() / 1000 == pytest.approx(20, rel=0.1)
    lin = _wl(arrival={"process": "piecewise", "times_s": [0, 100], "rates": [0.0, 20.0], "interpolate": "linear"})
    t = generate_stream(lin, Run(seed=4, duration_s=100)).arrival_s
    assert len(t) == pytest.approx(1000, rel=0.1) and (t < 50).sum() < (t >= 50).sum() / 2
    bursty = _wl(arrival={"process": "onoff", "rate_on": 50.0, "on_s": 2.0, "off_s": 8.0})
    t = generate_stream(bursty, Run(seed=5, num_requests=5000)).arrival_s
    assert len(t) == 5000 and np.all(np.diff(t) >= 0)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() > 2          # far burstier than Poisson (CV 1)
    assert len(t) / t[-1] == pytest.approx(50 * 2 / 10, rel=0.15)   # mean rate = rate_on x on share


def test_request_classes_merge_and_report_separately():
    import simkv
    sc = simkv.Scenario(**{
        "model": "llama3-8b", "hardware": {"gpu": "h100"}, "engine": {"max_model_len": 8192},
        "workload": {"classes": [
            {"name": "interactive", "arrival": {"process": "poisson", "rate": 8},
             "prompt_tokens": {"dist": "fixed", "value": 200}, "output_tokens": {"dist": "fixed", "value": 50},
             "slo": {"ttft_s": 0.5}},
            {"name": "batch", "arrival": {"process": "poisson", "rate": 2},
             "prompt_tokens": {"dist": "fixed", "value": 3000}, "output_tokens": {"dist": "fixed", "value": 600}}]},
        "run": {"seed": 1, "duration_s": 120, "warmup_s": 10}, "slo": {"e2e_s": 60}})
    s = generate_stream(sc.workload, sc.run)
    assert np.all(np.diff(s.arrival_s) >= 0)
    assert set(s.prompt_tokens[s.class_id == 0].tolist()) == {200} and set(s.prompt_tokens[s.class_id == 1].tolist()) == {3000}
    assert (s.class_id == 0).sum() == pytest.approx(960, rel=0.1) and (s.class_id == 1).sum() == pytest.approx(240, rel=0.2)
    res = simkv.simulate(sc)
    per = res.summary["classes"]
    assert per["interactive"]["requests"] + per["batch"]["requests"] == res.summary["requests"]["total"]
    assert per["interactive"]["slo"]["targets"] == {"ttft_s": 0.5}           # its own SLO
    assert per["batch"]["slo"]["targets"] == {"e2e_s": 60.0}                 # the scenario's
    assert per["batch"]["latency_s"]["e2e"]["p50"] > per["interactive"]["latency_s"]["e2e"]["p50"]
