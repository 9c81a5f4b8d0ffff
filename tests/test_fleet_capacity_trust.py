"""Fleet capacity and pricing (issue 14): the answer meets the SLO and one replica fewer does not,
checked by simulating those fleets afresh; the price checked against a hand computation."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import simkv
from simkv.errors import SimkvError
from simkv.files.scenario_file import validate_scenario
from simkv.simulate import stream_for
from simkv.studies.capacity import parse_slo
from simkv.studies.fleet_capacity import HOURS_PER_MONTH, find_fleet_capacity, parse_prices, price_fleet
from conftest import run_cli

BASE = dict(name="fleet-cap-test", model="llama3-8b", hardware={"gpu": "h100"},
            engine={"preset": "vllm-v1", "max_model_len": 8192},
            workload={"classes": [
                {"name": "chat", "arrival": {"process": "poisson", "rate": 6},
                 "prompt_tokens": {"dist": "lognormal", "mean": 500, "p99": 2000},
                 "output_tokens": {"dist": "exponential", "mean": 150, "max": 600}},
                {"name": "batch", "arrival": {"process": "poisson", "rate": 2},
                 "prompt_tokens": {"dist": "lognormal", "mean": 1500, "p99": 4000},
                 "output_tokens": {"dist": "exponential", "mean": 100, "max": 400}}]},
            run={"seed": 1, "num_requests": 500, "warmup_s": 2},
            fleet={"router": {"policy": "least_loaded"}, "pools": [{"name": "vllm", "replicas": 1}],
                   "prices": {"h100": 2.5, "h200": 4.0}})
SLO = "ttft_p99=1s,tbt_p99=60ms"


def scenario(fleet_changes=None):
    raw = copy.deepcopy(BASE)
    raw["fleet"].update(fleet_changes or {})
    return validate_scenario(raw, "test")


def sim(sc):
    return simkv.simulate(sc)


def meets_fresh(sc, counts, rate, slo):
    """An independent check: build the fleet with `counts` at `rate` and simulate it directly."""
    raw = sc.model_dump(exclude_unset=True)
    total = sum(c["arrival"]["rate"] for c in raw["workload"]["classes"])
    for c in raw["workload"]["classes"]:
        c["arrival"]["rate"] *= rate / total
    for p in raw["fleet"]["pools"]:
        p["replicas"] = counts[p["name"]]
    s = simkv.simulate(validate_scenario(raw, "check")).summary
    ok = all(s["latency_s"][m][p] is not None and s["latency_s"][m][p] <= t for (m, p), t in slo.items())
    return ok and s["requests"]["rejected"] == 0


def test_single_pool_answer_meets_and_one_fewer_misses():
    sc, slo = scenario(), parse_slo(SLO)
    res = find_fleet_capacity(sc, slo, simulate_fn=sim, stream_fn=stream_for, target_rate=40.0)
    n = res.replicas["vllm"]
    assert n > 1 and res.meets and res.minimal
    assert meets_fresh(sc, {"vllm": n}, 40.0, slo)
    assert not meets_fresh(sc, {"vllm": n - 1}, 40.0, slo)
    # priced by hand: n GPUs x $2.5, tokens from the stream's mean lengths at 40 req/s
    stream = stream_for(sc)
    tps = 40.0 * (np.mean(stream.prompt_tokens) + np.mean(stream.output_tokens))
    per_hour = n * 2.5
    assert res.price["usd_per_hour"] == pytest.approx(per_hour)
    assert res.price["usd_per_month"] == pytest.approx(per_hour * HOURS_PER_MONTH)
    per_m = per_hour / (tps * 3600) * 1e6
    assert res.price["usd_per_million_input_tokens"] == pytest.approx(per_m)
    assert res.price["usd_per_million_output_tokens"] == pytest.approx(per_m)
    # prompt tokens weighted: the hour's cost is still recovered exactly from the tokens of the hour
    w = price_fleet(res.gpus, res.gpu_types, {"h100": 2.5}, res.input_tokens_per_s, res.output_tokens_per_s, 0.25)
    hour_in, hour_out = res.input_tokens_per_s * 3600, res.output_tokens_per_s * 3600
    recovered = (hour_in * w["usd_per_million_input_tokens"] + hour_out * w["usd_per_million_output_tokens"]) / 1e6
    assert recovered == pytest.approx(per_hour)
    assert w["usd_per_million_input_tokens"] == pytest.approx(0.25 * w["usd_per_million_output_tokens"])


def test_hybrid_pool_mix_is_minimal_per_pool_and_priced_per_gpu_type():
    sc = scenario({"router": {"policy": "by_class"},
                   "pools": [{"name": "chat", "replicas": 1, "set": {"engine.preset": "tgi"}, "classes": ["chat"]},
                             {"name": "batch", "replicas": 1, "set": {"hardware.gpu": "h200"}, "classes": ["batch"]}]})
    slo = parse_slo(SLO)
    res = find_fleet_capacity(sc, slo, simulate_fn=sim, stream_fn=stream_for, target_rate=40.0)
    counts = res.replicas
    assert res.meets and meets_fresh(sc, counts, 40.0, slo)
    for pool, n in counts.items():
        if n > 1:
            assert not meets_fresh(sc, {**counts, pool: n - 1}, 40.0, slo), pool
    assert max(counts.values()) > 1
    assert res.gpu_types == {"chat": "h100", "batch": "h200"}
    assert res.price["usd_per_hour"] == pytest.approx(counts["chat"] * 2.5 + counts["batch"] * 4.0)


def test_tokens_per_day_is_turned_into_a_rate_with_the_streams_mean_tokens():
    sc = scenario()
    stream = stream_for(sc)
    per_request = np.mean(stream.prompt_tokens) + np.mean(stream.output_tokens)
    res = find_fleet_capacity(sc, parse_slo("ttft_p99=30s"), simulate_fn=sim, stream_fn=stream_for,
                              tokens_per_day=1e8)
    assert res.target_rate == pytest.approx(1e8 / 86400 / per_request)
    assert (res.input_tokens_per_s + res.output_tokens_per_s) * 86400 == pytest.approx(1e8)


def test_prices_are_read_or_refused():
    assert parse_prices("2.5") == 2.5
    assert parse_prices("h100=2.5, h200=3.4") == {"h100": 2.5, "h200": 3.4}
    for bad in ("-1", "h100=", "cheap", "=3", "h100=nan"):
        with pytest.raises(SimkvError) as err:
            parse_prices(bad)
        assert err.value.field == "--price"
    with pytest.raises(SimkvError, match="no price for GPU type h100"):
        find_fleet_capacity(scenario({"prices": {}}), parse_slo(SLO), simulate_fn=sim, stream_fn=stream_for,
                            target_rate=10.0, prices={"h200": 3.0})


def _cli(*args):
    return run_cli("capacity", *args, cwd=None, timeout=120)


@pytest.mark.parametrize("args, field", [
    (["--tokens-per-day", "2e9", "--price", "h100=x"], "--price"),
    (["--tokens-per-day", "-5"], "--tokens-per-day"),
    (["--tokens-per-day", "2e9", "--target-rate", "3"], "--target-rate"),
    (["--tokens-per-day", "2e9", "--price", "h200=3"], "--price"),
])
def test_cli_fleet_errors_are_one_line(args, field):
    proc = _cli("scenarios/fleet-capacity-2b-h100.yaml", "--slo", SLO, *args)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("simkv: error: ") and f"{field}:" in line[0] and "fix:" in line[0]


def test_cli_tokens_per_day_needs_a_fleet():
    proc = _cli("scenarios/quickstart.yaml", "--slo", SLO, "--tokens-per-day", "1e9")
    assert proc.returncode == 2 and "--tokens-per-day" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_fleet_capacity_json(tmp_path):
    path = tmp_path / "f.yaml"
    import yaml
    path.write_text(yaml.safe_dump(BASE))
    proc = _cli(str(path), "--slo", SLO, "--target-rate", "20", "--seeds", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["meets"] and out["minimal"] and out["price"]["usd_per_month"] > 0
    assert out["total_gpus"] == sum(out["gpus"].values())
