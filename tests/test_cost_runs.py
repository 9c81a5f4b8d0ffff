"""The decode-run contract the engine relies on when it times a run in pieces: step k of a run
depends only on the contexts plus k, bit for bit (the calibrated models, the roofline, the
interval study's scaling; LoRA and speculative decoding add to or pass on their base model's run).
A step table cannot promise it, so the engine times its runs whole; and it counts exactly the steps
the engine simulated (not steps it timed and then cut at an arrival)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from simkv import simulate
from simkv.simulate import make_cost
from simkv.studies.intervals import ScaledCost

from conftest import small_scenario

COSTS = {
    "calibrated-h100": {},
    "calibrated-h200-fp8-kv": {"hardware": {"gpu": "h200"}, "engine__kv_cache_dtype": "fp8"},
    "calibrated-h100-tp2-70b": {"model": "llama3-70b", "hardware": {"gpu": "h100", "tensor_parallel": 2}},
    "calibrated-moe": {"model": "mixtral-8x7b", "hardware": {"gpu": "h100", "tensor_parallel": 2}},
    "vidur-a100": {"hardware": {"gpu": "a100-80gb"}},
    "roofline": {"cost": "roofline"},
}


def _cost(name: str):
    over = dict(COSTS[name])
    over.setdefault("engine__max_model_len", 8192)
    return make_cost(small_scenario(**over))[0]


_MODELS = {name: _cost(name) for name in COSTS}


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(COSTS)), ctx=st.lists(st.integers(1, 6000), min_size=1, max_size=300),
       a=st.integers(1, 40), b=st.integers(1, 40))
def test_a_run_timed_in_two_pieces_is_the_run_timed_at_once(name, ctx, a, b):
    cost = _MODELS[name]
    ctx = np.array(ctx, dtype=np.int64)
    whole = cost.decode_run_seconds(ctx, a + b)
    pieces = np.concatenate((cost.decode_run_seconds(ctx, a), cost.decode_run_seconds(ctx + a, b)))
    assert whole.tobytes() == pieces.tobytes()
    scaled = ScaledCost(cost, {"decode": 1.07, "prefill": 1.0, "mixed": 1.0})
    assert (scaled.decode_run_seconds(ctx, a + b).tobytes()
            == np.concatenate((scaled.decode_run_seconds(ctx, a), scaled.decode_run_seconds(ctx + a, b))).tobytes())


def _step_table(tmp_path):
    """A step table tabulated from the calibrated H100 model, decode batches up to 16 only."""
    from simkv.sched.base import StepPlan
    m = _MODELS["calibrated-h100"]
    lines = ["prefill_seqs,prefill_len,decode_batch,decode_ctx,tokens_per_seq,ms\n"]
    for bsz in (1, 2, 4, 8, 16):
        for c in (1, 16, 64, 256, 1024, 4096):
            plan = StepPlan(decode_ids=np.arange(bsz), decode_ctx=np.full(bsz, c))
            lines.append(f"0,0,{bsz},{c},,{m.seconds(plan) * 1e3:.8g}\n")
    for seqs in (1, 2, 4, 8):
        for L in (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
            if seqs * L <= 16384:
                plan = StepPlan(prefill_ids=np.arange(seqs), prefill_new=np.full(seqs, L), prefill_ctx=np.full(seqs, L))
                lines.append(f"{seqs},{L},0,0,,{m.seconds(plan) * 1e3:.8g}\n")
    (tmp_path / "steps.csv").write_text("".join(lines))
    return tmp_path / "steps.csv"


def test_a_step_table_counts_only_simulated_steps(tmp_path):
    """The table's 'N steps inside / outside its shapes' counts the run's steps: the engine used to
    time whole decode runs and cut them at the next arrival, and the table counted the cut steps too
    (2,536 counted for a 1,451-step run)."""
    table = str(_step_table(tmp_path))
    sc = small_scenario(cost={"table": table}, engine__max_num_seqs=64, engine__num_gpu_blocks=4000,
                        run__num_requests=150, workload__arrival={"process": "poisson", "rate": 60.0})
    cost = make_cost(sc)[0]
    cost.decode_run_seconds(np.array([10, 300, 2000]), 9)
    assert cost.use.steps == 0                  # timing a run counts nothing; the engine counts what it simulates
    res = simulate(sc)
    steps = res.summary["batch"]["steps"]
    text = res.summary["setup"]["cost_sources"]["step_table"]
    assert f" of {steps} steps " in text or f"all {steps} steps inside" in text, (steps, text)
    assert "lay outside" in text                # batches above 16 are extrapolated, and said to be


def test_reject_stops_a_run_that_leaves_the_table(tmp_path):
    """extrapolate: reject, now checked on the steps the engine simulates: a run inside the
    table's shapes finishes, one with larger batches stops with a clear error."""
    from simkv.errors import SimkvError
    table = str(_step_table(tmp_path))
    light = small_scenario(cost={"table": table, "extrapolate": "reject"}, engine__max_num_seqs=8,
                           run__num_requests=40, workload__prompt_tokens={"dist": "uniform", "low": 10, "high": 100},
                           workload__output_tokens={"dist": "uniform", "low": 1, "high": 60},
                           workload__arrival={"process": "poisson", "rate": 2.0})
    assert simulate(light).summary["batch"]["steps"] > 0   # batches of at most 8, contexts in the table
    with pytest.raises(SimkvError, match="outside the shapes"):
        simulate(small_scenario(cost={"table": table, "extrapolate": "reject"}, engine__max_num_seqs=64,
                                engine__num_gpu_blocks=4000, run__num_requests=150,
                                workload__arrival={"process": "poisson", "rate": 60.0}))


def test_step_table_runs_are_timed_whole(tmp_path):
    """scipy's interpolator walks from the previous point's triangle, so a decode point on a shared
    triangle edge can take the other triangle's value when it is timed in another call (found by
    review: batch 4 at context 256, 12 + 5 steps against 17). So a step table opts out of the
    two-piece timing, and the engine times its runs whole, as it always did."""
    from simkv.engine import Replica
    cost = make_cost(small_scenario(cost={"table": str(_step_table(tmp_path))}))[0]
    assert cost.decode_runs_split_exactly is False
    assert all(getattr(m, "decode_runs_split_exactly", True) for m in _MODELS.values())
    calls = []

    class Spy:
        def decode_run_seconds(self, ctx, n):
            calls.append(n)
            return cost.decode_run_seconds(ctx, n)

    class Plan:
        max_steps, arrival_sensitive, decode_ctx = 17, True, np.full(4, 256)

    rep = Replica.__new__(Replica)   # only what _durations reads; _run_in_pieces as __init__ sets it for this cost
    rep.cost, rep._run_in_pieces, rep._decode_step_s = Spy(), getattr(cost, "decode_runs_split_exactly", True), 0.1
    rep._next_arrival_s, rep.next_sync_hint = (lambda: 0.25), None
    rep.env = type("Env", (), {"now": 0.0})()
    d = rep._durations(Plan())
    assert calls == [17]                         # one call for the whole run
    full = cost.decode_run_seconds(Plan.decode_ctx, 17)
    assert d.tobytes() == full[:1 + int(full[:-1].cumsum().searchsorted(0.25, side="left"))].tobytes()
