"""Presets carry the named engines' real defaults (docs/engines.md cites engine version and file
for each), and the policies they name behave as those engines do."""

from __future__ import annotations

import numpy as np
import pytest

from simkv.build import resolve_engine
from simkv.simulate import build_simulation
from simkv.kv.buddy import BuddyAllocator
from simkv.kv.contiguous import ContiguousAllocator
from simkv.kv.paged import PagedAllocator
from simkv.kv.prefix_cache import PrefixCachingAllocator
from simkv.kv.reservation import reservation_tokens
from simkv.request import RequestTable
from simkv.sched.prefill_first import PrefillFirstScheduler
from simkv.sched.tgi import TgiScheduler
from simkv.simulate import run_simulation
from simkv.workload.stream import generate_stream

from conftest import small_scenario

FIELDS = ("scheduler", "allocator", "block_size", "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens",
          "watermark", "preemption", "swap_space_gib", "prefix_caching", "reserve_upfront", "prefill_chunking",
          "max_batch_prefill_tokens", "waiting_served_ratio", "max_waiting_tokens", "max_concurrent_requests",
          "reservation", "placement")


def _resolved(preset, gpu, model="llama3-8b", max_model_len=None):
    engine = {"preset": preset} if max_model_len is None else {"preset": preset, "max_model_len": max_model_len}
    sc = small_scenario(engine=engine, hardware={"gpu": gpu, "tensor_parallel": 1}, model=model)
    e = resolve_engine(sc)
    return {f: getattr(e, f) for f in FIELDS}


BASE = dict(gpu_memory_utilization=0.9, max_num_batched_tokens=None, watermark=0.0, preemption="recompute",
            swap_space_gib=4.0, prefix_caching=False, reserve_upfront=False, prefill_chunking=False,
            max_batch_prefill_tokens=4096, waiting_served_ratio=0.3, max_waiting_tokens=20,
            max_concurrent_requests=128, reservation="max_model_len", placement="first_fit", block_size=16,
            max_num_seqs=256, allocator="paged")


def _expect(**over):
    return dict(BASE, **over)


# Llama-3-8B (8192-token context). H100 80 GB: >= 70 GiB and not an A100; A100-40: neither.
EXPECTED = {
    ("vllm-v1", "h100"): _expect(scheduler="chunked", max_num_batched_tokens=8192, max_num_seqs=1024,
                                 prefix_caching=True),
    ("vllm-v1", "a100-40gb"): _expect(scheduler="chunked", max_num_batched_tokens=2048, max_num_seqs=256,
                                      prefix_caching=True),
    ("vllm-v1", "a100-80gb"): _expect(scheduler="chunked", max_num_batched_tokens=2048, max_num_seqs=256,
                                      prefix_caching=True),   # 80 GB but an A100 (vLLM PR #17885)
    ("vllm-v1", "h200"): _expect(scheduler="chunked", max_num_batched_tokens=8192, max_num_seqs=1024,
                                 prefix_caching=True),
    ("vllm-v0", "h100"): _expect(scheduler="prefill-first", watermark=0.01, preemption="auto"),
    ("vllm-v0", "a100-40gb"): _expect(scheduler="prefill-first", watermark=0.01, preemption="auto"),
    # TGI: compute-optimal 900e12 / 14.0e9 flop per token >> 8192 -> capped at max_position_embeddings
    ("tgi", "h100"): _expect(scheduler="tgi", reserve_upfront=True, prefix_caching=True, prefill_chunking=True,
                             max_batch_prefill_tokens=8192, max_num_seqs=1024),
    ("tgi", "a100-40gb"): _expect(scheduler="tgi", reserve_upfront=True, prefix_caching=True, prefill_chunking=True,
                                  max_batch_prefill_tokens=8192, max_num_seqs=1024),
    ("orca-max", "h100"): _expect(scheduler="fcfs", allocator="contiguous", placement="buddy",
                                  max_num_batched_tokens=256 * 8192),
    ("orca-pow2", "a100-40gb"): _expect(scheduler="fcfs", allocator="contiguous", placement="buddy", reservation="pow2",
                                        max_num_batched_tokens=256 * 8192),
    ("orca-oracle", "h100"): _expect(scheduler="fcfs", allocator="contiguous", placement="buddy",
                                     reservation="oracle", max_num_batched_tokens=256 * 8192),
    ("sarathi-serve", "h100"): _expect(scheduler="chunked", max_num_batched_tokens=512, max_num_seqs=128,
                                       watermark=0.01, gpu_memory_utilization=0.8),
    ("fastertransformer", "h100"): _expect(scheduler="static", allocator="contiguous", max_num_batched_tokens=65536),
    ("simkv", "h100"): _expect(scheduler="fcfs"),
}


@pytest.mark.parametrize("preset,gpu", sorted(EXPECTED))
def test_every_preset_default_is_pinned(preset, gpu):
    assert _resolved(preset, gpu) == EXPECTED[(preset, gpu)]


def test_vllm_v1_batch_defaults_follow_the_gpu_and_respect_user_values():
    # max_num_batched_tokens <= max_num_seqs x max_model_len (arg_utils) and scenario values win
    sc = small_scenario(engine={"preset": "vllm-v1", "max_num_seqs": 2, "max_model_len": 1024},
                        hardware={"gpu": "h100", "tensor_parallel": 1}, model="llama3-8b")
    e = resolve_engine(sc)
    assert (e.max_num_seqs, e.max_num_batched_tokens) == (2, 2048)
    sc = small_scenario(engine={"preset": "vllm-v1", "max_num_batched_tokens": 4096},
                        hardware={"gpu": "a100-40gb", "tensor_parallel": 1}, model="llama3-8b")
    e = resolve_engine(sc)
    assert (e.max_num_seqs, e.max_num_batched_tokens) == (256, 4096)


def test_tgi_prefill_budget_from_card_flops_on_a_small_context_model():
    """Independent arithmetic of TGI's launcher (Config::flop, f16_flop): an unknown card gets
    4096, capped by max_position_embeddings."""
    from simkv.presets import Target, tgi_max_batch_prefill_tokens
    sc = small_scenario(model="llama3-8b")
    m = sc.model_spec()
    flop = (2 * m.head_dim * m.hidden_size * (4 * m.num_heads + 2 * m.num_kv_heads)
            + 6 * m.hidden_size * m.intermediate_size) * m.num_layers
    assert 900e12 / flop > m.max_position_embeddings          # H100: compute-optimal above the context
    h100 = Target(sc.gpu_spec(), "h100", m, 1)
    assert tgi_max_batch_prefill_tokens(h100) == m.max_position_embeddings
    odd = Target(sc.gpu_spec().model_copy(update={"description": "some card"}), "mycard", m, 1)
    assert tgi_max_batch_prefill_tokens(odd) == 4096


# ---------------------------------------------------------------- TGI chunking and prefix caching
def _table(prompts, outputs, max_new=None, prefix_id=None, prefix_tokens=None):
    n = len(prompts)
    outputs = np.array(outputs, dtype=np.int64)
    max_new = outputs * 2 if max_new is None else np.array(max_new, dtype=np.int64)
    return RequestTable(np.zeros(n), np.array(prompts, dtype=np.int64), outputs, max_new, np.zeros(n, dtype=np.int8),
                        None if prefix_id is None else np.array(prefix_id, dtype=np.int64),
                        None if prefix_tokens is None else np.array(prefix_tokens, dtype=np.int64))


def _step(s, now=0.0, dt=0.01):
    plan = s.schedule()
    out = s.commit(plan, now, np.full(plan.max_steps, dt))
    return plan, out


def test_tgi_chunks_a_prompt_longer_than_the_prefill_budget_and_mixes_decodes():
    t = _table([40, 250], [30, 5], max_new=[30, 5])
    kv = PagedAllocator(100, 16, reserve_upfront=True)
    s = TgiScheduler(t, kv, max_batch_prefill_tokens=100, chunking=True)
    s.add_request(0)
    _step(s)                                               # request 0 prefilled whole
    s.add_request(1)
    plan, _ = _step(s, 0.01)
    assert plan.decode_ids.tolist() == [0]                 # decodes run in the same step ...
    assert plan.prefill_ids.tolist() == [1] and plan.prefill_new.tolist() == [99]   # ... 100 - 1 decode
    assert not plan.prefill_done[0]
    assert kv.num_blocks_of(1) == kv.blocks_for(250 + 5 - 1)   # reserved whole at admission
    plan, _ = _step(s, 0.02)
    assert plan.prefill_new.tolist() == [99] and plan.prefill_ctx.tolist() == [198]
    plan, _ = _step(s, 0.03)
    assert plan.prefill_new.tolist() == [52] and plan.prefill_done.tolist() == [True]
    now = 0.04
    while s.has_work():
        plan, _ = _step(s, now)
        now += 0.01 * plan.max_steps
    assert (t.generated == t.output_tokens).all() and not kv.owners()


def test_tgi_preset_runs_prompts_over_the_budget_instead_of_rejecting_them():
    sc = small_scenario(engine={"preset": "tgi", "max_model_len": 512, "num_gpu_blocks": 400,
                                "max_batch_prefill_tokens": 128, "max_concurrent_requests": 1000},
                        workload__prompt_tokens={"dist": "uniform", "low": 150, "high": 400})
    sim = build_simulation(sc, generate_stream(sc.workload, sc.run))
    res = run_simulation(sim, "base")
    assert res.summary["requests"]["rejected"] == 0
    assert res.summary["requests"]["completed"] == sim.table.num_requests
    # without chunking the router could not take them (reject reason 4)
    sc = small_scenario(engine={"preset": "tgi", "max_model_len": 512, "num_gpu_blocks": 400,
                                "max_batch_prefill_tokens": 128, "max_concurrent_requests": 1000,
                                "prefill_chunking": False},
                        workload__prompt_tokens={"dist": "uniform", "low": 150, "high": 400})
    res = run_simulation(build_simulation(sc, generate_stream(sc.workload, sc.run)), "base")
    assert res.summary["requests"]["rejected"] == res.summary["requests"]["total"]


def test_tgi_prefix_cache_reuses_cached_prompt_blocks_and_reserves_the_rest():
    t = _table([100, 90], [5, 5], max_new=[10, 10], prefix_id=[7, 7], prefix_tokens=[64, 64])
    kv = PrefixCachingAllocator(40, 16)
    kv.reserve_upfront = True
    s = TgiScheduler(t, kv, max_batch_prefill_tokens=512, chunking=True, prefix_caching=True)
    s.add_request(0)
    plan, _ = _step(s)
    assert plan.prefill_new.tolist() == [100]
    s.add_request(1)
    plan, _ = _step(s, 0.01)
    assert plan.prefill_ids.tolist() == [1] and plan.prefill_new.tolist() == [26] and plan.prefill_ctx.tolist() == [90]
    assert t.prefix_hit_tokens.tolist() == [0, 64]
    assert kv.num_blocks_of(1) == kv.blocks_for(90 + 10 - 1)      # 4 shared + the rest reserved
    assert kv.shared_excess == 4
    out = s.commit(s.schedule(), 0.02, np.full(1, 0.01))  # one step, nobody finishes: the step's
    u = kv.usage()                                        # breakdown agrees with the allocator's
    assert out.kv[:, -1].tolist() == [u.token_tokens, u.reserved_tokens, u.internal_frag_tokens,
                                      u.external_frag_tokens, u.free_tokens]


def test_tgi_preset_memory_breakdown_holds_its_reservations():
    sc = small_scenario(engine={"preset": "tgi", "max_model_len": 512, "num_gpu_blocks": 200,
                                "max_concurrent_requests": 1000},
                        workload__shared_prefix={"fraction": 0.7, "tokens": 96, "num_prefixes": 2})
    frac = run_simulation(build_simulation(sc, generate_stream(sc.workload, sc.run)), "base").summary["kv_cache"]["mean_fraction"]
    assert min(frac.values()) >= 0 and frac["reserved"] > 0.05 and frac["free"] < 0.95


def test_tgi_batch_size_counts_decoders_paused_by_a_prefill():
    t = _table([10, 10, 10, 10], [50, 50, 50, 50], max_new=[50] * 4)
    s = TgiScheduler(t, PagedAllocator(100, 16, reserve_upfront=True), max_batch_prefill_tokens=20,
                     waiting_served_ratio=0.0)
    for rid in range(4):
        s.add_request(rid)
    plan, out = _step(s)
    assert plan.prefill_ids.tolist() == [0, 1] and out.num_running == 2
    plan, out = _step(s, 0.01)                     # prefill of 2 and 3; 0 and 1 paused but in the batch
    assert plan.prefill_ids.tolist() == [2, 3] and not len(plan.decode_ids)
    assert out.num_running == 4


# ---------------------------------------------------------------- vLLM V0 preemption mode
def test_vllm_v0_recomputes_single_sequence_requests_and_swaps_groups():
    t = _table([16, 16, 16], [40, 40, 40])
    kv = PagedAllocator(5, 16)
    s = PrefillFirstScheduler(t, kv, max_num_seqs=8, max_num_batched_tokens=100, max_model_len=100,
                              preemption="auto", swap_capacity_tokens=1000)
    for rid in range(3):
        s.add_request(rid)
    _step(s)
    plan, _ = _step(s, 0.01)
    assert plan.preempted_ids == (2,) and plan.swap_out_tokens == 0 and list(s.waiting) == [2]
    # the same with requests 1 and 2 two sequences of one request (n = 2): swapped
    t = _table([16, 16, 16], [40, 40, 40])
    t.group = np.array([0, 1, 1])
    s = PrefillFirstScheduler(t, PagedAllocator(5, 16), max_num_seqs=8, max_num_batched_tokens=100,
                              max_model_len=100, preemption="auto", swap_capacity_tokens=1000)
    for rid in range(3):
        s.add_request(rid)
    _step(s)
    plan, _ = _step(s, 0.01)
    assert plan.preempted_ids == (2,) and plan.swap_out_tokens == 16 and len(s.swapped) == 1


# ---------------------------------------------------------------- Orca reservations
def test_orca_reservation_sizes():
    kw = dict(prompt_tokens=100, final_tokens=300, max_new_tokens=500, max_model_len=2048)
    assert reservation_tokens("oracle", **kw) == 300
    # Pow2 (PagedAttention §6.1): the prompt + the output rounded up to a power of two (201 -> 256)
    assert reservation_tokens("pow2", **kw) == 100 + 256 - 1
    assert reservation_tokens("pow2", **{**kw, "final_tokens": 1100, "max_model_len": 1100}) == 1100   # capped
    assert reservation_tokens("max_model_len", **kw) == 2048
    assert reservation_tokens("prompt_plus_max_new", **kw) == 599
    first_fit, buddy = ContiguousAllocator(4096), BuddyAllocator(4096)
    first_fit.allocate(0, 100, 300, 300)
    buddy.allocate(0, 100, 512, 300)
    assert first_fit.held_tokens(0) == 300 and first_fit.num_free_tokens == 4096 - 300   # exact
    assert buddy.num_free_tokens == 4096 - 512


def test_orca_mean_batch_oracle_over_pow2_over_max_on_sharegpt_lengths():
    """vLLM paper Fig. 2 / §2.3: the tighter the reservation, the more requests run at once.
    Lengths resampled from the shipped ShareGPT length table (Llama-2 tokens, 8k context)."""
    from simkv.files.traces import trace_for
    means = {}
    for preset in ("orca-oracle", "orca-pow2", "orca-max"):
        sc = small_scenario(engine={"preset": preset, "max_model_len": 8192, "num_gpu_blocks": 4096},
                            model="llama3-8b", workload={"trace": {"name": "lengths_sharegpt_8k_llama2"},
                                                         "arrival": {"process": "poisson", "rate": 20.0}},
                            run__num_requests=300)
        stream = generate_stream(sc.workload, sc.run, trace_for(sc.workload.trace))
        res = run_simulation(build_simulation(sc, stream), "base")
        means[preset] = res.summary["batch"]["mean_running"]
    # every Orca region is a buddy block: Pow2's rounded-up outputs cost it ~7% of Oracle's batch here
    # (long ShareGPT prompts), and Max holds a whole context per request
    assert means["orca-oracle"] > 1.04 * means["orca-pow2"] > 1.5 * means["orca-max"], means
