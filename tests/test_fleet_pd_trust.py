"""Prefill/decode disaggregation (issue 14): transfers timed by an independent link computation,
slower links give longer TTFT, every request served exactly once, decode memory reserved first."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from simkv.errors import SimkvError
from simkv.fleet.disagg import INFINIBAND, NVLINK_FIT
from simkv.request import DONE
from simkv.simulate import prepared, run_simulation
from tests.test_fleet_trust import scenario
from conftest import run_cli

NETWORK = Path(__file__).resolve().parents[1] / "simkv/cost/data/vidur/network"


def pd(link="nvlink", pre=1, dec=1, dec_set=None, **changes):
    return scenario({"router": {"policy": "least_loaded"},
                     "pools": [{"name": "pre", "replicas": pre},
                               {"name": "dec", "replicas": dec, "set": dec_set or {}}],
                     "disaggregation": {"prefill": "pre", "decode": "dec", "link": link}}, **changes)


def run(sc):
    (_, _, fleet), = list(prepared(sc))
    res = run_simulation(fleet, "base")
    return fleet, res


@pytest.mark.parametrize("topo", sorted(NVLINK_FIT))
def test_nvlink_constants_are_the_fit_of_the_nccl_send_recv_profile(topo):
    rows = [r for r in csv.DictReader(open(NETWORK / topo / "send_recv.csv")) if r["devices_per_node"] == "2"]
    size = np.array([float(r["size"]) for r in rows])
    t = np.array([float(r["time_stats.send_recv.median"]) for r in rows]) * 1e-3   # ms in the file
    k = size >= 2**20
    slope, icpt = np.polyfit(size[k], t[k], 1)
    bw, lat = NVLINK_FIT[topo]
    assert bw == pytest.approx(1 / slope, rel=2e-3)
    assert lat == pytest.approx(icpt, rel=2e-2)


def test_transfer_time_equals_kv_bytes_over_the_link_and_ttft_includes_it():
    fleet, res = run(pd("infiniband"))
    d, t = fleet.disagg, res.requests
    moved = np.flatnonzero(np.isfinite(d.arrived_s))
    prompt = np.asarray(t["prompt_tokens"])[moved] if "prompt_tokens" in t else fleet.t.prompt_tokens[moved]
    # Llama-3-8B: 32 layers x 8 KV heads x 128 head_dim x K and V x 2 bytes (bf16), TP 1
    per_token = 32 * 8 * 128 * 2 * 2
    assert (d.bytes[moved] == per_token * prompt).all()
    expect = 10e-6 + per_token * prompt / 50e9   # 400 Gb/s NDR, 10 us, as stated
    assert (INFINIBAND == (50e9, 10e-6))
    np.testing.assert_allclose(d.arrived_s[moved] - d.link_start_s[moved], expect, rtol=1e-9)
    # the client's first token comes when the KV has arrived
    np.testing.assert_allclose(fleet.t.first_token_s[moved], d.arrived_s[moved], rtol=0, atol=0)
    s = res.summary["fleet"]["disaggregation"]
    assert s["transfers"] == len(moved) and s["bytes_total"] == int(d.bytes[moved].sum())
    assert s["transfer_s"]["mean"] == pytest.approx(float(np.mean(expect)), rel=1e-9)


def test_slower_links_give_longer_ttft():
    ttft = {}
    for link in ("nvlink", "pcie", "infiniband"):
        _, res = run(pd(link))
        ttft[link] = res.summary["latency_s"]["ttft"]["mean"]
    # nvlink 362 GB/s > H100 measured h2d 55 GB/s > IB 50 GB/s
    assert ttft["nvlink"] < ttft["pcie"] < ttft["infiniband"]


def test_every_request_served_exactly_once_and_a_full_decode_replica_makes_transfers_wait():
    # a small decode cache (300 blocks of 16 = 4800 tokens) under a high rate: transfers must wait
    fleet, res = run(pd("nvlink", pre=2, dec=1, dec_set={"engine.num_gpu_blocks": 300},
                        workload__arrival={"process": "poisson", "rate": 30}))
    t, d = res.requests, fleet.disagg
    out = fleet.t.output_tokens
    assert (fleet.t.status[out > 1] == DONE).all()
    s = res.summary
    assert s["requests"]["completed"] == s["requests"]["total"] == 400
    multi = np.flatnonzero(out > 1)
    assert (d.prefill_replica[multi] >= 0).all() and np.isfinite(d.arrived_s[multi]).all()
    assert (np.asarray(t["pool"])[multi] == 1).all()              # served by the decode pool
    assert (fleet.t.generated[multi] == out[multi]).all()          # every token, once
    assert s["fleet"]["disaggregation"]["transfers"] == len(multi)
    assert s["fleet"]["disaggregation"]["wait_for_decode_memory_s"]["max"] > 0
    # the reservation was made before the transfer, and the transfer before the first decode step
    assert (d.reserved_s[multi] <= d.link_start_s[multi]).all()
    assert (fleet.t.finish_s[multi] > d.arrived_s[multi]).all()


@pytest.mark.parametrize("dis, problem", [
    ({"prefill": "nope", "decode": "dec"}, "no pool named 'nope'"),
    ({"prefill": "dec", "decode": "dec"}, "two different pools"),
])
def test_bad_disaggregation_is_a_field_error(dis, problem):
    with pytest.raises(SimkvError) as err:
        scenario({"pools": [{"name": "pre"}, {"name": "dec"}], "disaggregation": dis})
    assert problem in str(err.value) and "disaggregation" in str(err.value)


def test_cli_runs_the_shipped_pd_scenario_variant_and_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.yaml"
    src = Path(__file__).resolve().parents[1] / "scenarios/fleet-pd-h100.yaml"
    bad.write_text(src.read_text().replace("link: nvlink", "link: carrier-pigeon"))
    p = run_cli("validate", bad, cwd=None)
    assert p.returncode == 2 and p.stderr.startswith("simkv: error:") and "Traceback" not in p.stderr


def test_fleet_figures_draw_every_replica_and_pool(tmp_path):
    from simkv.report.fleet_plots import FLEET_FIGURES, latency_by_pool, replica_load_and_kv, replicas_over_time
    import simkv
    res = simkv.simulate(pd("nvlink", pre=1, dec=2, run__num_requests=120))
    results = {"pd": res}
    fig = replica_load_and_kv(results)
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[1].lines) == 3   # load and KV of each replica
    assert len(latency_by_pool(results).axes[0].lines) >= 1
    fig = replicas_over_time(results)
    assert sorted(line.get_ydata().max() for line in fig.axes[0].lines) == [1.0, 2.0]
    from simkv.files.results import write_results
    write_results(results, tmp_path / "out")
    for name in FLEET_FIGURES:
        assert (tmp_path / "out" / name).exists()
