"""Issue 15, modern models: MoE (architecture, memory, measured expert GEMMs, expert parallelism,
routing skew) and int4 weights, each checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest

from simkv.simulate import build_simulation as build
from simkv.catalog import builtin_gpus, builtin_models
from simkv.cost import cost_model, plan_from_shape
from simkv.errors import SimkvError
from simkv.kv.memory import plan_memory
from simkv.scenario import Scenario
from simkv.specs import GIB
from simkv.workload.stream import generate_stream

MOE = ["mixtral-8x7b", "llama4-scout", "llama4-maverick", "qwen3-30b-a3b"]
NEW = MOE + ["llama3.2-1b"]


def _bw(gpu: str) -> float:
    return builtin_gpus()[gpu].measured.copy_gbps * 1e9


def _mixtral_weight_bytes(active: bool) -> float:
    """Mixtral's bf16 weights counted by hand from its config.json (independent of specs.py)."""
    h, layers, experts = 4096, 32, (2 if active else 8)
    attention = h * 4096 * 2 + h * 1024 * 2
    expert = 3 * h * 14336
    return 2.0 * (layers * (attention + experts * expert) + 2 * 32000 * h)


@pytest.mark.parametrize("name", NEW)
def test_new_catalog_models_name_their_source(name):
    m = builtin_models()[name]
    assert "config.json" in m.source and ("model card" in m.source or "safetensors" in m.source)


@pytest.mark.parametrize("name", MOE + ["llama3.2-1b", "llama3-8b", "llama3-70b"])
def test_weights_gib_matches_parameter_count_times_bytes(name):
    """The architecture count (attention + every expert + router + embeddings) is within 2% of the
    card's parameter count, and the memory plan's weights are that count x 2 bytes."""
    m = builtin_models()[name]
    assert abs(m.architecture_params() / m.num_params - 1) < 0.02
    mem = plan_memory(m, builtin_gpus()["h200"], tensor_parallel=8, gpu_memory_utilization=0.9, weight_dtype="bf16",
                      kv_dtype="bf16", block_size=16, max_num_batched_tokens=8192, max_num_seqs=256,
                      activation_reserve_gib=1.0, num_gpu_blocks=None)
    assert mem.describe()["weights_gib"] == pytest.approx(m.architecture_params() * 2 / 8 / GIB, rel=0.02)


def test_mixtral_counts_match_the_hand_count():
    m = builtin_models()["mixtral-8x7b"]
    assert m.architecture_params() * 2 == pytest.approx(_mixtral_weight_bytes(False), rel=1e-3)
    assert m.architecture_params(active_only=True) * 2 == pytest.approx(_mixtral_weight_bytes(True), rel=1e-3)
    assert builtin_models()["llama4-maverick"].num_moe_layers == 24  # interleaved dense / MoE


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_mixtral_batch1_reads_active_experts_large_batch_reads_all(gpu):
    tp = 1 if gpu == "h200" else 2  # 87 GiB of bf16 weights need two H100s
    cost, label = cost_model(gpu, "mixtral-8x7b", tensor_parallel=tp)
    assert label.startswith("calibrated")
    active, full = _mixtral_weight_bytes(True) / _bw(gpu) / tp, _mixtral_weight_bytes(False) / _bw(gpu) / tp
    t1 = cost.seconds(plan_from_shape(0, 0, 1, 512))
    t64 = cost.seconds(plan_from_shape(0, 0, 64, 512))
    # plus fixed per-layer costs (router, the fitted layer constant, all-reduces) that do not shrink with tp
    assert 1.0 * active < t1 < (1.6 if tp == 1 else 2.0) * active, (t1, active)
    # the two TP all-reduces per layer (Vidur's measured NCCL latency, ~17 us each at TP 2) are
    # communication, not weight reads: without them a batch-1 step reads well under half the experts
    ar = 2 * cost.layers * cost.allreduce.seconds(4096 * 2, tp) if cost.allreduce is not None else 0.0
    assert t1 - ar < 0.5 * full, (t1, ar, full)
    assert 0.95 * full < t64 < 1.35 * full, (t64, full)
    # the experts alone: measured grouped GEMMs within 20% of reading 2 (batch 1) / all 8 experts
    layer_experts = lambda b: float(cost.moe.experts(np.array([b]))[0]) * 32
    h = 4096 * 14336 * 3 * 2 / tp
    assert layer_experts(1) == pytest.approx(2 * h * 32 / _bw(gpu), rel=0.2)
    assert layer_experts(64) == pytest.approx(8 * h * 32 / _bw(gpu), rel=0.2)


def test_measured_moe_shape_is_the_table_and_labelled_measured():
    cost, _ = cost_model("h100", "qwen3-30b-a3b")
    tokens = np.array([1.0, 48.0, 4096.0])
    # moe_gemm.csv rows, qwen3-30b-a3b, h100 (ms): gate_up + down at 1, 48 and 4096 tokens
    from simkv.files.calibration import load_moe_gemm
    cols = load_moe_gemm("h100")
    want = []
    for t in tokens:
        sel = (cols["model"] == "qwen3-30b-a3b") & (cols["tokens"] == t) & np.isin(cols["op"], ["expert_gate_up", "expert_down"])
        want.append(cols["s"][sel].sum())
    np.testing.assert_allclose(cost.moe.experts(tokens), want, rtol=1e-9)
    assert cost.sources()["moe_experts"].startswith("measured")
    maverick, _ = cost_model("h200", "llama4-maverick", tensor_parallel=8)
    assert "not measured" in maverick.sources()["moe_experts"]


def test_expert_parallel_and_skew():
    tp = 2
    tpc, _ = cost_model("h100", "mixtral-8x7b", tensor_parallel=tp)
    ep = _cost(engine={"expert_parallel": True}, tp=tp)
    skew = _cost(engine={"expert_parallel": True, "expert_load_imbalance": 2.0}, tp=tp)
    big = plan_from_shape(1, 8192, 0, 0)  # compute-bound experts: the busiest one sets the pace
    assert skew.seconds(big) > ep.seconds(big) * 1.3
    dec = plan_from_shape(0, 0, 256, 512)  # weight-read-bound experts: skew costs little
    assert skew.seconds(dec) < ep.seconds(dec) * 1.1
    assert "all-to-all" not in tpc.sources()["moe_all_to_all"] and "NVLink" in ep.sources()["moe_all_to_all"]
    # a2a bytes: dispatch + combine of 256/2 tokens x 2 experts x 1/2 remote x 4096 x 2 bytes
    assert float(ep.moe.all_to_all_bytes(256)) == 2 * 128 * 2 * 0.5 * 4096 * 2
    one = plan_from_shape(0, 0, 1, 512)
    assert skew.seconds(one) == pytest.approx(ep.seconds(one))  # one token: nothing to skew


def _scenario(model="mixtral-8x7b", gpu="h100", tp=2, engine=None, cost="calibrated") -> Scenario:
    return Scenario(model=model, hardware={"gpu": gpu, "tensor_parallel": tp}, cost=cost,
                    engine={"max_model_len": 4096, **(engine or {})},
                    workload={"arrival": {"process": "poisson", "rate": 5},
                              "prompt_tokens": {"dist": "fixed", "value": 100}, "output_tokens": {"dist": "fixed", "value": 20}},
                    run={"num_requests": 20})


def _cost(engine=None, tp=2, **kw):
    from simkv.simulate import make_cost
    return make_cost(_scenario(engine=engine, tp=tp, **kw))[0]


def _sim(**kw):
    s = _scenario(**kw)
    return build(s, generate_stream(s.workload, s.run))


@pytest.mark.parametrize("bad, field", [({"expert_parallel": True}, "engine.expert_parallel")])
def test_bad_moe_options_are_errors(bad, field):
    with pytest.raises(SimkvError) as err:
        _sim(model="llama3-8b", tp=1, engine=bad)
    assert err.value.field == field
    with pytest.raises(SimkvError):
        _sim(tp=1, gpu="h200", engine={"expert_parallel": True})


def test_int4_quarter_weights_more_kv_and_labelled():
    bf16 = _sim(model="llama3-70b", tp=2, engine={"weight_dtype": "bf16"})
    int4 = _sim(model="llama3-70b", tp=2, engine={"weight_dtype": "int4"})
    m = builtin_models()["llama3-70b"]
    emb = 2 * 128256 * 8192
    # 4 bits + one fp16 scale and one 4-bit zero per 128 weights; embeddings / lm_head bf16
    want = ((m.num_params - emb) * (0.5 + 2.5 / 128) + emb * 2) / 2
    assert int4.memory.weight_bytes == pytest.approx(want)
    assert 0.25 < int4.memory.weight_bytes / bf16.memory.weight_bytes < 0.30
    assert int4.memory.capacity_tokens > 2 * bf16.memory.capacity_tokens
    assert "not measured" in int4.cost.sources()["int4_weights"]
    assert bf16.cost.sources()["int4_weights"].startswith("n/a")
    # a batch-1 decode reads ~a quarter of the bytes: much faster; a big prefill is compute-bound: the same
    one, big = plan_from_shape(0, 0, 1, 512), plan_from_shape(1, 8192, 0, 0)
    assert int4.cost.seconds(one) < 0.6 * bf16.cost.seconds(one)
    assert int4.cost.seconds(big) == pytest.approx(bf16.cost.seconds(big), rel=0.05)


def test_int4_moe_and_roofline_paths():
    c = _cost(engine={"weight_dtype": "int4"}, tp=1, gpu="h100")
    assert "not measured" in c.sources()["moe_experts"] and "int4" in c.sources()["moe_experts"]
    r = _cost(engine={"weight_dtype": "int4"}, tp=2, cost="roofline")
    b = _cost(engine={"weight_dtype": "bf16"}, tp=2, cost="roofline")
    one = plan_from_shape(0, 0, 1, 512)
    assert r.seconds(one) < 0.5 * b.seconds(one)
    assert "not measured" in r.sources()["int4_weights"]


# ---------------------------------------------------------------- shipped scenarios (docs/modern-models.md)
import simkv  # noqa: E402
from conftest import ROOT  # noqa: E402
from simkv.errors import ScenarioDoesNotFit  # noqa: E402


def test_scout_awq_scenario_answer():
    sc = simkv.load_scenario(ROOT / "scenarios" / "models" / "llama4-scout-awq-h100.yaml",
                             [])
    res = {n: r.summary for n, r in simkv.simulate_all(sc).items()}
    tok = {n: s["throughput"]["output_tokens_per_s"] for n, s in res.items()}
    assert 1.1 * tok["bf16-tp4"] < tok["int4-tp4"] < 1.5 * tok["bf16-tp4"]   # the article: +30%
    assert tok["int4-tp1"] < 0.5 * tok["bf16-tp4"]                            # one H100: far below 5,200 tok/s
    assert "not measured" in res["int4-tp4"]["setup"]["cost_sources"]["int4_weights"]
    assert res["int4-tp1"]["setup"]["memory"]["weights_gib"] < 0.3 * 4 * res["bf16-tp4"]["setup"]["memory"]["weights_gib"]


@pytest.mark.parametrize("dtype", ["fp8", "int4"])
def test_maverick_does_not_fit_one_h100(dtype):
    sc = simkv.load_scenario(ROOT / "scenarios" / "models" / "llama4-maverick-h100.yaml",
                             ["hardware.tensor_parallel=1", f"engine.weight_dtype={dtype}", "engine.expert_parallel=false"])
    with pytest.raises(ScenarioDoesNotFit):
        simkv.simulate(sc)
