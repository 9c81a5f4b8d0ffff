"""Capacity search: a rate that meets the SLO, one 10% higher that does not; GPUs and cost."""

from __future__ import annotations

import pytest

import simkv
from simkv.studies.capacity import find_capacity, parse_slo
from simkv.errors import SimkvError

from conftest import ROOT, run_cli, small_scenario


def test_parse_slo_units_and_errors():
    assert parse_slo("ttft_p99=2s,tbt_p99=100ms") == {("ttft", "p99"): 2.0, ("tbt", "p99"): 0.1}
    with pytest.raises(SimkvError, match="cannot read SLO"):
        parse_slo("latency=fast")


def test_capacity_on_paged_vs_contiguous_meets_and_10_percent_more_misses():
    sc = simkv.load_scenario(ROOT / "scenarios" / "paged-vs-contiguous-h100.yaml",
                             ["run.duration_s=100", "run.warmup_s=20"])
    slo = parse_slo("ttft_p99=2s,tbt_p99=200ms")
    res = find_capacity(sc, slo, simulate_fn=lambda s, v: simkv.simulate(s, v), variant="paged",
                        target_rate=100, price_per_gpu_hour=2.5, seeds=3)
    assert res.seeds_meeting[1] == res.seeds_meeting_check[1] == 3          # re-checked on two more streams
    assert res.seeds_meeting == (3, 3) and 0 <= res.seeds_meeting_check[0] <= 3      # the answer holds on every seed
    assert res.capacity_rate < res.failing_rate <= res.capacity_rate * 1.05
    assert not res.check_meets and res.check_rate == pytest.approx(res.capacity_rate * 1.1)
    at = [p for p in res.probes if p.rate == res.capacity_rate][0]
    assert at.meets and all(v <= t for v, t in at.worst.values())
    assert res.gpus_for_target == -(-100 // res.capacity_rate)
    assert res.cost_per_million_tokens == pytest.approx(2.5 / (res.output_tokens_per_s * 3600) * 1e6)
    contiguous = find_capacity(sc, slo, simulate_fn=lambda s, v: simkv.simulate(s, v),
                               variant="contiguous-max_model_len")
    assert contiguous.capacity_rate < 0.8 * res.capacity_rate   # reservations cost capacity


def test_capacity_cli_errors_cleanly():
    proc = run_cli("capacity", "scenarios/quickstart.yaml", "--slo", "fast")
    assert proc.returncode == 2 and "--slo" in proc.stderr and "Traceback" not in proc.stderr


def test_capacity_interval_is_the_range_of_each_replicates_own_capacity():
    """`--intervals N`: each replicate's capacity equals a capacity search run alone on that
    replicate's seed with its step costs scaled by its factors (independent recomputation)."""
    from simkv.simulate import build_simulation, run_simulation, stream_for
    from simkv.studies.capacity import find_capacity
    from simkv.studies.capacity_interval import capacity_interval
    from simkv.studies.intervals import ScaledCost
    sc = small_scenario(engine={"preset": "vllm-v1", "num_gpu_blocks": 256, "max_model_len": 512},
                        workload__arrival={"process": "poisson", "rate": 4.0}, run={"seed": 2, "num_requests": 60})
    slo = parse_slo("ttft_p99=0.5s")
    iv = capacity_interval(sc, slo, 2, variant=None, stream_for=stream_for, build=build_simulation,
                           run_simulation=run_simulation, tolerance=0.1, max_probes=12)
    assert iv["replicates"] == 2 and len(iv["capacities_req_s"]) == 2
    assert iv["min"] <= iv["p5"] <= iv["p50"] <= iv["p95"] <= iv["max"]
    assert iv["residuals"].startswith("leave-one-out errors of the h100")
    for i, (cap, factors) in enumerate(zip(iv["capacities_req_s"], iv["factors"]), start=1):
        rep = sc.model_copy(update={"run": sc.run.model_copy(update={"seed": sc.run.seed + i})})

        def sim_fn(s, v, factors=factors):
            built = build_simulation(s, stream_for(s))
            built.cost = ScaledCost(built.cost, factors)
            return run_simulation(built, "base")
        again = find_capacity(rep, slo, simulate_fn=sim_fn, tolerance=0.1, seeds=1, max_probes=12)
        assert again.capacity_rate == cap
