"""Each engine preset's defining behaviour (docs/engines.md), on small hand-built cases and
whole simulations."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

import simkv
from simkv.simulate import build_simulation
from simkv.kv import ContiguousAllocator, PagedAllocator
from simkv.presets import PRESETS, apply_preset
from simkv.request import RequestTable
from simkv.scenario import Engine
from simkv.sched.chunked import ChunkedPrefillScheduler
from simkv.sched.prefill_first import PrefillFirstScheduler
from simkv.sched.static import StaticBatchScheduler
from simkv.sched.tgi import TgiScheduler
from simkv.simulate import run_simulation
from simkv.workload.stream import generate_stream

from conftest import small_scenario


def _table(prompts, outputs, max_new=None):
    n = len(prompts)
    outputs = np.array(outputs, dtype=np.int64)
    max_new = outputs * 2 if max_new is None else np.array(max_new, dtype=np.int64)
    return RequestTable(np.zeros(n), np.array(prompts, dtype=np.int64), outputs, max_new, np.zeros(n, dtype=np.int8))


def _step(s, now=0.0, dt=0.01):
    plan = s.schedule()
    s.commit(plan, now, np.full(plan.max_steps, dt))
    return plan


def _run(scenario):
    sim = build_simulation(scenario, generate_stream(scenario.workload, scenario.run))
    return sim, run_simulation(sim, "base")


def test_every_preset_runs_and_finishes_every_request():
    for name in PRESETS:
        blocks = 200 * 16 // PRESETS[name]["defaults"].get("block_size", 16)   # 3200 KV tokens for every preset
        sc = small_scenario(engine={"preset": name, "max_model_len": 512, "num_gpu_blocks": blocks,
                                    "max_num_seqs": 16, "max_batch_prefill_tokens": 600},
                            run__num_requests=40)
        sim, res = _run(sc)
        t = sim.table
        ok = t.status != 2
        assert (t.generated[ok] == t.output_tokens[ok]).all(), name
        assert res.summary["setup"]["preset"] == name


def test_scenario_values_override_preset_defaults():
    e = apply_preset(Engine(preset="vllm-v1", max_num_batched_tokens=2048))
    assert e.scheduler == "chunked" and e.max_num_batched_tokens == 2048 and e.block_size == 16
    assert apply_preset(Engine(preset="tgi")).reserve_upfront is True
    assert apply_preset(Engine(preset="orca-pow2")).reservation == "pow2"


def test_vllm_v1_schedules_running_decodes_before_any_prefill():
    t = _table([20, 20, 300], [50, 50, 5])
    s = ChunkedPrefillScheduler(t, PagedAllocator(200, 16), max_num_seqs=8, max_num_batched_tokens=64, max_model_len=512)
    s.add_request(0), s.add_request(1)
    first = _step(s)
    assert sorted(first.prefill_ids.tolist()) == [0, 1]
    s.add_request(2)
    plan = _step(s)
    assert plan.decode_ids.tolist() == [0, 1]                 # both decodes first ...
    assert plan.prefill_ids.tolist() == [2] and plan.prefill_new.tolist() == [62]  # ... then what is left
    assert not plan.prefill_done[0]                           # a partial chunk samples nothing
    plan = _step(s, 0.02)
    assert plan.prefill_new.tolist() == [62] and plan.prefill_ctx.tolist() == [124]  # continues against its cache


def test_sarathi_never_lets_a_prompt_stall_decodes():
    sc = small_scenario(engine={"preset": "sarathi-serve", "max_model_len": 512, "num_gpu_blocks": 400,
                                "max_num_batched_tokens": 64})
    steps = []
    sim = build_simulation(sc, generate_stream(sc.workload, sc.run))
    inner = sim.scheduler.schedule

    def spy():
        plan = inner()
        if plan is not None:
            steps.append(plan.num_batched_tokens)
        return plan
    sim.scheduler.schedule = spy
    run_simulation(sim, "base")
    assert max(steps) <= 64


def test_tgi_reserves_prompt_plus_max_new_and_never_preempts():
    sc = small_scenario(engine={"preset": "tgi", "max_model_len": 512, "num_gpu_blocks": 60,
                                "max_batch_prefill_tokens": 600, "max_concurrent_requests": 1000},
                        workload__output_tokens={"dist": "uniform", "low": 50, "high": 200})
    sim, res = _run(sc)
    assert res.summary["requests"]["preemptions"] == 0
    assert res.summary["requests"]["completed"] == 60
    # memory held = blocks for prompt + max_new_tokens from admission on
    t = _table([30], [10], max_new=[90])
    kv = PagedAllocator(50, 16, reserve_upfront=True)
    s = TgiScheduler(t, kv, max_batch_prefill_tokens=100)
    s.add_request(0)
    _step(s)
    assert kv.num_blocks_of(0) == kv.blocks_for(120)


def test_tgi_refuses_requests_beyond_max_concurrent_and_blocks_head_of_line():
    sc = small_scenario(engine={"preset": "tgi", "max_model_len": 512, "num_gpu_blocks": 60,
                                "max_batch_prefill_tokens": 600, "max_concurrent_requests": 8},
                        workload__arrival={"process": "poisson", "rate": 500.0})
    sim, res = _run(sc)
    reasons = res.summary["requests"]["rejected_by_reason"]
    assert reasons.get("refused by the engine (queue full: max_concurrent_requests)", 0) > 0
    t = _table([10, 90, 10], [5, 5, 5], max_new=[5, 5, 5])
    s = TgiScheduler(t, PagedAllocator(8, 16, reserve_upfront=True), max_batch_prefill_tokens=95)
    for rid in range(3):
        s.add_request(rid)
    plan = _step(s)
    assert plan.prefill_ids.tolist() == [0]          # 10 + 90 > 95 tokens: request 1 waits, and 2 behind it
    assert list(s.waiting) == [1, 2]


def test_tgi_waits_for_enough_queued_requests_or_max_waiting_tokens():
    t = _table([10] * 12, [100] * 12, max_new=[100] * 12)
    s = TgiScheduler(t, PagedAllocator(200, 16, reserve_upfront=True), max_batch_prefill_tokens=30,
                     waiting_served_ratio=0.5, max_waiting_tokens=5)
    for rid in range(10):
        s.add_request(rid)
    _step(s)                                    # 3 prefill (30-token budget)
    _step(s)                                    # 3 more: 7 waiting >= 0.5 x 3 running
    s_plan = _step(s)
    assert len(s_plan.prefill_ids) == 3         # 4 waiting >= 0.5 x 6
    plan = s.schedule()                         # 1 waiting < 0.5 x 9: decode instead
    assert len(plan.prefill_ids) == 0 and plan.max_steps <= 5
    s.commit(plan, 0.0, np.full(plan.max_steps, 0.01))
    while s.decode_steps_since_prefill < 5:
        _step(s)
    assert len(_step(s).prefill_ids) == 1       # after max_waiting_tokens decode steps it prefills anyway


def test_fastertransformer_admits_nothing_until_its_batch_ends():
    t = _table([10, 10, 10], [3, 8, 2])
    kv = ContiguousAllocator(400)
    s = StaticBatchScheduler(t, kv, max_num_seqs=2, max_num_batched_tokens=100, max_model_len=100)
    for rid in range(3):
        s.add_request(rid)
    assert _step(s).prefill_ids.tolist() == [0, 1]
    now = 0.01
    while len(s.batch):
        plan = _step(s, now)
        now += 0.01 * plan.max_steps
        assert len(plan.prefill_ids) == 0, "admitted while the static batch was running"
        if len(s.batch):
            assert 0 in kv.regions(), "memory returned before the batch ended"
    assert kv.regions() == {}
    assert _step(s, now).prefill_ids.tolist() == [2]


def test_vllm_v0_swaps_out_and_resumes_with_kv_intact_paying_both_transfers():
    t = _table([16, 16, 16], [40, 40, 40])
    kv = PagedAllocator(5, 16)
    s = PrefillFirstScheduler(t, kv, max_num_seqs=8, max_num_batched_tokens=100, max_model_len=100,
                              preemption="swap", swap_capacity_tokens=1000)
    for rid in range(3):
        s.add_request(rid)
    plan = _step(s)
    assert plan.prefill_ids.tolist() == [0, 1, 2] and not len(plan.decode_ids)
    plan = _step(s, 0.01)                      # 3 blocks needed, 2 free: the newest goes to host
    assert plan.preempted_ids == (2,) and plan.swap_out_tokens == 16
    assert len(s.swapped) == 1 and s.batch.num_decoding == 2
    now, out_tokens, in_tokens = 0.02, 16, 0
    while s.has_work():
        plan = _step(s, now)
        now += 0.01 * plan.max_steps
        out_tokens += plan.swap_out_tokens
        in_tokens += plan.swap_in_tokens
        assert not len(plan.prefill_ids), "a swapped request was recomputed"
    assert in_tokens == out_tokens > 0            # every token that went to host came back
    assert (t.generated == t.output_tokens).all()
    assert t.num_preemptions[2] >= 1


def test_swap_preemption_costs_transfer_time():
    sc = small_scenario(engine={"preset": "vllm-v0", "max_model_len": 512, "num_gpu_blocks": 40, "watermark": 0.0},
                        workload__output_tokens={"dist": "uniform", "low": 100, "high": 300}, run__num_requests=80)
    sim, res = _run(sc)
    assert res.summary["requests"]["preemptions"] > 0
    assert (sim.table.generated[sim.table.status == 1] == sim.table.output_tokens[sim.table.status == 1]).all()


def test_orca_presets_reserve_as_named():
    for name, policy in (("orca-max", "max_model_len"), ("orca-pow2", "pow2"), ("orca-oracle", "oracle")):
        sim, res = _run(small_scenario(engine={"preset": name, "max_model_len": 512, "num_gpu_blocks": 200}))
        assert res.summary["setup"]["allocator"] == "contiguous" and res.summary["setup"]["reservation"] == policy
    oracle = _run(small_scenario(engine={"preset": "orca-oracle", "max_model_len": 512, "num_gpu_blocks": 200}))[1]
    maxed = _run(small_scenario(engine={"preset": "orca-max", "max_model_len": 512, "num_gpu_blocks": 200}))[1]
    assert oracle.summary["kv_cache"]["mean_fraction"]["internal_frag"] == 0.0
    assert maxed.summary["kv_cache"]["mean_fraction"]["internal_frag"] > 0.3


def test_policy_and_allocator_mismatch_is_a_clear_error():
    with pytest.raises(simkv.SimkvError, match="paged KV cache"):
        _run(small_scenario(engine={"scheduler": "chunked", "allocator": "contiguous", "max_model_len": 512}))
    with pytest.raises(simkv.SimkvError, match="swap preemption"):
        _run(small_scenario(engine={"preemption": "swap", "max_model_len": 512}))


def test_prefix_cache_hit_skips_the_cached_tokens_prefill():
    from simkv.kv.prefix_cache import PrefixCachingAllocator
    t = RequestTable(np.zeros(3), np.array([100, 90, 100], dtype=np.int64), np.array([5, 5, 5], dtype=np.int64),
                     np.array([5, 5, 5], dtype=np.int64), np.zeros(3, dtype=np.int8),
                     np.array([7, 7, -1], dtype=np.int64), np.array([64, 64, 0], dtype=np.int64))
    s = ChunkedPrefillScheduler(t, PrefixCachingAllocator(40, 16), max_num_seqs=8, max_num_batched_tokens=512,
                                max_model_len=512, prefix_caching=True)
    s.add_request(0)
    first = _step(s)
    assert first.prefill_new.tolist() == [100] and first.prefill_ctx.tolist() == [100]
    s.add_request(1), s.add_request(2)
    plan = _step(s, 0.01)
    chunks = dict(zip(plan.prefill_ids.tolist(), zip(plan.prefill_new.tolist(), plan.prefill_ctx.tolist())))
    assert chunks[1] == (26, 90)      # 64 prefix tokens found in the cache: only 26 computed
    assert chunks[2] == (100, 100)    # no shared prefix: all computed
    assert t.prefix_hit_tokens.tolist() == [0, 64, 0]
    assert s.kv.shared_excess == 4    # the 4 prefix blocks are in two block tables


def test_prefix_caching_lowers_ttft_on_shared_system_prompts():
    over = dict(engine={"preset": "vllm-v1", "max_model_len": 4096, "num_gpu_blocks": 2000},
                workload__shared_prefix={"fraction": 0.9, "tokens": 1024, "num_prefixes": 2},
                workload__arrival={"process": "poisson", "rate": 40.0}, run__num_requests=200)
    on = _run(small_scenario(**over))[1].summary
    over["engine"] = dict(over["engine"], prefix_caching=False)
    off = _run(small_scenario(**over))[1].summary
    assert on["kv_cache"]["prefix_cache"]["hit_rate"] > 0.7
    assert "prefix_cache" not in off["kv_cache"]
    assert on["latency_s"]["ttft"]["p50"] < 0.7 * off["latency_s"]["ttft"]["p50"]


def test_prefix_cache_shares_blocks_scheduled_in_the_same_step():
    """vLLM V1 names blocks when it schedules them, so a request admitted later in the same step
    reuses a shared prefix another request is computing in that step."""
    from simkv.kv.prefix_cache import PrefixCachingAllocator
    t = RequestTable(np.zeros(2), np.array([100, 80], dtype=np.int64), np.array([5, 5], dtype=np.int64),
                     np.array([5, 5], dtype=np.int64), np.zeros(2, dtype=np.int8),
                     np.array([3, 3], dtype=np.int64), np.array([64, 64], dtype=np.int64))
    s = ChunkedPrefillScheduler(t, PrefixCachingAllocator(40, 16), max_num_seqs=8, max_num_batched_tokens=512,
                                max_model_len=512, prefix_caching=True)
    s.add_request(0), s.add_request(1)
    plan = _step(s)
    chunks = dict(zip(plan.prefill_ids.tolist(), zip(plan.prefill_new.tolist(), plan.prefill_ctx.tolist())))
    assert chunks == {0: (100, 100), 1: (16, 80)}
    assert s.batch.gen.tolist() == [1, 1]          # both prompts complete and sample their first token


@settings(max_examples=40, deadline=None)
@given(preset=st.sampled_from(sorted(PRESETS)), seed=st.integers(0, 10_000), rate=st.floats(2, 300),
       blocks=st.integers(40, 300), max_seqs=st.integers(1, 32), shared=st.booleans(),
       sampling=st.sampled_from([None, {"n": 3}, {"beam_width": 3, "beam_reselect": 0.4}]))
def test_any_preset_on_any_small_engine_finishes_every_token_once(preset, seed, rate, blocks, max_seqs, shared,
                                                                  sampling):
    block_size = PRESETS[preset]["defaults"].get("block_size", 16)
    blocks = blocks * 16 // block_size   # the same KV tokens whatever the preset's block size
    over = dict(engine={"preset": preset, "max_model_len": 512, "num_gpu_blocks": blocks, "max_num_seqs": max_seqs,
                        "max_batch_prefill_tokens": 600, "max_concurrent_requests": 10_000},
                run__seed=seed, run__num_requests=50, workload__arrival={"process": "poisson", "rate": rate})
    if shared:
        over["workload__shared_prefix"] = {"fraction": 0.7, "tokens": 96, "num_prefixes": 2}
    if sampling is not None:
        if preset in ("tgi", "trtllm") and "beam_width" in sampling:
            return  # not modelled: refused with a clear error (tested below)
        over["workload__sampling"] = sampling
    sim, res = _run(small_scenario(**over))
    t = sim.table
    ok = t.status != 2
    assert (t.status[ok] == 1).all()
    assert (t.generated[ok] == t.output_tokens[ok]).all(), "a token was generated twice or never"
    assert res.summary["throughput"]["total_output_tokens"] == int(t.output_tokens[ok].sum())
    owned = sim.allocator.owners() if hasattr(sim.allocator, "owners") else sim.allocator.regions()
    assert not owned, "memory still held after every request finished"
    assert sum(res.summary["kv_cache"]["mean_fraction"].values()) == pytest.approx(1.0)


def test_parallel_sampling_shares_the_prompt_only_where_the_engine_can():
    over = dict(workload__sampling={"n": 4}, workload__prompt_tokens={"dist": "uniform", "low": 300, "high": 400},
                workload__output_tokens={"dist": "uniform", "low": 5, "high": 60},
                workload__arrival={"process": "poisson", "rate": 5.0}, run__num_requests=40)
    shared = _run(small_scenario(engine={"preset": "vllm-v1", "max_model_len": 512, "num_gpu_blocks": 800}, **over))
    copied = _run(small_scenario(engine={"preset": "simkv", "max_model_len": 512, "num_gpu_blocks": 800}, **over))
    for sim, res in (shared, copied):
        s, t = res.summary, sim.table
        assert s["requests"]["total"] == 40 and s["requests"]["sequences"] == 160 and s["requests"]["completed"] == 40
        assert (t.generated == t.output_tokens).all()
        assert len(set(t.group.tolist())) == 40 and (np.bincount(t.group) == 4).all()
        assert len(set(t.output_tokens[t.group == 0].tolist())) > 1  # each sequence has its own length
    hit = shared[1].summary["kv_cache"]["prefix_cache"]["hit_rate"]
    assert 0.6 < hit < 0.75                           # 3 of 4 sequences reuse the prompt's full blocks
    held = lambda res: 1 - res.summary["kv_cache"]["mean_fraction"]["free"]
    assert held(shared[1]) < 0.5 * held(copied[1])    # paged + prefix cache holds one copy of each prompt
    e2e = shared[1].requests["e2e_s"]
    groups = shared[0].table.group
    # a request ends with its last sequence
    assert shared[1].summary["latency_s"]["e2e"]["max"] == pytest.approx(
        max(np.nanmax(e2e[groups == g]) for g in range(40)))



def test_beam_search_shares_blocks_in_paged_engines_and_copies_in_contiguous_ones():
    def held(preset, reselect):
        over = dict(workload__sampling={"beam_width": 4, "beam_reselect": reselect},
                    workload__prompt_tokens={"dist": "uniform", "low": 30, "high": 60},
                    workload__output_tokens={"dist": "uniform", "low": 150, "high": 250},
                    workload__arrival={"process": "poisson", "rate": 2.0}, run__num_requests=20)
        sim, res = _run(small_scenario(engine={"preset": preset, "max_model_len": 512, "num_gpu_blocks": 2000}, **over))
        assert res.summary["requests"]["completed"] == 20 and res.summary["requests"]["sequences"] == 80
        assert (sim.table.generated == sim.table.output_tokens).all()
        return 1 - res.summary["kv_cache"]["mean_fraction"]["free"] - res.summary["kv_cache"]["mean_fraction"]["external_frag"]
    assert held("vllm-v0", 0.5) < 0.7 * held("vllm-v0", 0.0)      # converging beams share their blocks
    assert held("orca-oracle", 0.5) == pytest.approx(held("orca-oracle", 0.0))  # contiguous beams copy
    with pytest.raises(simkv.SimkvError, match="beam search"):
        _run(small_scenario(engine={"preset": "tgi", "max_model_len": 512},
                            workload__sampling={"beam_width": 2, "beam_reselect": 0.1}))
