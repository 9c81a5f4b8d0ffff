"""Issue 15, LoRA: adapter memory, slots and loads, waits for an adapter, low-rank step cost, and the
throughput shape (many adapters over few slots cost throughput; one adapter costs only its GEMMs)."""

from __future__ import annotations

import numpy as np
import pytest

import simkv
from simkv.simulate import build_simulation as build
from simkv.errors import SimkvError
from simkv.features.lora import LoraWorkload, sample_adapters
from simkv.scenario import Scenario
from simkv.workload.stream import generate_stream

ADAPTER_BYTES_8B = 16 * 32 * 2 * ((4096 + 6144) + (4096 + 4096) + (4096 + 2 * 14336) + (14336 + 4096))  # rank 16, by hand


def _sc(adapters: int | None, max_loras: int = 4, preset: str = "vllm-v1", rate: float = 20, duration: float = 30,
        popularity: str = "uniform") -> Scenario:
    wl = {"arrival": {"process": "poisson", "rate": rate},
          "prompt_tokens": {"dist": "exponential", "mean": 1000, "max": 4000},
          "output_tokens": {"dist": "exponential", "mean": 300, "max": 2048},
          "max_new_tokens": {"policy": "cap", "tokens": 2048}}
    engine = {"preset": preset, "max_model_len": 8192}
    if adapters is not None:
        wl["lora"] = {"adapters": adapters, "popularity": popularity, "rank": 16}
        engine["lora"] = {"max_loras": max_loras, "max_lora_rank": 16}
    return Scenario(model="llama3-8b", hardware={"gpu": "h100"}, engine=engine, workload=wl,
                    run={"seed": 7, "duration_s": duration, "warmup_s": 10})


@pytest.fixture(scope="module")
def runs():
    return {name: simkv.simulate(sc).summary for name, sc in
            (("base", _sc(None)), ("one", _sc(1)), ("many", _sc(64)), ("tgi", _sc(64, preset="tgi")))}


def _tok(s) -> float:
    return s["throughput"]["output_tokens_per_s"]


def test_many_adapters_over_few_slots_wait_load_and_lose_throughput(runs):
    many, one = runs["many"]["lora"], runs["one"]["lora"]
    assert many["adapter_loads"] > 20 and many["requests_waited_for_adapter"] > 0 and many["adapter_wait_s_mean"] > 0
    assert many["mean_distinct_adapters_per_step"] <= 4
    assert _tok(runs["many"]) < 0.7 * _tok(runs["one"])
    assert one["adapter_loads"] == 1 and one["requests_waited_for_adapter"] == 0
    assert many["seconds_per_load"] == pytest.approx(ADAPTER_BYTES_8B / (55.23799693743447e9))


def test_one_adapter_is_the_base_model_plus_the_low_rank_cost(runs):
    assert _tok(runs["one"]) == pytest.approx(_tok(runs["base"]), rel=0.06)
    assert runs["one"]["latency_s"]["tpot"]["p50"] >= runs["base"]["latency_s"]["tpot"]["p50"]
    assert "not measured" in runs["one"]["setup"]["cost_sources"]["lora"]
    # memory: max_loras slots of rank-16 adapters, counted by hand
    w1, w0 = runs["one"]["setup"]["memory"]["weights_gib"], runs["base"]["setup"]["memory"]["weights_gib"]
    assert (w1 - w0) * 2 ** 30 == pytest.approx(4 * ADAPTER_BYTES_8B)


def test_lora_step_cost_is_the_groups_gemms_plus_overhead():
    sc = _sc(64)
    sim = build(sc, generate_stream(sc.workload, sc.run))
    cost, base = sim.cost, sim.cost.base
    from simkv.cost import plan_from_shape
    plan = plan_from_shape(0, 0, 8, 512)
    ad = cost.adapter_of[plan.decode_ids]
    gemm = lambda m, k, n: base._c_lin * base.lc.ops.gemm.time(m, k, n, "bfloat16")
    shapes = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
    want = 0.0
    for a in np.unique(ad):
        t = int((ad == a).sum())
        want += 32 * (sum(float(gemm(t, k, 16)) + float(gemm(t, 16, n)) for k, n in shapes) + 4e-6)
    assert cost.lora_seconds(plan) == pytest.approx(want, rel=1e-9)
    assert cost.seconds(plan) == pytest.approx(base.seconds(plan) + want, rel=1e-9)


def test_tgi_preloads_every_adapter(runs):
    t = runs["tgi"]["lora"]
    assert t["adapter_loads"] == 0 and t["requests_waited_for_adapter"] == 0 and t["hit_rate"] == 1.0
    assert t["gpu_slots"] == 64
    base_tgi = simkv.simulate(_sc(None, preset="tgi", duration=15)).summary["setup"]["memory"]["weights_gib"]
    assert (runs["tgi"]["setup"]["memory"]["weights_gib"] - base_tgi) * 2 ** 30 == pytest.approx(64 * ADAPTER_BYTES_8B)


def test_zipf_popularity_and_determinism():
    group = np.arange(20_000)
    w = LoraWorkload(adapters=8, popularity="zipf", zipf_s=1.0)
    ids = sample_adapters(w, group, seed=3)
    counts = np.bincount(ids, minlength=8) / len(ids)
    p = 1 / np.arange(1, 9)
    np.testing.assert_allclose(counts, p / p.sum(), atol=0.01)
    assert (sample_adapters(w, group, seed=3) == ids).all()
    # sequences of one request share its adapter
    g = np.repeat(np.arange(100), 3)
    ids = sample_adapters(LoraWorkload(adapters=50), g, seed=1)
    assert (ids.reshape(100, 3) == ids.reshape(100, 3)[:, :1]).all()


@pytest.mark.parametrize("change, field", [({"engine": None}, "engine.lora"), ({"rank": 64}, "engine.lora.max_lora_rank"),
                                           ({"cpu": 8}, "engine.lora.max_cpu_loras")])
def test_bad_lora_settings_are_errors(change, field):
    raw = _sc(16).model_dump(exclude_unset=True)
    if "engine" in change:
        raw["engine"]["lora"] = None
    if "rank" in change:
        raw["workload"]["lora"]["rank"] = 64
    if "cpu" in change:
        raw["engine"]["lora"]["max_cpu_loras"] = 8
    sc = Scenario.model_validate(raw)
    with pytest.raises(SimkvError) as err:
        build(sc, generate_stream(sc.workload, sc.run))
    assert err.value.field == field
