"""Issue 18: the SGLang and TensorRT-LLM presets and the block-size cost term, each checked against
an independent computation (hand arithmetic or a direct count)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simkv.simulate import build_simulation
from simkv.cost.block_size import decode_attention_factor
from simkv.kv.paged import PagedAllocator
from simkv.kv.prefix_cache import PrefixCachingAllocator
from simkv.presets import PRESETS, Target, apply_preset, sglang_max_running_requests, sglang_memory_defaults
from simkv.request import RequestTable
from simkv.scenario import Engine
from simkv.sched.chunked import PREFIX, block_names
from simkv.sched.sglang import SglangScheduler
from simkv.sched.trtllm import TrtllmScheduler
from simkv.simulate import run_simulation
from simkv.workload.stream import generate_stream

from conftest import small_scenario


def _run(sc):
    sim = build_simulation(sc, generate_stream(sc.workload, sc.run))
    return sim, run_simulation(sim, "base")


def _table(prompts, outputs, max_new=None):
    n = len(prompts)
    out = np.array(outputs, dtype=np.int64)
    return RequestTable(np.zeros(n), np.array(prompts, dtype=np.int64), out,
                        np.array(max_new if max_new is not None else outputs, dtype=np.int64), np.zeros(n, dtype=np.int8))


def _drive(s, max_steps=100_000):
    now, batches, preempted = 0.0, [], 0
    for _ in range(max_steps):
        plan = s.schedule()
        if plan is None:
            break
        batches.append(plan.num_seqs)
        preempted += len(plan.preempted_ids)
        s.commit(plan, now, np.full(plan.max_steps, 0.01))
        now += 0.01 * plan.max_steps
    return batches, preempted


# ---------------------------------------------------------------- presets
def test_presets_resolve_sglang_and_trtllm_defaults_from_the_card():
    sc = small_scenario(engine={"preset": "sglang"})
    target = Target(sc.gpu_spec(), "h100", sc.model_spec())
    mib = sc.gpu_spec().memory_bytes / 2**20                        # 81,079 MiB on the catalog's H100
    chunk, fraction = sglang_memory_defaults(target)
    reserved = max(512 + 8192 * 1.5 + 256 * 2 + 1024 / 8, 10 * 1024)  # 13,440 MiB by hand
    assert chunk == 8192 and fraction == round((mib - reserved) / mib, 3)
    e = apply_preset(Engine(preset="sglang", max_model_len=8192), target)
    assert (e.scheduler, e.block_size, e.prefix_caching, e.schedule_policy) == ("sglang", 1, True, "fcfs")
    assert e.max_num_batched_tokens == 8192 and e.gpu_memory_utilization == fraction
    assert sglang_max_running_requests(400_000, 8192) == min(200_000, 4096) == 4096
    assert sglang_max_running_requests(3000, 8192) == 1500
    t = apply_preset(Engine(preset="trtllm"), target)
    assert (t.block_size, t.max_num_seqs, t.max_num_batched_tokens, t.capacity_scheduler_policy) == \
        (32, 2048, 8192, "guaranteed_no_evict")
    assert not t.prefill_chunking and t.prefix_caching
    # free_gpu_memory_fraction 0.9 of what the weights and activations leave: KV = 0.9 x (M - w - a)
    sim = build_simulation(small_scenario(engine={"preset": "trtllm", "max_model_len": 512}),
                generate_stream(small_scenario().workload, small_scenario().run))
    m = sim.memory
    card = sc.gpu_spec().memory_bytes
    assert m.kv_bytes == pytest.approx(0.9 * (card - m.weight_bytes - m.activation_bytes),
                                       abs=32 * m.kv_bytes_per_token)
    for name in ("sglang", "trtllm"):
        assert set(PRESETS[name]["defaults"]) - {"scheduler", "allocator", "preemption"} <= \
            set(PRESETS[name]["sources"]) | {"activation_reserve_gib"}, f"{name}: a default without a source"


# ---------------------------------------------------------------- TensorRT-LLM
def test_guaranteed_no_evict_admits_what_the_lifetime_reservation_allows():
    """10 blocks of 32; each request reserves 32 + 64 - 1 = 95 slots = 3 blocks: at most 3 run
    at once (10 // 3), never preempted; MAX_UTILIZATION starts all 8 (1 block each) and pauses."""
    prompts, outputs = [32] * 8, [64] * 8
    kv = PagedAllocator(10, 32, reserve_upfront=True)
    gne = TrtllmScheduler(_table(prompts, outputs), kv, max_num_seqs=64, max_num_batched_tokens=8192,
                          max_model_len=512)
    for r in range(8):
        gne.add_request(r)
    batches, preempted = _drive(gne)
    assert max(batches) == 10 // 3 and preempted == 0
    assert (gne.t.generated == 64).all()
    mu = TrtllmScheduler(_table(prompts, outputs), PagedAllocator(10, 32), max_num_seqs=64,
                         max_num_batched_tokens=8192, max_model_len=512, capacity_policy="max_utilization")
    for r in range(8):
        mu.add_request(r)
    batches_mu, preempted_mu = _drive(mu)
    assert max(batches_mu) == 8 and preempted_mu > 0 and (mu.t.generated == 64).all()


def test_trtllm_no_evict_never_preempts_and_runs_smaller_batches_under_load():
    over = dict(workload__arrival={"process": "poisson", "rate": 200.0}, run__num_requests=150,
                workload__output_tokens={"dist": "uniform", "low": 20, "high": 200},
                workload__max_new_tokens={"policy": "cap", "tokens": 300})
    eng = {"preset": "trtllm", "max_model_len": 512, "num_gpu_blocks": 60}
    _, gne = _run(small_scenario(engine=eng, **over))
    _, mu = _run(small_scenario(engine=dict(eng, capacity_scheduler_policy="max_utilization"), **over))
    assert gne.summary["requests"]["preemptions"] == 0
    assert mu.summary["requests"]["preemptions"] > 0
    assert gne.summary["batch"]["mean_running"] < mu.summary["batch"]["mean_running"]
    assert gne.summary["kv_cache"]["mean_fraction"]["reserved"] > mu.summary["kv_cache"]["mean_fraction"]["reserved"]


# ---------------------------------------------------------------- SGLang
def test_sglang_lpm_hits_more_prefix_than_fcfs_with_the_same_cache():
    def hit(policy):
        sc = small_scenario(engine={"preset": "sglang", "max_model_len": 2048, "num_gpu_blocks": 3000,
                                    "schedule_policy": policy, "max_num_seqs": 64},
                            workload__shared_prefix={"fraction": 0.9, "tokens": 600, "num_prefixes": 8},
                            workload__prompt_tokens={"dist": "uniform", "low": 650, "high": 900},
                            workload__arrival={"process": "poisson", "rate": 20.0}, run__num_requests=70, run__seed=1)
        sim, res = _run(sc)
        assert (sim.table.generated[sim.table.status == 1] == sim.table.output_tokens[sim.table.status == 1]).all()
        return res.summary["kv_cache"]["prefix_cache"]["hit_rate"]
    fcfs, lpm = hit("fcfs"), hit("lpm")
    assert lpm > fcfs + 0.1, (fcfs, lpm)


def test_sglang_lpm_orders_by_cached_prefix_and_falls_back_to_fcfs_above_128():
    n = 4
    t = RequestTable(np.zeros(n), np.array([64] * n, dtype=np.int64), np.ones(n, dtype=np.int64),
                     np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int8),
                     np.array([0, 1, 1, 0], dtype=np.int64), np.array([40, 40, 40, 40], dtype=np.int64))
    kv = PrefixCachingAllocator(1000, 1)
    s = SglangScheduler(t, kv, max_num_seqs=8, max_num_batched_tokens=8192, max_model_len=512, schedule_policy="lpm")
    names = s.block_hashes(1, 64)
    kv.allocate_cached(99, [], 0, 40, 40)
    kv.register(99, names[:40], 40)            # prefix 1's 40 tokens cached
    kv.free(99)
    for r in range(n):
        s.waiting.append(r)
    s._order_queue()
    assert list(s.waiting) == [1, 2, 0, 3]     # prefix-1 requests first (40 cached), then FCFS
    s.waiting.clear()
    s.waiting.extend([0, 3] + [1] * 127)       # 129 waiting: FCFS order kept
    s._order_queue()
    assert list(s.waiting)[:2] == [0, 3]


def test_sglang_new_token_ratio_decays_and_jumps_back_after_a_retraction():
    s = SglangScheduler(_table([10], [700]), PrefixCachingAllocator(2000, 1), max_num_seqs=8,
                        max_num_batched_tokens=8192, max_model_len=1024)
    assert s.init_ratio == 0.7 and s.min_ratio == pytest.approx(0.7 * 0.14)
    s.add_request(0)
    now = 0.0
    plan = s.schedule()
    s.commit(plan, now, np.full(plan.max_steps, 0.01))   # the prefill: no decay
    steps = 0
    while steps < 650:
        plan = s.schedule()
        s.commit(plan, now, np.full(plan.max_steps, 0.01))
        steps += plan.max_steps
        expect = max(0.7 - steps * (0.7 - 0.098) / 600, 0.098)
        assert s.new_token_ratio == pytest.approx(expect)
    # retraction: two decoders outgrow the pool -> ratio = (decoded + 20 x left) / (max_new + 1)
    t = _table([5] * 6, [100] * 6)
    kv = PrefixCachingAllocator(300, 1)       # the ratio admits more than the pool can finish
    r = SglangScheduler(t, kv, max_num_seqs=8, max_num_batched_tokens=8192, max_model_len=120)
    for rid in range(6):
        r.add_request(rid)
    retracted = None
    for _ in range(5000):
        plan = r.schedule()
        if plan is None:
            break
        if plan.preempted_ids and retracted is None:
            retracted = plan.preempted_ids
            left = r.batch.ids
            expect = min(1.0, (int(r.batch.gen.sum()) + 20 * len(left)) / (int(t.max_new_tokens[left].sum()) + 1))
            assert r.new_token_ratio == pytest.approx(expect)
        r.commit(plan, 0.0, np.full(plan.max_steps, 0.01))
    assert retracted is not None and (t.generated == t.output_tokens).all()


def test_radix_cache_pages_evict_leaves_before_their_parents():
    """A freed sequence joins the LRU queue tail first, so its deepest pages go first and a cached
    prefix stays matchable: an independent trie walk gives the same hit counts."""
    kv = PrefixCachingAllocator(12, 1)
    a = list(block_names(PREFIX, 0, 0, 8))
    kv.allocate_cached(1, a, 0, 8, 8)
    kv.register(1, a, 8)
    kv.free(1)
    kv.allocate(2, 6, None, 6)                # takes 6 pages: 4 free ones, then 2 evicted from a
    assert kv.match_prefix(a) == 6            # the two leaves (pages 6, 7) went, the path 0..5 stays
    trie = set(a[:6])                         # the same by hand: the root path of length 6
    assert kv.match_prefix(a) == sum(1 for i, h in enumerate(a) if all(x in trie for x in a[:i + 1]))


# ---------------------------------------------------------------- block size in the cost
def test_block_size_term_is_stated_and_prefers_16_over_1_for_block_table_kernels():
    assert decode_attention_factor(16) == decode_attention_factor(128) == 1.0
    assert decode_attention_factor(1) == pytest.approx(1 + 0.25 * math.log2(16))
    assert decode_attention_factor(1, per_token_gather=True) == 1.0
    base = dict(workload__arrival={"process": "poisson", "rate": 30.0}, run__num_requests=60)
    eng = {"preset": "vllm-v1", "max_model_len": 512, "num_gpu_blocks": 400}
    sim16, r16 = _run(small_scenario(engine=eng, **base))
    sim1, r1 = _run(small_scenario(engine=dict(eng, block_size=1, num_gpu_blocks=6400), **base))
    assert sim16.cost.decode_attention_scale == 1.0 and sim1.cost.decode_attention_scale == 2.0
    assert r1.summary["latency_s"]["tpot"]["p50"] > r16.summary["latency_s"]["tpot"]["p50"]
