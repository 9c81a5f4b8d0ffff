"""Issue 15, speculative decoding: acceptance sampling against its closed form, verification cost,
KV slots for the proposals, engine differences, and the load shape (gains at low load, less at
saturation, pure cost at acceptance 0)."""

from __future__ import annotations

import numpy as np
import pytest

import simkv
from simkv.cost import cost_model, plan_from_shape
from simkv.errors import SimkvError
from simkv.scenario import Scenario
from simkv.features.speculative import Speculative

from conftest import ROOT, small_scenario


def _chat(rate: float, spec: dict | None, preset: str = "vllm-v1", duration: float = 40, **engine) -> Scenario:
    return Scenario(model="llama3-8b", hardware={"gpu": "h100"},
                    engine={"preset": preset, "max_model_len": 8192, **({"speculative": spec} if spec else {}), **engine},
                    workload={"arrival": {"process": "poisson", "rate": rate},
                              "prompt_tokens": {"dist": "exponential", "mean": 1000, "max": 4000},
                              "output_tokens": {"dist": "exponential", "mean": 300, "max": 2048},
                              "max_new_tokens": {"policy": "cap", "tokens": 2048}},
                    run={"seed": 7, "duration_s": duration, "warmup_s": 10})


def _tpot(summary) -> float:
    return summary["latency_s"]["tpot"]["p50"]


def ngram(rate: float) -> dict:
    return {"method": "ngram", "num_tokens": 4, "acceptance_rate": rate}


@pytest.mark.parametrize("a, k", [(0.0, 4), (0.5, 3), (0.7, 4), (0.9, 6), (1.0, 2)])
def test_acceptance_distribution_matches_closed_form(a, k):
    s = Speculative(method="ngram", num_tokens=k, acceptance_rate=a)
    closed = k + 1 if a == 1 else (1 - a ** (k + 1)) / (1 - a)   # E[accepted + 1], geometric series
    assert s.expected_tokens() == pytest.approx(closed)
    draws = s.sample_accepted(np.random.default_rng(1), 40_000)
    assert draws.mean() + 1 == pytest.approx(closed, rel=0.02)


def test_bad_speculative_settings_are_errors():
    with pytest.raises(ValueError):
        Speculative(method="ngram", num_tokens=2, acceptance=[0.5, 0.5])
    with pytest.raises(ValueError):
        Speculative(method="draft", num_tokens=2, acceptance_rate=0.5)
    with pytest.raises(SimkvError) as err:
        simkv.simulate(_chat(1, {"method": "draft", "num_tokens": 4, "acceptance_rate": 0.7, "draft_model": "llama3.2-1b"},
                             preset="tgi", duration=20))
    assert err.value.field == "engine.speculative.method"
    with pytest.raises(SimkvError) as err:   # a draft with another tokenizer
        simkv.simulate(_chat(1, {"method": "draft", "num_tokens": 4, "acceptance_rate": 0.7, "draft_model": "llama2-7b"},
                             duration=20))
    assert err.value.field == "engine.speculative.draft_model"


def test_verification_costs_k_plus_one_tokens():
    cost, _ = cost_model("h100", "llama3-8b")
    one, five = plan_from_shape(0, 0, 64, 1024), plan_from_shape(0, 0, 64, 1024, tokens_per_seq=5)
    assert five.num_batched_tokens == 320 and five.num_sampled == 320
    # GEMMs over 320 rows and lm_head over 320 rows instead of 64: the same as a 320-sequence decode's
    # linear part, attention as the 64 sequences'
    wide = plan_from_shape(0, 0, 320, 1024)
    att = lambda n: cost.c_att * cost.decode_attention_s(np.full(n, 1024))
    want = cost.seconds(wide) - cost.layers * (att(320) - att(64))
    assert cost.seconds(five) == pytest.approx(want, rel=1e-9)
    assert cost.seconds(one) < cost.seconds(five) < 5 * cost.seconds(one)


def test_low_load_tpot_falls_with_acceptance_and_zero_only_costs():
    res = {a: simkv.simulate(_chat(2, ngram(a) if a is not None else None)).summary for a in (None, 0.0, 0.5, 0.9)}
    assert _tpot(res[0.9]) < _tpot(res[0.5]) < _tpot(res[None]) <= _tpot(res[0.0])
    spec = res[0.9]["speculative"]
    assert spec["tokens_per_sequence_step"] == pytest.approx(spec["expected_tokens_per_step"], rel=0.05)
    assert res[0.0]["speculative"]["accepted_tokens"] == 0
    assert "speculative" not in res[None]
    assert "not measured" in res[0.9]["setup"]["cost_sources"]["speculative_verify"]
    # the same seed, the same accepted tokens
    again = simkv.simulate(_chat(2, ngram(0.9))).summary["speculative"]
    assert again == spec


def test_gain_shrinks_at_saturation():
    low = {v: _tpot(simkv.simulate(_chat(2, s)).summary) for v, s in (("off", None), ("on", ngram(0.7)))}
    # far above capacity: both run full batches (max_num_seqs), where verification is compute-bound
    high = {v: _tpot(simkv.simulate(_chat(40, s, duration=30)).summary) for v, s in (("off", None), ("on", ngram(0.7)))}
    gain = lambda r: 1 - r["on"] / r["off"]
    assert gain(low) > 0.5
    assert gain(high) < gain(low) - 0.15


def test_disable_above_batch_and_short_pools():
    s = simkv.simulate(_chat(8, {**ngram(0.7), "disable_above_batch": 4}, duration=30)).summary["speculative"]
    assert s["steps_without_speculation"] > 0 and s["speculative_steps"] > 0
    # a tiny paged pool: fewer proposals when the blocks for k + 1 slots are not free, never a crash
    sc = small_scenario(engine__speculative=ngram(0.7), engine__preset="vllm-v1")
    out = simkv.simulate(sc).summary
    assert out["speculative"]["steps_with_fewer_proposals"] + out["speculative"]["steps_without_speculation"] > 0
    assert out["requests"]["completed"] > 0


def test_reserved_caches_hold_the_speculative_slots():
    from simkv.simulate import build_simulation as build
    from simkv.workload.stream import generate_stream
    sc = _chat(2, ngram(0.7), preset="tgi", duration=20)
    plain = _chat(2, None, preset="tgi", duration=20)
    stream = generate_stream(sc.workload, sc.run)
    a, b = build(sc, stream), build(plain, stream)
    assert (a.table.max_new_tokens == np.minimum(b.table.max_new_tokens + 4, 8192 - a.table.prompt_tokens)).all()
    assert simkv.simulate(sc).summary["speculative"]["speculative_steps"] > 0


def test_draft_model_memory_and_cost():
    on = _chat(2, {"method": "draft", "num_tokens": 4, "acceptance_rate": 0.7, "draft_model": "llama3.2-1b"}, duration=30)
    r, base = simkv.simulate(on).summary, simkv.simulate(_chat(2, None, duration=30)).summary
    mem, mem0 = r["setup"]["memory"], base["setup"]["memory"]
    draft = simkv.catalog.builtin_models()["llama3.2-1b"]
    assert mem["weights_gib"] * 2 ** 30 == pytest.approx(mem0["weights_gib"] * 2 ** 30 + draft.num_params * 2)
    assert mem["kv_bytes_per_token"] == mem0["kv_bytes_per_token"] + 2 * 16 * 8 * 64 * 2
    assert _tpot(r) < _tpot(base)


def test_step_time_table_tokens_per_seq(tmp_path):
    from simkv.studies.steptime_table import predict_table
    f = tmp_path / "b.csv"
    f.write_text("prefill_seqs,prefill_len,decode_batch,decode_ctx,tokens_per_seq\n0,0,8,512,1\n0,0,8,512,5\n")
    rows = [line.split(",") for line in predict_table(f, gpu="h100", model="llama3-8b").splitlines()[1:]]
    cost, _ = cost_model("h100", "llama3-8b")
    assert float(rows[1][-1]) == pytest.approx(cost.seconds(plan_from_shape(0, 0, 8, 512, tokens_per_seq=5)) * 1e3, rel=1e-4)
    f.write_text("prefill_seqs,prefill_len,decode_batch,decode_ctx,tokens_per_seq\n1,100,0,0,3\n")
    with pytest.raises(SimkvError):
        predict_table(f, gpu="h100", model="llama3-8b")


def test_shipped_speculative_scenario_loads():
    sc = simkv.load_scenario(ROOT / "scenarios" / "models" / "speculative-h100.yaml", [])
    assert len(sc.variants) == 7
