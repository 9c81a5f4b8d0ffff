"""The shipped comparison scenario shows what it claims (docs/paged-vs-contiguous.md)."""

from __future__ import annotations

import pytest

import simkv

from conftest import ROOT


@pytest.fixture(scope="module")
def results():
    return simkv.simulate_all(simkv.load_scenario(ROOT / "scenarios" / "paged-vs-contiguous-h100.yaml"))


def test_paged_utilization_far_above_contiguous_max_model_len(results):
    paged = results["paged"].summary["kv_cache"]
    contig = results["contiguous-max_model_len"].summary["kv_cache"]
    assert paged["utilization_mean"] > 2 * contig["utilization_mean"]
    assert contig["mean_fraction"]["internal_frag"] > 0.5          # reservations never filled
    assert paged["mean_fraction"]["internal_frag"] < 0.01           # at most a partial block each
    assert paged["mean_fraction"]["external_frag"] == 0.0


def test_contiguous_runs_show_external_fragmentation_from_holes(results):
    for name in ("contiguous-max_model_len", "contiguous-prompt_plus_max_new", "contiguous-pow2"):
        assert results[name].summary["kv_cache"]["mean_fraction"]["external_frag"] > 0.0, name
    # variable-size regions leave holes that the next request's reservation does not fit
    assert results["contiguous-prompt_plus_max_new"].summary["kv_cache"]["mean_fraction"]["external_frag"] > 0.05


def test_reservation_limits_concurrency_and_latency(results):
    paged, contig = results["paged"].summary, results["contiguous-max_model_len"].summary
    capacity = contig["kv_cache"]["capacity_tokens"]
    assert contig["batch"]["max_running"] == capacity // 8192       # one max_model_len region each
    assert paged["batch"]["max_running"] > 2 * contig["batch"]["max_running"]
    assert contig["latency_s"]["ttft"]["p99"] > 20 * paged["latency_s"]["ttft"]["p99"]
    assert paged["throughput"]["output_tokens_per_s"] > contig["throughput"]["output_tokens_per_s"]
