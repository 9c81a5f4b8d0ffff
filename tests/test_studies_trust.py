"""Trust checks of the study tools: sweeps run the engine the scenario names (every preset, local
and Ray), capacity answers that say how far they hold, bounded searches, and CLI numbers checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import simkv
from simkv.presets import PRESETS

from conftest import run_cli

TINY = """\
name: tiny
model: llama3-8b
hardware: {gpu: h100}
engine: {max_model_len: 2048}
workload:
  arrival: {process: poisson, rate: 20}
  prompt_tokens: {dist: uniform, low: 20, high: 600}
  output_tokens: {dist: uniform, low: 5, high: 200}
run: {seed: 1, num_requests: 40}
variants:
  - {name: plain, set: {}}
  - {name: narrow, set: {engine.max_num_seqs: 8}}
"""


def _tiny(tmp_path: Path, text: str = TINY) -> Path:
    (tmp_path / "tiny.yaml").write_text(text)
    return tmp_path / "tiny.yaml"


def _json(obj):
    return json.loads(json.dumps(obj))


# ---------------------------------------------------------------- 1. sweeps honour engine presets


def _check_points_match_simulate(tmp_path: Path, rows: list[dict], out: Path, sets: dict):
    assert rows and all(r["error"] is None for r in rows), [r["error"] for r in rows]
    seen = set()
    for r in rows:
        point = {k: v for k, v in r.items() if "." in k}
        sc = simkv.load_scenario(tmp_path / "tiny.yaml", {**sets, **point})
        expected = simkv.simulate(sc, r["variant"]).summary
        on_disk = json.loads((out / "points" / r["key"] / "summary.json").read_text())
        assert on_disk == _json(expected), (r["engine.preset"], r["variant"])
        assert on_disk["setup"]["preset"] == r["engine.preset"]
        assert on_disk["setup"]["scheduler"] == PRESETS[r["engine.preset"]]["defaults"].get("scheduler", "fcfs")
        seen.add((r["engine.preset"], r["variant"]))
    return seen


def test_sweep_points_run_every_preset_exactly_as_simulate(tmp_path):
    _tiny(tmp_path)
    (tmp_path / "s.yaml").write_text("base: tiny.yaml\nset: {run.seed: 2}\n"
                                     f"grid: {{engine.preset: [{', '.join(PRESETS)}]}}\n")
    from simkv.studies.sweep import run_sweep_file
    rows, _ = run_sweep_file(tmp_path / "s.yaml", tmp_path / "out", workers=2)
    seen = _check_points_match_simulate(tmp_path, rows, tmp_path / "out", {"run.seed": 2})
    assert seen == {(p, v) for p in PRESETS for v in ("plain", "narrow")}


def test_point_key_tells_an_unset_field_from_its_default(tmp_path):
    """preset tgi with scheduler unset runs the tgi scheduler; with scheduler: fcfs set it runs FCFS:
    the two dump identically, so the cache key must hash the engine the preset resolves to."""
    from simkv.studies.sweep import point_key
    text = TINY.replace("engine: {max_model_len: 2048}", "engine: {max_model_len: 2048, preset: tgi}")
    unset = simkv.load_scenario(_tiny(tmp_path, text))
    fcfs = simkv.load_scenario(tmp_path / "tiny.yaml", {"engine.scheduler": "fcfs"})
    assert unset.model_dump() == fcfs.model_dump()
    assert point_key(unset, "plain") != point_key(fcfs, "plain")
    assert point_key(unset, "plain") == point_key(simkv.load_scenario(tmp_path / "tiny.yaml"), "plain")


def test_scenarios_sent_to_workers_keep_their_presets(tmp_path):
    """What a worker rebuilds from the message is the scenario, unset fields included."""
    from simkv.scenario import Scenario
    from simkv.studies.sweep import scenario_message
    for preset in PRESETS:
        sc = simkv.load_scenario(_tiny(tmp_path), {"engine.preset": preset})
        back = Scenario.model_validate_json(scenario_message(sc))
        assert back == sc and back.engine.model_fields_set == sc.engine.model_fields_set


# ---------------------------------------------------------------- 2-4. capacity: unservable requests, seeds, bounds

CAP = """\
name: cap
model: llama3-8b
hardware: {gpu: h100}
engine: {max_model_len: 2048, max_num_seqs: 64}
workload:
  arrival: {process: poisson, rate: 4}
  prompt_tokens: {dist: uniform, low: 50, high: 400}
  output_tokens: {dist: uniform, low: 20, high: 120}
run: {seed: 0, num_requests: 150}
"""


def _cap_scenario(tmp_path, overrides=()):
    (tmp_path / "cap.yaml").write_text(CAP)
    return simkv.load_scenario(tmp_path / "cap.yaml", list(overrides))


def _with_overlong(simulate_fn, every: int = 50):
    """simulate_fn on streams where every `every`-th prompt is longer than max_model_len."""
    from simkv.workload.stream import generate_stream
    from simkv.files.traces import trace_for

    def run(sc, variant):
        stream = generate_stream(sc.workload, sc.run, trace_for(sc.workload.trace))
        stream.prompt_tokens[::every] = 5000
        return simulate_fn(sc, variant, stream=stream)
    return run


def _independent_meets(result, slo: dict) -> bool:
    """The SLO check recomputed from the per-request columns: percentiles of TTFT/E2E over measured
    completed requests, no request refused by the engine (unservable ones left out)."""
    import numpy as np
    from simkv.request import DONE, REJECTED
    r = result.requests
    status = np.asarray(r["status"])
    w0 = result.summary["throughput"]["measured_window_s"][0]
    arrival = np.asarray(r["arrival_s"], dtype=float)
    done = (status == DONE) & (arrival >= w0)
    ttft = np.asarray(r["first_token_s"], dtype=float) - arrival
    e2e = np.asarray(r["finish_s"], dtype=float) - arrival
    values = {"ttft": ttft[done], "e2e": e2e[done]}
    ok = True
    for (metric, pct), target in slo.items():
        v = values[metric]
        q = float(np.max(v)) if pct == "max" else float(np.percentile(v, float(pct[1:])))
        ok &= q <= target * (1 + 1e-9)
    refused = (status == REJECTED) & ~np.isin(np.asarray(r["reject_reason"]), (1, 2, 4))   # unservable: left out
    return bool(ok and not refused.any())


def test_capacity_leaves_unservable_prompts_out_and_says_so(tmp_path):
    """Three prompts longer than max_model_len at every rate: today every rate 'misses' and the
    search fails; the answer must be the capacity of the servable requests, with the count stated."""
    from simkv.studies.capacity import find_capacity, parse_slo
    sc = _cap_scenario(tmp_path)
    slo = parse_slo("ttft_p99=0.5s,e2e_p90=6s")
    sim = _with_overlong(simkv.simulate)
    res = find_capacity(sc, slo, simulate_fn=sim, seeds=1, tolerance=0.05)
    assert res.unservable == {"prompt longer than max_model_len": 3} and res.unservable_requests == 3
    assert res.total_requests == 150 and "left out" in res.unservable_treatment
    assert res.failing_rate is not None and res.capacity_rate < res.failing_rate <= res.capacity_rate * 1.05
    # independent check on the per-request columns: the answer meets, the failing rate misses
    def at(rate):
        return sim(simkv.load_scenario(tmp_path / "cap.yaml", [f"workload.arrival.rate={rate!r}"]), None)
    assert _independent_meets(at(res.capacity_rate), slo)
    assert not _independent_meets(at(res.failing_rate), slo)


def test_capacity_reads_the_new_unservable_summary_layout():
    """metrics.py moves unservable requests to requests.unservable; capacity reads either layout."""
    from simkv.studies.capacity import _meets, rejections
    old = {"requests": {"rejected": 4, "rejected_by_reason": {"prompt longer than max_model_len": 3,
                                                              "conversation ended (an earlier turn could not run)": 1}},
           "latency_s": {"ttft": {"p99": 0.1}}}
    new = {"requests": {"rejected": 0, "rejected_by_reason": {}, "unservable": {"prompt longer than max_model_len": 3,
                                                                                 "reservation larger than the KV cache": 1}},
           "latency_s": {"ttft": {"p99": 0.1}}}
    refused = {"requests": {"rejected": 5, "rejected_by_reason": {"prompt longer than max_model_len": 3,
                                                                  "refused by the engine (queue full: max_concurrent_requests)": 2}},
               "latency_s": {"ttft": {"p99": 0.1}}}
    slo = {("ttft", "p99"): 1.0}
    assert rejections(old) == (0, {"prompt longer than max_model_len": 3,
                                   "conversation ended (an earlier turn could not run): after an unservable turn": 1})
    assert rejections(new) == (0, {"prompt longer than max_model_len": 3, "reservation larger than the KV cache": 1})
    assert _meets(old, slo)[0] and _meets(new, slo)[0] and not _meets(refused, slo)[0]


def test_capacity_cli_reports_unservable_requests(tmp_path):
    """End to end: a long-tailed prompt distribution draws one prompt over max_model_len (2048)."""
    text = CAP.replace("{dist: uniform, low: 50, high: 400}", "{dist: lognormal, mean: 300, p99: 4000}")
    assert text != CAP
    (tmp_path / "cap.yaml").write_text(text)
    proc = run_cli("capacity", str(tmp_path / "cap.yaml"), "--slo", "ttft_p99=0.5s", "--seeds", "1", "--tolerance", "0.1",
                "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["unservable_requests"] > 0 and out["unservable"]["prompt longer than max_model_len"] > 0
    assert out["capacity_rate"] > 0 and out["failing_rate"] > out["capacity_rate"]
    proc = run_cli("capacity", str(tmp_path / "cap.yaml"), "--slo", "ttft_p99=0.5s", "--seeds", "1", "--tolerance", "0.1")
    assert proc.returncode == 0 and "unservable:" in proc.stdout and "prompt longer than max_model_len" in proc.stdout


def test_capacity_answer_holds_on_every_seed(tmp_path):
    """The answer must hold on all seeds: every rate is judged on each stream, and the answer's
    rate re-simulated on every seed meets (checked against the per-request columns)."""
    from simkv.studies.capacity import find_capacity, parse_slo
    sc = _cap_scenario(tmp_path, ["run.num_requests=80"])
    slo = parse_slo("ttft_p99=0.3s")
    res = find_capacity(sc, slo, simulate_fn=lambda s, v: simkv.simulate(s, v), seeds=3, tolerance=0.05)
    assert res.seeds_meeting == (3, 3) and res.holds_on_all_seeds
    for k in range(3):
        s = simkv.load_scenario(tmp_path / "cap.yaml", ["run.num_requests=80", f"run.seed={k}",
                                                        f"workload.arrival.rate={res.capacity_rate!r}"])
        assert _independent_meets(simkv.simulate(s), slo), k
    # the failing rate misses on at least one seed
    misses = []
    for k in range(3):
        s = simkv.load_scenario(tmp_path / "cap.yaml", ["run.num_requests=80", f"run.seed={k}",
                                                        f"workload.arrival.rate={res.failing_rate!r}"])
        misses.append(not _independent_meets(simkv.simulate(s), slo))
    assert any(misses)


def test_capacity_searching_seed_zero_alone_overstates():
    """A fake engine whose SLO holds up to rate 10 on seed 0 but only up to 6 on seed 1: the old search
    answered ~10 'on 1 of 2 seeds'; the answer must be ~6 on 2 of 2."""
    from types import SimpleNamespace
    from simkv.studies.capacity import find_capacity
    sc = simkv.Scenario(**{"model": "llama3-8b", "hardware": {"gpu": "h100"},
                           "workload": {"arrival": {"process": "poisson", "rate": 1.0},
                                        "prompt_tokens": {"dist": "fixed", "value": 10},
                                        "output_tokens": {"dist": "fixed", "value": 10}},
                           "run": {"num_requests": 10}})
    limit = {0: 10.0, 1: 6.0}

    def fake(s, variant):
        ttft = s.workload.arrival.rate / limit[s.run.seed]
        return SimpleNamespace(summary={"requests": {"rejected": 0, "rejected_by_reason": {}, "measured": 10, "total": 10},
                                        "latency_s": {"ttft": {"p99": ttft}},
                                        "throughput": {"output_tokens_per_s": 1.0, "requests_per_s": 1.0}})
    res = find_capacity(sc, {("ttft", "p99"): 1.0}, simulate_fn=fake, seeds=2, tolerance=0.01)
    assert 6.0 * 0.99 <= res.capacity_rate <= 6.0 < res.failing_rate and res.seeds_meeting == (2, 2)


def test_capacity_search_is_bounded(tmp_path):
    """SLOs that always hold: the search stops at the max rate (or max probes) and says so."""
    from types import SimpleNamespace
    from simkv.studies.capacity import find_capacity
    sc = _cap_scenario(tmp_path)
    calls = []

    def always(s, variant):
        calls.append(s.workload.arrival.rate)
        return SimpleNamespace(summary={"requests": {"rejected": 0, "rejected_by_reason": {}, "measured": 1, "total": 1},
                                        "latency_s": {"ttft": {"p99": 0.0}},
                                        "throughput": {"output_tokens_per_s": 1.0, "requests_per_s": 1.0}})
    res = find_capacity(sc, {("ttft", "p99"): 1.0}, simulate_fn=always, seeds=2)
    assert res.failing_rate is None and "max rate" in res.stopped and res.capacity_rate == 4 * 1024
    assert max(calls) <= 4 * 1024 * 1.1 and len(calls) <= 2 * 12 + 2
    res = find_capacity(sc, {("ttft", "p99"): 1.0}, simulate_fn=always, max_probes=5, max_rate=1e9)
    assert "max probes" in res.stopped and len(res.probes) == 5
    proc = run_cli("capacity", str(tmp_path / "cap.yaml"), "--slo", "e2e_max=1000s", "--seeds", "1", "--max-rate", "20",
                "--set", "run.num_requests=30")
    assert proc.returncode == 0, proc.stderr
    assert "capacity: at least 20.000 req/s" in proc.stdout and "search stopped: max rate reached" in proc.stdout


# ---------------------------------------------------------------- 5. CLI numbers out of range


@pytest.mark.parametrize("args, field", [
    (["--tolerance", "0"], "--tolerance"), (["--tolerance", "-1"], "--tolerance"), (["--tolerance", "nan"], "--tolerance"),
    (["--seeds", "0"], "--seeds"), (["--target-rate", "-5"], "--target-rate"), (["--price", "-1"], "--price"),
    (["--price", "inf"], "--price"), (["--slo", "ttft_p99=1.2.3s"], "--slo"), (["--slo", "ttft_p99=s"], "--slo"),
    (["--slo", "ttft_p99=0s"], "--slo"), (["--slo", "ttft_p99=1s,ttft_p99=2s"], "--slo"),
    (["--slo", "ttft_p95=1s"], "--slo"), (["--slo", "ttft_p99=nan"], "--slo"), (["--variant", "pagd"], "--variant"),
    (["--max-rate", "0"], "--max-rate"), (["--max-probes", "1"], "--max-probes"),
])
def test_capacity_cli_rejects_out_of_range_numbers(tmp_path, args, field):
    _cap_scenario(tmp_path)
    full = ["capacity", str(tmp_path / "cap.yaml"), "--slo", "ttft_p99=1s", *args]
    proc = run_cli(*full)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("simkv: error: ") and field in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    if field == "--slo":
        assert "cannot read SLO" in proc.stderr          # refused as written, not after a search


def test_variant_typo_names_the_known_variants(tmp_path):
    path = _tiny(tmp_path)
    proc = run_cli("capacity", str(path), "--slo", "ttft_p99=1s", "--variant", "wide")
    assert proc.returncode == 2 and "plain, narrow" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("validate", str(path), "--device", "cpu", "--variant", "wide", "-o", str(tmp_path / "v"))
    assert proc.returncode == 2 and "--variant" in proc.stderr and "plain, narrow" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("tp, ok", [(0, False), (-1, False), (3, False), (1, True), (2, True)])
def test_step_time_tensor_parallel_is_checked(tmp_path, tp, ok):
    (tmp_path / "b.csv").write_text("prefill_seqs,prefill_len,decode_batch,decode_ctx\n1,128,0,0\n")
    proc = run_cli("step-time", "--batches", str(tmp_path / "b.csv"), "--tp", str(tp))
    if ok:
        assert proc.returncode == 0 and "predicted_ms" in proc.stdout, proc.stderr
    else:
        assert proc.returncode == 2 and proc.stderr.startswith("simkv: error: --tp") and "fix: use one of 1, 2, 4, 8" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_validate_runs_the_named_variant(tmp_path):
    """`simkv validate --variant narrow` ran into a KeyError (the variants were dropped first)."""
    path = _tiny(tmp_path)
    out = tmp_path / "v"
    proc = run_cli("validate", str(path), "--device", "cpu", "--variant", "narrow", "--layers", "1", "--requests", "3",
                "--set", "workload.output_tokens={dist: fixed, value: 3}", "--set", "workload.prompt_tokens={dist: fixed, value: 16}",
                "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variant"] == "narrow" and summary["requests"] == 3
    from simkv.gpu.validate import prepare
    from simkv.gpu.schedule import record_schedule
    sc = simkv.load_scenario(path)
    narrow = dict(simkv.files.scenario_file.expand_variants(sc))["narrow"]
    assert record_schedule(prepare(narrow, "cpu", 1, 3)).result.summary["setup"]["max_num_seqs"] == 8


# ---------------------------------------------------------------- 6. a private Ray binds to loopback


def test_local_ray_is_started_on_loopback_only(monkeypatch, tmp_path):
    ray = pytest.importorskip("ray")
    from simkv.studies import executors
    calls = []

    class Stop(Exception):
        pass

    def fake_init(**kwargs):
        calls.append(kwargs)
        raise Stop
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setenv(executors.LOOPBACK_ENV, "unset")
    monkeypatch.delenv(executors.LOOPBACK_ENV)          # restored (unset) after the test
    with pytest.raises(Stop):
        list(executors.run_tasks(abs, [1, 2], "ray", workers=2))
    (kw,) = calls
    assert kw["address"] == "local" and kw["include_dashboard"] is False      # a new instance, not one found
    assert kw["_node_ip_address"] == "127.0.0.1" and kw["num_cpus"] == 2
    # Ray 2.x turns 127.0.0.1 into the machine's network address unless multi-node clusters are off
    import os
    assert os.environ[executors.LOOPBACK_ENV] == "0"
    # an existing cluster is joined as it is
    assert "_node_ip_address" not in executors.ray_init_kwargs("10.0.0.5:6379", 2)
