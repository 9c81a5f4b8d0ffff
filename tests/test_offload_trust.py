"""KV offload tiers (simkv.kv.offload, issue 18): tier mechanics on hand-built cases, loads priced
at bytes / bandwidth (checked against a hand computation from device.json), bytes moved = blocks x
bytes per block, a host tier never lowering the prefix hit rate on multi-turn sessions, the
invariants every preset passes, and clear errors for configurations that are not modelled."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from simkv.simulate import build_simulation as build
from simkv.cost.calibrated import CalibratedCost
from simkv.errors import SimkvError
from simkv.kv.offload import ON_EVICTION, WRITE_THROUGH, OffloadingPrefixCache, OffloadTiers, Tier
from simkv.presets import PRESETS
from simkv.request import RequestTable
from simkv.sched.base import StepPlan
from simkv.scenario import Variant
from simkv.sched.chunked import ChunkedPrefillScheduler
from simkv.simulate import run_simulation
from simkv.workload.stream import generate_stream

from conftest import ROOT, run_cli, small_scenario

A, B, C = 1, 2, 3   # block content names (ints, as simkv.sched.chunked.block_name gives)

# llama3-8b: 2 (K, V) x 32 layers x 8 KV heads x 128 head_dim x 2 bytes (bf16), by hand
LLAMA3_8B_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
H100_DEVICE = json.loads((ROOT / "simkv" / "cost" / "data" / "h100" / "device.json").read_text())
OFFLOAD_PRESETS = ("vllm-v1", "sglang", "trtllm")
SESSIONS = {"turns": {"dist": "uniform", "low": 2, "high": 6}, "think_s": 5.0,
            "user_tokens": {"dist": "uniform", "low": 30, "high": 120}}


def _cache(num_blocks, block_size, policy, host_blocks, ssd_blocks=0, block_bytes=100, num_requests=8):
    tiers = [Tier("host", host_blocks, 1e9, 1e9), Tier("ssd", ssd_blocks, 1e8, 1e8)]
    return OffloadingPrefixCache(num_blocks, block_size, OffloadTiers(tiers, policy, block_bytes, num_requests))


def _multiturn(preset, offload=None, *, seed=3, n=60, kv_tokens=3200, rate=4.0, **extra):
    block = PRESETS[preset]["defaults"].get("block_size", 16)
    engine = {"preset": preset, "max_model_len": 3000, "num_gpu_blocks": kv_tokens // block, "max_num_seqs": 16}
    if offload is not None:
        engine["kv_offload"] = offload
    engine.update(extra)
    return small_scenario(engine=engine, run__num_requests=n, run__seed=seed,
                          workload__arrival={"process": "poisson", "rate": rate},
                          workload__prompt_tokens={"dist": "uniform", "low": 100, "high": 400},
                          workload__output_tokens={"dist": "uniform", "low": 20, "high": 100},
                          workload__sessions=SESSIONS)


def _run(scenario):
    sim = build(scenario, generate_stream(scenario.workload, scenario.run))
    return sim, run_simulation(sim, "base").summary


# ---------------------------------------------------------------- tier mechanics, by hand
def test_on_eviction_writes_a_block_down_only_when_the_gpu_evicts_it_and_loads_it_back():
    kv = _cache(4, 4, ON_EVICTION, host_blocks=4)
    kv.allocate_cached(0, [A, B], 0, 8, 8)
    kv.register(0, [A, B], 8)
    kv.free(0)
    host = kv.offload.tiers[0]
    assert host.blocks_written == 0                     # cached on the GPU, nothing written yet
    kv.allocate(1, 16)                                  # takes every block: a and b evicted
    assert list(host.blocks) == [B, A]              # the tail block is evicted first
    assert host.blocks_written == 2
    kv.free(1)
    assert kv.match_prefix([A, B, C]) == 2        # both held, in the host tier
    assert kv.can_allocate_cached([A, B], 2, 9)
    kv.allocate_cached(2, [A, B], 2, 9, 9)
    assert kv.take_pending_loads() == {"host": 2} and kv.take_pending_loads() == {}
    assert host.blocks_read == 2 and kv.offload.hit_blocks["host"][2] == 2
    assert kv.cached_blocks().keys() >= {A, B}      # named on the GPU again
    assert len(kv.block_table(2)) == 3 and kv.num_free_blocks == 1


def test_write_through_writes_every_named_block_at_once_and_spills_to_ssd_when_the_host_is_full():
    kv = _cache(8, 4, WRITE_THROUGH, host_blocks=1, ssd_blocks=4)
    kv.allocate_cached(0, [A, B, C], 0, 12, 12)
    kv.register(0, [A, B, C], 8)                  # two full blocks computed
    host, ssd = kv.offload.tiers
    assert list(host.blocks) == [B] and host.blocks_written == 2 and host.blocks_dropped == 1
    assert list(ssd.blocks) == [A, B] and ssd.blocks_written == 2   # written through to both levels
    kv.register(0, [A, B, C], 12)
    assert list(host.blocks) == [C] and list(ssd.blocks) == [A, B, C]
    kv.free(0)
    kv.allocate(1, 32)                                  # evicts a, b, c from the GPU: nothing more written
    assert ssd.blocks_written == 3 and host.blocks_written == 3
    kv.free(1)
    kv.allocate_cached(2, [A, B, C], 3, 13, 13)
    assert kv.take_pending_loads() == {"ssd": 2, "host": 1}


def test_on_eviction_demotes_the_host_tiers_lru_block_to_the_ssd():
    kv = _cache(2, 1, ON_EVICTION, host_blocks=1, ssd_blocks=2)
    kv.allocate_cached(0, [A, B], 0, 2, 2)
    kv.register(0, [A, B], 2)
    kv.free(0)
    kv.allocate(1, 2)                                   # GPU evicts b then a; the host keeps one
    host, ssd = kv.offload.tiers
    assert list(host.blocks) == [A] and list(ssd.blocks) == [B]
    assert (host.blocks_written, ssd.blocks_written, host.blocks_dropped) == (2, 1, 1)


def test_a_block_held_on_the_gpu_is_reused_not_loaded():
    kv = _cache(6, 4, WRITE_THROUGH, host_blocks=8)
    kv.allocate_cached(0, [A, B], 0, 8, 8)
    kv.register(0, [A, B], 8)
    kv.allocate_cached(1, [A, B], 2, 9, 9)          # shared with the running request 0
    assert kv.take_pending_loads() == {} and kv.offload.hit_blocks["gpu"][1] == 2
    assert kv.block_table(1)[:2] == kv.block_table(0)


# ---------------------------------------------------------------- the scheduler and the step cost
def test_a_lower_tier_hit_skips_its_prefill_and_the_plan_carries_the_load():
    # request 0 (prefix 0: 32 tokens) runs; request 1 (other content) evicts its blocks; request 2
    # shares request 0's prefix: its 2 blocks come back from the host tier, only 8 tokens computed
    prompts, outputs = [40, 120, 40], [1, 1, 1]
    t = RequestTable(np.zeros(3), np.array(prompts), np.array(outputs), np.array(outputs), np.zeros(3, np.int8),
                     np.array([0, -1, 0]), np.array([32, 0, 32]))
    kv = _cache(8, 16, ON_EVICTION, host_blocks=16, block_bytes=16 * LLAMA3_8B_KV_BYTES_PER_TOKEN)
    s = ChunkedPrefillScheduler(t, kv, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=200,
                                prefix_caching=True)
    for rid in range(3):
        s.add_request(rid)
        plan = s.schedule()
        s.commit(plan, 0.0, np.full(plan.max_steps, 0.01))
        if rid == 2:
            assert plan.prefill_new.tolist() == [8] and plan.prefill_ctx.tolist() == [40]
            assert (plan.kv_load_host_tokens, plan.kv_load_ssd_tokens) == (32, 0)
        else:
            assert plan.kv_load_host_tokens == 0
    assert t.prefix_hit_tokens.tolist() == [0, 0, 32]


def test_a_load_costs_its_bytes_over_the_tiers_measured_read_rate():
    sc = _multiturn("vllm-v1", {"host_gib": 1.0, "ssd_gib": 1.0, "ssd_gbps": 3.0})
    sim = build(sc, generate_stream(sc.workload, sc.run))
    assert isinstance(sim.cost, CalibratedCost)
    base = StepPlan(prefill_ids=np.array([0]), prefill_new=np.array([64]), prefill_ctx=np.array([160]))
    host = StepPlan(prefill_ids=np.array([0]), prefill_new=np.array([64]), prefill_ctx=np.array([160]),
                    kv_load_host_tokens=96)
    ssd = StepPlan(prefill_ids=np.array([0]), prefill_new=np.array([64]), prefill_ctx=np.array([160]),
                   kv_load_ssd_tokens=96)
    by_hand_host = 96 * LLAMA3_8B_KV_BYTES_PER_TOKEN / (H100_DEVICE["h2d_pinned_GBps"] * 1e9)
    by_hand_ssd = 96 * LLAMA3_8B_KV_BYTES_PER_TOKEN / 3.0e9    # slower than the 55 GB/s host link
    assert sim.cost.seconds(host) - sim.cost.seconds(base) == pytest.approx(by_hand_host, rel=1e-9)
    assert sim.cost.seconds(ssd) - sim.cost.seconds(base) == pytest.approx(by_hand_ssd, rel=1e-9)
    src = sim.cost.sources()
    assert "measured" in src["kv_offload_host_load"] and "stated, not measured" in src["kv_offload_ssd_load"]
    roof = build(_multiturn("vllm-v1", {"host_gib": 1.0}).model_copy(update={"cost": "roofline"}),
                 generate_stream(sc.workload, sc.run)).cost
    assert roof.seconds(host) - roof.seconds(base) == pytest.approx(by_hand_host, rel=1e-9)
    assert roof.sources()["kv_offload_ssd_load"] == "n/a (no SSD tier)"


# ---------------------------------------------------------------- whole runs
@pytest.mark.parametrize("preset", OFFLOAD_PRESETS)
def test_bytes_moved_are_blocks_times_bytes_per_block(preset):
    sim, s = _run(_multiturn(preset, {"host_gib": 0.2, "ssd_gib": 1.0}))
    off = s["kv_cache"]["offload"]
    block = sim.engine.block_size
    block_bytes = block * LLAMA3_8B_KV_BYTES_PER_TOKEN
    assert off["block_bytes"] == block_bytes
    tiers = off["tiers"]
    for name in ("host", "ssd"):
        tier = sim.allocator.offload.all_tiers[["host", "ssd"].index(name)]
        assert tiers[name]["bytes_read"] == tier.blocks_read * block_bytes
        assert tiers[name]["bytes_written"] == tier.blocks_written * block_bytes
        # no warm-up, every request finished: every load belongs to a measured request's hit
        assert tiers[name]["bytes_read"] == tiers[name]["hit_tokens"] // block * block_bytes
        assert tiers[name]["capacity_blocks"] == int(off[f"{name}_gib"] * 2 ** 30 // block_bytes)
    assert tiers["ssd"]["bytes_read"] > 0 and tiers["host"]["bytes_written"] > 0
    pc = s["kv_cache"]["prefix_cache"]
    assert sum(tiers[k]["hit_tokens"] for k in ("gpu", "host", "ssd")) == pc["hit_tokens"]
    assert tiers["host"]["load_s"] == pytest.approx(tiers["host"]["bytes_read"] / (H100_DEVICE["h2d_pinned_GBps"] * 1e9))
    assert tiers["ssd"]["load_s"] == pytest.approx(tiers["ssd"]["bytes_read"] / 6.8e9)


@settings(max_examples=6, deadline=None)
@given(preset=st.sampled_from(OFFLOAD_PRESETS), seed=st.integers(0, 10_000), policy=st.sampled_from([None, WRITE_THROUGH, ON_EVICTION]))
def test_a_host_tier_never_lowers_the_prefix_hit_rate_on_multiturn_sessions(preset, seed, policy):
    off = {"host_gib": 8.0} if policy is None else {"host_gib": 8.0, "policy": policy}
    _, without = _run(_multiturn(preset, seed=seed, n=40))
    _, with_host = _run(_multiturn(preset, off, seed=seed, n=40))
    assert with_host["kv_cache"]["prefix_cache"]["hit_rate"] >= without["kv_cache"]["prefix_cache"]["hit_rate"]
    assert with_host["kv_cache"]["offload"]["tiers"]["host"]["hit_tokens"] > 0


def test_same_seed_same_result():
    sc = _multiturn("sglang", {"host_gib": 0.1, "ssd_gib": 0.5}, n=30)
    a, b = _run(sc)[1], _run(sc)[1]
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def test_preset_policies_and_sglangs_default_host_size():
    sims = {p: _run(_multiturn(p, {} if p == "sglang" else {"host_gib": 1.0}, n=10)) for p in OFFLOAD_PRESETS}
    policies = {p: s["setup"]["engine"]["kv_offload"]["policy"] for p, (_, s) in sims.items()}
    assert policies == {"vllm-v1": WRITE_THROUGH, "sglang": WRITE_THROUGH, "trtllm": ON_EVICTION}
    _, s = sims["sglang"]
    kv_gib = s["setup"]["memory"]["kv_cache_gib"]
    assert s["setup"]["engine"]["kv_offload"]["host_gib"] == pytest.approx(2.0 * kv_gib)   # hicache_ratio 2
    for p in PRESETS:   # off unless configured
        assert "kv_offload" not in PRESETS[p]["defaults"]
    _, plain = _run(_multiturn("vllm-v1", n=10))
    assert "offload" not in plain["kv_cache"] and plain["setup"]["cost_sources"]["kv_offload"].startswith("n/a")


@settings(max_examples=12, deadline=None)
@given(preset=st.sampled_from(OFFLOAD_PRESETS), seed=st.integers(0, 10_000), rate=st.floats(2, 200),
       kv_tokens=st.integers(600, 3200), max_seqs=st.integers(1, 16), policy=st.sampled_from([WRITE_THROUGH, ON_EVICTION]),
       host=st.sampled_from([0.0, 0.01, 0.3]), ssd=st.sampled_from([0.0, 0.05]), sessions=st.booleans())
def test_any_offload_config_finishes_every_token_once(preset, seed, rate, kv_tokens, max_seqs, policy, host, ssd,
                                                      sessions):
    """The preset fuzz (tests/test_presets.py) with offload tiers: every token once, nothing held."""
    if host == 0 and ssd == 0:
        host = 0.01
    block = PRESETS[preset]["defaults"].get("block_size", 16)
    over = dict(engine={"preset": preset, "max_model_len": 512, "num_gpu_blocks": kv_tokens // block,
                        "max_num_seqs": max_seqs, "kv_offload": {"host_gib": host, "ssd_gib": ssd, "policy": policy}},
                run__seed=seed, run__num_requests=40, workload__arrival={"process": "poisson", "rate": rate})
    if sessions:
        over["workload__sessions"] = {"turns": {"dist": "uniform", "low": 1, "high": 4}, "think_s": 0.5,
                                      "user_tokens": {"dist": "uniform", "low": 10, "high": 60}}
        over["workload__prompt_tokens"] = {"dist": "uniform", "low": 10, "high": 100}
        over["workload__output_tokens"] = {"dist": "uniform", "low": 1, "high": 60}
    else:
        over["workload__shared_prefix"] = {"fraction": 0.7, "tokens": 96, "num_prefixes": 2}
    sim, s = _run(small_scenario(**over))
    t = sim.table
    ok = t.status != 2
    assert (t.status[ok] == 1).all()
    assert (t.generated[ok] == t.output_tokens[ok]).all(), "a token was generated twice or never"
    assert s["throughput"]["total_output_tokens"] == int(t.output_tokens[ok].sum())
    assert not sim.allocator.owners(), "memory still held after every request finished"
    assert sum(s["kv_cache"]["mean_fraction"].values()) == pytest.approx(1.0)
    for tier in sim.allocator.offload.all_tiers:
        assert len(tier.blocks) <= tier.capacity_blocks
    assert sim.allocator.num_free_blocks == sim.allocator.num_blocks


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("engine, field", [
    ({"preset": "tgi", "kv_offload": {"host_gib": 1.0}}, "engine.kv_offload"),
    ({"preset": "vllm-v1", "prefix_caching": False, "kv_offload": {"host_gib": 1.0}}, "engine.kv_offload"),
    ({"preset": "vllm-v1", "kv_offload": {}}, "engine.kv_offload.host_gib"),
    ({"preset": "trtllm", "kv_offload": {"host_gib": 0, "ssd_gib": 0}}, "engine.kv_offload"),
    ({"preset": "vllm-v1", "kv_offload": {"host_gib": 1e-6}}, "engine.kv_offload.host_gib"),
])
def test_unmodelled_offload_configurations_are_clear_errors(engine, field):
    sc = small_scenario(engine={"max_model_len": 512, "num_gpu_blocks": 64, **engine})
    with pytest.raises(SimkvError) as err:
        build(sc, generate_stream(sc.workload, sc.run))
    assert err.value.field == field and err.value.fix


def test_cli_reports_a_bad_offload_setting_cleanly(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("model: llama3-8b\nhardware: {gpu: h100}\n"
                    "engine: {preset: vllm-v1, max_model_len: 2048, kv_offload: {ssd_gib: 10}}\n"
                    "workload: {arrival: {process: poisson, rate: 1}, prompt_tokens: {dist: fixed, value: 10}, "
                    "output_tokens: {dist: fixed, value: 5}}\nrun: {num_requests: 3}\n")
    proc = run_cli("run", path, "-q", "--no-figures", "-o", tmp_path / "out", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith(f"simkv: error: {path}: engine.kv_offload.host_gib:")
    assert "; fix: " in proc.stderr and "Traceback" not in proc.stderr


def test_variants_of_a_multiturn_scenario_each_run_on_the_unchanged_stream():
    """Regression: the engine writes each later turn's arrival into the request table; the table
    shared the stream's array, so a second variant saw the first's arrivals and admitted turns twice."""
    from simkv.simulate import simulate, simulate_all
    sc = _multiturn("vllm-v1", n=15).model_copy(update={"variants": [
        Variant(name="plain"), Variant(name="host", set={"engine.kv_offload": {"host_gib": 1.0}})]})
    both = simulate_all(sc)
    for name in ("plain", "host"):
        alone = simulate(sc, name).summary
        assert json.dumps(both[name].summary, sort_keys=True, default=str) == json.dumps(alone, sort_keys=True, default=str)
