"""Analytic checks: a lone request's latencies equal the cost model's step times; the memory
arithmetic and the roofline agree with hand calculations."""

from __future__ import annotations

import numpy as np
import pytest

from simkv.catalog import builtin_gpus, builtin_models
from simkv.cost.roofline import RooflineCost
from simkv.kv.memory import plan_memory
from simkv.sched.base import StepPlan
from simkv import simulate
from simkv.simulate import make_cost

from conftest import small_scenario


@pytest.mark.parametrize("cost_name", ["calibrated", "roofline"])
def test_lone_request_latency_is_sum_of_step_times(cost_name):
    sc = small_scenario(run__num_requests=1, workload__prompt_tokens={"dist": "fixed", "value": 300},
                        workload__output_tokens={"dist": "fixed", "value": 40}, cost=cost_name)
    res = simulate(sc)
    cost, _ = make_cost(sc)
    p = np.array([300])
    prefill = cost.seconds(StepPlan(prefill_ids=np.array([0]), prefill_new=p, prefill_ctx=p))
    decodes = cost.decode_run_seconds(np.array([301]), 39)
    ttft = res.requests["ttft_s"][0]
    assert ttft == pytest.approx(prefill, rel=1e-12)
    assert res.requests["e2e_s"][0] == pytest.approx(prefill + decodes.sum(), rel=1e-12)
    assert res.requests["tpot_s"][0] == pytest.approx(decodes.mean(), rel=1e-12)
    assert res.requests["queue_s"][0] == 0.0
    assert res.summary["latency_s"]["tbt"]["max"] == pytest.approx(decodes.max())


def test_decode_at_batch_one_is_weight_bandwidth_bound():
    model, gpu = builtin_models()["llama3-8b"], builtin_gpus()["h100"]
    cost = RooflineCost(model, gpu)
    t = cost.decode_run_seconds(np.array([1]), 1)[0]
    # every weight but the input embedding (a row lookup) is read once
    read = model.num_params - model.vocab_size * model.hidden_size
    weights_s = read * 2 / gpu.achievable_bandwidth_bps
    assert 0.99 * weights_s < t < 1.05 * weights_s


def test_long_prefill_is_compute_bound():
    model, gpu = builtin_models()["llama3-8b"], builtin_gpus()["h100"]
    cost = RooflineCost(model, gpu)
    n = 8192
    t = cost.seconds(StepPlan(prefill_ids=np.array([0]), prefill_new=np.array([n]), prefill_ctx=np.array([n])))
    linear_flops = 2 * n * (model.num_params - 2 * model.vocab_size * model.hidden_size)
    attention_flops = model.num_layers * 4 * model.num_heads * model.head_dim * n * (n + 1) / 2
    compute_s = (linear_flops + attention_flops) / gpu.achievable_flops("bf16")
    assert compute_s < t < 1.15 * compute_s   # the rest: memory-bound elementwise kernels


def test_decode_cost_sums_ragged_contexts():
    cost = RooflineCost(builtin_models()["llama3-8b"], builtin_gpus()["h100"])
    ragged = cost.decode_run_seconds(np.array([100, 7000]), 1)[0]
    even = cost.decode_run_seconds(np.array([3550, 3550]), 1)[0]
    assert ragged == pytest.approx(even)          # attention reads the sum of the contexts
    more = cost.decode_run_seconds(np.array([100, 8000]), 1)[0]
    assert more > ragged


def test_tensor_parallel_shards_weights_and_kv():
    m = builtin_models()["llama3-70b"]
    assert m.kv_bytes_per_token("bf16", 1) == 2 * 80 * 8 * 128 * 2
    assert m.kv_bytes_per_token("bf16", 4) == 2 * 80 * 2 * 128 * 2
    assert m.kv_bytes_per_token("bf16", 16) == 2 * 80 * 1 * 128 * 2   # kv heads replicated past 8
    assert m.weight_bytes_per_gpu("bf16", 4) == m.num_params * 2 / 4


def test_capacity_arithmetic():
    m, g = builtin_models()["llama3-8b"], builtin_gpus()["h100"]
    plan = plan_memory(m, g, tensor_parallel=1, gpu_memory_utilization=0.9, weight_dtype="bf16", kv_dtype="bf16",
                       block_size=16, max_num_batched_tokens=8192, max_num_seqs=256, activation_reserve_gib=1.0,
                       num_gpu_blocks=None)
    expected = (g.memory_gib * 0.9 - m.num_params * 2 / 2**30 - 1.0) * 2**30 / (131072 * 16)
    assert plan.num_blocks == int(expected)
    override = plan_memory(m, g, tensor_parallel=1, gpu_memory_utilization=0.9, weight_dtype="bf16", kv_dtype="bf16",
                           block_size=16, max_num_batched_tokens=8192, max_num_seqs=256, activation_reserve_gib=None,
                           num_gpu_blocks=1234)
    assert override.capacity_tokens == 1234 * 16


def test_llama3_8b_h100_capacity_matches_what_vllm_reports():
    """vLLM logs about 27-28k blocks of 16 for Llama-3-8B at 0.9 on an H100 80GB."""
    sc = small_scenario(engine={"max_model_len": 8192})
    res = simulate(sc.model_copy(update={"run": sc.run.model_copy(update={"num_requests": 1})}))
    blocks = res.summary["setup"]["memory"]["num_blocks"]
    assert 26_000 < blocks < 29_500
